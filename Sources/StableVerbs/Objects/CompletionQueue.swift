// Completion queues. Every real CQ is created with cq_context = its sv_cq, so completion and
// asynchronous events map back without a lookup; the application's cq_context lives in the
// virtual CQ.

import CVerbs
import Glibc
import StableVerbsABI

final class CQRecord {
    let ptr: UnsafeMutablePointer<sv_cq>
    let sequence: UInt64
    unowned let context: ContextRecord
    let channel: ChannelRecord?
    /// Creation: the requested size (updated by resize), the vector, and for create_cq_ex its
    /// attributes (application's channel/cq_context left in the virtual CQ).
    var requestedCQE: Int32
    let compVector: UInt32
    let ex: ibv_cq_init_attr_ex?
    var journal = Journal()
    var completionEvents = EventLedger()
    var asyncEvents = EventLedger()
    /// Completions a recovery took from the real CQ before releasing it (virtual terms), served
    /// to the application first; their count is mirrored in sv_cq.pending for the data path.
    var pending: [ibv_wc] = []
    /// A completion event is owed to a waiter on the channel (pending completions across a recovery).
    var owedEvent = false

    func publishPending() { sv_cq_set_pending(ptr, UInt32(pending.count)) }

    init(ptr: UnsafeMutablePointer<sv_cq>, sequence: UInt64, context: ContextRecord, channel: ChannelRecord?,
         cqe: Int32, compVector: UInt32, ex: ibv_cq_init_attr_ex?) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
        self.channel = channel
        self.requestedCQE = cqe
        self.compVector = compVector
        self.ex = ex
    }

    var publicCQ: UnsafeMutablePointer<ibv_cq> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_cq.self) }
    var publicCQEx: UnsafeMutablePointer<ibv_cq_ex> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_cq_ex.self) }
    var real: UnsafeMutablePointer<ibv_cq> { ptr.pointee.real! }
}

func cqRecord(_ cq: UnsafeMutablePointer<ibv_cq>) -> CQRecord {
    record(UnsafeMutableRawPointer(cq).assumingMemoryBound(to: sv_cq.self).pointee.core, as: CQRecord.self)
}

/// A CQ pointer as the lower interface must see it: the current real CQ of a virtual one, else
/// unchanged (a real object, or garbage the lower interface rejects natively).
func lowerCQ(_ cq: UnsafeMutablePointer<ibv_cq>?) -> UnsafeMutablePointer<ibv_cq>? {
    guard let cq else { return nil }
    guard isVirtual(cq.pointee.context) else { return cq }
    return UnsafeMutableRawPointer(cq).assumingMemoryBound(to: sv_cq.self).pointee.real
}

extension Runtime {
    /// Creates the real CQ for `svcq` on `realContext` (application call or rebuild).
    func makeRealCQ(_ svcq: UnsafeMutablePointer<sv_cq>, on realContext: UnsafeMutablePointer<ibv_context>,
                    cqe: Int32, channel: UnsafeMutablePointer<ibv_comp_channel>?, vector: UInt32,
                    ex: ibv_cq_init_attr_ex?) -> (cq: UnsafeMutablePointer<ibv_cq>?, ex: UnsafeMutablePointer<ibv_cq_ex>?) {
        if var attr = ex {
            guard let create = verbs_get_ctx(realContext)?.pointee.create_cq_ex else {
                setErrno(EOPNOTSUPP)
                return (nil, nil)
            }
            attr.cqe = UInt32(bitPattern: cqe)
            attr.cq_context = UnsafeMutableRawPointer(svcq)
            attr.channel = channel
            attr.comp_vector = vector
            // The poll path finds each completion's work ring by its QP (Recovery/ExtendedCQs.swift).
            attr.wc_flags |= UInt64(IBV_WC_EX_WITH_QP_NUM.rawValue)
            guard let realEx = create(realContext, &attr) else { return (nil, nil) }
            return (UnsafeMutableRawPointer(realEx).assumingMemoryBound(to: ibv_cq.self), realEx)
        }
        guard let create = ops.create_cq else {
            setErrno(ENOSYS)
            return (nil, nil)
        }
        return (create(realContext, cqe, UnsafeMutableRawPointer(svcq), channel, Int32(bitPattern: vector)), nil)
    }

