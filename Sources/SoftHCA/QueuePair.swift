import CVerbs
import StableVerbsABI
import Glibc

/// One send work request, copied at post time (inline data included).
struct SendWork {
    var wrID: UInt64
    var opcode: ibv_wr_opcode
    var flags: UInt32
    var sges: [ibv_sge] = []
    var inlineData: [UInt8]?
    var imm: UInt32 = 0
    var remoteAddr: UInt64 = 0
    var rkey: UInt32 = 0
    var compareAdd: UInt64 = 0
    var swap: UInt64 = 0
    var ah: ibv_ah_attr?
    var ahHandle: UnsafeMutablePointer<ibv_ah>?
    var remoteQPN: UInt32 = 0
    var remoteQKey: UInt32 = 0
    var signaled = false

    var length: Int {
        if let inlineData { return inlineData.count }
        return sges.reduce(0) { $0 + Int($1.length) }
    }
    var solicited: Bool { flags & UInt32(IBV_SEND_SOLICITED.rawValue) != 0 }
    var isInline: Bool { flags & UInt32(IBV_SEND_INLINE.rawValue) != 0 }
}

/// One receive work request.
struct RecvWork {
    var wrID: UInt64
    var sges: [ibv_sge]
}

/// A queue pair. The C object is always a full `struct ibv_qp_ex`; `qp_to_qp_ex` returns it only
/// for QPs created with IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, like rdma-core's providers.
final class QueuePair {
    let qpx: UnsafeMutablePointer<ibv_qp_ex>
    var qp: UnsafeMutablePointer<ibv_qp> { UnsafeMutableRawPointer(qpx).assumingMemoryBound(to: ibv_qp.self) }
    let context: Context
    let pd: ProtectionDomain
    let sendCQ: CompletionQueue
    let recvCQ: CompletionQueue
    let srq: SharedReceiveQueue?
    let type: ibv_qp_type
    let number: UInt32
    let caps: ibv_qp_cap
    let sigAll: Bool
    let extended: Bool
    let sendOps: UInt64
    var state: ibv_qp_state = IBV_QPS_RESET
    /// Current attributes, as query_qp reports them.
    var attr = ibv_qp_attr()

    /// Send WRs posted and not yet executed (stalled behind an RNR wait, or in SQD).
    var sendQueue: [SendWork] = []
    /// Send WRs posted while in SQD: started when the QP returns to RTS.
    var heldQueue: [SendWork] = []
    var recvQueue: [RecvWork] = []
    /// Requesters whose head WR waits for a receive on this QP (infinite RNR retry).
    var rnrWaiters: [UInt32] = []
    /// The responder this QP's head WR waits on.
    var blockedOn: UInt32?
    var drainNotify = false

    var asyncReported: UInt32 = 0
    var asyncAcked: UInt32 = 0

    // The extended post API's batch between wr_start and wr_complete.
    var batch: [SendWork]?
    var batchError: Int32 = 0

    init(context: Context, pd: ProtectionDomain, sendCQ: CompletionQueue, recvCQ: CompletionQueue, srq: SharedReceiveQueue?,
         type: ibv_qp_type, caps: ibv_qp_cap, sigAll: Bool, qpContext: UnsafeMutableRawPointer?, extended: Bool, sendOps: UInt64) {
        self.context = context
        self.pd = pd
        self.sendCQ = sendCQ
        self.recvCQ = recvCQ
        self.srq = srq
        self.type = type
        self.caps = caps
        self.sigAll = sigAll
        self.extended = extended
        self.sendOps = sendOps
        number = fabric.allocateQPN()
        qpx = allocateZeroed(ibv_qp_ex.self)
        let q = UnsafeMutableRawPointer(qpx).assumingMemoryBound(to: ibv_qp.self)
        q.pointee.context = context.context
        q.pointee.qp_context = qpContext
        q.pointee.pd = pd.pd
        q.pointee.send_cq = sendCQ.cq
        q.pointee.recv_cq = recvCQ.cq
        q.pointee.srq = srq?.srq
        q.pointee.handle = fabric.allocateHandle()
        q.pointee.qp_num = number
        q.pointee.state = IBV_QPS_RESET
        q.pointee.qp_type = type
        pthread_mutex_init(&q.pointee.mutex, nil)
        pthread_cond_init(&q.pointee.cond, nil)
        if extended { installBuilders(qpx) }
    }

