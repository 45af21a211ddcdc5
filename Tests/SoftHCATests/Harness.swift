import CVerbs
import Glibc
import StableVerbsABI
import Testing
@testable import SoftHCA

/// The suite: every test resets the one in-process fabric, so they run one at a time.
@Suite(.serialized) struct SoftHCATests {}

typealias Ctx = UnsafeMutablePointer<ibv_context>
typealias PD = UnsafeMutablePointer<ibv_pd>
typealias CQ = UnsafeMutablePointer<ibv_cq>
typealias QP = UnsafeMutablePointer<ibv_qp>
typealias MR = UnsafeMutablePointer<ibv_mr>

/// Memory registered with the double.
struct Buffer {
    let base: UnsafeMutableRawPointer
    let size: Int
    let mr: MR
    var addr: UInt64 { UInt64(UInt(bitPattern: base)) }
    var lkey: UInt32 { mr.pointee.lkey }
    var rkey: UInt32 { mr.pointee.rkey }
    var bytes: UnsafeMutablePointer<UInt8> { base.assumingMemoryBound(to: UInt8.self) }
    func sge(_ offset: Int = 0, _ length: Int? = nil) -> ibv_sge {
        ibv_sge(addr: addr + UInt64(offset), length: UInt32(length ?? size - offset), lkey: lkey)
    }
    func fill(_ s: String) {
        let u = Array(s.utf8)
        for (i, b) in u.enumerated() { bytes[i] = b }
        bytes[u.count] = 0
    }
    func string(_ count: Int, at offset: Int = 0) -> String {
        String(decoding: UnsafeBufferPointer(start: bytes + offset, count: count), as: UTF8.self)
    }
}

let accessAll = Int32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue |
    IBV_ACCESS_REMOTE_READ.rawValue | IBV_ACCESS_REMOTE_ATOMIC.rawValue)

/// A fabric with every device opened, and helpers that go through the table only.
final class Harness {
    let L: sv_lower
    var contexts: [Ctx] = []
    var devices: [UnsafeMutablePointer<ibv_device>] = []

    init(_ config: String = "") {
        L = try! SoftHCA.lower(configurationString: config).pointee
        var n: Int32 = 0
        let list = L.get_device_list!(&n)!
        for i in 0..<Int(n) {
            devices.append(list[i]!)
            contexts.append(L.open_device!(list[i])!)
        }
        L.free_device_list!(list)
    }

    func pd(_ c: Int = 0) -> PD { L.alloc_pd!(contexts[c])! }

    func cq(_ c: Int = 0, _ n: Int32 = 64, channel: UnsafeMutablePointer<ibv_comp_channel>? = nil) -> CQ {
        L.create_cq!(contexts[c], n, nil, channel, 0)!
    }

    func buffer(_ pd: PD, _ size: Int = 4096, access: Int32 = accessAll) -> Buffer {
        let base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let mr = L.reg_mr!(pd, base, size, access)!
        return Buffer(base: base, size: size, mr: mr)
    }

    func qp(_ pd: PD, _ scq: CQ, _ rcq: CQ? = nil, type: ibv_qp_type = IBV_QPT_RC, wr: UInt32 = 16, sge: UInt32 = 4,
            inline: UInt32 = 64, srq: UnsafeMutablePointer<ibv_srq>? = nil, sigAll: Bool = true) -> QP {
        var a = ibv_qp_init_attr()
        a.send_cq = scq
        a.recv_cq = rcq ?? scq
        a.srq = srq
        a.qp_type = type
        a.sq_sig_all = sigAll ? 1 : 0
        a.cap = ibv_qp_cap(max_send_wr: wr, max_recv_wr: wr, max_send_sge: sge, max_recv_sge: sge, max_inline_data: inline)
        return L.create_qp!(pd, &a)!
    }

    func modify(_ qp: QP, _ a: ibv_qp_attr, _ masks: [ibv_qp_attr_mask]) -> Int32 {
        var a = a
        let m = masks.reduce(0) { $0 | Int32(bitPattern: $1.rawValue) }
        return L.modify_qp!(qp, &a, m)
    }

    func portAttr(_ c: Int, _ port: UInt8 = 1) -> ibv_port_attr {
        var pa = ibv_port_attr()
        #expect(___ibv_query_port(contexts[c], port, &pa) == 0)
        return pa
    }

