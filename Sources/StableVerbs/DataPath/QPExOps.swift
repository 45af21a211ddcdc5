// The new post API (ibv_qp_ex builders). The application's ibv_qp_ex is &sv_qp.qpx: it writes
// qpx->wr_id and qpx->wr_flags directly into our struct before calling an op builder, so every op
// builder first copies both into the real ibv_qp_ex, then calls the real builder with the remote key
// translated through the QP's peer map. SGE setters translate lkeys, the UD address setter swaps the
// virtual AH for the real one and translates the remote QPN through the AH's peer. The rest forward.
//
// Recovery: on a QP with a work ring every op and setter is also recorded there, as the
// ibv_send_wr the legacy API would have posted (sv_ring_wr_*, with the application's virtual
// values), and ibv_wr_complete commits the batch to the ring before the real one posts it: the
// replay after a device loss re-posts what did not complete with the legacy post_send. A batch
// started while the context is not LIVE is only recorded (BUFFERED: the real QP may not exist);
// its ibv_wr_complete hands it to the recovery engine, which posts it once the QP is back.

import CVerbs
import Glibc
import StableVerbsABI
import Synchronization

/// The sv_qp behind the application's ibv_qp_ex, and its real ibv_qp_ex.
@inline(__always)
func svRealQPEx(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?) -> UnsafeMutablePointer<ibv_qp_ex> {
    svQP(qpx).pointee.real_qpx.unsafelyUnwrapped
}

/// The QP's peer rkey map when it has moved entries (nil: unknown peer, or identity).
@inline(__always)
func svMovedPeerRkeys(_ q: UnsafeMutablePointer<sv_qp>) -> UnsafeMutablePointer<sv_idmap>? {
    guard let peer = q.pointee.peer else { return nil }
    let rkeys = svRkeys(peer)
    return svMoved(rkeys) != 0 ? rkeys : nil
}

/// For op builders: copies wr_id/wr_flags from the virtual ibv_qp_ex into the real one.
@inline(__always)
func svOpBegin(_ q: UnsafeMutablePointer<sv_qp>) -> UnsafeMutablePointer<ibv_qp_ex> {
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    r.pointee.wr_id = q.pointee.qpx.wr_id
    r.pointee.wr_flags = q.pointee.qpx.wr_flags
    return r
}

/// Whether the open batch is only recorded (started while the context was not LIVE).
@inline(__always)
func svBatchBuffered(_ q: UnsafeMutablePointer<sv_qp>) -> Bool {
    q.pointee.wr_batch == UInt32(SV_WR_BATCH_BUFFERED)
}

/// Records an op builder's WR in the QP's work ring (if it has one). True when the batch is
/// buffered: the real QP must not be touched.
@inline(__always)
func svRecordOp(
    _ q: UnsafeMutablePointer<sv_qp>, _ op: ibv_wr_opcode, rkey: UInt32 = 0, addr: UInt64 = 0,
    compareAdd: UInt64 = 0, swap: UInt64 = 0, imm: UInt32 = 0
) -> Bool {
    guard let ring = q.pointee.send_ring else { return false }
    sv_ring_wr_op(ring, q.pointee.qpx.wr_id, q.pointee.qpx.wr_flags, op, rkey, addr, compareAdd, swap, imm)
    return svBatchBuffered(q)
}

/// An op the legacy API cannot replay (TSO, atomic write): the ring is marked lost at the commit.
@inline(never)
func svRecordUnrecordable(_ q: UnsafeMutablePointer<sv_qp>) -> Bool {
    guard let ring = q.pointee.send_ring else { return false }
    sv_ring_wr_unrecordable(ring)
    return svBatchBuffered(q)
}