    static func find(_ p: UnsafeMutablePointer<ibv_qp>?) -> QueuePair? {
        guard let p else { return nil }
        return fabric.qps[key(p)]
    }

    static func find(_ p: UnsafeMutablePointer<ibv_qp_ex>?) -> QueuePair? {
        guard let p else { return nil }
        return fabric.qps[key(p)]
    }

    /// The local port, once the QP has one (INIT and later).
    var port: Port? { context.device.port(attr.port_num) }

    var canSend: Bool { state == IBV_QPS_RTS || state == IBV_QPS_SQD }
    /// A responder accepts packets from RTR on.
    var canReceive: Bool { state == IBV_QPS_RTR || state == IBV_QPS_RTS || state == IBV_QPS_SQD || state == IBV_QPS_SQE }

    func setState(_ s: ibv_qp_state) {
        state = s
        attr.qp_state = s
    }

    /// Everything a requester's blocked WRs did at this responder is over: they fail as a transport
    /// retry would (the responder no longer answers).
    func failWaitingRequesters() {
        let waiters = rnrWaiters
        rnrWaiters = []
        for n in waiters {
            guard let r = fabric.qpByNumber[n], r.blockedOn == number else { continue }
            r.blockedOn = nil
            guard !r.sendQueue.isEmpty else { continue }
            let w = r.sendQueue.removeFirst()
            r.completeSend(w, status: IBV_WC_RETRY_EXC_ERR)
            r.enterError()
        }
    }

    func unblock() {
        if let b = blockedOn, let responder = fabric.qpByNumber[b] {
            responder.rnrWaiters.removeAll { $0 == number }
        }
        blockedOn = nil
    }

    /// The QP enters the error state: every outstanding WR completes with IBV_WC_WR_FLUSH_ERR.
    func enterError() {
        if state == IBV_QPS_ERR { return }
        setState(IBV_QPS_ERR)
        unblock()
        let sends = sendQueue + heldQueue
        sendQueue = []
        heldQueue = []
        for w in sends { completeSend(w, status: IBV_WC_WR_FLUSH_ERR) }
        flushReceives()
        if srq != nil {
            let q = qp
            context.post(IBV_EVENT_QP_LAST_WQE_REACHED) { $0.element.qp = q }
        }
        failWaitingRequesters()
    }

    func flushReceives() {
        let recvs = recvQueue
        recvQueue = []
        for r in recvs {
            var wc = ibv_wc()
            wc.wr_id = r.wrID
            wc.status = IBV_WC_WR_FLUSH_ERR
            wc.opcode = IBV_WC_RECV
            wc.qp_num = number
            recvCQ.push(wc)
        }
    }

    /// Back to RESET: queues are discarded without completions.
    func reset() {
        unblock()
        sendQueue = []
        heldQueue = []
        recvQueue = []
        failWaitingRequesters()
        attr = ibv_qp_attr()
        drainNotify = false
        setState(IBV_QPS_RESET)
    }

    func destroy() {
        reset()
        for (g, members) in fabric.multicast where members.contains(number) {
            fabric.multicast[g] = members.filter { $0 != number }
            if fabric.multicast[g]?.isEmpty == true { fabric.multicast[g] = nil }
        }
        fabric.qps[key(qpx)] = nil
        fabric.qpByNumber[number] = nil
        sendCQ.users -= 1
        recvCQ.users -= 1
        srq?.users.removeAll { $0 == number }
        pd.users -= 1
        let q = qp
        context.dropEvents { EventElement($0.event_type) == .qp && $0.element.qp == q }
        pthread_mutex_destroy(&q.pointee.mutex)
        pthread_cond_destroy(&q.pointee.cond)
        freeStructure(qpx)
    }
}

// MARK: - creation

private let supportedQPInitMask = UInt32(IBV_QP_INIT_ATTR_PD.rawValue | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue)

