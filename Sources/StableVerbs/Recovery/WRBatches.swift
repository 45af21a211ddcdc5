// ibv_wr_* batches across a recovery (the cold halves of QPExOps.swift's batch control).
//
// A batch opened while the context is LIVE is DIRECT: the builders write into the real QP as they
// go and the work ring records the same WRs; the engine's grace waits for it to close before it
// destroys the real QP. A batch opened while the context is not LIVE is BUFFERED: only recorded.
// Its ibv_wr_complete commits it to the ring, where the replay that ends the recovery posts it
// after the older work — or, when the recovery ended while the batch was being built, posts it
// at once (the control lock keeps the state from changing under either).

import CVerbs
import Glibc
import StableVerbsABI

extension Runtime {
    /// ibv_wr_start while the context is not LIVE.
    func wrStartNotLive(_ q: UnsafeMutablePointer<sv_qp>) {
        while true {
            let started: Bool = withControlLock {
                let st = sv_ctx_state(q.pointee.ctx)
                if st == SV_CTX_LIVE.rawValue || st == SV_CTX_PASSTHROUGH.rawValue {
                    svWrStartDirect(q)
                    return true
                }
                guard let ring = q.pointee.send_ring else { return false }  // untracked: wait
                sv_ring_wr_start(ring)
                svSetBatch(q, SV_WR_BATCH_BUFFERED)
                return true
            }
            if started { return }
            usleep(1000)
        }
    }

    /// ibv_wr_complete of a buffered batch, or of a direct one while the context is not LIVE.
    func wrCompleteNotLive(_ q: UnsafeMutablePointer<sv_qp>) -> Int32 {
        withControlLock {
            defer { svSetBatch(q, SV_WR_BATCH_NONE) }
            let batch = sv_qp_wr_batch(q)
            let st = sv_ctx_state(q.pointee.ctx)
            let live = st == SV_CTX_LIVE.rawValue || st == SV_CTX_PASSTHROUGH.rawValue
            let ctx = record(q.pointee.ctx.pointee.core, as: ContextRecord.self)
            guard let ring = q.pointee.send_ring else {
                // Untracked QP: its batch was started on a live context (wrStartNotLive waits).
                guard !ctx.released, let r = q.pointee.real_qpx else { return EIO }
                return r.pointee.wr_complete.unsafelyUnwrapped(r)
            }
            // A batch recorded here and not handed to the real QP takes its PSNs when it is
            // replayed (Peers/ExecutedWork.swift), not when it is committed.
            let psn = ring.pointee.next_psn
            if batch == UInt32(SV_WR_BATCH_BUFFERED) {
                if st == SV_CTX_FAILED.rawValue { return EIO }  // not committed: the batch is dropped
                if !live {
                    noteBuffering(ring)
                    _ = sv_ring_wr_commit(ring)
                    ring.pointee.next_psn = psn
                    return 0
                }
                // The recovery ended while the batch was built: post it now, after the replayed work.
                let old = sv_ring_wr_commit(ring)
                ring.pointee.next_psn = psn
                let (_, rc, refused) = postRingSends(ring, q, from: old)
                if rc != 0 { sv_ring_wr_uncommit(ring, refused) }
                return rc
            }
            if ctx.released {
                // The grace ran out before this batch closed: the real QP is gone; what was recorded
                // is replayed with the rest of the ring.
                Log.warn("QP \(hex(q.pointee.qpx.qp_base.qp_num)): an ibv_wr_* batch outlived the recovery grace; replaying what it recorded")
                noteBuffering(ring)
                _ = sv_ring_wr_commit(ring)
                ring.pointee.next_psn = psn
                return 0
            }
            // Started while LIVE; the context left LIVE since (QUIESCING, or a loss not yet
            // released): the real QP still takes it, the drain or the replay accounts for it.
            return svCommitAndComplete(q.pointee.ctx, ring, q.pointee.real_qpx.unsafelyUnwrapped)
        }
    }
}