/// The open batch's state, stored with release order (the recovery engine reads it).
@inline(__always)
func svSetBatch(_ q: UnsafeMutablePointer<sv_qp>, _ v: Int) {
    let offset = MemoryLayout<sv_qp>.offset(of: \sv_qp.wr_batch).unsafelyUnwrapped
    (UnsafeMutableRawPointer(q) + offset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee
        .store(UInt32(v), ordering: .releasing)
}

// MARK: - Op builders

@_cdecl("sv_op_wr_atomic_cmp_swp")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrAtomicCmpSwp(
    _ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ remoteAddr: UInt64, _ compare: UInt64, _ swap: UInt64
) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_ATOMIC_CMP_AND_SWP, rkey: rkey, addr: remoteAddr, compareAdd: compare, swap: swap) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrAtomicCmpSwpMoved(r, rkey, remoteAddr, compare, swap, rkeys) }
    r.pointee.wr_atomic_cmp_swp.unsafelyUnwrapped(r, rkey, remoteAddr, compare, swap)
}

@inline(never)
func svOpWrAtomicCmpSwpMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ rkey: UInt32, _ remoteAddr: UInt64, _ compare: UInt64, _ swap: UInt64, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_atomic_cmp_swp.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, rkey), remoteAddr, compare, swap)
}

@_cdecl("sv_op_wr_atomic_fetch_add")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrAtomicFetchAdd(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ remoteAddr: UInt64, _ add: UInt64) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_ATOMIC_FETCH_AND_ADD, rkey: rkey, addr: remoteAddr, compareAdd: add) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrAtomicFetchAddMoved(r, rkey, remoteAddr, add, rkeys) }
    r.pointee.wr_atomic_fetch_add.unsafelyUnwrapped(r, rkey, remoteAddr, add)
}

@inline(never)
func svOpWrAtomicFetchAddMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ rkey: UInt32, _ remoteAddr: UInt64, _ add: UInt64, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_atomic_fetch_add.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, rkey), remoteAddr, add)
}

@_cdecl("sv_op_wr_atomic_write")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrAtomicWrite(
    _ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ remoteAddr: UInt64, _ atomicWR: UnsafeRawPointer?
) {
    let q = svQP(qpx)
    if svRecordUnrecordable(q) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrAtomicWriteMoved(r, rkey, remoteAddr, atomicWR, rkeys) }
    r.pointee.wr_atomic_write.unsafelyUnwrapped(r, rkey, remoteAddr, atomicWR)
}

@inline(never)
func svOpWrAtomicWriteMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ rkey: UInt32, _ remoteAddr: UInt64, _ atomicWR: UnsafeRawPointer?, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_atomic_write.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, rkey), remoteAddr, atomicWR)
}

/// Local invalidation names one of this context's own keys: translated through ctx->ids.rkeys.
@_cdecl("sv_op_wr_local_inv")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrLocalInv(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ invalidateRkey: UInt32) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_LOCAL_INV, imm: invalidateRkey) { return }
    let r = svOpBegin(q)
    let rkeys = svOwnRkeys(q.pointee.ctx.unsafelyUnwrapped)
    if svMoved(rkeys) != 0 { return svOpWrLocalInvMoved(r, invalidateRkey, rkeys) }
    r.pointee.wr_local_inv.unsafelyUnwrapped(r, invalidateRkey)
}

@inline(never)
func svOpWrLocalInvMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ invalidateRkey: UInt32, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_local_inv.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, invalidateRkey))
}

@_cdecl("sv_op_wr_rdma_read")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrRdmaRead(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ remoteAddr: UInt64) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_RDMA_READ, rkey: rkey, addr: remoteAddr) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrRdmaReadMoved(r, rkey, remoteAddr, rkeys) }
    r.pointee.wr_rdma_read.unsafelyUnwrapped(r, rkey, remoteAddr)
}

@inline(never)
func svOpWrRdmaReadMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ rkey: UInt32, _ remoteAddr: UInt64, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_rdma_read.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, rkey), remoteAddr)
}

@_cdecl("sv_op_wr_rdma_write")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrRdmaWrite(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ remoteAddr: UInt64) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_RDMA_WRITE, rkey: rkey, addr: remoteAddr) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrRdmaWriteMoved(r, rkey, remoteAddr, rkeys) }
    r.pointee.wr_rdma_write.unsafelyUnwrapped(r, rkey, remoteAddr)
}

