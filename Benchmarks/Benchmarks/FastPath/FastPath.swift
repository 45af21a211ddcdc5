// Suite 1 of issue 5 through the Swift StableVerbs module (ordo-one/benchmark): every fast-path op
// on the in-process software HCA, through the shim's virtual objects and directly on the real ones
// underneath (stableverbs_real_object), with wall clock and mallocs per op (ARC traffic with
// FASTPATH_ARC=1, see `metrics`). The fast path must show 0 mallocs (and no more retains/releases
// through the shim than direct).
//
//   cd Benchmarks && swift package benchmark --target FastPath
//
// The benchmark executable links the StableVerbs module statically, so its exported ibv_* entry
// points are the ones this program's verbs calls bind to (as under LD_PRELOAD). The inline
// ibv_post_send / ibv_poll_cq / ibv_wr_* jump through the op pointers inside the objects, so the
// same Swift code measures the shim (virtual objects) or the double (real objects).

import Benchmark
import CVerbs
import Glibc
import StableVerbs

let batch = 64

/// The queues one side of the comparison uses: the virtual objects, or the real ones.
struct Side {
    var a, b, c, d: UnsafeMutablePointer<ibv_qp>
    var ax: UnsafeMutablePointer<ibv_qp_ex>
    var cq, rcq: UnsafeMutablePointer<ibv_cq>
    var srq: UnsafeMutablePointer<ibv_srq>
    var lkey, rkey: UInt32
}

final class Rig: @unchecked Sendable {
    let ctx: UnsafeMutablePointer<ibv_context>
    let buf: UnsafeMutableRawPointer
    var virt: Side
    var real: Side

    static func fail(_ what: String) -> Never {
        let line = "FastPath: \(what) (errno \(errno))\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(1)
    }

    static func realObject<T>(_ type: Int32, _ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<T> {
        var r: UnsafeMutableRawPointer?
        guard sv_stableverbs_real_object(type, UnsafeMutableRawPointer(p), &r) == 0, let r else { fail("real object \(type)") }
        return r.assumingMemoryBound(to: T.self)
    }

    init() {
        guard StableVerbs.configure(lower: "softhca", softHCA: "devices=1") else { Rig.fail("configure") }
        var n: Int32 = 0
        guard let list = ibv_get_device_list(&n), n > 0, let dev = list[0] else { Rig.fail("no device") }
        guard let ctx = ibv_open_device(dev) else { Rig.fail("open_device") }
        ibv_free_device_list(list)
        self.ctx = ctx
        guard let pd = ibv_alloc_pd(ctx) else { Rig.fail("alloc_pd") }
        buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        memset(buf, 1, 1 << 20)
        let access = Int32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue | IBV_ACCESS_REMOTE_READ.rawValue)
        guard let mr = ibv_reg_mr_iova2(pd, buf, 1 << 20, UInt64(UInt(bitPattern: buf)), UInt32(access)) else { Rig.fail("reg_mr") }
        guard let cq = ibv_create_cq(ctx, Int32(4 * batch), nil, nil, 0),
              let rcq = ibv_create_cq(ctx, Int32(4 * batch), nil, nil, 0) else { Rig.fail("create_cq") }
        var sa = ibv_srq_init_attr()
        sa.attr.max_wr = UInt32(2 * batch)
        sa.attr.max_sge = 1
        guard let srq = ibv_create_srq(pd, &sa) else { Rig.fail("create_srq") }
        var qa = ibv_qp_init_attr_ex()
        qa.send_cq = cq
        qa.recv_cq = rcq
        qa.qp_type = IBV_QPT_RC
        qa.sq_sig_all = 1
        qa.cap = ibv_qp_cap(max_send_wr: UInt32(2 * batch), max_recv_wr: UInt32(2 * batch), max_send_sge: 1, max_recv_sge: 1,
                            max_inline_data: 64)
        qa.comp_mask = IBV_QP_INIT_ATTR_PD.rawValue | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue
        qa.pd = pd
        qa.send_ops_flags = UInt64(IBV_QP_EX_WITH_RDMA_WRITE.rawValue | IBV_QP_EX_WITH_SEND.rawValue)
        guard let a = ibv_create_qp_ex(ctx, &qa), let b = ibv_create_qp_ex(ctx, &qa), let d = ibv_create_qp_ex(ctx, &qa)
        else { Rig.fail("create_qp_ex") }
        qa.srq = srq
        guard let c = ibv_create_qp_ex(ctx, &qa) else { Rig.fail("create_qp_ex (SRQ)") }
        guard let ax = ibv_qp_to_qp_ex(a) else { Rig.fail("qp_to_qp_ex") }
        Rig.connect(ctx, a, b)
        Rig.connect(ctx, d, c)
        virt = Side(a: a, b: b, c: c, d: d, ax: ax, cq: cq, rcq: rcq, srq: srq, lkey: mr.pointee.lkey, rkey: mr.pointee.rkey)
        let realMR = Rig.realObject(3, mr)
        real = Side(a: Rig.realObject(7, a), b: Rig.realObject(7, b), c: Rig.realObject(7, c), d: Rig.realObject(7, d),
                    ax: Rig.realObject(8, UnsafeMutableRawPointer(a).assumingMemoryBound(to: ibv_qp_ex.self)),
                    cq: Rig.realObject(4, cq), rcq: Rig.realObject(4, rcq), srq: Rig.realObject(6, srq),
                    lkey: realMR.pointee.lkey, rkey: realMR.pointee.rkey)
        self.mr = mr
    }

