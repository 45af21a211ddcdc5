// Exported verbs: completion queues and their events, queue pairs, shared receive queues, address
// handles, multicast.

import CVerbs
import Glibc
import StableVerbsABI

// MARK: - Completion queues

@_cdecl("ibv_create_cq")
public func sv_ibv_create_cq(_ context: UnsafeMutablePointer<ibv_context>?, _ cqe: Int32, _ cqContext: UnsafeMutableRawPointer?,
                             _ channel: UnsafeMutablePointer<ibv_comp_channel>?, _ vector: Int32) -> UnsafeMutablePointer<ibv_cq>? {
    let rt = Runtime.current
    guard let context, isVirtual(context) else {
        guard let f = rt.ops.create_cq else { setErrno(ENOSYS); return nil }
        return f(context, cqe, cqContext, channel, vector)
    }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: nil) {
        rt.createCQ($0, cqe: cqe, cqContext: cqContext, channel: channel,
                    vector: UInt32(bitPattern: vector), ex: nil)
    }
}

@_cdecl("ibv_resize_cq")
public func sv_ibv_resize_cq(_ cq: UnsafeMutablePointer<ibv_cq>?, _ cqe: Int32) -> Int32 {
    let rt = Runtime.current
    guard let cq, ownedByShim(cq) else {
        guard let f = rt.ops.resize_cq else { return ENOSYS }
        return f(cq, cqe)
    }
    return rt.withHardware(of: { cqRecord(cq).context }, gone: EIO) { _ in rt.resizeCQ(cqRecord(cq), cqe) }
}

@_cdecl("ibv_destroy_cq")
public func sv_ibv_destroy_cq(_ cq: UnsafeMutablePointer<ibv_cq>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.destroy_cq else { return ENOSYS }
    guard let cq, ownedByShim(cq) else { return f(cq) }
    return rt.destroyRealObject(context: { $0.context }, record: { cqRecord(cq) }, real: { $0.real }, destroy: f,
                                forget: { rt.forgetCQ($0) })
}

@_cdecl("ibv_get_cq_event")
public func sv_ibv_get_cq_event(_ channel: UnsafeMutablePointer<ibv_comp_channel>?,
                                _ cq: UnsafeMutablePointer<UnsafeMutablePointer<ibv_cq>?>?,
                                _ cqContext: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    let rt = Runtime.current
    guard let channel, ownedByShim(channel) else {
        guard let f = rt.ops.get_cq_event else { setErrno(ENOSYS); return -1 }
        return f(channel, cq, cqContext)
    }
    return rt.getCQEventSafely(UnsafeMutableRawPointer(channel).assumingMemoryBound(to: sv_comp_channel.self), cq, cqContext)
}

@_cdecl("ibv_ack_cq_events")
public func sv_ibv_ack_cq_events(_ cq: UnsafeMutablePointer<ibv_cq>?, _ n: UInt32) {
    let rt = Runtime.current
    guard let cq, ownedByShim(cq) else {
        rt.ops.ack_cq_events?(cq, n)
        return
    }
    rt.ackCQEvents(cq, n)
}

// MARK: - Queue pairs

@_cdecl("ibv_create_qp")
public func sv_ibv_create_qp(_ pd: UnsafeMutablePointer<ibv_pd>?, _ attr: UnsafeMutablePointer<ibv_qp_init_attr>?) -> UnsafeMutablePointer<ibv_qp>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd), let attr else {
        guard let f = rt.ops.create_qp else { setErrno(ENOSYS); return nil }
        return f(lowerPD(pd), attr)
    }
    if attr.pointee.qp_type == IBV_QPT_XRC_SEND || attr.pointee.qp_type == IBV_QPT_XRC_RECV {
        Log.unsupported("ibv_create_qp (XRC)")
        setErrno(EOPNOTSUPP)
        return nil
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
        let rec = pdRecord(pd)
        var ex = ibv_qp_init_attr_ex()
        ex.qp_context = attr.pointee.qp_context
        ex.send_cq = attr.pointee.send_cq
        ex.recv_cq = attr.pointee.recv_cq
        ex.srq = attr.pointee.srq
        ex.cap = attr.pointee.cap
        ex.qp_type = attr.pointee.qp_type
        ex.sq_sig_all = attr.pointee.sq_sig_all
        ex.comp_mask = ubits(IBV_QP_INIT_ATTR_PD)
        ex.pd = pd
        var cap = attr.pointee.cap
        let q = rt.createQP(rec.context, pd: rec, attr: ex, extended: false, capOut: &cap)
        if q != nil { attr.pointee.cap = cap }
        return q
    }
}

@_cdecl("ibv_modify_qp")
public func sv_ibv_modify_qp(_ qp: UnsafeMutablePointer<ibv_qp>?, _ attr: UnsafeMutablePointer<ibv_qp_attr>?, _ mask: Int32) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.modify_qp else { return ENOSYS }
    guard let qp, ownedByShim(qp) else { return f(qp, attr, mask) }
    guard let attr else { return f(lowerQP(qp), attr, mask) }
    return rt.withHardware(of: { qpRecord(qp).context }, gone: EIO) { _ in
        let rec = qpRecord(qp)
        return rt.applyModify(rec, on: rec.real, attr: attr.pointee, mask: mask, learn: true)
    }
}

