// The shim's data path: the ops installed into virtual verbs objects.
//
// Files:
//   DataPath.swift     installation into the virtual objects; shared raw-pointer helpers
//   PostOps.swift      sv_op_post_send / sv_op_post_recv / sv_op_post_srq_recv (+ translated slow paths)
//   PollOps.swift      sv_op_poll_cq / sv_op_req_notify_cq
//   QPExOps.swift      sv_op_wr_* (the ibv_qp_ex builders)
//   CQExOps.swift      sv_op_cq_* (the ibv_cq_ex polling ops)
//
// Rules for every op (DESIGN.md §7, checked by scripts/check-fastpath on the release library):
// top-level @_cdecl("sv_op_*") functions over raw pointers into the C structs of sv_objects.h; no
// Swift globals, arrays, dictionaries, classes, closures that escape, existentials, String or
// generics; no allocation, no locks, no TLS. While nothing has moved (the maps' `moved` counters are
// zero and the context is LIVE) an op is a handful of loads, one test and a tail call into the real
// provider; otherwise it takes an out-of-line path that translates through the identity maps.
//
// Codegen facts (Swift 6.3.1, checked with objdump; scripts/check-fastpath enforces them):
// - A @_cdecl function is a C entry point that tail-jumps to the Swift body, unless the optimizer
//   inlines the body into it (the ops are `@inline(__always)` so that it does: one jump less, and
//   one frame-pointer prologue less). Inside such an entry point, calls to the C `static inline`
//   helpers of sv_objects.h (sv_ctx_state, sv_idmap_moved, ...) stay real calls (the call sites
//   are marked noinline). So the ops read the two atomic words they test with Swift's own atomics
//   (svCtxState, svMoved below: plain loads on x86), and everything that needs the C helpers
//   (the probes, the translated paths) lives in out-of-line functions.
// - A @_cdecl function converted to a C function pointer in another file gets its entry point
//   emitted twice in non-WMO (debug) builds: each ops file installs its own functions.
// - SwiftPM passes -fno-omit-frame-pointer unless told otherwise: every body that keeps a value
//   across a call pays push/mov/pop %rbp. The library is built with `--omit-frame-pointers`
//   (scripts/build, scripts/test, README): 1-30 instructions less per op (callgrind; profilers
//   still unwind the shim through its .eh_frame).

import CVerbs
@preconcurrency import StableVerbsABI
import Synchronization

public enum DataPath {
    /// Fills ctx->vctx.context.ops {post_send, post_recv, post_srq_recv, poll_cq, req_notify_cq}
    /// with the shim's ops and sets the C global `sv_shim_post_send_op` to the post_send op. The
    /// other op slots are left as they are (NULL on a fresh context).
    public static func install(context: UnsafeMutablePointer<sv_context>) {
        svInstallPostOps(context)
        svInstallPollOps(context)
        sv_shim_post_send_op = postSendOp
    }

    /// The address of the post_send op (`sv_op_post_send`), as stored in `sv_shim_post_send_op`.
    public static var postSendOp: UnsafeMutableRawPointer { svPostSendOpAddress() }

    /// Fills qp->qpx's wr_* pointers with the shim's builders (requires qp->real_qpx) and copies the
    /// real comp_mask. A builder the real QP lacks (NULL) stays NULL, so the application sees the
    /// provider's capabilities. wr_bind_mw stays NULL (memory windows are not supported).
    public static func installExtendedOps(qp: UnsafeMutablePointer<sv_qp>) {
        svInstallQPExOps(qp)
    }

    /// Fills cq->cq's start_poll/next_poll/end_poll/read_* with the shim's (requires cq->real_ex).
    /// An op the real CQ lacks (NULL: a wc_flags field not requested) stays NULL.
    public static func installExtendedOps(cq: UnsafeMutablePointer<sv_cq>) {
        svInstallCQExOps(cq)
    }
}

// (Each ops file installs its own functions: a @_cdecl function converted to a C function pointer
// in another file gets its C entry point emitted twice in non-WMO (debug) builds.)

// MARK: - Raw-pointer helpers shared by the ops (always inlined; constant offsets)