let sendOpsRC = UInt64(IBV_QP_EX_WITH_SEND.rawValue | IBV_QP_EX_WITH_SEND_WITH_IMM.rawValue |
    IBV_QP_EX_WITH_RDMA_WRITE.rawValue | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM.rawValue |
    IBV_QP_EX_WITH_RDMA_READ.rawValue | IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP.rawValue |
    IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD.rawValue)
let sendOpsUC = UInt64(IBV_QP_EX_WITH_SEND.rawValue | IBV_QP_EX_WITH_SEND_WITH_IMM.rawValue |
    IBV_QP_EX_WITH_RDMA_WRITE.rawValue | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM.rawValue)
let sendOpsUD = UInt64(IBV_QP_EX_WITH_SEND.rawValue | IBV_QP_EX_WITH_SEND_WITH_IMM.rawValue)

func supportedSendOps(_ type: ibv_qp_type) -> UInt64 {
    switch type {
    case IBV_QPT_RC: return sendOpsRC
    case IBV_QPT_UC: return sendOpsUC
    default: return sendOpsUD
    }
}

/// Creates a QP (both create_qp and create_qp_ex land here); updates `cap` with what was granted.
private func createQP(entry: String, context: Context?, pdPointer: UnsafeMutablePointer<ibv_pd>?,
                      qpContext: UnsafeMutableRawPointer?, sendCQ: UnsafeMutablePointer<ibv_cq>?, recvCQ: UnsafeMutablePointer<ibv_cq>?,
                      srq srqPointer: UnsafeMutablePointer<ibv_srq>?, cap: inout ibv_qp_cap, type: ibv_qp_type, sigAll: Int32,
                      extended: Bool, sendOps: UInt64) -> (QueuePair?, Int32) {
    guard let pd = ProtectionDomain.find(pdPointer) else { return (nil, EINVAL) }
    let ctx = context ?? pd.context
    guard pd.context === ctx else { return (nil, EINVAL) }
    if let e = fabric.fault(entry, device: ctx.device) ?? ctx.commandError { return (nil, e) }
    guard type == IBV_QPT_RC || type == IBV_QPT_UC || type == IBV_QPT_UD else { return (nil, EOPNOTSUPP) }
    guard let scq = CompletionQueue.find(sendCQ), let rcq = CompletionQueue.find(recvCQ),
          scq.context === ctx, rcq.context === ctx else { return (nil, EINVAL) }
    var srq: SharedReceiveQueue?
    if srqPointer != nil {
        guard let s = SharedReceiveQueue.find(srqPointer), s.context === ctx else { return (nil, EINVAL) }
        srq = s
    }
    if cap.max_send_wr > UInt32(Limits.maxQPWR) || cap.max_send_sge > UInt32(Limits.maxSGE) { return (nil, EINVAL) }
    if srq == nil, cap.max_recv_wr > UInt32(Limits.maxQPWR) || cap.max_recv_sge > UInt32(Limits.maxSGE) { return (nil, EINVAL) }
    if cap.max_inline_data > Limits.maxInline { return (nil, EINVAL) }
    if extended, sendOps & ~supportedSendOps(type) != 0 { return (nil, EOPNOTSUPP) }
    if fabric.qps.count >= Int(Limits.maxQP) { return (nil, ENOMEM) }
    if srq != nil {
        cap.max_recv_wr = 0
        cap.max_recv_sge = 0
    }
    let qp = QueuePair(context: ctx, pd: pd, sendCQ: scq, recvCQ: rcq, srq: srq, type: type, caps: cap,
                       sigAll: sigAll != 0, qpContext: qpContext, extended: extended, sendOps: sendOps)
    fabric.qps[key(qp.qpx)] = qp
    fabric.qpByNumber[qp.number] = qp
    scq.users += 1
    rcq.users += 1
    srq?.users.append(qp.number)
    pd.users += 1
    return (qp, 0)
}

