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

    /// ibv_get_async_event on a virtual context: the events the recovery watcher read from the real
    /// async fd and forwarded (Recovery.swift); the ones caused by the shim's own recovery are not.
    func getAsyncEvent(_ ctx: ContextRecord, _ event: UnsafeMutablePointer<ibv_async_event>) -> Int32 {
        guard ops.get_async_event != nil else {
            setErrno(ENOSYS)
            return -1
        }
        return getQueuedAsyncEvent(ctx, event)
    }

    func ackAsyncEvent(_ event: UnsafeMutablePointer<ibv_async_event>) {
        // Events of virtual contexts come from the shim's queue; the watcher acknowledged the real
        // event when it read it (Recovery.swift), so the application's ack ends here. Only
        // pass-through events (real objects) are forwarded.
        guard let ack = ops.ack_async_event else { return }
        let e = event.pointee
        let owned: Bool
        switch EventKind(e.event_type) {
        case .cq: owned = e.element.cq.map { isVirtual($0.pointee.context) } ?? false
        case .qp: owned = e.element.qp.map { isVirtual($0.pointee.context) } ?? false
        case .srq: owned = e.element.srq.map { isVirtual($0.pointee.context) } ?? false
        case .wq, .port, .device: owned = !passthrough
        }
        if !owned { ack(event) }
    }
}
