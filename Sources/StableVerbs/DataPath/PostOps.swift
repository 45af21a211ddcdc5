// Legacy post ops: ibv_post_send / ibv_post_recv / ibv_post_srq_recv land here through
// context->ops of the virtual context.
//
// Fast path (context LIVE, no key of interest has moved, not UD): a few loads, one test and a tail
// call into sv_ring_post_* (sv_ring.c), which records the application's own WR list in the
// queue's work ring and hands it to the real provider; the fix-up when the provider refuses part
// of it is Swift (sv_post_*_fixup, cold).
// Translated path: the application's WR list is const for us, so it is copied in bounded chunks
// into stack buffers (`wrChunk` WRs and `sgeChunk` SGEs per chunk: no heap, no TLS), translated,
// and posted chunk by chunk (one WR with at most one SGE: copied alone, without the loop). On
// failure *bad_wr is mapped back to the application's WR at the same index; WRs before it stay
// posted, as natively.

import CVerbs
import Glibc
import StableVerbsABI

/// Chunk budgets. Each stack buffer is kept at or under 1024 bytes so that
/// withUnsafeTemporaryAllocation always takes the stack (larger sizes consult the runtime and may
/// fall back to the heap). One WR may use up to `sgeChunk` SGEs (rxe's device max is 32, mlx5's 30);
/// a WR with more is refused with EINVAL + bad_wr.
@inline(__always) var svSendWRChunk: Int { 8 }      // 8 × 128 B ibv_send_wr
@inline(__always) var svRecvWRChunk: Int { 16 }     // 16 × 32 B ibv_recv_wr
@inline(__always) var svSGEChunk: Int { 64 }        // 64 × 16 B ibv_sge

// MARK: - post_send

@_cdecl("sv_op_post_send")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpPostSend(
    _ qp: UnsafeMutablePointer<ibv_qp>?, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    let q = svQP(qp)
    let ctx = q.pointee.ctx.unsafelyUnwrapped
    var gate = svCtxState(ctx) | svMoved(svLkeys(ctx))
    if let peer = q.pointee.peer { gate |= svMoved(svRkeys(peer)) }
    if gate != 0 || q.pointee.qpx.qp_base.qp_type.rawValue == IBV_QPT_UD.rawValue {
        return svPostSendSlow(q, wr, bad)
    }
    // The work ring (recovery): what is posted and not yet completed, recorded before the provider
    // sees it; dropped again from the refused WR on if the provider refuses (sv_post_send_fixup).
    if q.pointee.send_ring != nil { return sv_ring_post_send(q, wr, bad) }
    let real = q.pointee.real.unsafelyUnwrapped
    return real.pointee.context.unsafelyUnwrapped.pointee.ops.post_send.unsafelyUnwrapped(real, wr, bad)
}

/// COLD: sv_ring_post_send's answer when the provider refused part of the list or it could not
/// be recorded (the ring's post_mark is the mark of the post): see svSendRingFixup.
@_cdecl("sv_post_send_fixup")
public func svPostSendFixup(
    _ ctx: UnsafeMutablePointer<sv_context>?, _ ring: UnsafeMutablePointer<sv_wr_ring>?, _ rc: Int32,
    _ wr: UnsafeMutablePointer<ibv_send_wr>?, _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    let ring = ring.unsafelyUnwrapped
    return svSendRingFixup(ctx.unsafelyUnwrapped, ring, ring.pointee.post_mark, rc, wr, bad)
}

/// COLD: see svPostSendFixup (receive queues and SRQs).
@_cdecl("sv_post_recv_fixup")
public func svPostRecvFixup(
    _ ctx: UnsafeMutablePointer<sv_context>?, _ ring: UnsafeMutablePointer<sv_wr_ring>?, _ rc: Int32,
    _ wr: UnsafeMutablePointer<ibv_recv_wr>?, _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    let ring = ring.unsafelyUnwrapped
    return svRecvRingFixup(ctx.unsafelyUnwrapped, ring, ring.pointee.post_mark, rc, wr, bad)
}

