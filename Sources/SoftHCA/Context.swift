import CVerbs
import StableVerbsABI
import Glibc

/// An open device context: a complete `struct verbs_context` (ibv_context last, `sz` and
/// `abi_compat` set like a provider's) plus the async event queue behind a real fd.
final class Context {
    let verbs: UnsafeMutablePointer<verbs_context>
    let context: UnsafeMutablePointer<ibv_context>
    let device: Device
    let generation: Int
    let asyncPipe: EventPipe
    /// Set when the device vanished (disassociate): every later command fails with EIO.
    var dead = false
    var pendingEvents: [ibv_async_event] = []

    static let contextOffset = MemoryLayout<verbs_context>.offset(of: \verbs_context.context)!

    init(device: Device, asyncPipe: EventPipe, vectors: Int) {
        self.device = device
        self.generation = device.generation
        self.asyncPipe = asyncPipe
        verbs = allocateZeroed(verbs_context.self)
        context = (UnsafeMutableRawPointer(verbs) + Context.contextOffset).assumingMemoryBound(to: ibv_context.self)
        verbs.pointee.sz = MemoryLayout<verbs_context>.size
        // __VERBS_ABI_IS_EXTENDED: ((void *)UINTPTR_MAX)
        context.pointee.abi_compat = UnsafeMutableRawPointer(bitPattern: UInt.max)
        context.pointee.device = device.cDevice
        context.pointee.cmd_fd = -1
        asyncPipe.bind(UnsafeMutableRawPointer(context).advanced(by: MemoryLayout<ibv_context>.offset(of: \ibv_context.async_fd)!)
            .assumingMemoryBound(to: Int32.self))
        context.pointee.num_comp_vectors = Int32(vectors)
        pthread_mutex_init(&context.pointee.mutex, nil)

        context.pointee.ops.post_send = sh_post_send
        context.pointee.ops.post_recv = sh_post_recv
        context.pointee.ops.post_srq_recv = sh_post_srq_recv
        context.pointee.ops.poll_cq = sh_poll_cq
        context.pointee.ops.req_notify_cq = sh_req_notify_cq

        verbs.pointee.query_port = sh_query_port
        verbs.pointee.query_device_ex = sh_query_device_ex
        verbs.pointee.create_qp_ex = sh_create_qp_ex
        verbs.pointee.create_cq_ex = sh_create_cq_ex
    }

    static func find(_ p: UnsafeMutablePointer<ibv_context>?) -> Context? {
        guard let p else { return nil }
        return fabric.contexts[key(p)]
    }

    /// Queues an async event (the lock is held).
    func post(_ type: ibv_event_type, configure: (inout ibv_async_event) -> Void = { _ in }) {
        var e = ibv_async_event()
        e.event_type = type
        configure(&e)
        pendingEvents.append(e)
        asyncPipe.signal()
    }

    func postPortEvent(_ type: ibv_event_type, port: UInt8) {
        post(type) { $0.element.port_num = Int32(port) }
    }

    /// Drops queued events about an object being destroyed (the kernel does the same).
    func dropEvents(where match: (ibv_async_event) -> Bool) {
        var kept: [ibv_async_event] = []
        for e in pendingEvents {
            if match(e) { asyncPipe.consume() } else { kept.append(e) }
        }
        pendingEvents = kept
    }

    /// Releases everything the context owns (close_device, or a reset of the fabric).
    func close(force: Bool) {
        for (_, qp) in fabric.qps where qp.context === self { qp.destroy() }
        for (_, ah) in fabric.ahs where ah.context === self { ah.destroy() }
        for (_, srq) in fabric.srqs where srq.context === self { srq.destroy() }
        for (_, cq) in fabric.cqs where cq.context === self { cq.destroy() }
        for (_, ch) in fabric.channels where ch.context === self { ch.destroy() }
        for (_, mr) in fabric.mrs where mr.context === self { mr.destroy() }
        for (_, pd) in fabric.pds where pd.context === self { pd.destroy() }
        fabric.contexts[key(context)] = nil
        asyncPipe.close()
        pthread_mutex_destroy(&context.pointee.mutex)
        freeStructure(verbs)
        if device.removalPending, !fabric.contexts.values.contains(where: { $0.device === device }) {
            device.removalPending = false
        }
        fabric.lock.broadcast()
    }

    /// The errno for a command on this context when it cannot run (vanished device).
    var commandError: Int32? { dead ? EIO : nil }

