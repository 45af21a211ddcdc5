// Queue pairs. The virtual QPN is the real one at creation (unless taken); qpn_up (real → virtual)
// and the context's own qpns (virtual → real) are kept current. modify_qp translates the destination
// of RC/UC connections to a local peer (a port of one of this process's contexts): the QP's `peer`
// then points at that context's identities, which the data path uses for remote keys.

import CVerbs
import Glibc
import StableVerbsABI

final class QPRecord {
    let ptr: UnsafeMutablePointer<sv_qp>
    let sequence: UInt64
    unowned let context: ContextRecord
    let pd: PDRecord?
    /// Creation attributes in virtual terms (virtual CQ/SRQ pointers, the application's qp_context).
    let initAttr: ibv_qp_init_attr_ex
    /// Made through vctx->create_qp_ex (else the legacy ibv_create_qp).
    let extended: Bool
    var journal = Journal()
    /// The local context owning the remote end (RC/UC), or nil.
    var peerContext: ContextRecord?
    /// Connected (AV given) to a destination outside this process.
    var external = false
    /// Destination as the application gave it (reported back by query_qp).
    var lastAV: ibv_ah_attr?
    var lastAltAV: ibv_ah_attr?
    var lastDestQPN: UInt32?
    var asyncEvents = EventLedger()
    /// The PSN the real QP expected when a release destroyed it (Peers/ExecutedWork.swift); nil
    /// once the connection is made again, or when the device no longer answered.
    var expectedPSNAtRelease: UInt32?
    /// The real QP was made by a rebuild whose in-process counts are not applied yet: it carried
    /// none of the ring's work, so it is not asked what it executed (Recovery.swift).
    var rebuiltNotCounted = false

    init(ptr: UnsafeMutablePointer<sv_qp>, sequence: UInt64, context: ContextRecord, pd: PDRecord?,
         initAttr: ibv_qp_init_attr_ex, extended: Bool) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
        self.pd = pd
        self.initAttr = initAttr
        self.extended = extended
    }

    var publicQP: UnsafeMutablePointer<ibv_qp> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_qp.self) }
    var real: UnsafeMutablePointer<ibv_qp> { ptr.pointee.real! }
    var virtualQPN: UInt32 { ptr.pointee.qpx.qp_base.qp_num }
    var type: ibv_qp_type { initAttr.qp_type }
    var isConnected: Bool { type == IBV_QPT_RC || type == IBV_QPT_UC }
}

func qpRecord(_ qp: UnsafeMutablePointer<ibv_qp>) -> QPRecord {
    record(UnsafeMutableRawPointer(qp).assumingMemoryBound(to: sv_qp.self).pointee.core, as: QPRecord.self)
}

func lowerQP(_ qp: UnsafeMutablePointer<ibv_qp>?) -> UnsafeMutablePointer<ibv_qp>? {
    guard let qp else { return nil }
    guard isVirtual(qp.pointee.context) else { return qp }
    return UnsafeMutableRawPointer(qp).assumingMemoryBound(to: sv_qp.self).pointee.real
}

private let mask_AV = bits(IBV_QP_AV)
private let mask_ALT = bits(IBV_QP_ALT_PATH)
private let mask_DEST = bits(IBV_QP_DEST_QPN)
private let mask_STATE = bits(IBV_QP_STATE)

extension Runtime {
    /// Makes the real QP of `rec` on the given real objects (application call or rebuild). On
    /// success `cap` holds the actual capabilities.
    func makeRealQP(_ rec: QPRecord, realContext: UnsafeMutablePointer<ibv_context>,
                    realPD: UnsafeMutablePointer<ibv_pd>?, cap: inout ibv_qp_cap,
                    cq: (UnsafeMutablePointer<ibv_cq>?) -> UnsafeMutablePointer<ibv_cq>?,
                    srq: (UnsafeMutablePointer<ibv_srq>?) -> UnsafeMutablePointer<ibv_srq>?) -> UnsafeMutablePointer<ibv_qp>? {
        var a = rec.initAttr
        a.qp_context = UnsafeMutableRawPointer(rec.ptr)
        a.send_cq = cq(a.send_cq)
        a.recv_cq = cq(a.recv_cq)
        a.srq = srq(a.srq)
        a.pd = realPD
        if rec.extended {
            guard let create = verbs_get_ctx(realContext)?.pointee.create_qp_ex else {
                setErrno(EOPNOTSUPP)
                return nil
            }
            let q = create(realContext, &a)
            if q != nil { cap = a.cap }
            return q
        }
        guard let create = ops.create_qp else {
            setErrno(ENOSYS)
            return nil
        }
        var legacy = ibv_qp_init_attr(qp_context: a.qp_context, send_cq: a.send_cq, recv_cq: a.recv_cq, srq: a.srq,
                                      cap: a.cap, qp_type: a.qp_type, sq_sig_all: a.sq_sig_all)
        let q = create(realPD, &legacy)
        if q != nil { cap = legacy.cap }
        return q
    }