@_cdecl("ibv_query_qp")
public func sv_ibv_query_qp(_ qp: UnsafeMutablePointer<ibv_qp>?, _ attr: UnsafeMutablePointer<ibv_qp_attr>?, _ mask: Int32,
                            _ initAttr: UnsafeMutablePointer<ibv_qp_init_attr>?) -> Int32 {
    let rt = Runtime.current
    guard let qp, ownedByShim(qp) else {
        guard let f = rt.ops.query_qp else { return ENOSYS }
        return f(qp, attr, mask, initAttr)
    }
    return rt.withHardware(of: { qpRecord(qp).context }, gone: EIO) { _ in rt.queryQP(qpRecord(qp), attr, mask, initAttr) }
}

@_cdecl("ibv_destroy_qp")
public func sv_ibv_destroy_qp(_ qp: UnsafeMutablePointer<ibv_qp>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.destroy_qp else { return ENOSYS }
    guard let qp, ownedByShim(qp) else { return f(qp) }
    return rt.destroyRealObject(context: { $0.context }, record: { qpRecord(qp) }, real: { $0.real }, destroy: f,
                                forget: { rt.forgetQP($0) })
}

@_cdecl("ibv_qp_to_qp_ex")
public func sv_ibv_qp_to_qp_ex(_ qp: UnsafeMutablePointer<ibv_qp>?) -> UnsafeMutablePointer<ibv_qp_ex>? {
    let rt = Runtime.current
    guard let qp, ownedByShim(qp) else {
        guard let f = rt.ops.qp_to_qp_ex else { return nil }
        return f(qp)
    }
    let s = UnsafeMutableRawPointer(qp).assumingMemoryBound(to: sv_qp.self)
    guard s.pointee.real_qpx != nil else { return nil }
    return UnsafeMutableRawPointer(s).assumingMemoryBound(to: ibv_qp_ex.self)
}

@_cdecl("ibv_query_ece")
public func sv_ibv_query_ece(_ qp: UnsafeMutablePointer<ibv_qp>?, _ ece: UnsafeMutablePointer<ibv_ece>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.query_ece else { return EOPNOTSUPP }
    guard let qp, ownedByShim(qp) else { return f(qp, ece) }
    return rt.withHardware(of: { qpRecord(qp).context }, gone: EIO) { _ in f(lowerQP(qp), ece) }
}

@_cdecl("ibv_set_ece")
public func sv_ibv_set_ece(_ qp: UnsafeMutablePointer<ibv_qp>?, _ ece: UnsafeMutablePointer<ibv_ece>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.set_ece else { return EOPNOTSUPP }
    guard let qp, ownedByShim(qp), let ece else { return f(qp, ece) }
    return rt.withHardware(of: { qpRecord(qp).context }, gone: EIO) { _ in
        let rec = qpRecord(qp)
        let rc = f(rec.real, ece)
        if rc == 0 { rec.journal.record(.setECE(ece.pointee), generation: rec.context.generation) }
        return rc
    }
}

@_cdecl("ibv_query_qp_data_in_order")
public func sv_ibv_query_qp_data_in_order(_ qp: UnsafeMutablePointer<ibv_qp>?, _ op: ibv_wr_opcode, _ flags: UInt32) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.extra.query_qp_data_in_order else { return 0 }
    return f(lowerQP(qp), op, flags)
}

@_cdecl("ibv_attach_mcast")
public func sv_ibv_attach_mcast(_ qp: UnsafeMutablePointer<ibv_qp>?, _ gid: UnsafePointer<ibv_gid>?, _ lid: UInt16) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.attach_mcast else { return ENOSYS }
    guard let qp, ownedByShim(qp) else { return f(qp, gid, lid) }
    return rt.withHardware(of: { qpRecord(qp).context }, gone: EIO) { _ in f(lowerQP(qp), gid, lid) }
}

@_cdecl("ibv_detach_mcast")
public func sv_ibv_detach_mcast(_ qp: UnsafeMutablePointer<ibv_qp>?, _ gid: UnsafePointer<ibv_gid>?, _ lid: UInt16) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.detach_mcast else { return ENOSYS }
    guard let qp, ownedByShim(qp) else { return f(qp, gid, lid) }
    return rt.withHardware(of: { qpRecord(qp).context }, gone: EIO) { _ in f(lowerQP(qp), gid, lid) }
}

// MARK: - Shared receive queues