    /// Destroying objects of a vanished device: EIO unless RDMAV_ALLOW_DISASSOC_DESTROY semantics.
    var destroyError: Int32? { (dead && !fabric.configuration.allowDisassociatedDestroy) ? EIO : nil }
}

// MARK: - lower entry points

func sh_open_device(_ device: UnsafeMutablePointer<ibv_device>?) -> UnsafeMutablePointer<ibv_context>? {
    let (ctx, err): (UnsafeMutablePointer<ibv_context>?, Int32) = locked {
        guard let device, let (d, gen) = fabric.incarnations[key(device)] else { return (nil, ENODEV) }
        if let e = fabric.fault("open_device", device: d) { return (nil, e) }
        guard d.present, gen == d.generation else { return (nil, ENODEV) }
        guard let pipe = EventPipe.make() else { return (nil, errno) }
        let c = Context(device: d, asyncPipe: pipe, vectors: fabric.configuration.completionVectors)
        fabric.contexts[key(c.context)] = c
        return (c.context, 0)
    }
    if ctx == nil { errno = err }
    return ctx
}

func sh_close_device(_ context: UnsafeMutablePointer<ibv_context>?) -> Int32 {
    locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("close_device", device: ctx.device) { return e }
        ctx.close(force: true)
        return 0
    }
}

func sh_get_async_event(_ context: UnsafeMutablePointer<ibv_context>?, _ event: UnsafeMutablePointer<ibv_async_event>?) -> Int32 {
    var pipe: EventPipe?
    while true {
        fabric.lock.lock()
        fabric.ensureConfigured()
        guard let ctx = Context.find(context), let event else {
            fabric.lock.unlock()
            errno = EINVAL
            return -1
        }
        if let e = fabric.fault("get_async_event", device: ctx.device) {
            fabric.lock.unlock()
            errno = e
            return -1
        }
        if !ctx.pendingEvents.isEmpty {
            let e = ctx.pendingEvents.removeFirst()
            ctx.asyncPipe.consume()
            event.pointee = e
            noteAsyncEventReported(e)
            fabric.lock.unlock()
            return 0
        }
        pipe = ctx.asyncPipe
        fabric.lock.unlock()
        guard let p = pipe else { return -1 }
        if p.isNonBlocking {
            errno = EAGAIN
            return -1
        }
        p.waitReadable()
    }
}

/// The kind of object an async event is about.
enum EventElement {
    case qp, cq, srq, port, device

    init(_ type: ibv_event_type) {
        switch type {
        case IBV_EVENT_CQ_ERR: self = .cq
        case IBV_EVENT_QP_FATAL, IBV_EVENT_QP_REQ_ERR, IBV_EVENT_QP_ACCESS_ERR, IBV_EVENT_COMM_EST,
             IBV_EVENT_SQ_DRAINED, IBV_EVENT_PATH_MIG, IBV_EVENT_PATH_MIG_ERR, IBV_EVENT_QP_LAST_WQE_REACHED:
            self = .qp
        case IBV_EVENT_SRQ_ERR, IBV_EVENT_SRQ_LIMIT_REACHED: self = .srq
        case IBV_EVENT_DEVICE_FATAL: self = .device
        default: self = .port
        }
    }
}

private func noteAsyncEventReported(_ e: ibv_async_event) {
    switch EventElement(e.event_type) {
    case .qp: if let q = e.element.qp, let qp = fabric.qps[key(q)] { qp.asyncReported += 1 }
    case .cq: if let c = e.element.cq, let cq = fabric.cqs[key(c)] { cq.asyncReported += 1 }
    case .srq: if let s = e.element.srq, let srq = fabric.srqs[key(s)] { srq.asyncReported += 1 }
    default: break
    }
}

func sh_ack_async_event(_ event: UnsafeMutablePointer<ibv_async_event>?) {
    guard let event else { return }
    locked {
        let e = event.pointee
        switch EventElement(e.event_type) {
        case .qp:
            if let q = e.element.qp, let qp = fabric.qps[key(q)] {
                qp.asyncAcked += 1
                q.pointee.events_completed &+= 1
            }
        case .cq:
            if let c = e.element.cq, let cq = fabric.cqs[key(c)] {
                cq.asyncAcked += 1
                c.pointee.async_events_completed &+= 1
            }
        case .srq:
            if let s = e.element.srq, let srq = fabric.srqs[key(s)] {
                srq.asyncAcked += 1
                s.pointee.events_completed &+= 1
            }
        default: break
        }
        fabric.lock.broadcast()
    }
}

func sh_fork_init() -> Int32 {
    locked { fabric.fault("fork_init", device: nil) ?? 0 }
}