    let mr: UnsafeMutablePointer<ibv_mr>
    /// Scatter/gather entries the work requests point at (stable addresses, allocated once).
    let sges = UnsafeMutablePointer<ibv_sge>.allocate(capacity: 4)

    /// After a "move": every real object rebuilt under the same virtual ids (translation active).
    func rebuild() {
        guard StableVerbs.rebuild(ctx) == 0 else { Rig.fail("rebuild") }
        let realMR = Rig.realObject(3, mr)
        real = Side(a: Rig.realObject(7, virt.a), b: Rig.realObject(7, virt.b), c: Rig.realObject(7, virt.c),
                    d: Rig.realObject(7, virt.d),
                    ax: Rig.realObject(8, UnsafeMutableRawPointer(virt.a).assumingMemoryBound(to: ibv_qp_ex.self)),
                    cq: Rig.realObject(4, virt.cq), rcq: Rig.realObject(4, virt.rcq), srq: Rig.realObject(6, virt.srq),
                    lkey: realMR.pointee.lkey, rkey: realMR.pointee.rkey)
    }

    static func connect(_ ctx: UnsafeMutablePointer<ibv_context>, _ x: UnsafeMutablePointer<ibv_qp>, _ y: UnsafeMutablePointer<ibv_qp>) {
        var pa = ibv_port_attr()
        guard ___ibv_query_port(ctx, 1, &pa) == 0 else { fail("query_port") }
        let qps = [x, y]
        for q in qps {
            var at = ibv_qp_attr()
            at.qp_state = IBV_QPS_INIT
            at.port_num = 1
            at.qp_access_flags = IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue | IBV_ACCESS_REMOTE_READ.rawValue
            let mask = IBV_QP_STATE.rawValue | IBV_QP_PKEY_INDEX.rawValue | IBV_QP_PORT.rawValue | IBV_QP_ACCESS_FLAGS.rawValue
            guard ibv_modify_qp(q, &at, Int32(mask)) == 0 else { fail("INIT") }
        }
        for (i, q) in qps.enumerated() {
            var at = ibv_qp_attr()
            at.qp_state = IBV_QPS_RTR
            at.path_mtu = IBV_MTU_1024
            at.dest_qp_num = qps[1 - i].pointee.qp_num
            at.max_dest_rd_atomic = 1
            at.min_rnr_timer = 12
            at.ah_attr.dlid = pa.lid
            at.ah_attr.port_num = 1
            var mask = IBV_QP_STATE.rawValue | IBV_QP_AV.rawValue | IBV_QP_PATH_MTU.rawValue | IBV_QP_DEST_QPN.rawValue
            mask |= IBV_QP_RQ_PSN.rawValue | IBV_QP_MAX_DEST_RD_ATOMIC.rawValue | IBV_QP_MIN_RNR_TIMER.rawValue
            guard ibv_modify_qp(q, &at, Int32(mask)) == 0 else { fail("RTR") }
            var rt = ibv_qp_attr()
            rt.qp_state = IBV_QPS_RTS
            rt.timeout = 14
            rt.retry_cnt = 7
            rt.rnr_retry = 7
            rt.max_rd_atomic = 1
            var rmask = IBV_QP_STATE.rawValue | IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue | IBV_QP_RNR_RETRY.rawValue
            rmask |= IBV_QP_SQ_PSN.rawValue | IBV_QP_MAX_QP_RD_ATOMIC.rawValue
            guard ibv_modify_qp(q, &rt, Int32(rmask)) == 0 else { fail("RTS") }
        }
    }

