import CVerbs
import StableVerbsABI
import Glibc

/// A shared receive queue; QPs created with it take their receives from it.
final class SharedReceiveQueue {
    let srq: UnsafeMutablePointer<ibv_srq>
    let context: Context
    let pd: ProtectionDomain
    var maxWR: UInt32
    let maxSGE: UInt32
    /// Armed limit (0 = not armed): IBV_EVENT_SRQ_LIMIT_REACHED when fewer WRs remain.
    var limit: UInt32 = 0
    var queue: [RecvWork] = []
    /// Numbers of the QPs attached (destroy → EBUSY).
    var users: [UInt32] = []
    var asyncReported: UInt32 = 0
    var asyncAcked: UInt32 = 0

    init(context: Context, pd: ProtectionDomain, maxWR: UInt32, maxSGE: UInt32, srqContext: UnsafeMutableRawPointer?) {
        self.context = context
        self.pd = pd
        self.maxWR = maxWR
        self.maxSGE = maxSGE
        srq = allocateZeroed(ibv_srq.self)
        srq.pointee.context = context.context
        srq.pointee.srq_context = srqContext
        srq.pointee.pd = pd.pd
        srq.pointee.handle = fabric.allocateHandle()
        pthread_mutex_init(&srq.pointee.mutex, nil)
        pthread_cond_init(&srq.pointee.cond, nil)
    }

    static func find(_ p: UnsafeMutablePointer<ibv_srq>?) -> SharedReceiveQueue? {
        guard let p else { return nil }
        return fabric.srqs[key(p)]
    }

    func checkLimit() {
        if limit > 0 && UInt32(queue.count) < limit {
            limit = 0
            let s = srq
            context.post(IBV_EVENT_SRQ_LIMIT_REACHED) { $0.element.srq = s }
        }
    }

    func destroy() {
        fabric.srqs[key(srq)] = nil
        pd.users -= 1
        let s = srq
        context.dropEvents { EventElement($0.event_type) == .srq && $0.element.srq == s }
        pthread_mutex_destroy(&srq.pointee.mutex)
        pthread_cond_destroy(&srq.pointee.cond)
        freeStructure(srq)
    }
}

// MARK: - lower entry points

func sh_create_srq(_ p: UnsafeMutablePointer<ibv_pd>?, _ attr: UnsafeMutablePointer<ibv_srq_init_attr>?) -> UnsafeMutablePointer<ibv_srq>? {
    let (s, err): (UnsafeMutablePointer<ibv_srq>?, Int32) = locked {
        guard let pd = ProtectionDomain.find(p), let attr else { return (nil, EINVAL) }
        if let e = fabric.fault("create_srq", device: pd.context.device) ?? pd.context.commandError { return (nil, e) }
        let a = attr.pointee.attr
        if a.max_wr == 0 || a.max_wr > UInt32(Limits.maxSRQWR) { return (nil, EINVAL) }
        if a.max_sge > UInt32(Limits.maxSRQSGE) { return (nil, EINVAL) }
        if a.srq_limit > a.max_wr { return (nil, EINVAL) }
        if fabric.srqs.count >= Int(Limits.maxSRQ) { return (nil, ENOMEM) }
        let srq = SharedReceiveQueue(context: pd.context, pd: pd, maxWR: a.max_wr, maxSGE: max(a.max_sge, 1),
                                     srqContext: attr.pointee.srq_context)
        // Like rxe, a limit given at creation is not armed; modify_srq arms it.
        pd.users += 1
        fabric.srqs[key(srq.srq)] = srq
        attr.pointee.attr.max_wr = srq.maxWR
        attr.pointee.attr.max_sge = srq.maxSGE
        return (srq.srq, 0)
    }
    if s == nil { errno = err }
    return s
}

func sh_modify_srq(_ p: UnsafeMutablePointer<ibv_srq>?, _ attr: UnsafeMutablePointer<ibv_srq_attr>?, _ mask: Int32) -> Int32 {
    locked {
        guard let srq = SharedReceiveQueue.find(p), let attr else { return EINVAL }
        if let e = fabric.fault("modify_srq", device: srq.context.device) ?? srq.context.commandError { return e }
        let m = UInt32(bitPattern: mask)
        let known = UInt32(IBV_SRQ_MAX_WR.rawValue | IBV_SRQ_LIMIT.rawValue)
        if m & ~known != 0 { return EINVAL }
        var newMax = srq.maxWR
        if m & UInt32(IBV_SRQ_MAX_WR.rawValue) != 0 {
            let w = attr.pointee.max_wr
            if w == 0 || w > UInt32(Limits.maxSRQWR) || Int(w) < srq.queue.count { return EINVAL }
            newMax = w
        }
        if m & UInt32(IBV_SRQ_LIMIT.rawValue) != 0 {
            if attr.pointee.srq_limit > newMax { return EINVAL }
        }
        srq.maxWR = newMax
        if m & UInt32(IBV_SRQ_LIMIT.rawValue) != 0 {
            srq.limit = attr.pointee.srq_limit
            srq.checkLimit()
        }
        return 0
    }
}

func sh_query_srq(_ p: UnsafeMutablePointer<ibv_srq>?, _ attr: UnsafeMutablePointer<ibv_srq_attr>?) -> Int32 {
    locked {
        guard let srq = SharedReceiveQueue.find(p), let attr else { return EINVAL }
        if let e = fabric.fault("query_srq", device: srq.context.device) ?? srq.context.commandError { return e }
        attr.pointee.max_wr = srq.maxWR
        attr.pointee.max_sge = srq.maxSGE
        attr.pointee.srq_limit = srq.limit
        return 0
    }
}

func sh_destroy_srq(_ p: UnsafeMutablePointer<ibv_srq>?) -> Int32 {
    locked {
        guard let srq = SharedReceiveQueue.find(p) else { return EINVAL }
        if let e = fabric.fault("destroy_srq", device: srq.context.device) ?? srq.context.destroyError { return e }
        if !srq.users.isEmpty { return EBUSY }
        while fabric.srqs[key(srq.srq)] === srq && srq.asyncAcked != srq.asyncReported { fabric.lock.wait() }
        guard fabric.srqs[key(srq.srq)] === srq else { return 0 }
        srq.destroy()
        return 0
    }
}

func sh_post_srq_recv(_ p: UnsafeMutablePointer<ibv_srq>?, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
                      _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?) -> Int32 {
    locked {
        guard let srq = SharedReceiveQueue.find(p) else { bad?.pointee = wr; return EINVAL }
        if let e = fabric.fault("post_srq_recv", device: srq.context.device) ?? srq.context.commandError {
            bad?.pointee = wr
            return e
        }
        var cur = wr
        var result: Int32 = 0
        while let c = cur {
            let n = c.pointee.num_sge
            if n < 0 || n > Int32(srq.maxSGE) { bad?.pointee = c; result = EINVAL; break }
            if srq.queue.count >= Int(srq.maxWR) { bad?.pointee = c; result = ENOMEM; break }
            var sges: [ibv_sge] = []
            if n > 0 {
                guard let list = c.pointee.sg_list else { bad?.pointee = c; result = EINVAL; break }
                sges = Array(UnsafeBufferPointer(start: list, count: Int(n)))
            }
            srq.queue.append(RecvWork(wrID: c.pointee.wr_id, sges: sges))
            cur = c.pointee.next
        }
        // Requesters waiting on RNR at any QP of this SRQ run again.
        for n in srq.users {
            guard !srq.queue.isEmpty else { break }
            fabric.qpByNumber[n]?.wakeRequesters()
        }
        return result
    }
}
