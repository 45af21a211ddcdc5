// The log: one line per event, written with a single write(2) through sv_write_line (no Foundation,
// no stdio buffering, safe from any thread). Lines look like
//     stableverbs[1234] warn: ibv_open_xrcd is not supported (EOPNOTSUPP)

import Glibc
import StableVerbsABI

enum Log {
    // Written once by Runtime.bootstrap (under pthread_once) before any reader exists.
    nonisolated(unsafe) static var level: LogLevel = .warn
    nonisolated(unsafe) static var fd: Int32 = 2

    static func open(_ configuration: Configuration) {
        level = configuration.logLevel
        if let path = configuration.logFile {
            let f = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            if f >= 0 {
                fd = f
            } else {
                write(.warn, "cannot open STABLEVERBS_LOG_FILE \(path) (errno \(sv_get_errno())); logging to stderr")
            }
        }
    }

    @inline(__always) static func enabled(_ l: LogLevel) -> Bool { l <= level }

    static func write(_ l: LogLevel, _ message: String) {
        guard enabled(l) else { return }
        var line = "stableverbs[\(getpid())] \(l.label): \(message)\n"
        let saved = sv_get_errno()
        line.withUTF8 { buf in
            buf.withMemoryRebound(to: CChar.self) { c in
                sv_write_line(fd, c.baseAddress, c.count)
            }
        }
        sv_set_errno(saved)
    }

    static func error(_ m: @autoclosure () -> String) { if enabled(.error) { write(.error, m()) } }
    static func warn(_ m: @autoclosure () -> String) { if enabled(.warn) { write(.warn, m()) } }
    static func info(_ m: @autoclosure () -> String) { if enabled(.info) { write(.info, m()) } }
    static func debug(_ m: @autoclosure () -> String) { if enabled(.debug) { write(.debug, m()) } }

    /// One line per unsupported verb (first use only), so a program that loops on it is not flooded.
    nonisolated(unsafe) private static var reported: Set<String> = []
    static func unsupported(_ verb: String, _ why: String = "not supported by StableVerbs") {
        sv_control_lock()
        let first = reported.insert(verb).inserted
        sv_control_unlock()
        if first { warn("\(verb): \(why) (EOPNOTSUPP)") }
    }
}
