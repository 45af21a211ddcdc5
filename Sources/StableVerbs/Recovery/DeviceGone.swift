// A device that does not come back (DESIGN §4).
//
// An unplanned loss waits for the device's return up to STABLEVERBS_LOSS_WAIT_MS (300 s; 0: for
// ever). Past it the application is given what native verbs give a program whose device died,
// instead of waiting for ever: every work request outstanding on the context's QPs (those handed
// to the old device and those buffered since) completes in its CQ with IBV_WC_WR_FLUSH_ERR,
// IBV_EVENT_DEVICE_FATAL reaches the async event queue, threads waiting for completion events
// wake up, posts and control verbs fail with EIO, and destroys and ibv_close_device succeed (there
// is nothing left below them). The peer shims of its connections are told the connections ended.
// The context is not rebuilt when the device returns later: the application was told it is dead
// and opens the device again, as after a native fatal error.

import CVerbs
import Glibc
import StableVerbsABI

extension Runtime {
    /// Fails a released context for good (control lock).
    func failDevice(_ c: ContextRecord, waitedNS: UInt64) {
        guard c.released, !c.failed else { return }
        c.failed = true
        sv_ctx_set_state(c.ptr, SV_CTX_FAILED.rawValue)
        let before = c.cqs.values.reduce(0) { $0 + $1.pending.count }
        for q in c.nextOrder(c.qps, { $0.sequence }) {
            if let link = link(of: q) {
                noticeClosed(link)
                link.state = .closed
            }
            q.ptr.pointee.qpx.qp_base.state = IBV_QPS_ERR
            flushOutstanding(q, firstSendStatus: IBV_WC_WR_FLUSH_ERR)
        }
        let flushed = c.cqs.values.reduce(0) { $0 + $1.pending.count } - before
        for cq in c.cqs.values where cq.channel != nil && !cq.pending.isEmpty { cq.owedEvent = true }
        var e = ibv_async_event()
        e.event_type = IBV_EVENT_DEVICE_FATAL
        c.asyncQueue.append(e)
        if c.asyncFD >= 0 { signalFD(c.asyncFD) }
        bumpRecoveryEpoch()
        Log.error("\(c.device.name) did not come back within \(ms(waitedNS)) (STABLEVERBS_LOSS_WAIT_MS): the application gets what a dead device gives natively — IBV_EVENT_DEVICE_FATAL, \(flushed) outstanding work request(s) flushed in error, EIO from posts and control verbs")
    }
}