/// COLD: the provider refused part of a recorded list, or the list could not be recorded — the
/// ring had no room, or a WR the QP cannot take (more SGEs or inline bytes than it was made for):
/// when the provider refused one, what it took before is recorded now; else the queue can no
/// longer be replayed after a device loss (logged by the recovery). A refusal with EIO/ENODEV is
/// the device going away under the post: the WRs stay recorded, the recovery that this triggers
/// replays them, and the application sees a post that worked (0). Returns what the post returns.
@inline(never)
func svSendRingFixup(
    _ ctx: UnsafeMutablePointer<sv_context>, _ ring: UnsafeMutablePointer<sv_wr_ring>, _ mark: UInt64, _ rc: Int32,
    _ wr: UnsafeMutablePointer<ibv_send_wr>?, _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    svRingFixup(ctx, ring, mark, rc, wr, bad, recordPrefix: sv_ring_record_send_prefix, unrecord: sv_ring_unrecord_send)
}

/// svSendRingFixup and svRecvRingFixup, for either kind of WR.
@inline(__always)
func svRingFixup<WR>(
    _ ctx: UnsafeMutablePointer<sv_context>, _ ring: UnsafeMutablePointer<sv_wr_ring>, _ mark: UInt64, _ rc: Int32,
    _ wr: UnsafeMutablePointer<WR>?, _ bad: UnsafeMutablePointer<UnsafeMutablePointer<WR>?>?,
    recordPrefix: (UnsafeMutablePointer<sv_wr_ring>?, UnsafePointer<WR>?, UnsafePointer<WR>?) -> UInt64,
    unrecord: (UnsafeMutablePointer<sv_wr_ring>?, UInt64, UnsafePointer<WR>?, UnsafePointer<WR>?) -> Void
) -> Int32 {
    if mark != UInt64.max && svKeptForReplay(ctx, rc) {
        bad?.pointee = nil
        return 0
    }
    if mark == UInt64.max {
        if rc != 0, let refused = bad?.pointee, recordPrefix(ring, wr, refused) != UInt64.max { return rc }
        sv_ring_mark_lost(ring)
    } else {
        unrecord(ring, mark, wr, bad?.pointee ?? wr)
    }
    return rc
}

/// The translated path with the work ring kept (cold paths, recovery).
func svPostSendRecorded(
    _ q: UnsafeMutablePointer<sv_qp>, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    guard let ring = q.pointee.send_ring else { return svPostSendTranslated(q, wr, bad) }
    let mark = sv_ring_record_send(ring, wr)
    var localBad: UnsafeMutablePointer<ibv_send_wr>? = nil
    let rc = svPostSendTranslated(q, wr, &localBad)
    bad?.pointee = localBad
    if rc != 0 || mark == UInt64.max {
        let given = svSendRingFixup(q.pointee.ctx.unsafelyUnwrapped, ring, mark, rc, wr, &localBad)
        bad?.pointee = localBad
        return given
    }
    return rc
}

@inline(never)
func svPostSendSlow(
    _ q: UnsafeMutablePointer<sv_qp>, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    if svCtxState(q.pointee.ctx.unsafelyUnwrapped) != SV_CTX_LIVE.rawValue {
        return svColdPostSend(q, wr, bad)
    }
    return svPostSendRecorded(q, wr, bad)
}

/// COLD SLOW PATH (an `svCold*` entry point: scripts/check-fastpath stops here, see its header):
/// the context is not LIVE (quiescing, released, rebuilding, reconnecting): the
/// recovery engine buffers the post in the QP's work ring, or posts it when the real QP exists.
@inline(never)
func svColdPostSend(
    _ q: UnsafeMutablePointer<sv_qp>, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    return Runtime.current.postSendNotLive(q, wr, bad)
}