func sh_create_qp(_ pd: UnsafeMutablePointer<ibv_pd>?, _ attr: UnsafeMutablePointer<ibv_qp_init_attr>?) -> UnsafeMutablePointer<ibv_qp>? {
    let (qp, err): (QueuePair?, Int32) = locked {
        guard let attr else { return (nil, EINVAL) }
        let a = attr.pointee
        var cap = a.cap
        let r = createQP(entry: "create_qp", context: nil, pdPointer: pd, qpContext: a.qp_context, sendCQ: a.send_cq, recvCQ: a.recv_cq,
                         srq: a.srq, cap: &cap, type: a.qp_type, sigAll: a.sq_sig_all, extended: false, sendOps: 0)
        if r.0 != nil { attr.pointee.cap = cap }
        return r
    }
    guard let qp else { return failNull(err) }
    return qp.qp
}

func sh_create_qp_ex(_ context: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_qp_init_attr_ex>?) -> UnsafeMutablePointer<ibv_qp>? {
    let (qp, err): (QueuePair?, Int32) = locked {
        guard let ctx = Context.find(context), let attr else { return (nil, EINVAL) }
        let a = attr.pointee
        if a.comp_mask & ~supportedQPInitMask != 0 { return (nil, EOPNOTSUPP) }
        if a.comp_mask & UInt32(IBV_QP_INIT_ATTR_PD.rawValue) == 0 { return (nil, EINVAL) }
        let extended = a.comp_mask & UInt32(IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue) != 0
        var cap = a.cap
        let r = createQP(entry: "create_qp_ex", context: ctx, pdPointer: a.pd, qpContext: a.qp_context, sendCQ: a.send_cq,
                         recvCQ: a.recv_cq, srq: a.srq, cap: &cap, type: a.qp_type, sigAll: a.sq_sig_all,
                         extended: extended, sendOps: extended ? a.send_ops_flags : 0)
        if r.0 != nil { attr.pointee.cap = cap }
        return r
    }
    guard let qp else { return failNull(err) }
    return qp.qp
}

func sh_qp_to_qp_ex(_ p: UnsafeMutablePointer<ibv_qp>?) -> UnsafeMutablePointer<ibv_qp_ex>? {
    locked {
        guard let qp = QueuePair.find(p), qp.extended else { return nil }
        return qp.qpx
    }
}

// MARK: - modify: the IB state machine

private enum Mask {
    static let state = UInt32(IBV_QP_STATE.rawValue)
    static let curState = UInt32(IBV_QP_CUR_STATE.rawValue)
    static let enSQD = UInt32(IBV_QP_EN_SQD_ASYNC_NOTIFY.rawValue)
    static let access = UInt32(IBV_QP_ACCESS_FLAGS.rawValue)
    static let pkey = UInt32(IBV_QP_PKEY_INDEX.rawValue)
    static let port = UInt32(IBV_QP_PORT.rawValue)
    static let qkey = UInt32(IBV_QP_QKEY.rawValue)
    static let av = UInt32(IBV_QP_AV.rawValue)
    static let pathMTU = UInt32(IBV_QP_PATH_MTU.rawValue)
    static let timeout = UInt32(IBV_QP_TIMEOUT.rawValue)
    static let retry = UInt32(IBV_QP_RETRY_CNT.rawValue)
    static let rnrRetry = UInt32(IBV_QP_RNR_RETRY.rawValue)
    static let rqPSN = UInt32(IBV_QP_RQ_PSN.rawValue)
    static let maxQPRdAtomic = UInt32(IBV_QP_MAX_QP_RD_ATOMIC.rawValue)
    static let altPath = UInt32(IBV_QP_ALT_PATH.rawValue)
    static let minRNRTimer = UInt32(IBV_QP_MIN_RNR_TIMER.rawValue)
    static let sqPSN = UInt32(IBV_QP_SQ_PSN.rawValue)
    static let maxDestRdAtomic = UInt32(IBV_QP_MAX_DEST_RD_ATOMIC.rawValue)
    static let pathMig = UInt32(IBV_QP_PATH_MIG_STATE.rawValue)
    static let cap = UInt32(IBV_QP_CAP.rawValue)
    static let destQPN = UInt32(IBV_QP_DEST_QPN.rawValue)
}

