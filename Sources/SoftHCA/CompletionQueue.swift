import CVerbs
import StableVerbsABI
import Glibc

/// A completion channel: a real, pollable fd (stable number) with one byte per pending CQ event.
final class CompletionChannel {
    let channel: UnsafeMutablePointer<ibv_comp_channel>
    let context: Context
    let pipe: EventPipe
    var pending: [CompletionQueue] = []

    init(context: Context, pipe: EventPipe) {
        self.context = context
        self.pipe = pipe
        channel = allocateZeroed(ibv_comp_channel.self)
        channel.pointee.context = context.context
        pipe.bind(UnsafeMutableRawPointer(channel).advanced(by: MemoryLayout<ibv_comp_channel>.offset(of: \ibv_comp_channel.fd)!)
            .assumingMemoryBound(to: Int32.self))
        channel.pointee.refcnt = 0
    }

    static func find(_ p: UnsafeMutablePointer<ibv_comp_channel>?) -> CompletionChannel? {
        guard let p else { return nil }
        return fabric.channels[key(p)]
    }

    func notify(_ cq: CompletionQueue) {
        pending.append(cq)
        pipe.signal()
    }

    func drop(_ cq: CompletionQueue) {
        var kept: [CompletionQueue] = []
        for c in pending {
            if c === cq { pipe.consume() } else { kept.append(c) }
        }
        pending = kept
    }

    func destroy() {
        fabric.channels[key(channel)] = nil
        pipe.close()
        freeStructure(channel)
    }
}

/// One completion as the CQ holds it.
struct Completion {
    var wc: ibv_wc
    var solicited: Bool
}

/// A completion queue. The C object is always a full `struct ibv_cq_ex` (an `ibv_cq` is its
/// prefix); the extended poll pointers are set only for CQs made by create_cq_ex.
final class CompletionQueue {
    let cqx: UnsafeMutablePointer<ibv_cq_ex>
    var cq: UnsafeMutablePointer<ibv_cq> { UnsafeMutableRawPointer(cqx).assumingMemoryBound(to: ibv_cq.self) }
    let context: Context
    let channel: CompletionChannel?
    let extended: Bool
    let wcFlags: UInt64
    var capacity: Int
    var entries: [Completion] = []
    var head = 0
    enum Arm { case none, any, solicited }
    var armed = Arm.none
    /// QPs using this CQ (destroy → EBUSY).
    var users = 0
    var compReported: UInt32 = 0
    var compAcked: UInt32 = 0
    var asyncReported: UInt32 = 0
    var asyncAcked: UInt32 = 0
    var overrun = false
    /// The completion being read between start_poll and end_poll.
    var current: ibv_wc?

    /// Drops the unpolled completions of sends (`sends`) or of receives: the device died before
    /// writing them (Removal.fatalLosingCompletions).
    func lose(sends: Bool) {
        let recv = IBV_WC_RECV.rawValue
        entries = entries[head...].filter { ($0.wc.opcode.rawValue & recv != 0) == sends }
        head = 0
    }

    init(context: Context, capacity: Int, cqContext: UnsafeMutableRawPointer?, channel: CompletionChannel?,
         extended: Bool, wcFlags: UInt64) {
        self.context = context
        self.capacity = capacity
        self.channel = channel
        self.extended = extended
        self.wcFlags = wcFlags
        cqx = allocateZeroed(ibv_cq_ex.self)
        cqx.pointee.context = context.context
        cqx.pointee.channel = channel?.channel
        cqx.pointee.cq_context = cqContext
        cqx.pointee.handle = fabric.allocateHandle()
        cqx.pointee.cqe = Int32(capacity)
        pthread_mutex_init(&cqx.pointee.mutex, nil)
        pthread_cond_init(&cqx.pointee.cond, nil)
        if extended {
            cqx.pointee.start_poll = sh_cq_start_poll
            cqx.pointee.next_poll = sh_cq_next_poll
            cqx.pointee.end_poll = sh_cq_end_poll
            cqx.pointee.read_opcode = sh_cq_read_opcode
            cqx.pointee.read_vendor_err = sh_cq_read_vendor_err
            cqx.pointee.read_byte_len = sh_cq_read_byte_len
            cqx.pointee.read_imm_data = sh_cq_read_imm_data
            cqx.pointee.read_qp_num = sh_cq_read_qp_num
            cqx.pointee.read_src_qp = sh_cq_read_src_qp
            cqx.pointee.read_wc_flags = sh_cq_read_wc_flags
            cqx.pointee.read_slid = sh_cq_read_slid
            cqx.pointee.read_sl = sh_cq_read_sl
            cqx.pointee.read_dlid_path_bits = sh_cq_read_dlid_path_bits
        }
    }

