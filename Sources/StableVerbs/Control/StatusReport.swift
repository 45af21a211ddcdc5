// The status a control client sees: the process, each virtual context (its virtual device, the real
// device under it now, its recovery state and object counts), and the recovery statistics.

import Glibc
import StableVerbsABI
import StableVerbsControl

extension Runtime {
    /// `process pid=… program=… lower=…`.
    func processRecord() -> ControlRecord {
        ControlRecord("process", [("pid", "\(getpid())"), ("program", programName()),
                                  ("lower", String(cString: lowerName) + (passthrough ? " (pass-through)" : ""))])
    }

    func statusRecords() -> [ControlRecord] {
        var records = [processRecord()]
        withControlLock {
            for c in orderedContexts() {
                records.append(ControlRecord("context", [
                    ("virtual", c.device.name),
                    ("device", c.released ? "-" : c.currentDeviceName),
                    ("state", Runtime.stateName(sv_ctx_state(c.ptr), released: c.released)),
                    ("detached", c.plannedHold ? "1" : "0"),
                    ("generation", "\(c.generation)"),
                    ("qps", "\(c.qps.count)"), ("cqs", "\(c.cqs.count)"), ("mrs", "\(c.mrs.count)"),
                    ("srqs", "\(c.srqs.count)"), ("ahs", "\(c.ahs.count)"),
                ]))
            }
            let s = recovery.stats
            let ms = ControlProtocol.milliseconds
            records.append(ControlRecord("recovery", [
                ("count", "\(s.count)"),
                ("last", s.count == 0 ? "none" : s.lastPlanned ? "planned" : "unplanned"),
                ("contexts", "\(s.lastContexts)"),
                ("quiesce_ms", ms(s.last.quiesce)), ("release_ms", ms(s.last.release)),
                ("device_wait_ms", ms(s.last.deviceWait)), ("rebuild_ms", ms(s.last.rebuild)),
                ("reconnect_ms", ms(s.last.reconnect)), ("replay_ms", ms(s.last.replay)),
                ("replayed", "\(s.lastReplayed)"), ("error", "\(s.lastError)"),
            ]))
        }
        return records
    }

    static func stateName(_ state: UInt32, released: Bool) -> String {
        switch state {
        case SV_CTX_LIVE.rawValue: "live"
        case SV_CTX_QUIESCING.rawValue: "quiescing"
        case SV_CTX_RELEASED.rawValue: "released"
        case SV_CTX_REBUILDING.rawValue: "rebuilding"
        case SV_CTX_RECONNECTING.rawValue: "reconnecting"
        case SV_CTX_PASSTHROUGH.rawValue: "passthrough"
        case SV_CTX_FAILED.rawValue: "failed (the device did not come back)"
        default: released ? "released" : "unknown(\(state))"
        }
    }

    /// /proc/self/comm without its newline.
    private func programName() -> String {
        let fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "?" }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return "?" }
        var bytes = buf[0..<n]
        while bytes.last == UInt8(ascii: "\n") { bytes = bytes.dropLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}
