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