    /// Polls n completions off a CQ (outside the measured region), through the side measured: the
    /// shim retires the work rings' entries as it polls, as in an application (polled through the
    /// real CQ, a ring fills after 2 × depth posts and later posts take the full ring's path).
    func drain(_ cq: UnsafeMutablePointer<ibv_cq>, _ n: Int) {
        var left = n
        var wc = ibv_wc()
        while left > 0 {
            let k = ibv_poll_cq(cq, 1, &wc)
            if k < 0 || (k == 1 && wc.status != IBV_WC_SUCCESS) { Rig.fail("drain") }
            left -= Int(k)
        }
    }
}

enum Op: String, CaseIterable {
    case pollEmpty = "poll_cq empty"
    case pollOne = "poll_cq 1 completion"
    case postSendInline = "post_send inline"
    case postSendSGE = "post_send SGE"
    case wrInline = "ibv_wr_* inline"
    case wrSGE = "ibv_wr_* SGE"
    case postRecv = "post_recv"
    case postSRQRecv = "post_srq_recv"
}

/// Runs `batch` ops of one kind on one side; only the ops themselves are inside the measured
/// region (startMeasurement/stopMeasurement are called around them).
func run(_ rig: Rig, _ op: Op, _ s: Side, _ benchmark: Benchmark) {
    var wc = ibv_wc()
    let base = UInt64(UInt(bitPattern: rig.buf))
    let sge = rig.sges, rsge = rig.sges + 1, csge = rig.sges + 2
    sge.pointee = ibv_sge(addr: base, length: 8, lkey: s.lkey)
    var bad: UnsafeMutablePointer<ibv_send_wr>?
    var rbad: UnsafeMutablePointer<ibv_recv_wr>?
    var wr = ibv_send_wr()
    wr.sg_list = sge
    wr.num_sge = 1
    wr.opcode = IBV_WR_RDMA_WRITE
    wr.send_flags = IBV_SEND_SIGNALED.rawValue
    wr.wr.rdma.remote_addr = base + 4096
    wr.wr.rdma.rkey = s.rkey
    switch op {
    case .pollEmpty:
        benchmark.startMeasurement()
        for _ in 0..<batch { blackHole(ibv_poll_cq(s.cq, 1, &wc)) }
        benchmark.stopMeasurement()
    case .pollOne:
        // completions to poll: made through the same side, outside the measured region
        csge.pointee = ibv_sge(addr: base, length: 8, lkey: s.lkey)
        wr.sg_list = csge
        wr.send_flags |= IBV_SEND_INLINE.rawValue
        for _ in 0..<batch where ibv_post_send(s.a, &wr, &bad) != 0 { Rig.fail("post_send") }
        benchmark.startMeasurement()
        for _ in 0..<batch { blackHole(ibv_poll_cq(s.cq, 1, &wc)) }
        benchmark.stopMeasurement()
    case .postSendInline, .postSendSGE:
        if op == .postSendInline { wr.send_flags |= IBV_SEND_INLINE.rawValue }
        benchmark.startMeasurement()
        for _ in 0..<batch { blackHole(ibv_post_send(s.a, &wr, &bad)) }
        benchmark.stopMeasurement()
        rig.drain(s.cq, batch)
    case .wrInline, .wrSGE:
        benchmark.startMeasurement()
        for i in 0..<batch {
            ibv_wr_start(s.ax)
            s.ax.pointee.wr_id = UInt64(i)
            s.ax.pointee.wr_flags = IBV_SEND_SIGNALED.rawValue
            ibv_wr_rdma_write(s.ax, s.rkey, base + 4096)
            if op == .wrInline { ibv_wr_set_inline_data(s.ax, rig.buf, 8) } else { ibv_wr_set_sge(s.ax, s.lkey, base, 8) }
            blackHole(ibv_wr_complete(s.ax))
        }
        benchmark.stopMeasurement()
        rig.drain(s.cq, batch)
    case .postRecv, .postSRQRecv:
        rsge.pointee = ibv_sge(addr: base + 8192, length: 64, lkey: s.lkey)
        var rwr = ibv_recv_wr()
        rwr.num_sge = 1
        rwr.sg_list = rsge
        benchmark.startMeasurement()
        if op == .postRecv {
            for _ in 0..<batch { blackHole(ibv_post_recv(s.b, &rwr, &rbad)) }
        } else {
            for _ in 0..<batch { blackHole(ibv_post_srq_recv(s.srq, &rwr, &rbad)) }
        }
        benchmark.stopMeasurement()
        // consume them with sends a->b (d->c, whose receives come from the SRQ), through the same side
        csge.pointee = ibv_sge(addr: base, length: 8, lkey: s.lkey)
        var swr = ibv_send_wr()
        swr.sg_list = csge
        swr.num_sge = 1
        swr.opcode = IBV_WR_SEND
        swr.send_flags = IBV_SEND_SIGNALED.rawValue
        let qp = op == .postRecv ? s.a : s.d
        for _ in 0..<batch where ibv_post_send(qp, &swr, &bad) != 0 { Rig.fail("post_send (consume)") }
        rig.drain(s.cq, batch)
        rig.drain(s.rcq, batch)
    }
}