@_cdecl("ibv_create_srq")
public func sv_ibv_create_srq(_ pd: UnsafeMutablePointer<ibv_pd>?, _ attr: UnsafeMutablePointer<ibv_srq_init_attr>?) -> UnsafeMutablePointer<ibv_srq>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd), let attr else {
        guard let f = rt.ops.create_srq else { setErrno(ENOSYS); return nil }
        return f(lowerPD(pd), attr)
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
        var a = attr.pointee.attr
        let s = rt.createSRQ(pdRecord(pd), &a, srqContext: attr.pointee.srq_context, ex: nil)
        if s != nil { attr.pointee.attr = a }
        return s
    }
}

@_cdecl("ibv_modify_srq")
public func sv_ibv_modify_srq(_ srq: UnsafeMutablePointer<ibv_srq>?, _ attr: UnsafeMutablePointer<ibv_srq_attr>?, _ mask: Int32) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.modify_srq else { return ENOSYS }
    guard let srq, ownedByShim(srq), let attr else { return f(lowerSRQ(srq), attr, mask) }
    return rt.withHardware(of: { srqRecord(srq).context }, gone: EIO) { _ in rt.modifySRQ(srqRecord(srq), attr, mask) }
}

@_cdecl("ibv_query_srq")
public func sv_ibv_query_srq(_ srq: UnsafeMutablePointer<ibv_srq>?, _ attr: UnsafeMutablePointer<ibv_srq_attr>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.query_srq else { return ENOSYS }
    guard let srq, ownedByShim(srq) else { return f(srq, attr) }
    return rt.withHardware(of: { srqRecord(srq).context }, gone: EIO) { _ in f(lowerSRQ(srq), attr) }
}

@_cdecl("ibv_destroy_srq")
public func sv_ibv_destroy_srq(_ srq: UnsafeMutablePointer<ibv_srq>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.destroy_srq else { return ENOSYS }
    guard let srq, ownedByShim(srq) else { return f(srq) }
    return rt.destroyRealObject(context: { $0.context }, record: { srqRecord(srq) }, real: { $0.real }, destroy: f,
                                forget: { rt.forgetSRQ($0) })
}

// MARK: - Address handles

@_cdecl("ibv_create_ah")
public func sv_ibv_create_ah(_ pd: UnsafeMutablePointer<ibv_pd>?, _ attr: UnsafeMutablePointer<ibv_ah_attr>?) -> UnsafeMutablePointer<ibv_ah>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd), let attr else {
        guard let f = rt.ops.create_ah else { setErrno(ENOSYS); return nil }
        return f(lowerPD(pd), attr)
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in rt.createAH(pdRecord(pd), attr.pointee) }
}

@_cdecl("ibv_destroy_ah")
public func sv_ibv_destroy_ah(_ ah: UnsafeMutablePointer<ibv_ah>?) -> Int32 {
    let rt = Runtime.current
    guard let ah, ownedByShim(ah) else {
        guard let f = rt.ops.destroy_ah else { return ENOSYS }
        return f(ah)
    }
    return rt.withHardware(of: { ahRecord(ah).context }, gone: EIO, destroying: true) { _ in rt.destroyAH(ahRecord(ah)) }
}

@_cdecl("ibv_init_ah_from_wc")
public func sv_ibv_init_ah_from_wc(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8, _ wc: UnsafeMutablePointer<ibv_wc>?,
                                   _ grh: UnsafeMutablePointer<ibv_grh>?, _ attr: UnsafeMutablePointer<ibv_ah_attr>?) -> Int32 {
    let rt = Runtime.current
    guard let context, isVirtual(context) else {
        guard let f = rt.ops.init_ah_from_wc else { setErrno(ENOSYS); return -1 }
        return f(context, port, wc, grh, attr)
    }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: -1) { rt.initAHFromWC($0, port: port, wc: wc, grh: grh, attr: attr) }
}

/// Implemented in the shim (init_ah_from_wc + create_ah) so both halves translate.
@_cdecl("ibv_create_ah_from_wc")
public func sv_ibv_create_ah_from_wc(_ pd: UnsafeMutablePointer<ibv_pd>?, _ wc: UnsafeMutablePointer<ibv_wc>?,
                                     _ grh: UnsafeMutablePointer<ibv_grh>?, _ port: UInt8) -> UnsafeMutablePointer<ibv_ah>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd) else {
        // A real PD: the same composition on the lower interface.
        guard let initAH = rt.ops.init_ah_from_wc, let create = rt.ops.create_ah else { setErrno(ENOSYS); return nil }
        var attr = ibv_ah_attr()
        if initAH(pd?.pointee.context, port, wc, grh, &attr) != 0 { return nil }
        return create(pd, &attr)
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
        let rec = pdRecord(pd)
        var attr = ibv_ah_attr()
        if rt.initAHFromWC(rec.context, port: port, wc: wc, grh: grh, attr: &attr) != 0 { return nil }
        return rt.createAH(rec, attr)
    }
}

func lowerPD(_ pd: UnsafeMutablePointer<ibv_pd>?) -> UnsafeMutablePointer<ibv_pd>? {
    guard let pd else { return nil }
    guard isVirtual(pd.pointee.context) else { return pd }
    return UnsafeMutableRawPointer(pd).assumingMemoryBound(to: sv_pd.self).pointee.real
}