/// Copies, translates and posts the application's send WRs chunk by chunk.
@inline(never)
func svPostSendTranslated(
    _ q: UnsafeMutablePointer<sv_qp>, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
) -> Int32 {
    let ctx = q.pointee.ctx.unsafelyUnwrapped
    let real = q.pointee.real.unsafelyUnwrapped
    let post = real.pointee.context.unsafelyUnwrapped.pointee.ops.post_send.unsafelyUnwrapped
    let peer = q.pointee.peer
    let isUD = q.pointee.qpx.qp_base.qp_type.rawValue == IBV_QPT_UD.rawValue
    let inlineFlag = IBV_SEND_INLINE.rawValue
    return svPostInChunks(
        wr, chunk: svSendWRChunk, lkeys: svLkeys(ctx), bad,
        // Inline data is copied by the provider from the addresses: lkeys are not used, the
        // application's SGE array is passed as is.
        translatedSGEs: { w in
            let n = Int(w.pointee.num_sge)
            return n > 0 && w.pointee.send_flags & inlineFlag != 0 ? 0 : n
        },
        finish: { d in
            let opcode = d.pointee.opcode.rawValue
            if opcode == IBV_WR_RDMA_WRITE.rawValue || opcode == IBV_WR_RDMA_WRITE_WITH_IMM.rawValue
                || opcode == IBV_WR_RDMA_READ.rawValue || opcode == IBV_WR_ATOMIC_WRITE.rawValue
            {
                if let peer { d.pointee.wr.rdma.rkey = svTranslate(svRkeys(peer), d.pointee.wr.rdma.rkey) }
            } else if opcode == IBV_WR_ATOMIC_CMP_AND_SWP.rawValue || opcode == IBV_WR_ATOMIC_FETCH_AND_ADD.rawValue {
                if let peer {
                    d.pointee.wr.atomic.rkey = svTranslate(svRkeys(peer), d.pointee.wr.atomic.rkey)
                }
            } else if opcode == IBV_WR_SEND_WITH_INV.rawValue {
                if let peer {
                    d.pointee.invalidate_rkey = svTranslate(svRkeys(peer), d.pointee.invalidate_rkey)
                }
            } else if opcode == IBV_WR_LOCAL_INV.rawValue {
                d.pointee.invalidate_rkey = svTranslate(svOwnRkeys(ctx), d.pointee.invalidate_rkey)
            }
            if isUD {
                let vah = d.pointee.wr.ud.ah
                let qpn = d.pointee.wr.ud.remote_qpn
                d.pointee.wr.ud.remote_qpn = svUnlessUDHeld(ctx, vah, qpn, svRemoteQPN(vah, qpn))
                d.pointee.wr.ud.ah = svRealAH(vah)
            }
        },
        post: { post(real, $0, $1) })
}

// MARK: - The chunked copy of the translated paths

/// A work request list the translated paths copy: ibv_send_wr or ibv_recv_wr.
protocol SVChainedWR {
    var nextWR: UnsafeMutablePointer<Self>? { get set }
    var sgeList: UnsafeMutablePointer<ibv_sge>? { get set }
}

extension ibv_send_wr: SVChainedWR {
    var nextWR: UnsafeMutablePointer<ibv_send_wr>? { get { next } set { next = newValue } }
    var sgeList: UnsafeMutablePointer<ibv_sge>? { get { sg_list } set { sg_list = newValue } }
}

extension ibv_recv_wr: SVChainedWR {
    var nextWR: UnsafeMutablePointer<ibv_recv_wr>? { get { next } set { next = newValue } }
    var sgeList: UnsafeMutablePointer<ibv_sge>? { get { sg_list } set { sg_list = newValue } }
}

