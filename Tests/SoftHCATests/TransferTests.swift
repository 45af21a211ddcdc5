import CVerbs
import Glibc
import Testing
@testable import SoftHCA

extension SoftHCATests {
    @Test(arguments: ["devices=2,link=ib", "devices=2,link=eth"])
    func sendWithImmediateCarriesDataAndIdentities(_ config: String) throws {
        let h = Harness(config)
        let p = h.pair()
        p.bufA.fill("hello, responder")
        #expect(postRecv(p.b, [p.bufB.sge()], id: 7) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 17)], id: 9, opcode: IBV_WR_SEND_WITH_IMM, imm: 0x1234_5678) == 0)
        let s = try #require(pollOne(p.cqA))
        #expect(s.status == IBV_WC_SUCCESS && s.wr_id == 9 && s.opcode == IBV_WC_SEND)
        let r = try #require(pollOne(p.cqB))
        #expect(r.status == IBV_WC_SUCCESS && r.wr_id == 7 && r.opcode == IBV_WC_RECV && r.byte_len == 17)
        #expect(r.wc_flags & IBV_WC_WITH_IMM.rawValue != 0 && r.imm_data == 0x1234_5678)
        #expect(r.qp_num == p.b.pointee.qp_num && r.src_qp == p.a.pointee.qp_num)
        #expect(r.slid == h.portAttr(0).lid)
        #expect(p.bufB.string(16) == "hello, responder")
        #expect(pollOne(p.cqA) == nil && pollOne(p.cqB) == nil)
    }

    @Test func inlineSendCopiesAtPostTime() throws {
        let h = Harness()
        let p = h.pair()
        p.bufA.fill("inline!")
        #expect(postRecv(p.b, [p.bufB.sge()]) == 0)
        // An inline SGE's lkey is not checked (may be anything), and the buffer is free at once.
        var sge = p.bufA.sge(0, 8)
        sge.lkey = 0xdead_beef
        #expect(postSend(p.a, [sge], flags: IBV_SEND_INLINE.rawValue) == 0)
        p.bufA.fill("changed")
        #expect(try #require(pollOne(p.cqB)).byte_len == 8)
        #expect(p.bufB.string(7) == "inline!")
    }

