// What the control socket answers: a request line in, reply records out (ControlProtocol). Runs on
// a control connection's thread; detach and attach are the recovery engine's planned entries
// (Recovery/Recovery.swift), exactly what stableverbs_detach / stableverbs_attach do.

import Glibc
import StableVerbsABI
import StableVerbsControl

typealias ControlRecord = ControlProtocol.Record

extension Runtime {
    func controlReply(to line: String) -> [ControlRecord] {
        guard let request = ControlProtocol.Request(line: line) else {
            return [processRecord(), controlError(EINVAL, "unknown request '\(line)' (expected status, detach [DEVICE] or attach)")]
        }
        switch request {
        case .status:
            return statusRecords() + [ControlRecord("ok")]
        case .detach(let device):
            return [processRecord(), plannedStep(detaching: true) { self.detach(device: device) } explain: { rc in
                rc == ENODEV ? "no device named \(device ?? "") in this process" : nil
            }]
        case .attach:
            return [processRecord(), plannedStep(detaching: false) { self.attach() } explain: { rc in
                rc == ETIMEDOUT
                    ? "no matching device within STABLEVERBS_DEVICE_WAIT_MS (\(self.recovery.deviceWaitNS / 1_000_000) ms); "
                        + "the contexts stay released (attach again)"
                    : nil
            }]
        }
    }

    /// Runs a detach or an attach and answers `ok contexts=N ms=T` or `error errno=E message=M`.
    private func plannedStep(detaching: Bool, _ step: () -> Int32, explain: (Int32) -> String?) -> ControlRecord {
        guard lowerAvailable, !passthrough else {
            return controlError(ENOTSUP, passthrough ? "the shim is in pass-through mode (STABLEVERBS_PASSTHROUGH)"
                                                     : "no lower interface (\(failure ?? "unavailable"))")
        }
        let held = { withControlLock { self.contexts.values.filter { $0.plannedHold && $0.released }.count } }
        let before = held()
        let t0 = monotonicNS()
        let rc = step()
        let elapsed = monotonicNS() &- t0
        guard rc == 0 else { return controlError(rc, explain(rc) ?? String(cString: strerror(rc))) }
        let moved = detaching ? held() : before
        return ControlRecord("ok", [("contexts", "\(moved)"), ("ms", ControlProtocol.milliseconds(elapsed))])
    }

    func controlError(_ rc: Int32, _ message: String) -> ControlRecord {
        ControlRecord("error", [("errno", "\(rc)"), ("message", message)])
    }
}