/// Copies the application's list `wr` onto the stack `chunk` WRs (and at most `svSGEChunk` SGEs)
/// at a time; in each copy the first `translatedSGEs(w)` SGEs get real lkeys (0: the application's
/// SGE array is kept; negative: refused) and `finish` translates the rest; each chunk goes to
/// `post`. On failure *bad is the application's WR at the index the provider refused; the chunks
/// before it stay posted, as natively. A WR with more SGEs than a chunk holds is refused (EINVAL).
/// The common post — one WR with at most one SGE to translate — takes no loop.
@inline(__always)
func svPostInChunks<W: SVChainedWR>(
    _ wr: UnsafeMutablePointer<W>?, chunk: Int, lkeys: UnsafeMutablePointer<sv_idmap>,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<W>?>?,
    translatedSGEs: (UnsafeMutablePointer<W>) -> Int,
    finish: (UnsafeMutablePointer<W>) -> Void,
    post: (UnsafeMutablePointer<W>?, UnsafeMutablePointer<UnsafeMutablePointer<W>?>?) -> Int32
) -> Int32 {
    if let w = wr, w.pointee.nextWR == nil {
        let needed = translatedSGEs(w)
        if needed == 0 || needed == 1 {
            var copy = w.pointee
            var sge = ibv_sge()
            if needed == 1 {
                let s = w.pointee.sgeList.unsafelyUnwrapped.pointee
                sge = ibv_sge(addr: s.addr, length: s.length, lkey: IdentityMap.translate(lkeys, s.lkey))
            }
            return withUnsafeMutablePointer(to: &sge) { sp in
                if needed == 1 { copy.sgeList = sp }
                return withUnsafeMutablePointer(to: &copy) { d in
                    finish(d)
                    var realBad: UnsafeMutablePointer<W>? = nil
                    let rc = post(d, &realBad)
                    if rc != 0 { bad?.pointee = w }
                    return rc
                }
            }
        }
    }
    return withUnsafeTemporaryAllocation(of: W.self, capacity: chunk) { (wrBuf: UnsafeMutableBufferPointer<W>) throws(Never) -> Int32 in
        withUnsafeTemporaryAllocation(of: ibv_sge.self, capacity: svSGEChunk) { (sgeBuf: UnsafeMutableBufferPointer<ibv_sge>) throws(Never) -> Int32 in
            let wrs = wrBuf.baseAddress.unsafelyUnwrapped
            let sges = sgeBuf.baseAddress.unsafelyUnwrapped
            var count = 0            // WRs in the current chunk
            var sgeCount = 0         // SGEs used in the current chunk
            var chunkHead = wr       // the application's WR at index 0 of the current chunk
            var next = wr
            /// Posts the current chunk; on failure maps the provider's bad_wr (an index into the
            /// chunk) back to the application's WR at the same index.
            func flush() -> Int32 {
                var realBad: UnsafeMutablePointer<W>? = nil
                let rc = post(wrs, &realBad)
                if rc == 0 { return 0 }
                var index = 0
                if let rb = realBad, rb >= wrs, rb < wrs + count { index = rb - wrs }
                var app = chunkHead
                while index > 0, let a = app { app = a.pointee.nextWR; index -= 1 }
                bad?.pointee = app
                return rc
            }
            while let w = next {
                let needed = translatedSGEs(w)
                if needed > svSGEChunk || needed < 0 {
                    if count > 0 {
                        let rc = flush()
                        if rc != 0 { return rc }
                    }
                    bad?.pointee = w
                    return EINVAL
                }
                if count == chunk || sgeCount + needed > svSGEChunk {
                    let rc = flush()
                    if rc != 0 { return rc }
                    count = 0
                    sgeCount = 0
                    chunkHead = w
                }
                let d = wrs + count
                d.initialize(to: w.pointee)
                d.pointee.nextWR = nil
                if count > 0 { (d - 1).pointee.nextWR = d }
                if needed > 0 {
                    let src = w.pointee.sgeList.unsafelyUnwrapped
                    let dst = sges + sgeCount
                    for k in 0..<needed {
                        let s = src[k]
                        (dst + k).initialize(
                            to: ibv_sge(addr: s.addr, length: s.length, lkey: IdentityMap.translate(lkeys, s.lkey)))
                    }
                    d.pointee.sgeList = dst
                    sgeCount += needed
                }
                finish(d)
                count += 1
                next = w.pointee.nextWR
            }
            // An empty list: let the provider answer as it does natively.
            if count == 0 { return post(nil, bad) }
            return flush()
        }
    }
}