    func createCQ(_ ctx: ContextRecord, cqe: Int32, cqContext: UnsafeMutableRawPointer?,
                  channel: UnsafeMutablePointer<ibv_comp_channel>?, vector: UInt32,
                  ex: ibv_cq_init_attr_ex?) -> UnsafeMutablePointer<ibv_cq>? {
        var channelRec: ChannelRecord? = nil
        var realChannel = channel
        if let channel, isVirtual(channel.pointee.context) {
            channelRec = channelRecord(channel)
            realChannel = channelRec!.real
        }
        guard let p = allocateZeroed(sv_cq.self) else {
            setErrno(ENOMEM)
            return nil
        }
        let made = makeRealCQ(p, on: ctx.real, cqe: cqe, channel: realChannel, vector: vector, ex: ex)
        guard let real = made.cq else {
            free(p)
            return nil
        }
        p.pointee.cq.context = ctx.publicContext
        p.pointee.cq.channel = channel
        p.pointee.cq.cq_context = cqContext
        p.pointee.cq.handle = real.pointee.handle
        p.pointee.cq.cqe = real.pointee.cqe
        pthread_mutex_init(p.pointer(to: \.cq.mutex)!, nil)
        pthread_cond_init(p.pointer(to: \.cq.cond)!, nil)
        p.pointee.real = real
        p.pointee.real_ex = made.ex
        p.pointee.ctx = ctx.ptr
        let rec = CQRecord(ptr: p, sequence: sequence(), context: ctx, channel: channelRec, cqe: cqe,
                           compVector: vector, ex: ex)
        p.pointee.core = opaque(rec)
        if made.ex != nil { DataPath.installExtendedOps(cq: p) }
        ctx.cqs[key(p)] = rec
        return rec.publicCQ
    }

    func resizeCQ(_ rec: CQRecord, _ cqe: Int32) -> Int32 {
        guard let resize = ops.resize_cq else { return ENOSYS }
        let rc = resize(rec.real, cqe)
        if rc == 0 {
            rec.ptr.pointee.cq.cqe = rec.real.pointee.cqe
            rec.requestedCQE = cqe
            rec.journal.record(.resizeCQ(cqe: cqe), generation: rec.context.generation)
        }
        return rc
    }

    /// Forgets a CQ whose real object is gone.
    func forgetCQ(_ rec: CQRecord) {
        rec.context.cqs[key(rec.ptr)] = nil
        dropQueuedEvents(rec.context, object: UnsafeMutableRawPointer(rec.ptr))
        pthread_mutex_destroy(rec.ptr.pointer(to: \.cq.mutex)!)
        pthread_cond_destroy(rec.ptr.pointer(to: \.cq.cond)!)
        free(rec.ptr)
    }
}

/// The verbs_context create_cq_ex op of a virtual context.
enum CompletionQueueOps {
    static func createEx(_ ctx: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_cq_init_attr_ex>?) -> UnsafeMutablePointer<ibv_cq_ex>? {
        guard let ctx, let attr else {
            setErrno(EINVAL)
            return nil
        }
        guard isVirtual(ctx) else {
            guard let op = verbs_get_ctx(ctx)?.pointee.create_cq_ex else {
                setErrno(EOPNOTSUPP)
                return nil
            }
            return op(ctx, attr)
        }
        if attr.pointee.comp_mask & ubits(IBV_CQ_INIT_ATTR_MASK_PD) != 0 {
            Log.unsupported("ibv_create_cq_ex with a parent domain")
            setErrno(EOPNOTSUPP)
            return nil
        }
        let rt = Runtime.current
        return rt.withHardware(of: { rt.contextRecord(ctx) }, gone: nil) { rec in
            var ex = attr.pointee
            ex.channel = nil
            ex.cq_context = nil
            guard let cq = rt.createCQ(rec, cqe: Int32(bitPattern: attr.pointee.cqe), cqContext: attr.pointee.cq_context,
                                       channel: attr.pointee.channel, vector: attr.pointee.comp_vector, ex: ex)
            else { return nil }
            return UnsafeMutableRawPointer(cq).assumingMemoryBound(to: ibv_cq_ex.self)
        }
    }
}