    func gid(_ c: Int, _ index: Int32 = 0) -> ibv_gid {
        var g = ibv_gid()
        #expect(L.query_gid!(contexts[c], 1, index, &g) == 0)
        return g
    }

    func toInit(_ qp: QP, access: Int32 = accessAll, qkey: UInt32 = 0x11111111) {
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_INIT
        a.pkey_index = 0
        a.port_num = 1
        if qp.pointee.qp_type == IBV_QPT_UD {
            a.qkey = qkey
            #expect(modify(qp, a, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_QKEY]) == 0)
        } else {
            a.qp_access_flags = UInt32(bitPattern: access)
            #expect(modify(qp, a, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS]) == 0)
        }
    }

    /// RTR towards (remote context, remote QP), addressed by LID or, with `global`, by GID.
    func toRTR(_ qp: QP, remote c: Int, remoteQP: UInt32, global: Bool = false) {
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_RTR
        if qp.pointee.qp_type == IBV_QPT_UD {
            #expect(modify(qp, a, [IBV_QP_STATE]) == 0)
            return
        }
        a.path_mtu = IBV_MTU_1024
        a.dest_qp_num = remoteQP
        a.rq_psn = 0
        a.max_dest_rd_atomic = 4
        a.min_rnr_timer = 12
        a.ah_attr.port_num = 1
        let pa = portAttr(c)
        a.ah_attr.dlid = pa.lid
        if global || pa.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET) {
            a.ah_attr.is_global = 1
            a.ah_attr.grh.dgid = gid(c, 0)
            a.ah_attr.grh.sgid_index = 0
            a.ah_attr.grh.hop_limit = 64
        }
        var masks = [IBV_QP_STATE, IBV_QP_AV, IBV_QP_PATH_MTU, IBV_QP_DEST_QPN, IBV_QP_RQ_PSN]
        if qp.pointee.qp_type == IBV_QPT_RC { masks += [IBV_QP_MAX_DEST_RD_ATOMIC, IBV_QP_MIN_RNR_TIMER] }
        #expect(modify(qp, a, masks) == 0)
    }

    func toRTS(_ qp: QP) {
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_RTS
        a.sq_psn = 0
        a.timeout = 14
        a.retry_cnt = 7
        a.rnr_retry = 7
        a.max_rd_atomic = 4
        var masks = [IBV_QP_STATE, IBV_QP_SQ_PSN]
        if qp.pointee.qp_type == IBV_QPT_RC { masks += [IBV_QP_TIMEOUT, IBV_QP_RETRY_CNT, IBV_QP_RNR_RETRY, IBV_QP_MAX_QP_RD_ATOMIC] }
        #expect(modify(qp, a, masks) == 0)
    }

    /// Connects two QPs on contexts ca and cb.
    func connect(_ a: QP, _ ca: Int, _ b: QP, _ cb: Int, global: Bool = false) {
        toInit(a); toInit(b)
        toRTR(a, remote: cb, remoteQP: b.pointee.qp_num, global: global)
        toRTR(b, remote: ca, remoteQP: a.pointee.qp_num, global: global)
        toRTS(a); toRTS(b)
    }

    struct Pair {
        let pdA: PD, pdB: PD
        let cqA: CQ, cqB: CQ
        let a: QP, b: QP
        let bufA: Buffer, bufB: Buffer
    }

    /// An RC (or UC) connection between device 0 and device 1 (or another pair of contexts).
    func pair(type: ibv_qp_type = IBV_QPT_RC, _ ca: Int = 0, _ cb: Int = 1, wr: UInt32 = 16, global: Bool = false) -> Pair {
        let pdA = pd(ca), pdB = pd(cb)
        let cqA = cq(ca), cqB = cq(cb)
        let a = qp(pdA, cqA, type: type, wr: wr), b = qp(pdB, cqB, type: type, wr: wr)
        connect(a, ca, b, cb, global: global)
        return Pair(pdA: pdA, pdB: pdB, cqA: cqA, cqB: cqB, a: a, b: b, bufA: buffer(pdA), bufB: buffer(pdB))
    }
}

// MARK: posting helpers (the inline rdma-core calls, which jump through the objects)

