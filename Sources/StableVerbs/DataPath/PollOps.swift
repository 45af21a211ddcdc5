// Legacy completion ops: ibv_poll_cq / ibv_req_notify_cq through context->ops.
//
// poll_cq fast path (context LIVE, qpn_up and lid_up are the identity): tail call into the real
// provider. Otherwise the real CQ is polled and the returned entries are translated in place (the
// wc array is the application's output buffer): qp_num and src_qp real -> virtual through qpn_up,
// slid through lid_up.

import CVerbs
import StableVerbsABI
import Synchronization

@_cdecl("sv_op_poll_cq")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpPollCQ(_ cq: UnsafeMutablePointer<ibv_cq>?, _ ne: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
    let c = svCQ(cq)
    let ctx = c.pointee.ctx.unsafelyUnwrapped
    if svCtxState(ctx) | svMoved(svQpnUp(ctx)) | svMoved(svLidUp(ctx)) | svCQPending(c) != 0 {
        return svPollCQSlow(c, ne, wc)
    }
    let real = c.pointee.real.unsafelyUnwrapped
    let n = real.pointee.context.unsafelyUnwrapped.pointee.ops.poll_cq.unsafelyUnwrapped(real, ne, wc)
    // The work rings (recovery) forget what completed; an error completion takes the cold path
    // (is it the device's loss, to be hidden and replayed, or the application's?).
    if n > 0 {
        let ok = sv_ring_retire(ctx, wc, n)
        if ok != n { return svColdPollErrors(c, n, ok, wc) }
    }
    return n
}

/// sv_cq.pending (completions kept by a recovery), acquire load.
@inline(__always) func svCQPending(_ c: UnsafeMutablePointer<sv_cq>) -> UInt32 {
    let offset = MemoryLayout<sv_cq>.offset(of: \sv_cq.session).unsafelyUnwrapped - 4
    return (UnsafeRawPointer(c) + offset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .acquiring)
}

/// COLD (`svCold*`: scripts/check-fastpath stops here): error completions (filtered by the
/// recovery engine: hidden when the device is lost).
@inline(never)
func svColdPollErrors(_ c: UnsafeMutablePointer<sv_cq>, _ n: Int32, _ first: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
    let ctx = c.pointee.ctx.unsafelyUnwrapped
    return Int32(Runtime.current.filterErrorCompletions(ctx, wc.unsafelyUnwrapped, Int(n), from: Int(first)))
}

@inline(never)
func svPollCQSlow(_ c: UnsafeMutablePointer<sv_cq>, _ ne: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
    if svCtxState(c.pointee.ctx.unsafelyUnwrapped) != SV_CTX_LIVE.rawValue || svCQPending(c) != 0 {
        return svColdPoll(c, ne, wc)
    }
    return svPollCQTranslatedRetiring(c, ne, wc)
}

/// COLD SLOW PATH (`svCold*`): the context is not LIVE, or a recovery kept completions for this
/// CQ: those first, then the real CQ if it exists (Recovery.swift).
@inline(never)
func svColdPoll(_ c: UnsafeMutablePointer<sv_cq>, _ ne: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
    return Runtime.current.pollNotLive(c, ne, wc)
}

/// Polls the real CQ, retires the work rings, filters error completions, translates.
@inline(never)
func svPollCQTranslatedRetiring(_ c: UnsafeMutablePointer<sv_cq>, _ ne: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
    let real = c.pointee.real.unsafelyUnwrapped
    var n = real.pointee.context.unsafelyUnwrapped.pointee.ops.poll_cq.unsafelyUnwrapped(real, ne, wc)
    if n <= 0 { return n }
    let ctx = c.pointee.ctx.unsafelyUnwrapped
    if svUDBySender(ctx) { svColdUDSenders(ctx, wc.unsafelyUnwrapped, Int(n)) }
    let ok = sv_ring_retire(ctx, wc, n)  // n when the context has no index yet
    if ok != n { n = svColdPollErrors(c, n, ok, wc) }
    if n > 0 { svTranslateCompletions(ctx, wc.unsafelyUnwrapped, Int(n)) }
    return n
}

/// Real -> virtual identities in `count` work completions, in place. Public for the recovery engine
/// (completions it serves from its own queue).
public func svTranslateCompletions(_ ctx: UnsafeMutablePointer<sv_context>, _ wc: UnsafeMutablePointer<ibv_wc>, _ count: Int) {
    let qpnUp = svQpnUp(ctx)
    let lidUp = svLidUp(ctx)
    let moved = svMoved(qpnUp)
    if moved != 0 {
        // A UD receive with a GRH had its src_qp told by sender already (svColdUDSenders).
        let bySender = moved & svUDSendersMoved != 0 ? UInt32(IBV_WC_GRH.rawValue) : 0
        for i in 0..<count {
            let e = wc + i
            e.pointee.qp_num = IdentityMap.translateMoved(qpnUp, e.pointee.qp_num)
            if e.pointee.wc_flags & bySender == 0 { e.pointee.src_qp = IdentityMap.translateMoved(qpnUp, e.pointee.src_qp) }
        }
    }
    if svMoved(lidUp) != 0 {
        for i in 0..<count {
            let e = wc + i
            e.pointee.slid = UInt16(truncatingIfNeeded: IdentityMap.translateMoved(lidUp, UInt32(e.pointee.slid)))
        }
    }
}

@_cdecl("sv_op_req_notify_cq")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpReqNotifyCQ(_ cq: UnsafeMutablePointer<ibv_cq>?, _ solicitedOnly: Int32) -> Int32 {
    let c = svCQ(cq)
    if svCtxState(c.pointee.ctx.unsafelyUnwrapped) != SV_CTX_LIVE.rawValue {
        return svReqNotifyCQNotLive(c, solicitedOnly)
    }
    let real = c.pointee.real.unsafelyUnwrapped
    return real.pointee.context.unsafelyUnwrapped.pointee.ops.req_notify_cq.unsafelyUnwrapped(real, solicitedOnly)
}

/// COLD SLOW PATH: the context is not LIVE. For now forwarded to the current real CQ; the recovery
/// issue will remember the request and re-arm the rebuilt CQ here.
@inline(never)
func svReqNotifyCQNotLive(_ c: UnsafeMutablePointer<sv_cq>, _ solicitedOnly: Int32) -> Int32 {
    // Released or rebuilding: the rebuild re-arms every CQ with a channel.
    let st = svCtxState(c.pointee.ctx.unsafelyUnwrapped)
    if st == SV_CTX_RELEASED.rawValue || st == SV_CTX_REBUILDING.rawValue || st == SV_CTX_FAILED.rawValue { return 0 }
    let real = c.pointee.real.unsafelyUnwrapped
    return real.pointee.context.unsafelyUnwrapped.pointee.ops.req_notify_cq.unsafelyUnwrapped(real, solicitedOnly)
}

// MARK: - Installation

func svInstallPollOps(_ context: UnsafeMutablePointer<sv_context>) {
    context.pointee.vctx.context.ops.poll_cq = svOpPollCQ
    context.pointee.vctx.context.ops.req_notify_cq = svOpReqNotifyCQ
}