    /// Creates a QP. `attr` is in virtual terms; `pd` is its PD record (nil only for QP types
    /// without a PD, which are refused earlier).
    func createQP(_ ctx: ContextRecord, pd: PDRecord?, attr: ibv_qp_init_attr_ex, extended: Bool,
                  capOut: inout ibv_qp_cap) -> UnsafeMutablePointer<ibv_qp>? {
        guard let p = allocateZeroed(sv_qp.self) else {
            setErrno(ENOMEM)
            return nil
        }
        let rec = QPRecord(ptr: p, sequence: sequence(), context: ctx, pd: pd, initAttr: attr, extended: extended)
        var cap = attr.cap
        guard let real = makeRealQP(rec, realContext: ctx.real, realPD: pd?.real, cap: &cap, cq: lowerCQ, srq: lowerSRQ) else {
            free(p)
            return nil
        }
        capOut = cap
        let realQPN = real.pointee.qp_num
        let vqpn = ctx.qpns.claim(preferred: realQPN)
        p.pointee.qpx.qp_base.context = ctx.publicContext
        p.pointee.qpx.qp_base.qp_context = attr.qp_context
        p.pointee.qpx.qp_base.pd = pd?.publicPD
        p.pointee.qpx.qp_base.send_cq = attr.send_cq
        p.pointee.qpx.qp_base.recv_cq = attr.recv_cq
        p.pointee.qpx.qp_base.srq = attr.srq
        p.pointee.qpx.qp_base.handle = real.pointee.handle
        p.pointee.qpx.qp_base.qp_num = vqpn
        p.pointee.qpx.qp_base.state = real.pointee.state
        p.pointee.qpx.qp_base.qp_type = real.pointee.qp_type
        pthread_mutex_init(p.pointer(to: \.qpx.qp_base.mutex)!, nil)
        pthread_cond_init(p.pointer(to: \.qpx.qp_base.cond)!, nil)
        p.pointee.real = real
        p.pointee.real_qpn = realQPN
        p.pointee.ctx = ctx.ptr
        p.pointee.core = opaque(rec)
        IdentityMap.set(ctx.qpnUpMap, key: realQPN, value: vqpn)
        IdentityMap.set(ctx.qpnMap, key: vqpn, value: realQPN)
        if let toEx = ops.qp_to_qp_ex, let realEx = toEx(real) {
            p.pointee.real_qpx = realEx
            DataPath.installExtendedOps(qp: p)
        }
        if !attachRings(rec, cap: cap) {
            _ = ops.destroy_qp?(real)
            IdentityMap.remove(ctx.qpnUpMap, key: realQPN)
            IdentityMap.remove(ctx.qpnMap, key: vqpn)
            ctx.qpns.release(vqpn)
            destroyQPStruct(p)
            setErrno(ENOMEM)
            return nil
        }
        ctx.qps[key(p)] = rec
        noteUDSender(rec)
        Log.debug("create_qp type \(attr.qp_type.rawValue): qpn \(hex(vqpn)) (real \(hex(realQPN)))")
        return rec.publicQP
    }

    /// Sends a modify to a real QP, translating the destination (virtual → real) through the local
    /// peer it names. With `learn`, the QP's peer, destination and journal are updated (the
    /// application's call); replays pass false.
    func applyModify(_ rec: QPRecord, on realQP: UnsafeMutablePointer<ibv_qp>, attr: ibv_qp_attr, mask: Int32,
                     learn: Bool) -> Int32 {
        guard let modify = ops.modify_qp else { return ENOSYS }
        var a = attr
        var peer = rec.peerContext
        var external = rec.external
        if mask & mask_AV != 0 {
            peer = localPeer(for: a.ah_attr, destQPN: mask & mask_DEST != 0 ? a.dest_qp_num : nil)
            external = rec.isConnected && peer == nil
            routeDown(&a.ah_attr, peer: peer)
        }
        if mask & mask_ALT != 0, let altPeer = localPeer(for: a.alt_ah_attr, destQPN: nil) {
            translateDown(&a.alt_ah_attr, peer: altPeer)
        }
        if mask & mask_DEST != 0, let peer {
            a.dest_qp_num = IdentityMap.translate(peer.qpnMap, a.dest_qp_num)
        }
        let rc = modify(realQP, &a, mask)
        if rc == 0 { noteSendPSNs(rec, a, mask) }
        guard rc == 0, learn else { return rc }
        if mask & mask_STATE != 0 {
            rec.ptr.pointee.qpx.qp_base.state = attr.qp_state
            if attr.qp_state == IBV_QPS_RESET {
                peer = nil
                external = false
                rec.lastAV = nil
                rec.lastAltAV = nil
                rec.lastDestQPN = nil
            }
        }
        if mask & mask_AV != 0 { rec.lastAV = attr.ah_attr }
        if mask & mask_ALT != 0 { rec.lastAltAV = attr.alt_ah_attr }
        if mask & mask_DEST != 0 { rec.lastDestQPN = attr.dest_qp_num }
        if rec.isConnected {
            rec.peerContext = peer
            rec.external = external
            if !external { dropLink(rec) }
            if external, mask & mask_STATE != 0, attr.qp_state == IBV_QPS_ERR { applicationEndedConnection(rec) }
            let linkIDs = external ? link(of: rec).flatMap { $0.state == .ready ? $0.ids : nil } : nil
            storePeer(rec.ptr.pointer(to: \.peer)!, peer?.peerIDs ?? linkIDs)
            if external, mask & mask_STATE != 0, attr.qp_state == IBV_QPS_RTR, mask & mask_DEST != 0, mask & mask_AV != 0 {
                noteExternalConnection(rec, av: attr.ah_attr, destQPN: attr.dest_qp_num)
            }
        }
        rec.journal.record(.modifyQP(attr: attr, mask: mask), generation: rec.context.generation)
        if mask & mask_AV != 0 {
            Log.debug("modify_qp \(hex(rec.virtualQPN)): destination \(peer.map { "local peer \($0.device.name)" } ?? "outside the process")")
        }
        return 0
    }