@discardableResult
func postRecv(_ qp: QP, _ sges: [ibv_sge], id: UInt64 = 0) -> Int32 {
    var s = sges
    return s.withUnsafeMutableBufferPointer { p in
        var wr = ibv_recv_wr()
        wr.wr_id = id
        wr.sg_list = p.baseAddress
        wr.num_sge = Int32(p.count)
        var bad: UnsafeMutablePointer<ibv_recv_wr>?
        return ibv_post_recv(qp, &wr, &bad)
    }
}

@discardableResult
func postSend(_ qp: QP, _ sges: [ibv_sge], id: UInt64 = 0, opcode: ibv_wr_opcode = IBV_WR_SEND, flags: UInt32 = 0,
              imm: UInt32 = 0, configure: (inout ibv_send_wr) -> Void = { _ in }) -> Int32 {
    var s = sges
    return s.withUnsafeMutableBufferPointer { p in
        var wr = ibv_send_wr()
        wr.wr_id = id
        wr.sg_list = p.baseAddress
        wr.num_sge = Int32(p.count)
        wr.opcode = opcode
        wr.send_flags = flags
        wr.imm_data = imm
        configure(&wr)
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        return ibv_post_send(qp, &wr, &bad)
    }
}

func poll(_ cq: CQ, max: Int = 16) -> [ibv_wc] {
    var wcs = [ibv_wc](repeating: ibv_wc(), count: max)
    let n = wcs.withUnsafeMutableBufferPointer { ibv_poll_cq(cq, Int32(max), $0.baseAddress) }
    return n > 0 ? Array(wcs.prefix(Int(n))) : []
}

func pollOne(_ cq: CQ) -> ibv_wc? { poll(cq, max: 1).first }

// MARK: the extended interfaces (reached through the objects, like rdma-core's inline helpers)

/// `verbs_get_ctx()`: the verbs_context in front of an ibv_context, trusted only when the context
/// says it is extended.
func verbsContext(_ c: Ctx) -> UnsafeMutablePointer<verbs_context>? {
    guard c.pointee.abi_compat == UnsafeMutableRawPointer(bitPattern: UInt.max) else { return nil }
    let offset = MemoryLayout<verbs_context>.offset(of: \verbs_context.context)!
    return (UnsafeMutableRawPointer(c) - offset).assumingMemoryBound(to: verbs_context.self)
}

extension Harness {
    var vctx: UnsafeMutablePointer<verbs_context> { verbsContext(contexts[0])! }

    /// A QP from `verbs_context.create_qp_ex` with the new post API (IBV_QP_INIT_ATTR_SEND_OPS_FLAGS).
    func qpEx(_ c: Int, _ pd: PD, _ cq: CQ, type: ibv_qp_type = IBV_QPT_RC, ops: UInt64? = nil,
              srq: UnsafeMutablePointer<ibv_srq>? = nil) -> (QP, UnsafeMutablePointer<ibv_qp_ex>) {
        var a = ibv_qp_init_attr_ex()
        a.qp_type = type
        a.send_cq = cq
        a.recv_cq = cq
        a.srq = srq
        a.sq_sig_all = 0
        a.cap = ibv_qp_cap(max_send_wr: 16, max_recv_wr: 16, max_send_sge: 4, max_recv_sge: 4, max_inline_data: 64)
        a.comp_mask = UInt32(IBV_QP_INIT_ATTR_PD.rawValue | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue)
        a.pd = pd
        a.send_ops_flags = ops ?? (type == IBV_QPT_UD ? sendOpsUD : sendOpsRC)
        let ctx = contexts[c]
        let qp = verbsContext(ctx)!.pointee.create_qp_ex!(ctx, &a)!
        return (qp, L.qp_to_qp_ex!(qp)!)
    }

    /// Every async event queued on context `c` right now (the fd is made non-blocking), each acked.
    func asyncEvents(_ c: Int) -> [ibv_async_event] {
        let ctx = contexts[c]
        let fd = ctx.pointee.async_fd
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(fd, F_SETFL, flags) }
        var out: [ibv_async_event] = []
        while true {
            var e = ibv_async_event()
            errno = 0
            guard L.get_async_event!(ctx, &e) == 0 else {
                #expect(errno == EAGAIN, "an empty, non-blocking async fd says EAGAIN")
                break
            }
            out.append(e)
            L.ack_async_event!(&e)
        }
        return out
    }

    func qpState(_ qp: QP) -> ibv_qp_state {
        var a = ibv_qp_attr(), i = ibv_qp_init_attr()
        #expect(L.query_qp!(qp, &a, Int32(IBV_QP_STATE.rawValue), &i) == 0)
        return a.qp_state
    }
}

