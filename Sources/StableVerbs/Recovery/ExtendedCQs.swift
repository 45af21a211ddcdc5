// Extended CQs across a recovery (the cold half of DataPath/CQExOps.swift): the poll session of
// an ibv_cq_ex serves the completions a recovery kept for the CQ before the real CQ's, hides the
// error completions a device loss caused, and never touches a real CQ the engine is draining (all
// of it under the control lock, as pollNotLive does for ibv_poll_cq).

import CVerbs
import Glibc
import StableVerbsABI

private let real = SV_CQ_SESSION_REAL.rawValue
private let kept = SV_CQ_SESSION_KEPT.rawValue

extension Runtime {
    /// ibv_start_poll while not LIVE or with kept completions.
    func startPollSlow(_ c: UnsafeMutablePointer<sv_cq>, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
        withControlLock {
            let rec = record(c.pointee.core, as: CQRecord.self)
            if sv_ctx_state(c.pointee.ctx) != SV_CTX_LIVE.rawValue { recovery.polledSince.insert(key(c)) }
            if !rec.pending.isEmpty {
                serveKept(c, rec)
                return 0
            }
            guard realCQPollable(rec) else { return ENOENT }
            return startRealSession(c, attr)
        }
    }

    /// ibv_next_poll in a session that served kept completions: the next kept one, else the real
    /// CQ's first (a real session of its own, whose end_poll the application's end_poll makes).
    func nextPollSlow(_ c: UnsafeMutablePointer<sv_cq>) -> Int32 {
        withControlLock {
            guard c.pointee.session == kept else { return ENOENT }
            let rec = record(c.pointee.core, as: CQRecord.self)
            if !rec.pending.isEmpty {
                serveKept(c, rec)
                return 0
            }
            svInstallCQExOps(c)
            guard realCQPollable(rec) else { return ENOENT }
            var attr = ibv_poll_cq_attr()
            return startRealSession(c, &attr)
        }
    }

    /// A real poll session on the CQ (control lock): its first completion retires its work, or
    /// takes the error path, as in the fast path.
    private func startRealSession(_ c: UnsafeMutablePointer<sv_cq>, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
        let r = c.pointee.real_ex!
        let rc = r.pointee.start_poll(r, attr)
        if rc != 0 { return rc }
        c.pointee.session = real
        return svCQExTook(c, r, bySender: svCQBySender(c))
    }

    /// ibv_end_poll of a session that served kept completions (no real session to end).
    func endPollSlow(_ c: UnsafeMutablePointer<sv_cq>) {
        withControlLock {
            if c.pointee.session == kept { svInstallCQExOps(c) }
            c.pointee.session = SV_CQ_SESSION_NONE.rawValue
        }
    }

    /// The real CQ is positioned on an error completion: one the device loss caused is dropped
    /// (its work stays in the rings) and the poll moves on to the next completion; the
    /// application's own retires its work and is handed over. Moving on ends the real session and
    /// starts another (end_poll, start_poll) rather than calling next_poll: rxe before rdma-core
    /// 55 (Debian 12 has 44) consumes one entry too many when end_poll follows a next_poll that
    /// returned ENOENT, as the API asks. When nothing follows, no real session is left open, so
    /// the application's end_poll (after a next_poll; never after a start_poll's ENOENT) has
    /// nothing to end.
    func extendedErrorCompletion(_ c: UnsafeMutablePointer<sv_cq>) -> Int32 {
        let r = c.pointee.real_ex!
        let ctx = c.pointee.ctx!
        while true {
            if r.pointee.status == IBV_WC_SUCCESS {
                if svCQBySender(c) { svCQExNoteSender(c, r) }
                sv_ring_retire_cq_ex(ctx, r)
                return 0
            }
            var w = currentCompletion(r)
            if filterErrorCompletions(ctx, &w, 1, from: 0) == 1 { return 0 }  // the application's
            r.pointee.end_poll(r)
            var attr = ibv_poll_cq_attr()
            let rc = r.pointee.start_poll(r, &attr)
            if rc != 0 {
                c.pointee.session = SV_CQ_SESSION_NONE.rawValue
                return rc
            }
            c.pointee.cq.status = r.pointee.status
            c.pointee.cq.wr_id = r.pointee.wr_id
        }
    }

    /// The completion an extended real CQ is positioned on, as an ibv_wc (real identities; the
    /// fields every CQ reports and the QP number the shim asks for).
    private func currentCompletion(_ r: UnsafeMutablePointer<ibv_cq_ex>) -> ibv_wc {
        var w = ibv_wc()
        w.wr_id = r.pointee.wr_id
        w.status = r.pointee.status
        w.opcode = r.pointee.read_opcode(r)
        w.qp_num = r.pointee.read_qp_num(r)
        if let read = r.pointee.read_vendor_err { w.vendor_err = read(r) }
        return w
    }

    /// Hands the application the CQ's oldest kept completion. Control lock.
    private func serveKept(_ c: UnsafeMutablePointer<sv_cq>, _ rec: CQRecord) {
        let w = rec.pending.removeFirst()
        rec.publishPending()
        c.pointee.kept = w
        c.pointee.cq.status = w.status
        c.pointee.cq.wr_id = w.wr_id
        if c.pointee.session != kept { svInstallCQExKeptReaders(c) }
        c.pointee.session = kept
    }

    /// Whether the real CQ may be polled (it exists and the engine is not draining it): the check
    /// of every poll outside the fast path, ibv_poll_cq's (pollNotLive) and the extended API's.
    /// Control lock.
    func realCQPollable(_ rec: CQRecord) -> Bool {
        let st = sv_ctx_state(rec.context.ptr)
        let ok = st == SV_CTX_LIVE.rawValue || st == SV_CTX_QUIESCING.rawValue || st == SV_CTX_RECONNECTING.rawValue
        return ok && !rec.context.released
    }

    /// Before the release: the application's real poll sessions on the group's extended CQs (begun
    /// in the fast path before the contexts left LIVE, so without the control lock) end first —
    /// without the lock held here, since an error completion in such a session takes it. New
    /// sessions go through the cold path, under the lock. Bounded (1 s).
    func waitForPollSessions(_ group: [ContextRecord]) {
        let deadline = monotonicNS() &+ 1_000_000_000
        while withControlLock({ group.contains { c in c.cqs.values.contains { $0.ptr.pointee.session == real } } }) {
            if monotonicNS() >= deadline {
                Log.warn("release: an ibv_start_poll session did not end within 1 s; its CQ's completions are not drained (their work is replayed)")
                return
            }
            usleep(100)
        }
    }
}