    static func find(_ p: UnsafeMutablePointer<ibv_cq>?) -> CompletionQueue? {
        guard let p else { return nil }
        return fabric.cqs[key(p)]
    }

    static func find(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> CompletionQueue? {
        guard let p else { return nil }
        return fabric.cqs[key(p)]
    }

    var count: Int { entries.count - head }

    /// Adds a completion, raising a CQ event if the CQ is armed for it. On overrun the completion
    /// is lost and IBV_EVENT_CQ_ERR is queued, like hardware.
    func push(_ wc: ibv_wc, solicited: Bool = false) {
        if count >= capacity {
            if !overrun {
                overrun = true
                let c = cq
                context.post(IBV_EVENT_CQ_ERR) { $0.element.cq = c }
            }
            return
        }
        entries.append(Completion(wc: wc, solicited: solicited))
        let fire: Bool
        switch armed {
        case .none: fire = false
        case .any: fire = true
        case .solicited: fire = solicited || wc.status != IBV_WC_SUCCESS
        }
        if fire, let channel {
            armed = .none
            channel.notify(self)
        }
    }

    func pop() -> ibv_wc? {
        guard head < entries.count else { return nil }
        let wc = entries[head].wc
        head += 1
        if head >= 64 && head * 2 >= entries.count {
            entries.removeFirst(head)
            head = 0
        }
        return wc
    }

    func destroy() {
        fabric.cqs[key(cqx)] = nil
        channel?.drop(self)
        if let channel { channel.channel.pointee.refcnt -= 1 }
        let c = cq
        context.dropEvents { EventElement($0.event_type) == .cq && $0.element.cq == c }
        pthread_mutex_destroy(&cqx.pointee.mutex)
        pthread_cond_destroy(&cqx.pointee.cond)
        freeStructure(cqx)
    }
}

// MARK: - lower entry points: channels

func sh_create_comp_channel(_ context: UnsafeMutablePointer<ibv_context>?) -> UnsafeMutablePointer<ibv_comp_channel>? {
    let (p, err): (UnsafeMutablePointer<ibv_comp_channel>?, Int32) = locked {
        guard let ctx = Context.find(context) else { return (nil, EINVAL) }
        if let e = fabric.fault("create_comp_channel", device: ctx.device) ?? ctx.commandError { return (nil, e) }
        guard let pipe = EventPipe.make() else { return (nil, errno) }
        let ch = CompletionChannel(context: ctx, pipe: pipe)
        fabric.channels[key(ch.channel)] = ch
        return (ch.channel, 0)
    }
    if p == nil { errno = err }
    return p
}

func sh_destroy_comp_channel(_ p: UnsafeMutablePointer<ibv_comp_channel>?) -> Int32 {
    locked {
        guard let ch = CompletionChannel.find(p) else { return EINVAL }
        if let e = fabric.fault("destroy_comp_channel", device: ch.context.device) { return e }
        if ch.channel.pointee.refcnt > 0 { return EBUSY }
        ch.destroy()
        return 0
    }
}

func sh_get_cq_event(_ p: UnsafeMutablePointer<ibv_comp_channel>?, _ cqOut: UnsafeMutablePointer<UnsafeMutablePointer<ibv_cq>?>?,
                     _ contextOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    while true {
        fabric.lock.lock()
        fabric.ensureConfigured()
        guard let ch = CompletionChannel.find(p) else {
            fabric.lock.unlock()
            errno = EINVAL
            return -1
        }
        if let e = fabric.fault("get_cq_event", device: ch.context.device) {
            fabric.lock.unlock()
            errno = e
            return -1
        }
        if !ch.pending.isEmpty {
            let cq = ch.pending.removeFirst()
            ch.pipe.consume()
            cq.compReported += 1
            cqOut?.pointee = cq.cq
            contextOut?.pointee = cq.cq.pointee.cq_context
            fabric.lock.unlock()
            return 0
        }
        let pipe = ch.pipe
        fabric.lock.unlock()
        if pipe.isNonBlocking {
            errno = EAGAIN
            return -1
        }
        pipe.waitReadable()
    }
}

func sh_ack_cq_events(_ p: UnsafeMutablePointer<ibv_cq>?, _ n: UInt32) {
    locked {
        guard let cq = CompletionQueue.find(p) else { return }
        cq.compAcked &+= n
        cq.cq.pointee.comp_events_completed &+= n
        fabric.lock.broadcast()
    }
}

// MARK: - lower entry points: CQs

private func createCQ(_ entry: String, _ context: UnsafeMutablePointer<ibv_context>?, cqe: Int, cqContext: UnsafeMutableRawPointer?,
                      channel: UnsafeMutablePointer<ibv_comp_channel>?, vector: Int, extended: Bool, wcFlags: UInt64) -> (CompletionQueue?, Int32) {
    guard let ctx = Context.find(context) else { return (nil, EINVAL) }
    if let e = fabric.fault(entry, device: ctx.device) ?? ctx.commandError { return (nil, e) }
    if cqe <= 0 || cqe > Int(Limits.maxCQE) { return (nil, EINVAL) }
    if vector < 0 || vector >= Int(ctx.context.pointee.num_comp_vectors) { return (nil, EINVAL) }
    var ch: CompletionChannel?
    if channel != nil {
        guard let c = CompletionChannel.find(channel), c.context === ctx else { return (nil, EINVAL) }
        ch = c
    }
    if fabric.cqs.count >= Int(Limits.maxCQ) { return (nil, ENOMEM) }
    let cq = CompletionQueue(context: ctx, capacity: cqe, cqContext: cqContext, channel: ch, extended: extended, wcFlags: wcFlags)
    ch?.channel.pointee.refcnt += 1
    fabric.cqs[key(cq.cqx)] = cq
    return (cq, 0)
}

func sh_create_cq(_ context: UnsafeMutablePointer<ibv_context>?, _ cqe: Int32, _ cqContext: UnsafeMutableRawPointer?,
                  _ channel: UnsafeMutablePointer<ibv_comp_channel>?, _ vector: Int32) -> UnsafeMutablePointer<ibv_cq>? {
    let (cq, err) = locked {
        createCQ("create_cq", context, cqe: Int(cqe), cqContext: cqContext, channel: channel, vector: Int(vector), extended: false, wcFlags: 0)
    }
    guard let cq else { return failNull(err) }
    return cq.cq
}

/// The wc_flags an extended CQ can report.
private let supportedWCFlags = UInt64(IBV_WC_EX_WITH_BYTE_LEN.rawValue | IBV_WC_EX_WITH_IMM.rawValue |
    IBV_WC_EX_WITH_QP_NUM.rawValue | IBV_WC_EX_WITH_SRC_QP.rawValue | IBV_WC_EX_WITH_SLID.rawValue |
    IBV_WC_EX_WITH_SL.rawValue | IBV_WC_EX_WITH_DLID_PATH_BITS.rawValue)

func sh_create_cq_ex(_ context: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_cq_init_attr_ex>?) -> UnsafeMutablePointer<ibv_cq_ex>? {
    let (cq, err): (CompletionQueue?, Int32) = locked {
        guard let attr else { return (nil, EINVAL) }
        let a = attr.pointee
        let knownMask = UInt32(IBV_CQ_INIT_ATTR_MASK_FLAGS.rawValue | IBV_CQ_INIT_ATTR_MASK_PD.rawValue)
        if a.comp_mask & ~knownMask != 0 { return (nil, EINVAL) }
        if a.comp_mask & UInt32(IBV_CQ_INIT_ATTR_MASK_PD.rawValue) != 0 { return (nil, EOPNOTSUPP) }
        if a.comp_mask & UInt32(IBV_CQ_INIT_ATTR_MASK_FLAGS.rawValue) != 0,
           a.flags & ~UInt32(IBV_CREATE_CQ_ATTR_SINGLE_THREADED.rawValue) != 0 { return (nil, EOPNOTSUPP) }
        if a.wc_flags & ~supportedWCFlags != 0 { return (nil, EOPNOTSUPP) }
        return createCQ("create_cq_ex", context, cqe: Int(a.cqe), cqContext: a.cq_context, channel: a.channel,
                        vector: Int(a.comp_vector), extended: true, wcFlags: a.wc_flags)
    }
    guard let cq else { return failNull(err) }
    return cq.cqx
}

func sh_resize_cq(_ p: UnsafeMutablePointer<ibv_cq>?, _ cqe: Int32) -> Int32 {
    locked {
        guard let cq = CompletionQueue.find(p) else { return EINVAL }
        if let e = fabric.fault("resize_cq", device: cq.context.device) ?? cq.context.commandError { return e }
        if cqe <= 0 || cqe > Limits.maxCQE || Int(cqe) < cq.count { return EINVAL }
        cq.capacity = Int(cqe)
        cq.cq.pointee.cqe = cqe
        return 0
    }
}

func sh_destroy_cq(_ p: UnsafeMutablePointer<ibv_cq>?) -> Int32 {
    locked {
        guard let cq = CompletionQueue.find(p) else { return EINVAL }
        if let e = fabric.fault("destroy_cq", device: cq.context.device) ?? cq.context.destroyError { return e }
        if cq.users > 0 { return EBUSY }
        // libibverbs waits until every reported event has been acknowledged.
        while fabric.cqs[key(cq.cqx)] === cq && (cq.compAcked != cq.compReported || cq.asyncAcked != cq.asyncReported) {
            fabric.lock.wait()
        }
        guard fabric.cqs[key(cq.cqx)] === cq else { return 0 }
        cq.destroy()
        return 0
    }
}

// MARK: - ops: poll and notify

func sh_poll_cq(_ p: UnsafeMutablePointer<ibv_cq>?, _ n: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
    locked {
        guard let cq = CompletionQueue.find(p) else { errno = EINVAL; return -1 }
        if let e = fabric.fault("poll_cq", device: cq.context.device) { errno = e; return -1 }
        guard n > 0, let wc else { return n < 0 ? -1 : 0 }
        var got: Int32 = 0
        while got < n, let c = cq.pop() {
            wc[Int(got)] = c
            got += 1
        }
        return got
    }
}

func sh_req_notify_cq(_ p: UnsafeMutablePointer<ibv_cq>?, _ solicitedOnly: Int32) -> Int32 {
    locked {
        guard let cq = CompletionQueue.find(p) else { return EINVAL }
        if let e = fabric.fault("req_notify_cq", device: cq.context.device) ?? cq.context.commandError { return e }
        if solicitedOnly != 0 {
            if cq.armed == .none { cq.armed = .solicited }
        } else {
            cq.armed = .any
        }
        return 0
    }
}

// MARK: - extended CQ poll

func sh_cq_start_poll(_ p: UnsafeMutablePointer<ibv_cq_ex>?, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
    locked {
        guard let cq = CompletionQueue.find(p) else { return EINVAL }
        if let attr, attr.pointee.comp_mask != 0 { return EINVAL }
        if let e = fabric.fault("start_poll", device: cq.context.device) { return e }
        return advance(cq)
    }
}

private func advance(_ cq: CompletionQueue) -> Int32 {
    guard let wc = cq.pop() else {
        cq.current = nil
        return ENOENT
    }
    cq.current = wc
    cq.cqx.pointee.wr_id = wc.wr_id
    cq.cqx.pointee.status = wc.status
    return 0
}

func sh_cq_next_poll(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> Int32 {
    locked {
        guard let cq = CompletionQueue.find(p) else { return EINVAL }
        return advance(cq)
    }
}

func sh_cq_end_poll(_ p: UnsafeMutablePointer<ibv_cq_ex>?) {
    locked { CompletionQueue.find(p)?.current = nil }
}

private func readCurrent<T>(_ p: UnsafeMutablePointer<ibv_cq_ex>?, _ get: (ibv_wc) -> T, _ zero: T) -> T {
    locked {
        guard let cq = CompletionQueue.find(p), let wc = cq.current else { return zero }
        return get(wc)
    }
}

func sh_cq_read_opcode(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> ibv_wc_opcode { readCurrent(p, { $0.opcode }, IBV_WC_SEND) }
func sh_cq_read_vendor_err(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { $0.vendor_err }, 0) }
func sh_cq_read_byte_len(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { $0.byte_len }, 0) }
func sh_cq_read_imm_data(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { $0.imm_data }, 0) }
func sh_cq_read_qp_num(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { $0.qp_num }, 0) }
func sh_cq_read_src_qp(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { $0.src_qp }, 0) }
func sh_cq_read_wc_flags(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { $0.wc_flags }, 0) }
func sh_cq_read_slid(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 { readCurrent(p, { UInt32($0.slid) }, 0) }
func sh_cq_read_sl(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt8 { readCurrent(p, { $0.sl }, 0) }
func sh_cq_read_dlid_path_bits(_ p: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt8 { readCurrent(p, { $0.dlid_path_bits }, 0) }