// The `_Atomic` fields of sv_objects.h do not import into Swift; their offsets follow from their
// neighbours (C layout: `_Atomic(uint32_t) state; uint32_t generation;` and
// `_Atomic(uint32_t) moved; uint32_t reserved;`). Tests check these accessors against the C helpers.
@inline(__always) var svStateOffset: Int { MemoryLayout<sv_context>.offset(of: \sv_context.generation).unsafelyUnwrapped - 4 }
@inline(__always) var svMovedOffset: Int { MemoryLayout<sv_idmap>.offset(of: \sv_idmap.reserved).unsafelyUnwrapped - 4 }

/// sv_ctx_state(ctx): acquire load of the context's state (SV_CTX_LIVE == 0).
@inline(__always) func svCtxState(_ ctx: UnsafeMutablePointer<sv_context>) -> UInt32 {
    (UnsafeRawPointer(ctx) + svStateOffset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .acquiring)
}

/// sv_idmap_moved(map): relaxed load of the map's moved-entry count.
@inline(__always) func svMoved(_ map: UnsafeMutablePointer<sv_idmap>) -> UInt32 {
    (UnsafeRawPointer(map) + svMovedOffset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .relaxed)
}

/// The virtual-object casts of sv_objects.h (sv_qp_of, sv_cq_of, ...), as raw reinterpretations.
@inline(__always) func svQP(_ qp: UnsafeMutablePointer<ibv_qp>?) -> UnsafeMutablePointer<sv_qp> {
    UnsafeMutableRawPointer(qp.unsafelyUnwrapped).assumingMemoryBound(to: sv_qp.self)
}
@inline(__always) func svQP(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?) -> UnsafeMutablePointer<sv_qp> {
    UnsafeMutableRawPointer(qpx.unsafelyUnwrapped).assumingMemoryBound(to: sv_qp.self)
}
@inline(__always) func svCQ(_ cq: UnsafeMutablePointer<ibv_cq>?) -> UnsafeMutablePointer<sv_cq> {
    UnsafeMutableRawPointer(cq.unsafelyUnwrapped).assumingMemoryBound(to: sv_cq.self)
}
@inline(__always) func svCQ(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UnsafeMutablePointer<sv_cq> {
    UnsafeMutableRawPointer(cq.unsafelyUnwrapped).assumingMemoryBound(to: sv_cq.self)
}
@inline(__always) func svSRQ(_ srq: UnsafeMutablePointer<ibv_srq>?) -> UnsafeMutablePointer<sv_srq> {
    UnsafeMutableRawPointer(srq.unsafelyUnwrapped).assumingMemoryBound(to: sv_srq.self)
}
@inline(__always) func svAH(_ ah: UnsafeMutablePointer<ibv_ah>) -> UnsafeMutablePointer<sv_ah> {
    UnsafeMutableRawPointer(ah).assumingMemoryBound(to: sv_ah.self)
}

/// Pointers to the identity maps embedded in the C structs (offsets fold to constants).
@inline(__always) func svLkeys(_ ctx: UnsafeMutablePointer<sv_context>) -> UnsafeMutablePointer<sv_idmap> {
    (UnsafeMutableRawPointer(ctx) + MemoryLayout<sv_context>.offset(of: \sv_context.lkeys).unsafelyUnwrapped)
        .assumingMemoryBound(to: sv_idmap.self)
}
@inline(__always) func svQpnUp(_ ctx: UnsafeMutablePointer<sv_context>) -> UnsafeMutablePointer<sv_idmap> {
    (UnsafeMutableRawPointer(ctx) + MemoryLayout<sv_context>.offset(of: \sv_context.qpn_up).unsafelyUnwrapped)
        .assumingMemoryBound(to: sv_idmap.self)
}
@inline(__always) func svLidUp(_ ctx: UnsafeMutablePointer<sv_context>) -> UnsafeMutablePointer<sv_idmap> {
    (UnsafeMutableRawPointer(ctx) + MemoryLayout<sv_context>.offset(of: \sv_context.lid_up).unsafelyUnwrapped)
        .assumingMemoryBound(to: sv_idmap.self)
}
/// This context's own rkeys (virtual -> real), for local invalidation.
@inline(__always) func svOwnRkeys(_ ctx: UnsafeMutablePointer<sv_context>) -> UnsafeMutablePointer<sv_idmap> {
    (UnsafeMutableRawPointer(ctx) + MemoryLayout<sv_context>.offset(of: \sv_context.ids.rkeys).unsafelyUnwrapped)
        .assumingMemoryBound(to: sv_idmap.self)
}
@inline(__always) func svRkeys(_ peer: UnsafeMutablePointer<sv_peer_ids>) -> UnsafeMutablePointer<sv_idmap> {
    (UnsafeMutableRawPointer(peer) + MemoryLayout<sv_peer_ids>.offset(of: \sv_peer_ids.rkeys).unsafelyUnwrapped)
        .assumingMemoryBound(to: sv_idmap.self)
}
@inline(__always) func svQpns(_ peer: UnsafeMutablePointer<sv_peer_ids>) -> UnsafeMutablePointer<sv_idmap> {
    (UnsafeMutableRawPointer(peer) + MemoryLayout<sv_peer_ids>.offset(of: \sv_peer_ids.qpns).unsafelyUnwrapped)
        .assumingMemoryBound(to: sv_idmap.self)
}

/// `IdentityMap.translate` with the probe out of line: for the single-key ops (wr_* builders,
/// extended CQ readers), whose fast path then needs no registers saved.
@inline(__always) func svTranslate(_ map: UnsafeMutablePointer<sv_idmap>, _ key: UInt32) -> UInt32 {
    if svMoved(map) == 0 { return key }
    return svTranslateOutOfLine(map, key)
}
@inline(never) func svTranslateOutOfLine(_ map: UnsafeMutablePointer<sv_idmap>, _ key: UInt32) -> UInt32 {
    IdentityMap.translateMoved(map, key)
}

/// A remote key through the QP's peer map (unchanged when the peer is unknown).
@inline(__always) func svPeerRkey(_ q: UnsafeMutablePointer<sv_qp>, _ rkey: UInt32) -> UInt32 {
    guard let peer = q.pointee.peer else { return rkey }
    return svTranslate(svRkeys(peer), rkey)
}

/// The real AH behind a virtual one, and the remote QPN through the AH's peer map.
@inline(__always) func svRealAH(_ ah: UnsafeMutablePointer<ibv_ah>?) -> UnsafeMutablePointer<ibv_ah>? {
    guard let ah else { return nil }
    return svAH(ah).pointee.real
}
/// The flag a UD destination's QPN map sets on a QPN whose owner announced it is moving
/// (UDPeers.swift, `ud-pausing`): sends to it wait for its new QPN (real QPNs are 24 bits).
@inline(__always) var svUDHeld: UInt32 { 0x8000_0000 }

/// COLD: a UD send names a destination whose shim is moving: wait for its new QPN (UDPeers.swift).
@inline(never)
func svColdUDHeld(_ ctx: UnsafeMutablePointer<sv_context>, _ ah: UnsafeMutablePointer<ibv_ah>?, _ qpn: UInt32, _ held: UInt32) -> UInt32 {
    Runtime.current.waitForUDDestination(ctx, ah, qpn, held)
}

/// `translated` (the QPN the AH's peer map gave for the application's `qpn`) unless its owner is
/// moving; then the QPN it moved to, once known (the wait is the cold function's).
@inline(__always) func svUnlessUDHeld(_ ctx: UnsafeMutablePointer<sv_context>, _ ah: UnsafeMutablePointer<ibv_ah>?,
                                      _ qpn: UInt32, _ translated: UInt32) -> UInt32 {
    translated & svUDHeld == 0 ? translated : svColdUDHeld(ctx, ah, qpn, translated)
}

@inline(__always) func svRemoteQPN(_ ah: UnsafeMutablePointer<ibv_ah>?, _ qpn: UInt32) -> UInt32 {
    guard let ah, let peer = svAH(ah).pointee.peer else { return qpn }
    return svTranslate(svQpns(peer), qpn)
}