/// One rig per mode: "static" (nothing moved) and "moved" (rebuilt once, translation active).
nonisolated(unsafe) var rigs: [Bool: Rig] = [:]
func rig(moved: Bool) -> Rig {
    if let r = rigs[moved] { return r }
    let r = Rig()
    if moved { r.rebuild() }
    rigs[moved] = r
    return r
}

/// ARC counts need the Swift runtime's retain/release hooks, which crash on Swift 6.3 for Linux
/// unless the benchmark package's RuntimeInterposer trait is on (ordo-one/benchmark issue 349);
/// that trait needs ordo-one/swift-runtime-interposer, which cannot be resolved here. Set
/// FASTPATH_ARC=1 to ask for them anyway (poll_cq runs; the double's post_send crashes in the hook).
let metrics: [BenchmarkMetric] = getenv("FASTPATH_ARC") != nil
    ? [.wallClock, .mallocCountTotal, .retainCount, .releaseCount]
    : [.wallClock, .mallocCountTotal]

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: metrics,
        timeUnits: .nanoseconds,
        warmupIterations: 10,
        scalingFactor: .one,
        maxDuration: .seconds(1),
        maxIterations: 2000
    )
    // One benchmark iteration is one batch of `batch` ops, the only measured part (completions
    // are drained, receives consumed, outside startMeasurement/stopMeasurement): the figures are
    // per 64 ops.
    for moved in [false, true] {
        for op in Op.allCases {
            for target in ["direct", "shim"] {
                Benchmark("\(moved ? "moved" : "static") \(op.rawValue) \(target) x\(batch)") { benchmark in
                    let r = rig(moved: moved)
                    run(r, op, target == "shim" ? r.virt : r.real, benchmark)
                }
            }
        }
    }
}