/// Required and optional attribute masks of a transition (the kernel's qp_state_table, for the
/// RC, UC and UD transports); nil when the transition is not allowed.
func transitionMasks(from cur: ibv_qp_state, to next: ibv_qp_state, type: ibv_qp_type) -> (required: UInt32, optional: UInt32)? {
    let ud = type == IBV_QPT_UD
    let uc = type == IBV_QPT_UC
    switch (cur, next) {
    case (_, IBV_QPS_RESET) where cur.rawValue <= IBV_QPS_ERR.rawValue:
        return (0, 0)
    case (_, IBV_QPS_ERR) where cur.rawValue <= IBV_QPS_ERR.rawValue:
        return (0, 0)
    case (IBV_QPS_RESET, IBV_QPS_INIT):
        return (ud ? Mask.pkey | Mask.port | Mask.qkey : Mask.pkey | Mask.port | Mask.access, 0)
    case (IBV_QPS_INIT, IBV_QPS_INIT):
        return (0, ud ? Mask.pkey | Mask.port | Mask.qkey : Mask.pkey | Mask.port | Mask.access)
    case (IBV_QPS_INIT, IBV_QPS_RTR):
        if ud { return (0, Mask.pkey | Mask.qkey) }
        if uc { return (Mask.av | Mask.pathMTU | Mask.destQPN | Mask.rqPSN, Mask.altPath | Mask.access | Mask.pkey) }
        return (Mask.av | Mask.pathMTU | Mask.destQPN | Mask.rqPSN | Mask.maxDestRdAtomic | Mask.minRNRTimer,
                Mask.altPath | Mask.access | Mask.pkey)
    case (IBV_QPS_RTR, IBV_QPS_RTS):
        if ud { return (Mask.sqPSN, Mask.curState | Mask.qkey) }
        if uc { return (Mask.sqPSN, Mask.curState | Mask.altPath | Mask.access | Mask.pathMig) }
        return (Mask.timeout | Mask.retry | Mask.rnrRetry | Mask.sqPSN | Mask.maxQPRdAtomic,
                Mask.curState | Mask.altPath | Mask.access | Mask.minRNRTimer | Mask.pathMig)
    case (IBV_QPS_RTS, IBV_QPS_RTS), (IBV_QPS_SQD, IBV_QPS_RTS):
        if ud { return (0, Mask.curState | Mask.qkey) }
        if uc { return (0, Mask.curState | Mask.access | Mask.altPath | Mask.pathMig) }
        return (0, Mask.curState | Mask.access | Mask.altPath | Mask.pathMig | Mask.minRNRTimer)
    case (IBV_QPS_RTS, IBV_QPS_SQD):
        return (0, Mask.enSQD)
    case (IBV_QPS_SQD, IBV_QPS_SQD):
        if ud { return (0, Mask.pkey | Mask.qkey) }
        if uc { return (0, Mask.av | Mask.altPath | Mask.access | Mask.pkey | Mask.pathMig) }
        return (0, Mask.port | Mask.av | Mask.timeout | Mask.retry | Mask.rnrRetry | Mask.maxQPRdAtomic |
                Mask.maxDestRdAtomic | Mask.altPath | Mask.access | Mask.pkey | Mask.minRNRTimer | Mask.pathMig)
    case (IBV_QPS_SQE, IBV_QPS_RTS):
        if ud { return (0, Mask.curState | Mask.qkey) }
        if uc { return (0, Mask.curState | Mask.access) }
        return nil
    default:
        return nil
    }
}

/// Checks an address vector against the local device (like rxe_av_chk_attr).
func validAddressVector(_ ah: ibv_ah_attr, port: Port) -> Bool {
    if port.linkLayer == .ethernet && ah.is_global == 0 { return false }
    if ah.is_global != 0 {
        guard port.gid(at: Int(ah.grh.sgid_index)) != nil else { return false }
    }
    return true
}