@inline(never)
func svOpWrRdmaWriteMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ rkey: UInt32, _ remoteAddr: UInt64, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_rdma_write.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, rkey), remoteAddr)
}

@_cdecl("sv_op_wr_rdma_write_imm")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrRdmaWriteImm(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ remoteAddr: UInt64, _ imm: UInt32) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_RDMA_WRITE_WITH_IMM, rkey: rkey, addr: remoteAddr, imm: imm) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrRdmaWriteImmMoved(r, rkey, remoteAddr, imm, rkeys) }
    r.pointee.wr_rdma_write_imm.unsafelyUnwrapped(r, rkey, remoteAddr, imm)
}

@inline(never)
func svOpWrRdmaWriteImmMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ rkey: UInt32, _ remoteAddr: UInt64, _ imm: UInt32, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_rdma_write_imm.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, rkey), remoteAddr, imm)
}

@_cdecl("sv_op_wr_send")
public func svOpWrSend(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_SEND) { return }
    let r = svOpBegin(q)
    r.pointee.wr_send.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_wr_send_imm")
public func svOpWrSendImm(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ imm: UInt32) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_SEND_WITH_IMM, imm: imm) { return }
    let r = svOpBegin(q)
    r.pointee.wr_send_imm.unsafelyUnwrapped(r, imm)
}

/// Send with invalidate names a key of the remote end: translated through the peer map.
@_cdecl("sv_op_wr_send_inv")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrSendInv(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ invalidateRkey: UInt32) {
    let q = svQP(qpx)
    if svRecordOp(q, IBV_WR_SEND_WITH_INV, imm: invalidateRkey) { return }
    let r = svOpBegin(q)
    if let rkeys = svMovedPeerRkeys(q) { return svOpWrSendInvMoved(r, invalidateRkey, rkeys) }
    r.pointee.wr_send_inv.unsafelyUnwrapped(r, invalidateRkey)
}

@inline(never)
func svOpWrSendInvMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ invalidateRkey: UInt32, _ rkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_send_inv.unsafelyUnwrapped(r, IdentityMap.translateMoved(rkeys, invalidateRkey))
}

@_cdecl("sv_op_wr_send_tso")
public func svOpWrSendTSO(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ hdr: UnsafeMutableRawPointer?, _ hdrSize: UInt16, _ mss: UInt16) {
    let q = svQP(qpx)
    if svRecordUnrecordable(q) { return }
    let r = svOpBegin(q)
    r.pointee.wr_send_tso.unsafelyUnwrapped(r, hdr, hdrSize, mss)
}

// MARK: - Setters

/// The QP's work ring while a batch records into it, and whether the batch is buffered.
@inline(__always)
func svRecordRing(_ q: UnsafeMutablePointer<sv_qp>) -> UnsafeMutablePointer<sv_wr_ring>? {
    q.pointee.send_ring
}

@_cdecl("sv_op_wr_set_ud_addr")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrSetUDAddr(
    _ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ ah: UnsafeMutablePointer<ibv_ah>?, _ remoteQPN: UInt32, _ remoteQkey: UInt32
) {
    let q = svQP(qpx)
    if let ring = svRecordRing(q) {
        sv_ring_wr_ud(ring, ah, remoteQPN, remoteQkey)
        if svBatchBuffered(q) { return }
    }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    guard let ah else { return r.pointee.wr_set_ud_addr.unsafelyUnwrapped(r, nil, remoteQPN, remoteQkey) }
    let a = svAH(ah)
    if let peer = a.pointee.peer, svMoved(svQpns(peer)) != 0 {
        return svOpWrSetUDAddrMoved(q, r, ah, remoteQPN, remoteQkey, svQpns(peer))
    }
    r.pointee.wr_set_ud_addr.unsafelyUnwrapped(r, a.pointee.real, remoteQPN, remoteQkey)
}