/// Whether `fd` becomes readable within `ms` milliseconds.
func readable(_ fd: Int32, within ms: Int32 = 0) -> Bool {
    var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return Glibc.poll(&pfd, 1, ms) == 1 && pfd.revents & Int16(POLLIN) != 0
}

/// Posts one RDMA work request (write, write with immediate, read).
@discardableResult
func postRDMA(_ qp: QP, _ sges: [ibv_sge], _ opcode: ibv_wr_opcode, remote: UInt64, rkey: UInt32, id: UInt64 = 0,
              imm: UInt32 = 0, flags: UInt32 = 0) -> Int32 {
    postSend(qp, sges, id: id, opcode: opcode, flags: flags, imm: imm) { wr in
        wr.wr.rdma.remote_addr = remote
        wr.wr.rdma.rkey = rkey
    }
}

/// Calls a constructor of the table and returns (result, errno) with errno cleared first.
func withErrno<T>(_ body: () -> T?) -> (T?, Int32) {
    errno = 0
    let r = body()
    return (r, errno)
}

/// A value that may cross to another thread (the tests hand C pointers to a helper thread).
struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A helper thread (pthread, no Foundation). `join(within:)` gives up after a while, so a
/// regression that leaves the thread blocked fails the test instead of hanging the suite (the
/// thread is then left behind; the next fabric reset closes the fds it waits on).
final class Background: @unchecked Sendable {
    private var thread = pthread_t()
    private let lock = GlobalLock()
    private var finished = false
    private var body: (() -> Void)?

    init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let r = pthread_create(&thread, nil, { p in
            let me = Unmanaged<Background>.fromOpaque(p!).takeRetainedValue()
            me.body?()
            me.lock.with { me.finished = true }
            return nil
        }, ctx)
        precondition(r == 0)
    }

    var isFinished: Bool { lock.with { finished } }

    /// Joins if the thread finishes within `ms`; returns whether it did.
    @discardableResult
    func join(within ms: Int = 2000) -> Bool {
        guard eventually(within: ms, { isFinished }) else {
            pthread_detach(thread)
            return false
        }
        pthread_join(thread, nil)
        return true
    }
}

/// `get_cq_event` that cannot hang a failing test: the channel's fd must become readable first.
func cqEvent(_ L: sv_lower, _ channel: UnsafeMutablePointer<ibv_comp_channel>, within ms: Int32 = 1000)
    -> (cq: CQ?, context: UnsafeMutableRawPointer?)? {
    guard readable(channel.pointee.fd, within: ms) else { return nil }
    var cq: UnsafeMutablePointer<ibv_cq>?
    var ctx: UnsafeMutableRawPointer?
    guard L.get_cq_event!(channel, &cq, &ctx) == 0 else { return nil }
    return (cq, ctx)
}

/// Spins (sleeping 1 ms) until `condition` holds or `ms` pass; returns whether it held.
func eventually(within ms: Int = 2000, _ condition: () -> Bool) -> Bool {
    for _ in 0..<ms {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}

extension Harness {
    /// A create_qp_ex call that may fail (nil, errno set).
    func qpExOrNil(_ c: Int, _ pd: PD, _ cq: CQ) -> QP? {
        var a = ibv_qp_init_attr_ex()
        a.qp_type = IBV_QPT_RC
        a.send_cq = cq
        a.recv_cq = cq
        a.cap = ibv_qp_cap(max_send_wr: 4, max_recv_wr: 4, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0)
        a.comp_mask = UInt32(IBV_QP_INIT_ATTR_PD.rawValue | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue)
        a.pd = pd
        a.send_ops_flags = sendOpsRC
        let ctx = contexts[c]
        return verbsContext(ctx)!.pointee.create_qp_ex!(ctx, &a)
    }
}

/// `get_async_event` that cannot hang a failing test: the async fd must become readable first.
/// The event is not acknowledged.
func asyncEvent(_ L: sv_lower, _ ctx: Ctx, within ms: Int32 = 1000) -> ibv_async_event? {
    guard readable(ctx.pointee.async_fd, within: ms) else { return nil }
    var e = ibv_async_event()
    return L.get_async_event!(ctx, &e) == 0 ? e : nil
}
