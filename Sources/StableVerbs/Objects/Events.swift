// Completion and asynchronous events: real objects carry the virtual object as their *_context
// (the shim creates every real CQ with cq_context = its sv_cq, every real QP/SRQ with its sv_qp /
// sv_srq), so an event maps back in O(1). The blocking waits run outside the control lock.
//
// Acknowledgement accounting: rdma-core's destroy verbs wait until every delivered event was
// acknowledged on *that* real object. A rebuild acknowledges, on the old real object, what the
// application still owes, and remembers it as a debt the application's later acks pay first.

import CVerbs
import Glibc
import StableVerbsABI

/// Delivered/forwarded-ack bookkeeping of one kind of event on one virtual object (control lock).
struct EventLedger {
    var deliveredOnCurrent: UInt64 = 0
    var ackedOnCurrent: UInt64 = 0
    var debt: UInt64 = 0

    mutating func delivered() { deliveredOnCurrent &+= 1 }

    /// How many of `n` application acks go to the current real object.
    mutating func acknowledge(_ n: UInt32) -> UInt32 {
        let paid = min(debt, UInt64(n))
        debt -= paid
        let forward = UInt64(n) - paid
        ackedOnCurrent &+= forward
        return UInt32(forward)
    }

    /// At a rebuild: what is still unacknowledged on the old real object (the rebuild acks it
    /// there), carried as a debt; the new real object starts clean.
    mutating func settleForRebuild() -> UInt32 {
        let outstanding = deliveredOnCurrent > ackedOnCurrent ? deliveredOnCurrent - ackedOnCurrent : 0
        debt &+= outstanding
        deliveredOnCurrent = 0
        ackedOnCurrent = 0
        return UInt32(truncatingIfNeeded: outstanding)
    }
}

enum EventKind {
    case cq, qp, srq, wq, port, device

    init(_ type: ibv_event_type) {
        switch type {
        case IBV_EVENT_CQ_ERR: self = .cq
        case IBV_EVENT_QP_FATAL, IBV_EVENT_QP_REQ_ERR, IBV_EVENT_QP_ACCESS_ERR, IBV_EVENT_COMM_EST,
             IBV_EVENT_SQ_DRAINED, IBV_EVENT_PATH_MIG, IBV_EVENT_PATH_MIG_ERR, IBV_EVENT_QP_LAST_WQE_REACHED:
            self = .qp
        case IBV_EVENT_SRQ_ERR, IBV_EVENT_SRQ_LIMIT_REACHED: self = .srq
        case IBV_EVENT_WQ_FATAL: self = .wq
        case IBV_EVENT_DEVICE_FATAL: self = .device
        default: self = .port
        }
    }
}

extension Runtime {
    func getCQEvent(_ channel: UnsafeMutablePointer<ibv_comp_channel>,
                    _ cqOut: UnsafeMutablePointer<UnsafeMutablePointer<ibv_cq>?>?,
                    _ contextOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
        guard let get = ops.get_cq_event else {
            setErrno(ENOSYS)
            return -1
        }
        let ch = UnsafeMutableRawPointer(channel).assumingMemoryBound(to: sv_comp_channel.self)
        var realCQ: UnsafeMutablePointer<ibv_cq>? = nil
        var realContext: UnsafeMutableRawPointer? = nil
        let rc = get(ch.pointee.real, &realCQ, &realContext)
        if rc != 0 { return rc }
        guard let svcq = realContext?.assumingMemoryBound(to: sv_cq.self) else {
            cqOut?.pointee = realCQ
            contextOut?.pointee = realContext
            return rc
        }
        let vcq = UnsafeMutableRawPointer(svcq).assumingMemoryBound(to: ibv_cq.self)
        cqOut?.pointee = vcq
        contextOut?.pointee = svcq.pointee.cq.cq_context
        withControlLock {
            if let core = svcq.pointee.core { record(core, as: CQRecord.self).completionEvents.delivered() }
        }
        return rc
    }

    func ackCQEvents(_ cq: UnsafeMutablePointer<ibv_cq>, _ n: UInt32) {
        let svcq = UnsafeMutableRawPointer(cq).assumingMemoryBound(to: sv_cq.self)
        let (real, forward): (UnsafeMutablePointer<ibv_cq>?, UInt32) = withControlLock {
            let rec = record(svcq.pointee.core, as: CQRecord.self)
            return (svcq.pointee.real, rec.completionEvents.acknowledge(n))
        }
        if forward > 0, let real { ops.ack_cq_events?(real, forward) }
    }

    func getAsyncEvent(_ ctx: ContextRecord, _ event: UnsafeMutablePointer<ibv_async_event>) -> Int32 {
        guard let get = ops.get_async_event else {
            setErrno(ENOSYS)
            return -1
        }
        let real = withControlLock { ctx.real }
        let rc = get(real, event)
        if rc != 0 { return rc }
        withControlLock {
            switch EventKind(event.pointee.event_type) {
            case .cq:
                if let r = event.pointee.element.cq, let v = r.pointee.cq_context?.assumingMemoryBound(to: sv_cq.self),
                   let core = v.pointee.core {
                    event.pointee.element.cq = UnsafeMutableRawPointer(v).assumingMemoryBound(to: ibv_cq.self)
                    record(core, as: CQRecord.self).asyncEvents.delivered()
                }
            case .qp:
                if let r = event.pointee.element.qp, let v = r.pointee.qp_context?.assumingMemoryBound(to: sv_qp.self),
                   let core = v.pointee.core {
                    event.pointee.element.qp = UnsafeMutableRawPointer(v).assumingMemoryBound(to: ibv_qp.self)
                    record(core, as: QPRecord.self).asyncEvents.delivered()
                }
            case .srq:
                if let r = event.pointee.element.srq, let v = r.pointee.srq_context?.assumingMemoryBound(to: sv_srq.self),
                   let core = v.pointee.core {
                    event.pointee.element.srq = UnsafeMutableRawPointer(v).assumingMemoryBound(to: ibv_srq.self)
                    record(core, as: SRQRecord.self).asyncEvents.delivered()
                }
            case .wq, .port, .device:
                break
            }
        }
        Log.info("async event \(event.pointee.event_type.rawValue) on \(ctx.device.name)")
        return rc
    }

    func ackAsyncEvent(_ event: UnsafeMutablePointer<ibv_async_event>) {
        guard let ack = ops.ack_async_event else { return }
        var copy = event.pointee
        var forward = true
        withControlLock {
            switch EventKind(copy.event_type) {
            case .cq:
                if let v = copy.element.cq, isVirtual(v.pointee.context) {
                    let s = UnsafeMutableRawPointer(v).assumingMemoryBound(to: sv_cq.self)
                    forward = record(s.pointee.core, as: CQRecord.self).asyncEvents.acknowledge(1) > 0
                    copy.element.cq = s.pointee.real
                }
            case .qp:
                if let v = copy.element.qp, isVirtual(v.pointee.context) {
                    let s = UnsafeMutableRawPointer(v).assumingMemoryBound(to: sv_qp.self)
                    forward = record(s.pointee.core, as: QPRecord.self).asyncEvents.acknowledge(1) > 0
                    copy.element.qp = s.pointee.real
                }
            case .srq:
                if let v = copy.element.srq, isVirtual(v.pointee.context) {
                    let s = UnsafeMutableRawPointer(v).assumingMemoryBound(to: sv_srq.self)
                    forward = record(s.pointee.core, as: SRQRecord.self).asyncEvents.acknowledge(1) > 0
                    copy.element.srq = s.pointee.real
                }
            case .wq, .port, .device:
                break
            }
        }
        if forward { ack(&copy) }
    }
}