    func queryQP(_ rec: QPRecord, _ attr: UnsafeMutablePointer<ibv_qp_attr>?, _ mask: Int32,
                 _ initAttr: UnsafeMutablePointer<ibv_qp_init_attr>?) -> Int32 {
        guard let query = ops.query_qp else { return ENOSYS }
        let rc = query(rec.real, attr, mask, initAttr)
        guard rc == 0 else { return rc }
        if let attr {
            if mask & mask_STATE != 0 { rec.ptr.pointee.qpx.qp_base.state = attr.pointee.qp_state }
            if let av = rec.lastAV {
                attr.pointee.ah_attr.dlid = av.dlid
                attr.pointee.ah_attr.grh.dgid = av.grh.dgid
            }
            if let av = rec.lastAltAV {
                attr.pointee.alt_ah_attr.dlid = av.dlid
                attr.pointee.alt_ah_attr.grh.dgid = av.grh.dgid
            }
            if let d = rec.lastDestQPN { attr.pointee.dest_qp_num = d }
        }
        if let initAttr {
            initAttr.pointee.qp_context = rec.initAttr.qp_context
            initAttr.pointee.send_cq = rec.initAttr.send_cq
            initAttr.pointee.recv_cq = rec.initAttr.recv_cq
            initAttr.pointee.srq = rec.initAttr.srq
        }
        return 0
    }

    /// Forgets a QP whose real object is gone.
    func forgetQP(_ rec: QPRecord) {
        let ctx = rec.context
        dropLink(rec)
        forgetUDSender(rec)
        IdentityMap.remove(ctx.qpnUpMap, key: rec.ptr.pointee.real_qpn)
        IdentityMap.remove(ctx.qpnMap, key: rec.virtualQPN)
        ctx.qpns.release(rec.virtualQPN)
        ctx.qps[key(rec.ptr)] = nil
        dropQueuedEvents(ctx, object: UnsafeMutableRawPointer(rec.ptr))
        detachRings(rec.ptr)
        destroyQPStruct(rec.ptr)
    }

    func destroyQPStruct(_ p: UnsafeMutablePointer<sv_qp>) {
        pthread_mutex_destroy(p.pointer(to: \.qpx.qp_base.mutex)!)
        pthread_cond_destroy(p.pointer(to: \.qpx.qp_base.cond)!)
        free(p)
    }
}

/// The verbs_context create_qp_ex op (perftest's path: the inline ibv_create_qp_ex).
enum QueuePairOps {
    static func createEx(_ ctx: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_qp_init_attr_ex>?) -> UnsafeMutablePointer<ibv_qp>? {
        guard let ctx, let attr else {
            setErrno(EINVAL)
            return nil
        }
        guard isVirtual(ctx) else {
            guard let op = verbs_get_ctx(ctx)?.pointee.create_qp_ex else {
                setErrno(EOPNOTSUPP)
                return nil
            }
            return op(ctx, attr)
        }
        let mask = attr.pointee.comp_mask
        let unsupported = ubits(IBV_QP_INIT_ATTR_XRCD) | ubits(IBV_QP_INIT_ATTR_IND_TABLE) | ubits(IBV_QP_INIT_ATTR_RX_HASH)
        if mask & unsupported != 0 || attr.pointee.qp_type == IBV_QPT_XRC_SEND
            || attr.pointee.qp_type == IBV_QPT_XRC_RECV || attr.pointee.qp_type == IBV_QPT_DRIVER {
            Log.unsupported("ibv_create_qp_ex (XRC, RSS, or driver QP)")
            setErrno(EOPNOTSUPP)
            return nil
        }
        guard mask & ubits(IBV_QP_INIT_ATTR_PD) != 0, let pd = attr.pointee.pd, isVirtual(pd.pointee.context) else {
            setErrno(EINVAL)
            return nil
        }
        let rt = Runtime.current
        return rt.withHardware(of: { rt.contextRecord(ctx) }, gone: nil) { rec in
            let extended = mask != ubits(IBV_QP_INIT_ATTR_PD)
            var cap = attr.pointee.cap
            let q = rt.createQP(rec, pd: pdRecord(pd), attr: attr.pointee, extended: extended, capOut: &cap)
            if q != nil { attr.pointee.cap = cap }
            return q
        }
    }
}
