// Configuration: read once, from the environment snapshot the C constructor took (sv_env), or set by
// a Swift caller (tests) before the first verbs call through `StableVerbs.configure`.
//
//   STABLEVERBS_LOG          error | warn | info | debug            (default warn)
//   STABLEVERBS_LOG_FILE     append log lines to this file          (default stderr)
//   STABLEVERBS_PASSTHROUGH  1: every verb goes straight to the lower interface, the shim is inert
//   STABLEVERBS_LOWER        libibverbs | softhca                   (default libibverbs)
//   STABLEVERBS_SOFTHCA      configuration string for the software HCA double
// and the recovery's and peer protocol's settings (`settings` below; README has them all). A
// STABLEVERBS_* variable that is none of them is reported (a misspelt setting would otherwise be
// ignored without a word).

import Glibc
import StableVerbsABI

enum LogLevel: Int, Comparable, Sendable {
    case error = 0, warn, info, debug

    static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }

    init?(name: String) {
        switch name.lowercased() {
        case "error": self = .error
        case "warn", "warning": self = .warn
        case "info": self = .info
        case "debug": self = .debug
        default: return nil
        }
    }

    var label: String {
        switch self {
        case .error: "error"
        case .warn: "warn"
        case .info: "info"
        case .debug: "debug"
        }
    }
}

struct Configuration: Sendable {
    var logLevel: LogLevel = .warn
    var logFile: String? = nil
    var passthrough = false
    /// The lower interface by name, as configured ("libibverbs" or "softhca"; anything else is a
    /// misconfiguration reported at start-up).
    var lower = "libibverbs"
    var softHCA: String? = nil
    /// Problems found while reading the configuration, logged once the log is open.
    var problems: [String] = []

    static func environment(_ name: String) -> String? {
        guard let v = sv_env(name) else { return nil }
        return String(cString: v)
    }

    static func fromEnvironment() -> Configuration {
        var c = Configuration()
        if let level = environment("STABLEVERBS_LOG"), !level.isEmpty {
            if let l = LogLevel(name: level) {
                c.logLevel = l
            } else {
                c.problems.append("STABLEVERBS_LOG=\(level) is not one of error, warn, info, debug; using warn")
            }
        }
        if let file = environment("STABLEVERBS_LOG_FILE"), !file.isEmpty { c.logFile = file }
        if let p = environment("STABLEVERBS_PASSTHROUGH") {
            c.passthrough = (p == "1" || p.lowercased() == "yes" || p.lowercased() == "true")
        }
        if let lower = environment("STABLEVERBS_LOWER"), !lower.isEmpty { c.lower = lower }
        c.softHCA = environment("STABLEVERBS_SOFTHCA")
        var i = 0
        while let n = sv_env_name(i) {
            let name = String(cString: n)
            if name.hasPrefix("STABLEVERBS_") && !settings.contains(name) && !toolVariables(name) {
                c.problems.append("\(name) is not a StableVerbs setting (see README, Configuration): ignored")
            }
            i += 1
        }
        return c
    }

    /// Every variable the library reads (README's configuration table).
    static let settings: Set<String> = [
        "STABLEVERBS_LOG", "STABLEVERBS_LOG_FILE", "STABLEVERBS_PASSTHROUGH", "STABLEVERBS_LOWER", "STABLEVERBS_SOFTHCA",
        // recovery (Recovery/Recovery.swift, HardwareGate.swift)
        "STABLEVERBS_MATCH", "STABLEVERBS_MATCH_WAIT_MS", "STABLEVERBS_QUIESCE_MS", "STABLEVERBS_GRACE_US",
        "STABLEVERBS_DEVICE_WAIT_MS", "STABLEVERBS_LOSS_WAIT_MS", "STABLEVERBS_RESCAN_MS", "STABLEVERBS_CONTROL_WAIT_MS",
        "STABLEVERBS_EVENT_GRACE_MS", "STABLEVERBS_SETTLE_MS",
        // the control socket's directory (StableVerbsControl/RuntimeDirectory.swift)
        "STABLEVERBS_RUNTIME_DIR",
        // the peer protocol (Peers/PeerLinks.swift)
        "STABLEVERBS_PEER", "STABLEVERBS_PEER_PORT", "STABLEVERBS_PEER_PORTS", "STABLEVERBS_PEER_TIMEOUT_MS",
        "STABLEVERBS_PEER_HOST", "STABLEVERBS_PEER_PLANNED_TIMEOUT_MS", "STABLEVERBS_PEER_MOVE_TIMEOUT_MS",
        "STABLEVERBS_PEER_FIND",
    ]

    /// Variables of the project's tools, not of the library (the lab, the bench, the command):
    /// programs run by them see these, and nothing is wrong.
    private static func toolVariables(_ name: String) -> Bool {
        name.hasPrefix("STABLEVERBS_LAB") || ["STABLEVERBS_LIB", "STABLEVERBS_COMMAND", "STABLEVERBS_RESULTS"].contains(name)
    }
}