private func modify(_ qp: QueuePair, _ a: ibv_qp_attr, _ mask: UInt32) -> Int32 {
    let cur = mask & Mask.curState != 0 ? a.cur_qp_state : qp.state
    if mask & Mask.curState != 0 && ![IBV_QPS_RTR, IBV_QPS_RTS, IBV_QPS_SQD, IBV_QPS_SQE].contains(cur) { return EINVAL }
    let next = mask & Mask.state != 0 ? a.qp_state : cur
    if next.rawValue > IBV_QPS_ERR.rawValue { return EINVAL }
    guard let masks = transitionMasks(from: cur, to: next, type: qp.type) else { return EINVAL }
    let given = mask & ~Mask.state
    if given & masks.required != masks.required { return EINVAL }
    if given & ~(masks.required | masks.optional) != 0 { return EINVAL }

    // Value checks (rxe_qp_chk_attr).
    var portNumber = qp.attr.port_num
    if mask & Mask.port != 0 {
        guard qp.context.device.port(a.port_num) != nil else { return EINVAL }
        portNumber = a.port_num
    }
    if mask & Mask.pkey != 0, Int(a.pkey_index) >= Limits.maxPKeys { return EINVAL }
    if mask & Mask.av != 0 {
        guard let port = qp.context.device.port(portNumber), validAddressVector(a.ah_attr, port: port) else { return EINVAL }
    }
    if mask & Mask.pathMTU != 0 {
        guard a.path_mtu.rawValue >= IBV_MTU_256.rawValue, a.path_mtu.rawValue <= IBV_MTU_4096.rawValue else { return EINVAL }
        if let port = qp.context.device.port(portNumber), a.path_mtu.rawValue > port.maxMTU.rawValue { return EINVAL }
    }
    if mask & Mask.maxQPRdAtomic != 0, Int32(a.max_rd_atomic) > Limits.maxQPRdAtom { return EINVAL }
    if mask & Mask.maxDestRdAtomic != 0, Int32(a.max_dest_rd_atomic) > Limits.maxQPRdAtom { return EINVAL }
    if mask & Mask.timeout != 0, a.timeout > 31 { return EINVAL }
    if mask & Mask.retry != 0, a.retry_cnt > 7 { return EINVAL }
    if mask & Mask.rnrRetry != 0, a.rnr_retry > 7 { return EINVAL }
    if mask & Mask.minRNRTimer != 0, a.min_rnr_timer > 31 { return EINVAL }

    // Apply.
    if mask & Mask.access != 0 { qp.attr.qp_access_flags = a.qp_access_flags }
    if mask & Mask.pkey != 0 { qp.attr.pkey_index = a.pkey_index }
    if mask & Mask.port != 0 { qp.attr.port_num = a.port_num }
    if mask & Mask.qkey != 0 { qp.attr.qkey = a.qkey }
    if mask & Mask.av != 0 { qp.attr.ah_attr = a.ah_attr; qp.attr.ah_attr.port_num = portNumber }
    if mask & Mask.pathMTU != 0 { qp.attr.path_mtu = a.path_mtu }
    if mask & Mask.timeout != 0 { qp.attr.timeout = a.timeout }
    if mask & Mask.retry != 0 { qp.attr.retry_cnt = a.retry_cnt }
    if mask & Mask.rnrRetry != 0 { qp.attr.rnr_retry = a.rnr_retry }
    if mask & Mask.rqPSN != 0 { qp.attr.rq_psn = a.rq_psn & 0xFF_FFFF }
    if mask & Mask.sqPSN != 0 { qp.attr.sq_psn = a.sq_psn & 0xFF_FFFF }
    if mask & Mask.maxQPRdAtomic != 0 { qp.attr.max_rd_atomic = a.max_rd_atomic }
    if mask & Mask.maxDestRdAtomic != 0 { qp.attr.max_dest_rd_atomic = a.max_dest_rd_atomic }
    if mask & Mask.minRNRTimer != 0 { qp.attr.min_rnr_timer = a.min_rnr_timer }
    if mask & Mask.destQPN != 0 { qp.attr.dest_qp_num = a.dest_qp_num & 0xFF_FFFF }
    if mask & Mask.altPath != 0 { qp.attr.alt_ah_attr = a.alt_ah_attr; qp.attr.alt_pkey_index = a.alt_pkey_index
        qp.attr.alt_port_num = a.alt_port_num; qp.attr.alt_timeout = a.alt_timeout }
    if mask & Mask.pathMig != 0 { qp.attr.path_mig_state = a.path_mig_state }
    if mask & Mask.enSQD != 0 { qp.attr.en_sqd_async_notify = a.en_sqd_async_notify }

    if mask & Mask.state != 0 {
        let before = qp.state
        switch next {
        case IBV_QPS_RESET:
            qp.reset()
        case IBV_QPS_ERR:
            qp.enterError()
        case IBV_QPS_SQD:
            qp.setState(IBV_QPS_SQD)
            qp.drainNotify = mask & Mask.enSQD != 0 && a.en_sqd_async_notify != 0
            qp.checkDrained()
        case IBV_QPS_RTS where before == IBV_QPS_SQD || before == IBV_QPS_SQE:
            qp.setState(IBV_QPS_RTS)
            qp.drainNotify = false
            qp.sendQueue += qp.heldQueue
            qp.heldQueue = []
            qp.pump()
        default:
            qp.setState(next)
        }
    }
    return 0
}

