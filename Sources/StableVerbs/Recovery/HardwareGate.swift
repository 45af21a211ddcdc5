// Control verbs while a recovery has the hardware away.
//
// A released context has no real objects: its records still point at the ones the release
// destroyed (and at the closed real context). A control verb — create, modify, query, destroy —
// reaches those, so it must not run then. Like a post, which is buffered, it waits: from the moment
// an unplanned recovery takes the context (state RELEASED) or a detach released it, until the
// rebuild is committed (the recovery holds the control lock while it rebuilds, so the verb then
// meets either the old objects or the new ones, never half of each). The wait is bounded by
// STABLEVERBS_CONTROL_WAIT_MS (60 s): past it the verb fails with EIO, what a removed device
// answers natively. On a context whose device never came back (FAILED, DeviceGone.swift) a verb
// fails with EIO at once, except the destroys: they forget the virtual object (nothing is left
// below it) and succeed.

import Glibc
import StableVerbsABI

extension Runtime {
    /// Runs `body` under the control lock with the real objects of the context `record()` names
    /// in place, waiting for the rebuild while a recovery has them away. Past the bound: `gone`,
    /// with errno EIO. On a FAILED context: `body` for a destroy (`destroying`, which then must not
    /// reach the real object), else `gone` at once.
    func withHardware<T>(of record: () -> ContextRecord, gone: T, destroying: Bool = false, _ body: (ContextRecord) -> T) -> T {
        var deadline: UInt64 = 0
        while true {
            sv_control_lock()
            let c = record()
            if !c.released && sv_ctx_state(c.ptr) != SV_CTX_RELEASED.rawValue || c.failed && destroying {
                defer { sv_control_unlock() }
                return body(c)
            }
            if c.failed {
                sv_control_unlock()
                setErrno(EIO)
                return gone
            }
            let name = c.currentDeviceName
            sv_control_unlock()
            let now = monotonicNS()
            if deadline == 0 {
                deadline = now &+ recovery.controlWaitNS
                Log.info("a control verb waits for \(name) to be rebuilt (up to \(recovery.controlWaitNS / 1_000_000) ms)")
            } else if now >= deadline {
                Log.warn("a control verb gave up waiting for \(name) after \(recovery.controlWaitNS / 1_000_000) ms: EIO")
                setErrno(EIO)
                return gone
            }
            usleep(1000)
        }
    }

    /// The destroy of a CQ, QP or SRQ: finds the record and its real object through the gate,
    /// runs the real destroy outside the lock (it waits for the application to acknowledge the
    /// object's events), and forgets the record when it succeeded. While the destroy runs the
    /// context counts it (`destroysInFlight`): a recovery's release waits for it, so that it never
    /// destroys the same real object a second time. EIO when the device stayed away.
    func destroyRealObject<Record: AnyObject, Real>(
        context: (Record) -> ContextRecord, record: () -> Record, real: (Record) -> UnsafeMutablePointer<Real>,
        destroy: (UnsafeMutablePointer<Real>) -> Int32, forget: (Record) -> Void
    ) -> Int32 {
        let found = withHardware(of: { context(record()) }, gone: nil, destroying: true) { c -> (Record, UnsafeMutablePointer<Real>, ContextRecord)? in
            c.destroysInFlight += 1
            let r = record()
            return (r, real(r), c)
        }
        guard let (rec, object, c) = found else { return EIO }
        let rc = c.failed ? 0 : destroy(object)
        withControlLock {
            if rc == 0 { forget(rec) }
            c.destroysInFlight -= 1
        }
        return rc
    }
}