// MARK: - post_recv / post_srq_recv

@_cdecl("sv_op_post_recv")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpPostRecv(
    _ qp: UnsafeMutablePointer<ibv_qp>?, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    let q = svQP(qp)
    let ctx = q.pointee.ctx.unsafelyUnwrapped
    if svCtxState(ctx) | svMoved(svLkeys(ctx)) != 0 {
        return svPostRecvSlow(UnsafeMutableRawPointer(q), false, wr, bad)
    }
    if q.pointee.recv_ring != nil { return sv_ring_post_recv(q, wr, bad) }
    let real = q.pointee.real.unsafelyUnwrapped
    return real.pointee.context.unsafelyUnwrapped.pointee.ops.post_recv.unsafelyUnwrapped(real, wr, bad)
}

/// COLD: see svSendRingFixup.
@inline(never)
func svRecvRingFixup(
    _ ctx: UnsafeMutablePointer<sv_context>, _ ring: UnsafeMutablePointer<sv_wr_ring>, _ mark: UInt64, _ rc: Int32,
    _ wr: UnsafeMutablePointer<ibv_recv_wr>?, _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    svRingFixup(ctx, ring, mark, rc, wr, bad, recordPrefix: sv_ring_record_recv_prefix, unrecord: sv_ring_unrecord_recv)
}

/// The translated receive path with the work ring kept (cold paths, recovery).
func svPostRecvRecorded(
    _ object: UnsafeMutableRawPointer, _ isSRQ: Bool, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    let ring = isSRQ ? object.assumingMemoryBound(to: sv_srq.self).pointee.recv_ring
                     : object.assumingMemoryBound(to: sv_qp.self).pointee.recv_ring
    guard let ring else { return svPostRecvTranslated(object, isSRQ, wr, bad) }
    let mark = sv_ring_record_recv(ring, wr)
    var localBad: UnsafeMutablePointer<ibv_recv_wr>? = nil
    let rc = svPostRecvTranslated(object, isSRQ, wr, &localBad)
    bad?.pointee = localBad
    if rc != 0 || mark == UInt64.max {
        let ctx = isSRQ ? object.assumingMemoryBound(to: sv_srq.self).pointee.ctx.unsafelyUnwrapped
                        : object.assumingMemoryBound(to: sv_qp.self).pointee.ctx.unsafelyUnwrapped
        let given = svRecvRingFixup(ctx, ring, mark, rc, wr, &localBad)
        bad?.pointee = localBad
        return given
    }
    return rc
}

@_cdecl("sv_op_post_srq_recv")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpPostSRQRecv(
    _ srq: UnsafeMutablePointer<ibv_srq>?, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    let s = svSRQ(srq)
    let ctx = s.pointee.ctx.unsafelyUnwrapped
    if svCtxState(ctx) | svMoved(svLkeys(ctx)) != 0 {
        return svPostRecvSlow(UnsafeMutableRawPointer(s), true, wr, bad)
    }
    if s.pointee.recv_ring != nil { return sv_ring_post_srq_recv(s, wr, bad) }
    let real = s.pointee.real.unsafelyUnwrapped
    return real.pointee.context.unsafelyUnwrapped.pointee.ops.post_srq_recv.unsafelyUnwrapped(real, wr, bad)
}

/// `object` is an sv_qp (isSRQ == false) or an sv_srq.
@inline(never)
func svPostRecvSlow(
    _ object: UnsafeMutableRawPointer, _ isSRQ: Bool, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    let ctx = isSRQ
        ? object.assumingMemoryBound(to: sv_srq.self).pointee.ctx.unsafelyUnwrapped
        : object.assumingMemoryBound(to: sv_qp.self).pointee.ctx.unsafelyUnwrapped
    if svCtxState(ctx) != SV_CTX_LIVE.rawValue {
        return svColdPostRecv(object, isSRQ, wr, bad)
    }
    return svPostRecvRecorded(object, isSRQ, wr, bad)
}

