// Shared receive queues. Real SRQs carry their sv_srq as srq_context (async events map back).

import CVerbs
import Glibc
import StableVerbsABI

final class SRQRecord {
    let ptr: UnsafeMutablePointer<sv_srq>
    let sequence: UInt64
    unowned let context: ContextRecord
    let pd: PDRecord
    /// Creation attributes (max_wr, max_sge, srq_limit) as requested.
    let attr: ibv_srq_attr
    /// create_srq_ex attributes (virtual pointers), when made through the extended verb.
    let ex: ibv_srq_init_attr_ex?
    var journal = Journal()
    var asyncEvents = EventLedger()
    /// A recovery's counts of the QPs on this SRQ, by QP (key), until its receives are remade
    /// (Peers/SRQReceives.swift).
    var counted: [UInt: SRQCount] = [:]

    init(ptr: UnsafeMutablePointer<sv_srq>, sequence: UInt64, context: ContextRecord, pd: PDRecord,
         attr: ibv_srq_attr, ex: ibv_srq_init_attr_ex?) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
        self.pd = pd
        self.attr = attr
        self.ex = ex
    }

    var publicSRQ: UnsafeMutablePointer<ibv_srq> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_srq.self) }
    var real: UnsafeMutablePointer<ibv_srq> { ptr.pointee.real! }
}

func srqRecord(_ srq: UnsafeMutablePointer<ibv_srq>) -> SRQRecord {
    record(UnsafeMutableRawPointer(srq).assumingMemoryBound(to: sv_srq.self).pointee.core, as: SRQRecord.self)
}

func lowerSRQ(_ srq: UnsafeMutablePointer<ibv_srq>?) -> UnsafeMutablePointer<ibv_srq>? {
    guard let srq else { return nil }
    guard isVirtual(srq.pointee.context) else { return srq }
    return UnsafeMutableRawPointer(srq).assumingMemoryBound(to: sv_srq.self).pointee.real
}

extension Runtime {
    /// Creates the real SRQ for `svsrq` (application call or rebuild). `attr` is updated with the
    /// actual values, as the verb does.
    func makeRealSRQ(_ svsrq: UnsafeMutablePointer<sv_srq>, realContext: UnsafeMutablePointer<ibv_context>,
                     realPD: UnsafeMutablePointer<ibv_pd>, attr: inout ibv_srq_attr, ex: ibv_srq_init_attr_ex?,
                     cq: (UnsafeMutablePointer<ibv_cq>?) -> UnsafeMutablePointer<ibv_cq>?) -> UnsafeMutablePointer<ibv_srq>? {
        if var e = ex {
            guard let create = verbs_get_ctx(realContext)?.pointee.create_srq_ex else {
                setErrno(EOPNOTSUPP)
                return nil
            }
            e.srq_context = UnsafeMutableRawPointer(svsrq)
            e.attr = attr
            e.pd = realPD
            e.cq = cq(e.cq)
            let s = create(realContext, &e)
            attr = e.attr
            return s
        }
        guard let create = ops.create_srq else {
            setErrno(ENOSYS)
            return nil
        }
        var init_ = ibv_srq_init_attr(srq_context: UnsafeMutableRawPointer(svsrq), attr: attr)
        let s = create(realPD, &init_)
        attr = init_.attr
        return s
    }

    func createSRQ(_ pd: PDRecord, _ attr: UnsafeMutablePointer<ibv_srq_attr>, srqContext: UnsafeMutableRawPointer?,
                   ex: ibv_srq_init_attr_ex?) -> UnsafeMutablePointer<ibv_srq>? {
        let ctx = pd.context
        guard let p = allocateZeroed(sv_srq.self) else {
            setErrno(ENOMEM)
            return nil
        }
        let requested = attr.pointee
        var actual = requested
        guard let real = makeRealSRQ(p, realContext: ctx.real, realPD: pd.real, attr: &actual, ex: ex, cq: lowerCQ) else {
            free(p)
            return nil
        }
        attr.pointee = actual
        p.pointee.srq.context = ctx.publicContext
        p.pointee.srq.srq_context = srqContext
        p.pointee.srq.pd = pd.publicPD
        p.pointee.srq.handle = real.pointee.handle
        pthread_mutex_init(p.pointer(to: \.srq.mutex)!, nil)
        pthread_cond_init(p.pointer(to: \.srq.cond)!, nil)
        p.pointee.real = real
        p.pointee.ctx = ctx.ptr
        let rec = SRQRecord(ptr: p, sequence: sequence(), context: ctx, pd: pd, attr: requested, ex: ex)
        p.pointee.core = opaque(rec)
        // The SRQ's work ring (recovery): receives posted and not yet completed.
        p.pointee.recv_ring = sv_ring_create(actual.max_wr, max(actual.max_sge, 1), 0, 0, 0)
        ctx.srqs[key(p)] = rec
        return rec.publicSRQ
    }

    func modifySRQ(_ rec: SRQRecord, _ attr: UnsafeMutablePointer<ibv_srq_attr>, _ mask: Int32) -> Int32 {
        guard let modify = ops.modify_srq else { return ENOSYS }
        let requested = attr.pointee
        let rc = modify(rec.real, attr, mask)
        if rc == 0 { rec.journal.record(.modifySRQ(attr: requested, mask: mask), generation: rec.context.generation) }
        return rc
    }

    func forgetSRQ(_ rec: SRQRecord) {
        rec.context.srqs[key(rec.ptr)] = nil
        dropQueuedEvents(rec.context, object: UnsafeMutableRawPointer(rec.ptr))
        sv_ring_destroy(rec.ptr.pointee.recv_ring)
        pthread_mutex_destroy(rec.ptr.pointer(to: \.srq.mutex)!)
        pthread_cond_destroy(rec.ptr.pointer(to: \.srq.cond)!)
        free(rec.ptr)
    }
}

/// The verbs_context create_srq_ex op (reached by the inline ibv_create_srq_ex for anything but a
/// basic SRQ with only a PD; basic ones arrive through ibv_create_srq).
enum SharedReceiveQueueOps {
    static func createEx(_ ctx: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_srq_init_attr_ex>?) -> UnsafeMutablePointer<ibv_srq>? {
        guard let ctx, let attr else {
            setErrno(EINVAL)
            return nil
        }
        guard isVirtual(ctx) else {
            guard let op = verbs_get_ctx(ctx)?.pointee.create_srq_ex else {
                setErrno(EOPNOTSUPP)
                return nil
            }
            return op(ctx, attr)
        }
        let mask = attr.pointee.comp_mask
        let type = mask & ubits(IBV_SRQ_INIT_ATTR_TYPE) != 0 ? attr.pointee.srq_type : IBV_SRQT_BASIC
        if type == IBV_SRQT_XRC || mask & ubits(IBV_SRQ_INIT_ATTR_XRCD) != 0 {
            Log.unsupported("ibv_create_srq_ex (XRC)")
            setErrno(EOPNOTSUPP)
            return nil
        }
        guard mask & ubits(IBV_SRQ_INIT_ATTR_PD) != 0, let pd = attr.pointee.pd, isVirtual(pd.pointee.context) else {
            setErrno(EINVAL)
            return nil
        }
        let rt = Runtime.current
        return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
            var ex = attr.pointee
            ex.srq_context = nil
            var a = attr.pointee.attr
            let s = rt.createSRQ(pdRecord(pd), &a, srqContext: attr.pointee.srq_context, ex: ex)
            attr.pointee.attr = a
            return s
        }
    }
}