func sh_modify_qp(_ p: UnsafeMutablePointer<ibv_qp>?, _ attr: UnsafeMutablePointer<ibv_qp_attr>?, _ mask: Int32) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p), let attr else { return EINVAL }
        if let e = fabric.fault("modify_qp", device: qp.context.device) ?? qp.context.commandError { return e }
        let r = modify(qp, attr.pointee, UInt32(bitPattern: mask))
        if r == 0 && UInt32(bitPattern: mask) & Mask.state != 0 { qp.qp.pointee.state = attr.pointee.qp_state }
        return r
    }
}

func sh_query_qp(_ p: UnsafeMutablePointer<ibv_qp>?, _ attr: UnsafeMutablePointer<ibv_qp_attr>?, _ mask: Int32,
                 _ initAttr: UnsafeMutablePointer<ibv_qp_init_attr>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p), let attr, let initAttr else { return EINVAL }
        if let e = fabric.fault("query_qp", device: qp.context.device) ?? qp.context.commandError { return e }
        var a = qp.attr
        a.qp_state = qp.state
        a.cur_qp_state = qp.state
        a.cap = qp.caps
        a.sq_draining = (qp.state == IBV_QPS_SQD && !qp.sendQueue.isEmpty) ? 1 : 0
        attr.pointee = a
        var i = ibv_qp_init_attr()
        i.qp_context = qp.qp.pointee.qp_context
        i.send_cq = qp.sendCQ.cq
        i.recv_cq = qp.recvCQ.cq
        i.srq = qp.srq?.srq
        i.cap = qp.caps
        i.qp_type = qp.type
        i.sq_sig_all = qp.sigAll ? 1 : 0
        initAttr.pointee = i
        // libibverbs refreshes qp->state from a query that asked for it.
        if UInt32(bitPattern: mask) & Mask.state != 0 { qp.qp.pointee.state = qp.state }
        return 0
    }
}

func sh_destroy_qp(_ p: UnsafeMutablePointer<ibv_qp>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p) else { return EINVAL }
        if let e = fabric.fault("destroy_qp", device: qp.context.device) ?? qp.context.destroyError { return e }
        while fabric.qps[key(qp.qpx)] === qp && qp.asyncAcked != qp.asyncReported { fabric.lock.wait() }
        guard fabric.qps[key(qp.qpx)] === qp else { return 0 }
        qp.destroy()
        return 0
    }
}

func sh_query_ece(_ p: UnsafeMutablePointer<ibv_qp>?, _ ece: UnsafeMutablePointer<ibv_ece>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p) else { return EINVAL }
        if let e = fabric.fault("query_ece", device: qp.context.device) { return e }
        return EOPNOTSUPP
    }
}

func sh_set_ece(_ p: UnsafeMutablePointer<ibv_qp>?, _ ece: UnsafeMutablePointer<ibv_ece>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p) else { return EINVAL }
        if let e = fabric.fault("set_ece", device: qp.context.device) { return e }
        return EOPNOTSUPP
    }
}