/// COLD SLOW PATH (`svCold*`): the context is not LIVE: buffered in the work ring by the recovery engine, or
/// posted when the real QP/SRQ exists.
@inline(never)
func svColdPostRecv(
    _ object: UnsafeMutableRawPointer, _ isSRQ: Bool, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    return Runtime.current.postRecvNotLive(object, isSRQ, wr, bad)
}

@inline(never)
func svPostRecvTranslated(
    _ object: UnsafeMutableRawPointer, _ isSRQ: Bool, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    let ctx = isSRQ
        ? object.assumingMemoryBound(to: sv_srq.self).pointee.ctx.unsafelyUnwrapped
        : object.assumingMemoryBound(to: sv_qp.self).pointee.ctx.unsafelyUnwrapped
    return svPostInChunks(
        wr, chunk: svRecvWRChunk, lkeys: svLkeys(ctx), bad,
        translatedSGEs: { Int($0.pointee.num_sge) }, finish: { _ in },
        post: { svPostRecvRaw(object, isSRQ, $0, $1) })
}

@inline(__always)
func svPostRecvRaw(
    _ object: UnsafeMutableRawPointer, _ isSRQ: Bool, _ wrs: UnsafeMutablePointer<ibv_recv_wr>?,
    _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?
) -> Int32 {
    if isSRQ {
        let real = object.assumingMemoryBound(to: sv_srq.self).pointee.real.unsafelyUnwrapped
        return real.pointee.context.unsafelyUnwrapped.pointee.ops.post_srq_recv.unsafelyUnwrapped(real, wrs, bad)
    }
    let real = object.assumingMemoryBound(to: sv_qp.self).pointee.real.unsafelyUnwrapped
    return real.pointee.context.unsafelyUnwrapped.pointee.ops.post_recv.unsafelyUnwrapped(real, wrs, bad)
}

// MARK: - Installation

func svInstallPostOps(_ context: UnsafeMutablePointer<sv_context>) {
    context.pointee.vctx.context.ops.post_send = svOpPostSend
    context.pointee.vctx.context.ops.post_recv = svOpPostRecv
    context.pointee.vctx.context.ops.post_srq_recv = svOpPostSRQRecv
}

func svPostSendOpAddress() -> UnsafeMutableRawPointer {
    let op: @convention(c) (
        UnsafeMutablePointer<ibv_qp>?, UnsafeMutablePointer<ibv_send_wr>?,
        UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?
    ) -> Int32 = svOpPostSend
    return unsafeBitCast(op, to: UnsafeMutableRawPointer.self)
}

// MARK: - A device lost under a post

/// Whether a provider's answer to a post means the device is gone (errno or -errno).
@inline(__always)
func svDeviceGone(_ rc: Int32) -> Bool {
    rc == EIO || rc == ENODEV || rc == -EIO || rc == -ENODEV
}

/// A post the provider refused with `rc`, whose WRs are all recorded: when the device is gone they
/// stay for the replay and the recovery starts (true); else false.
@inline(__always)
func svKeptForReplay(_ ctx: UnsafeMutablePointer<sv_context>, _ rc: Int32) -> Bool {
    guard svDeviceGone(rc) else { return false }
    svColdPostOnLostDevice(ctx)
    return true
}

/// COLD SLOW PATH: a post (or ibv_wr_complete) failed because the device is gone: an unplanned
/// recovery is triggered (the watcher may not have noticed yet).
@inline(never)
func svColdPostOnLostDevice(_ ctx: UnsafeMutablePointer<sv_context>) {
    let rt = Runtime.current
    let c: ContextRecord = withControlLock { record(ctx.pointee.core, as: ContextRecord.self) }
    Log.info("\(c.currentDeviceName): a post failed as on a removed device: kept for the replay, unplanned recovery")
    rt.trigger(c)
}