@inline(never)
func svOpWrSetUDAddrMoved(
    _ q: UnsafeMutablePointer<sv_qp>, _ r: UnsafeMutablePointer<ibv_qp_ex>, _ ah: UnsafeMutablePointer<ibv_ah>,
    _ remoteQPN: UInt32, _ remoteQkey: UInt32, _ qpns: UnsafeMutablePointer<sv_idmap>
) {
    let qpn = svUnlessUDHeld(q.pointee.ctx.unsafelyUnwrapped, ah, remoteQPN, IdentityMap.translateMoved(qpns, remoteQPN))
    r.pointee.wr_set_ud_addr.unsafelyUnwrapped(r, svAH(ah).pointee.real, qpn, remoteQkey)
}

/// XRC SRQ numbers are forwarded unchanged (XRC is not virtualised yet, nor recorded).
@_cdecl("sv_op_wr_set_xrc_srqn")
public func svOpWrSetXRCSRQN(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ remoteSRQN: UInt32) {
    let q = svQP(qpx)
    if svRecordUnrecordable(q) { return }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    r.pointee.wr_set_xrc_srqn.unsafelyUnwrapped(r, remoteSRQN)
}

@_cdecl("sv_op_wr_set_inline_data")
public func svOpWrSetInlineData(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ addr: UnsafeMutableRawPointer?, _ length: Int) {
    let q = svQP(qpx)
    if let ring = svRecordRing(q) {
        sv_ring_wr_inline(ring, addr, length)
        if svBatchBuffered(q) { return }
    }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    r.pointee.wr_set_inline_data.unsafelyUnwrapped(r, addr, length)
}

@_cdecl("sv_op_wr_set_inline_data_list")
public func svOpWrSetInlineDataList(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ count: Int, _ list: UnsafePointer<ibv_data_buf>?) {
    let q = svQP(qpx)
    if let ring = svRecordRing(q) {
        sv_ring_wr_inline_list(ring, count, list)
        if svBatchBuffered(q) { return }
    }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    r.pointee.wr_set_inline_data_list.unsafelyUnwrapped(r, count, list)
}

@_cdecl("sv_op_wr_set_sge")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrSetSGE(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ lkey: UInt32, _ addr: UInt64, _ length: UInt32) {
    let q = svQP(qpx)
    if let ring = svRecordRing(q) {
        sv_ring_wr_sge(ring, lkey, addr, length)
        if svBatchBuffered(q) { return }
    }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    let lkeys = svLkeys(q.pointee.ctx.unsafelyUnwrapped)
    if svMoved(lkeys) != 0 { return svOpWrSetSGEMoved(r, lkey, addr, length, lkeys) }
    r.pointee.wr_set_sge.unsafelyUnwrapped(r, lkey, addr, length)
}

@inline(never)
func svOpWrSetSGEMoved(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ lkey: UInt32, _ addr: UInt64, _ length: UInt32, _ lkeys: UnsafeMutablePointer<sv_idmap>
) {
    r.pointee.wr_set_sge.unsafelyUnwrapped(r, IdentityMap.translateMoved(lkeys, lkey), addr, length)
}

@_cdecl("sv_op_wr_set_sge_list")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrSetSGEList(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?, _ count: Int, _ list: UnsafePointer<ibv_sge>?) {
    let q = svQP(qpx)
    if let ring = svRecordRing(q) {
        sv_ring_wr_sge_list(ring, count, list)
        if svBatchBuffered(q) { return }
    }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    let lkeys = svLkeys(q.pointee.ctx.unsafelyUnwrapped)
    if svMoved(lkeys) == 0 {
        r.pointee.wr_set_sge_list.unsafelyUnwrapped(r, count, list)
        return
    }
    svSetSGEListTranslated(r, lkeys, count, list)
}

