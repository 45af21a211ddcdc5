/// A benchmark suite of issue 5, named as its result files are (`<name>.txt`, `.json`, `.png`).
enum Suite: String, CaseIterable, Sendable {
    case fastpath
    case footprint
    case recovery
    case labLatency = "lab-latency"

    /// Suites that only exist in the QEMU lab (recovery runs on the software HCA too).
    var needsLab: Bool { self == .labLatency }

    /// The chart's title (the commit and date of the run are added to it).
    var title: String {
        switch self {
        case .fastpath: "StableVerbs fast-path overhead (suite 1)"
        case .footprint: "StableVerbs footprint and start-up (suite 4)"
        case .recovery: "StableVerbs recovery: blackout and phases (suite 3)"
        case .labLatency: "StableVerbs latency in the lab, two guests (suite 2)"
        }
    }
}

/// One run of one of the scripts in Benchmarks/, and the suites whose results it writes.
struct ScriptRun: Sendable {
    let script: String
    let arguments: [String]
    let suites: [Suite]

    var label: String { suites.map(\.rawValue).joined(separator: "+") }

    /// As typed in a shell, from the root of the checkout.
    var commandLine: String {
        (["Benchmarks/\(script)"] + arguments.map { $0.contains(" ") ? "\"\($0)\"" : $0 }).joined(separator: " ")
    }

    /// The script runs that produce `suites` (Benchmarks/run once for fastpath and footprint).
    /// The library is built before (or not, with --no-build): the scripts never build it.
    static func runs(for suites: [Suite], quick: Bool, lab: Bool, skipCallgrind: Bool) -> [ScriptRun] {
        var runs: [ScriptRun] = []
        if suites.contains(.fastpath) || suites.contains(.footprint) {
            var arguments = ["--no-build"]
            if quick { arguments.append("--quick") }
            if skipCallgrind { arguments.append("--skip-callgrind") }
            runs.append(ScriptRun(script: "run", arguments: arguments, suites: [.fastpath, .footprint]))
        }
        if suites.contains(.recovery) {
            var arguments = ["--no-build"]
            if !lab { arguments.append("--soft") }
            if quick { arguments += ["--pairs", "1 16", "--recoveries", "3"] }
            runs.append(ScriptRun(script: "recovery", arguments: arguments, suites: [.recovery]))
        }
        if suites.contains(.labLatency) {
            // ROUNDS ITERATIONS; this script builds what it needs itself
            let arguments = quick ? ["1", "500"] : []
            runs.append(ScriptRun(script: "lab-latency", arguments: arguments, suites: [.labLatency]))
        }
        return runs
    }
}