    @Test func rdmaWriteReadAndAtomics() throws {
        let h = Harness()
        let p = h.pair()
        p.bufA.fill("written remotely")
        #expect(postSend(p.a, [p.bufA.sge(0, 16)], opcode: IBV_WR_RDMA_WRITE) { wr in
            wr.wr.rdma.remote_addr = p.bufB.addr + 100
            wr.wr.rdma.rkey = p.bufB.rkey
        } == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_SUCCESS)
        #expect(p.bufB.string(16, at: 100) == "written remotely")
        #expect(pollOne(p.cqB) == nil) // a plain write consumes no receive

        p.bufB.fill("read me back")
        #expect(postSend(p.a, [p.bufA.sge(200, 12)], opcode: IBV_WR_RDMA_READ) { wr in
            wr.wr.rdma.remote_addr = p.bufB.addr
            wr.wr.rdma.rkey = p.bufB.rkey
        } == 0)
        let rd = try #require(pollOne(p.cqA))
        #expect(rd.status == IBV_WC_SUCCESS && rd.opcode == IBV_WC_RDMA_READ)
        #expect(p.bufA.string(12, at: 200) == "read me back")

        let target = (p.bufB.base + 512).assumingMemoryBound(to: UInt64.self)
        target.pointee = 40
        let result = (p.bufA.base + 512).assumingMemoryBound(to: UInt64.self)
        #expect(postSend(p.a, [p.bufA.sge(512, 8)], opcode: IBV_WR_ATOMIC_FETCH_AND_ADD) { wr in
            wr.wr.atomic.remote_addr = p.bufB.addr + 512
            wr.wr.atomic.rkey = p.bufB.rkey
            wr.wr.atomic.compare_add = 2
        } == 0)
        #expect(try #require(pollOne(p.cqA)).opcode == IBV_WC_FETCH_ADD)
        #expect(result.pointee == 40 && target.pointee == 42)
        #expect(postSend(p.a, [p.bufA.sge(512, 8)], opcode: IBV_WR_ATOMIC_CMP_AND_SWP) { wr in
            wr.wr.atomic.remote_addr = p.bufB.addr + 512
            wr.wr.atomic.rkey = p.bufB.rkey
            wr.wr.atomic.compare_add = 42
            wr.wr.atomic.swap = 7
        } == 0)
        #expect(try #require(pollOne(p.cqA)).opcode == IBV_WC_COMP_SWAP)
        #expect(result.pointee == 42 && target.pointee == 7)
    }

    @Test func writeWithImmediateConsumesAReceive() throws {
        let h = Harness()
        let p = h.pair()
        p.bufA.fill("wimm")
        #expect(postRecv(p.b, [p.bufB.sge(0, 16)], id: 3) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], opcode: IBV_WR_RDMA_WRITE_WITH_IMM, imm: 99) { wr in
            wr.wr.rdma.remote_addr = p.bufB.addr + 1000
            wr.wr.rdma.rkey = p.bufB.rkey
        } == 0)
        let r = try #require(pollOne(p.cqB))
        #expect(r.opcode == IBV_WC_RECV_RDMA_WITH_IMM && r.imm_data == 99 && r.wr_id == 3)
        #expect(p.bufB.string(4, at: 1000) == "wimm")
    }

    @Test func sharedReceiveQueueServesManyQPs() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1)
        let cqA = h.cq(0, 256), cqB = h.cq(1, 256)
        var sa = ibv_srq_init_attr()
        sa.attr.max_wr = 64
        sa.attr.max_sge = 1
        let srq = try #require(h.L.create_srq!(pdB, &sa))
        let bufB = h.buffer(pdB, 64 * 64), bufA = h.buffer(pdA)
        for i in 0..<64 {
            var sge = bufB.sge(i * 64, 64)
            var wr = ibv_recv_wr()
            wr.wr_id = UInt64(i)
            wr.num_sge = 1
            var bad: UnsafeMutablePointer<ibv_recv_wr>?
            withUnsafeMutablePointer(to: &sge) { wr.sg_list = $0; #expect(ibv_post_srq_recv(srq, &wr, &bad) == 0) }
        }
        var senders: [QP] = [], receivers: [QP] = []
        for _ in 0..<8 {
            let a = h.qp(pdA, cqA), b = h.qp(pdB, cqB, srq: srq)
            h.connect(a, 0, b, 1)
            senders.append(a); receivers.append(b)
        }
        for (i, a) in senders.enumerated() {
            bufA.bytes[0] = UInt8(i)
            #expect(postSend(a, [bufA.sge(0, 1)], flags: IBV_SEND_INLINE.rawValue) == 0)
        }
        let got = poll(cqB, max: 16)
        #expect(got.count == 8)
        for wc in got {
            let i = try #require(receivers.firstIndex { $0.pointee.qp_num == wc.qp_num })
            #expect(bufB.bytes[Int(wc.wr_id) * 64] == UInt8(i), "completion of QP \(i) carries its own data")
        }
    }

    @Test func unreliableDatagramWithAddressHandleAndGRH() throws {
        let h = Harness("devices=2,link=eth")
        let pdA = h.pd(0), pdB = h.pd(1)
        let cqA = h.cq(0), cqB = h.cq(1)
        let a = h.qp(pdA, cqA, type: IBV_QPT_UD), b = h.qp(pdB, cqB, type: IBV_QPT_UD)
        for q in [a, b] { h.toInit(q); h.toRTR(q, remote: 0, remoteQP: 0); h.toRTS(q) }
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        var ah = ibv_ah_attr()
        ah.port_num = 1
        ah.is_global = 1
        ah.grh.dgid = h.gid(1, 0)
        ah.grh.hop_limit = 1
        let handle = try #require(h.L.create_ah!(pdA, &ah))
        #expect(postRecv(b, [bufB.sge(0, 40 + 32)], id: 5) == 0)
        bufA.fill("datagram")
        #expect(postSend(a, [bufA.sge(0, 8)]) { wr in
            wr.wr.ud.ah = handle
            wr.wr.ud.remote_qpn = b.pointee.qp_num
            wr.wr.ud.remote_qkey = 0x11111111
        } == 0)
        #expect(try #require(pollOne(cqA)).status == IBV_WC_SUCCESS)
        let r = try #require(pollOne(cqB))
        #expect(r.status == IBV_WC_SUCCESS && r.byte_len == 40 + 8 && r.src_qp == a.pointee.qp_num)
        #expect(r.wc_flags & IBV_WC_GRH.rawValue != 0)
        #expect(bufB.string(8, at: 40) == "datagram")
    }
}