/// Translates the list into a bounded stack copy (the provider copies the SGEs into the WQE during
/// the call). A list longer than the budget (64, above every rdma-core 44 provider's max_send_sge)
/// is forwarded as is: the provider refuses it by its count and wr_complete reports the error.
@inline(never)
func svSetSGEListTranslated(
    _ r: UnsafeMutablePointer<ibv_qp_ex>, _ lkeys: UnsafeMutablePointer<sv_idmap>, _ count: Int,
    _ list: UnsafePointer<ibv_sge>?
) {
    let setter = r.pointee.wr_set_sge_list.unsafelyUnwrapped
    guard count > 0, count <= svSGEChunk, let list else {
        setter(r, count, list)
        return
    }
    withUnsafeTemporaryAllocation(of: ibv_sge.self, capacity: svSGEChunk) { (buf: UnsafeMutableBufferPointer<ibv_sge>) throws(Never) -> Void in
        let dst = buf.baseAddress.unsafelyUnwrapped
        for k in 0..<count {
            let s = list[k]
            (dst + k).initialize(to: ibv_sge(addr: s.addr, length: s.length, lkey: IdentityMap.translate(lkeys, s.lkey)))
        }
        setter(r, count, UnsafePointer(dst))
    }
}

// MARK: - Batch control

@_cdecl("sv_op_wr_start")
public func svOpWrStart(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?) {
    let q = svQP(qpx)
    if svCtxState(q.pointee.ctx.unsafelyUnwrapped) != SV_CTX_LIVE.rawValue { return svColdWrStart(q) }
    svWrStartDirect(q)
}

/// A batch the real QP builds as it goes (and the work ring records).
@inline(__always)
func svWrStartDirect(_ q: UnsafeMutablePointer<sv_qp>) {
    if let ring = q.pointee.send_ring { sv_ring_wr_start(ring) }
    svSetBatch(q, SV_WR_BATCH_DIRECT)
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    r.pointee.wr_start.unsafelyUnwrapped(r)
}

/// COLD SLOW PATH: a batch starts while the context is not LIVE: recorded only (BUFFERED), or,
/// on an untracked QP, started once the context is LIVE again (Recovery.swift).
@inline(never)
func svColdWrStart(_ q: UnsafeMutablePointer<sv_qp>) {
    Runtime.current.wrStartNotLive(q)
}

@_cdecl("sv_op_wr_complete")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpWrComplete(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?) -> Int32 {
    let q = svQP(qpx)
    if svCtxState(q.pointee.ctx.unsafelyUnwrapped) != SV_CTX_LIVE.rawValue || svBatchBuffered(q) {
        return svColdWrComplete(q)
    }
    let r = q.pointee.real_qpx.unsafelyUnwrapped
    guard let ring = q.pointee.send_ring else {
        let rc = r.pointee.wr_complete.unsafelyUnwrapped(r)
        svSetBatch(q, SV_WR_BATCH_NONE)
        return rc
    }
    let rc = svCommitAndComplete(q.pointee.ctx.unsafelyUnwrapped, ring, r)
    svSetBatch(q, SV_WR_BATCH_NONE)
    return rc
}

/// Commits the batch recorded in `ring`, then has the provider post it (`wr_complete`); a batch
/// the provider refuses is taken back out of the ring — unless it refused because the device is
/// gone (EIO/ENODEV): then it stays for the replay of the recovery this triggers, and the
/// application sees it posted. Committed first: a completion may be polled (another thread) as
/// soon as the provider posted.
@inline(__always)
func svCommitAndComplete(_ ctx: UnsafeMutablePointer<sv_context>, _ ring: UnsafeMutablePointer<sv_wr_ring>,
                         _ r: UnsafeMutablePointer<ibv_qp_ex>) -> Int32 {
    let old = sv_ring_wr_commit(ring)
    let rc = r.pointee.wr_complete.unsafelyUnwrapped(r)
    if rc != 0 { return svWrCompleteRefused(ctx, ring, old, rc) }
    return rc
}

/// COLD: see svCommitAndComplete.
@inline(never)
func svWrCompleteRefused(_ ctx: UnsafeMutablePointer<sv_context>, _ ring: UnsafeMutablePointer<sv_wr_ring>,
                         _ old: UInt64, _ rc: Int32) -> Int32 {
    if svKeptForReplay(ctx, rc) { return 0 }
    sv_ring_wr_uncommit(ring, old)
    return rc
}

/// COLD SLOW PATH: the batch was buffered, or the context left LIVE while it was being built
/// (the recovery engine waits for such a batch before it releases the real QP).
@inline(never)
func svColdWrComplete(_ q: UnsafeMutablePointer<sv_qp>) -> Int32 {
    Runtime.current.wrCompleteNotLive(q)
}

@_cdecl("sv_op_wr_abort")
public func svOpWrAbort(_ qpx: UnsafeMutablePointer<ibv_qp_ex>?) {
    let q = svQP(qpx)
    if !svBatchBuffered(q) {
        let r = q.pointee.real_qpx.unsafelyUnwrapped
        r.pointee.wr_abort.unsafelyUnwrapped(r)
    }
    svSetBatch(q, SV_WR_BATCH_NONE)  // the recorded entries were never committed
}

// MARK: - Installation

func svInstallQPExOps(_ qp: UnsafeMutablePointer<sv_qp>) {
    guard let r = qp.pointee.real_qpx else { return }
    let real = r.pointee
    qp.pointee.qpx.comp_mask = real.comp_mask
    qp.pointee.qpx.wr_atomic_cmp_swp = real.wr_atomic_cmp_swp == nil ? nil : svOpWrAtomicCmpSwp
    qp.pointee.qpx.wr_atomic_fetch_add = real.wr_atomic_fetch_add == nil ? nil : svOpWrAtomicFetchAdd
    qp.pointee.qpx.wr_bind_mw = nil
    qp.pointee.qpx.wr_local_inv = real.wr_local_inv == nil ? nil : svOpWrLocalInv
    qp.pointee.qpx.wr_rdma_read = real.wr_rdma_read == nil ? nil : svOpWrRdmaRead
    qp.pointee.qpx.wr_rdma_write = real.wr_rdma_write == nil ? nil : svOpWrRdmaWrite
    qp.pointee.qpx.wr_rdma_write_imm = real.wr_rdma_write_imm == nil ? nil : svOpWrRdmaWriteImm
    qp.pointee.qpx.wr_send = real.wr_send == nil ? nil : svOpWrSend
    qp.pointee.qpx.wr_send_imm = real.wr_send_imm == nil ? nil : svOpWrSendImm
    qp.pointee.qpx.wr_send_inv = real.wr_send_inv == nil ? nil : svOpWrSendInv
    qp.pointee.qpx.wr_send_tso = real.wr_send_tso == nil ? nil : svOpWrSendTSO
    qp.pointee.qpx.wr_set_ud_addr = real.wr_set_ud_addr == nil ? nil : svOpWrSetUDAddr
    qp.pointee.qpx.wr_set_xrc_srqn = real.wr_set_xrc_srqn == nil ? nil : svOpWrSetXRCSRQN
    qp.pointee.qpx.wr_set_inline_data = real.wr_set_inline_data == nil ? nil : svOpWrSetInlineData
    qp.pointee.qpx.wr_set_inline_data_list =
        real.wr_set_inline_data_list == nil ? nil : svOpWrSetInlineDataList
    qp.pointee.qpx.wr_set_sge = real.wr_set_sge == nil ? nil : svOpWrSetSGE
    qp.pointee.qpx.wr_set_sge_list = real.wr_set_sge_list == nil ? nil : svOpWrSetSGEList
    qp.pointee.qpx.wr_start = real.wr_start == nil ? nil : svOpWrStart
    qp.pointee.qpx.wr_complete = real.wr_complete == nil ? nil : svOpWrComplete
    qp.pointee.qpx.wr_abort = real.wr_abort == nil ? nil : svOpWrAbort
    qp.pointee.qpx.wr_atomic_write = real.wr_atomic_write == nil ? nil : svOpWrAtomicWrite
}
