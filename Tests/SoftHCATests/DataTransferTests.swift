import CVerbs
import Glibc
import StableVerbsABI
import Testing
@testable import SoftHCA

/// Data moving through the double: RC/UC/UD, every opcode, SGE lists, inline data, SRQ, multicast,
/// the receive side's completion fields; the data is always checked.
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

    @Test func gatherAndScatterAcrossSGEs() throws {
        let h = Harness()
        let p = h.pair()
        let second = h.buffer(p.pdA, 64)
        p.bufA.fill("abcdef")
        second.fill("XYZ")
        p.bufB.bytes[202] = 0x55
        #expect(postRecv(p.b, [p.bufB.sge(0, 4), p.bufB.sge(100, 3), p.bufB.sge(200, 100)], id: 1) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 3), second.sge(0, 3), p.bufA.sge(3, 3)], id: 2) == 0)
        let r = try #require(pollOne(p.cqB))
        #expect(r.status == IBV_WC_SUCCESS && r.byte_len == 9 && r.wr_id == 1)
        #expect(p.bufB.string(4) == "abcX" && p.bufB.string(3, at: 100) == "YZd" && p.bufB.string(2, at: 200) == "ef")
        #expect(p.bufB.bytes[202] == 0x55, "nothing is written past the message")
        let s = try #require(pollOne(p.cqA))
        #expect(s.wr_id == 2 && s.byte_len == 9)
    }

    @Test func rcSendWaitsForAReceiveInOrder() throws {
        let h = Harness()
        let p = h.pair()
        p.bufA.fill("first")
        #expect(postSend(p.a, [p.bufA.sge(0, 5)], id: 1) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 2)], id: 2) == 0)
        #expect(pollOne(p.cqA) == nil, "no receive yet: the RC send keeps retrying (rnr_retry 7)")
        #expect(SoftHCA.outstanding(qpNumber: p.a.pointee.qp_num)?.sends == 2)
        #expect(postRecv(p.b, [p.bufB.sge(0, 16)], id: 10) == 0)
        #expect(try #require(pollOne(p.cqA)).wr_id == 1)
        let r1 = try #require(pollOne(p.cqB))
        #expect(r1.wr_id == 10 && r1.byte_len == 5)
        #expect(pollOne(p.cqA) == nil && SoftHCA.outstanding(qpNumber: p.a.pointee.qp_num)?.sends == 1)
        #expect(postRecv(p.b, [p.bufB.sge(16, 16)], id: 11) == 0)
        #expect(try #require(pollOne(p.cqA)).wr_id == 2)
        #expect(try #require(pollOne(p.cqB)).byte_len == 2)
        #expect(SoftHCA.outstanding(qpNumber: p.a.pointee.qp_num)?.sends == 0)
    }

    @Test func unsignaledSendsCompleteSilently() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let a = h.qp(pdA, cqA, sigAll: false), b = h.qp(pdB, cqB)
        h.connect(a, 0, b, 1)
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        #expect(postRecv(b, [bufB.sge(0, 8)], id: 1) == 0)
        #expect(postRecv(b, [bufB.sge(8, 8)], id: 2) == 0)
        #expect(postSend(a, [bufA.sge(0, 4)], id: 21) == 0)
        #expect(try #require(pollOne(cqB)).wr_id == 1, "the message arrived")
        #expect(pollOne(cqA) == nil, "an unsignaled WR on a sq_sig_all=0 QP makes no completion")
        #expect(postSend(a, [bufA.sge(0, 4)], id: 22, flags: IBV_SEND_SIGNALED.rawValue) == 0)
        #expect(try #require(pollOne(cqA)).wr_id == 22)
        #expect(try #require(pollOne(cqB)).wr_id == 2)
    }

    @Test(arguments: [("devices=1", 0, 0, false), ("devices=2", 0, 1, true), ("devices=1,link=eth", 0, 0, true)])
    func loopbackAndGlobalRouting(_ config: String, _ ca: Int, _ cb: Int, _ global: Bool) throws {
        let h = Harness(config)
        let p = h.pair(ca, cb, global: global)
        p.bufA.fill("routed")
        #expect(postRecv(p.b, [p.bufB.sge()], id: 1) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 6)]) == 0)
        let r = try #require(pollOne(p.cqB))
        #expect(r.status == IBV_WC_SUCCESS && r.src_qp == p.a.pointee.qp_num && r.slid == h.portAttr(ca).lid)
        #expect(p.bufB.string(6) == "routed")
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_SUCCESS)
    }

    @Test func readIntoSeveralSGEsAndFailedCompareAndSwap() throws {
        let h = Harness()
        let p = h.pair()
        p.bufB.fill("0123456789ab")
        #expect(postRDMA(p.a, [p.bufA.sge(100, 5), p.bufA.sge(300, 7)], IBV_WR_RDMA_READ, remote: p.bufB.addr, rkey: p.bufB.rkey, id: 4) == 0)
        let rd = try #require(pollOne(p.cqA))
        #expect(rd.status == IBV_WC_SUCCESS && rd.byte_len == 12 && rd.wr_id == 4)
        #expect(p.bufA.string(5, at: 100) == "01234" && p.bufA.string(7, at: 300) == "56789ab")

        let target = (p.bufB.base + 64).assumingMemoryBound(to: UInt64.self)
        target.pointee = 7
        #expect(postSend(p.a, [p.bufA.sge(64, 8)], opcode: IBV_WR_ATOMIC_CMP_AND_SWP) { wr in
            wr.wr.atomic.remote_addr = p.bufB.addr + 64
            wr.wr.atomic.rkey = p.bufB.rkey
            wr.wr.atomic.compare_add = 1
            wr.wr.atomic.swap = 1000
        } == 0)
        let cas = try #require(pollOne(p.cqA))
        #expect(cas.status == IBV_WC_SUCCESS && cas.byte_len == 8)
        #expect(target.pointee == 7, "compare failed: no swap")
        #expect((p.bufA.base + 64).assumingMemoryBound(to: UInt64.self).pointee == 7, "the original value comes back")
    }

    @Test func remoteAccessUsesTheRegisteredIOVAAndTheRKey() throws {
        let h = Harness("keys=distinct")
        let p = h.pair()
        let base = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        let mr = try #require(h.L.reg_mr_iova2!(p.pdB, base, 256, 0x10000, UInt32(accessAll)))
        #expect(mr.pointee.addr == base && mr.pointee.length == 256 && mr.pointee.lkey != mr.pointee.rkey)
        p.bufA.fill("at iova")
        #expect(postRDMA(p.a, [p.bufA.sge(0, 7)], IBV_WR_RDMA_WRITE, remote: 0x10000 + 8, rkey: mr.pointee.rkey) == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_SUCCESS)
        #expect(String(decoding: UnsafeRawBufferPointer(start: base + 8, count: 7), as: UTF8.self) == "at iova")
        // The lkey is no remote key, and the host address is not the region's iova.
        #expect(postRDMA(p.a, [p.bufA.sge(0, 7)], IBV_WR_RDMA_WRITE, remote: 0x10000, rkey: mr.pointee.lkey) == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_REM_ACCESS_ERR)
        let q = h.pair()
        let mr2 = try #require(h.L.reg_mr_iova2!(q.pdB, base, 256, 0x10000, UInt32(accessAll)))
        #expect(postRDMA(q.a, [q.bufA.sge(0, 7)], IBV_WR_RDMA_WRITE, remote: UInt64(UInt(bitPattern: base)), rkey: mr2.pointee.rkey) == 0)
        #expect(try #require(pollOne(q.cqA)).status == IBV_WC_REM_ACCESS_ERR)
    }

    @Test func unreliableConnectedDropsWithoutAReceive() throws {
        let h = Harness()
        let p = h.pair(type: IBV_QPT_UC)
        p.bufA.fill("lost")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 1) == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_SUCCESS, "UC does not wait for the responder")
        #expect(postRecv(p.b, [p.bufB.sge()], id: 2) == 0)
        #expect(pollOne(p.cqB) == nil, "the message was dropped, not delivered late")
        p.bufA.fill("kept")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 3) == 0)
        #expect(try #require(pollOne(p.cqB)).wr_id == 2)
        #expect(p.bufB.string(4) == "kept")
        #expect(postRDMA(p.a, [p.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: p.bufB.addr + 50, rkey: p.bufB.rkey) == 0)
        #expect(p.bufB.string(4, at: 50) == "kept", "UC supports RDMA write")
    }

    @Test func unreliableDatagramOnInfiniBand() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let a = h.qp(pdA, cqA, type: IBV_QPT_UD), b = h.qp(pdB, cqB, type: IBV_QPT_UD)
        for q in [a, b] { h.toInit(q); h.toRTR(q, remote: 0, remoteQP: 0); h.toRTS(q) }
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        var attr = ibv_ah_attr()
        attr.dlid = h.portAttr(1).lid
        attr.port_num = 1
        attr.sl = 3
        let ah = try #require(h.L.create_ah!(pdA, &attr))
        func send(_ len: Int, qkey: UInt32, imm: UInt32? = nil) -> Int32 {
            postSend(a, [bufA.sge(0, len)], opcode: imm == nil ? IBV_WR_SEND : IBV_WR_SEND_WITH_IMM, imm: imm ?? 0) { wr in
                wr.wr.ud.ah = ah
                wr.wr.ud.remote_qpn = b.pointee.qp_num
                wr.wr.ud.remote_qkey = qkey
            }
        }
        for i in 0..<40 { bufB.bytes[i] = 0xEE }
        bufA.fill("hello")
        #expect(postRecv(b, [bufB.sge(0, 40 + 64)], id: 5) == 0)
        #expect(send(5, qkey: 0x11111111, imm: 77) == 0)
        #expect(try #require(pollOne(cqA)).status == IBV_WC_SUCCESS)
        let r = try #require(pollOne(cqB))
        #expect(r.status == IBV_WC_SUCCESS && r.opcode == IBV_WC_RECV && r.byte_len == 45, "UD byte_len counts the 40-byte GRH space")
        #expect(r.qp_num == b.pointee.qp_num && r.src_qp == a.pointee.qp_num && r.slid == h.portAttr(0).lid && r.sl == 3)
        #expect(r.wc_flags & IBV_WC_GRH.rawValue == 0 && r.wc_flags & IBV_WC_WITH_IMM.rawValue != 0 && r.imm_data == 77)
        #expect(bufB.bytes[0] == 0xEE && bufB.bytes[39] == 0xEE, "without a GRH the first 40 bytes are left alone")
        #expect(bufB.string(5, at: 40) == "hello")

        // A wrong Q_Key drops the datagram and counts a violation; the sender still succeeds.
        #expect(postRecv(b, [bufB.sge(0, 40 + 64)], id: 6) == 0)
        let violations = h.portAttr(1).qkey_viol_cntr
        #expect(send(5, qkey: 0x2222) == 0)
        #expect(try #require(pollOne(cqA)).status == IBV_WC_SUCCESS)
        #expect(pollOne(cqB) == nil)
        #expect(h.portAttr(1).qkey_viol_cntr == violations + 1)
        // A Q_Key with the high bit set means "use the sender QP's own Q_Key" (0x11111111 here).
        #expect(send(3, qkey: 0x8000_0000) == 0)
        #expect(try #require(pollOne(cqB)).wr_id == 6)
        _ = pollOne(cqA)

        // No receive posted: the datagram is dropped, nothing arrives later.
        #expect(send(3, qkey: 0x11111111) == 0)
        #expect(postRecv(b, [bufB.sge(0, 40 + 64)], id: 7) == 0)
        #expect(pollOne(cqB) == nil)
    }

    @Test func replyingWithAnAddressHandleFromTheCompletion() throws {
        let h = Harness("devices=2,link=eth")
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let a = h.qp(pdA, cqA, type: IBV_QPT_UD), b = h.qp(pdB, cqB, type: IBV_QPT_UD)
        for q in [a, b] { h.toInit(q); h.toRTR(q, remote: 0, remoteQP: 0); h.toRTS(q) }
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        var attr = ibv_ah_attr()
        attr.port_num = 1
        attr.is_global = 1
        attr.grh.dgid = h.gid(1, 1)
        attr.grh.sgid_index = 1
        attr.grh.hop_limit = 64
        let ah = try #require(h.L.create_ah!(pdA, &attr))
        #expect(postRecv(b, [bufB.sge(0, 128)], id: 1) == 0)
        #expect(postRecv(a, [bufA.sge(512, 128)], id: 2) == 0)
        bufA.fill("ping")
        #expect(postSend(a, [bufA.sge(0, 4)]) { wr in
            wr.wr.ud.ah = ah
            wr.wr.ud.remote_qpn = b.pointee.qp_num
            wr.wr.ud.remote_qkey = 0x11111111
        } == 0)
        #expect(try #require(pollOne(cqA)).opcode == IBV_WC_SEND, "the ping's own completion")
        var wc = try #require(pollOne(cqB))
        #expect(wc.wc_flags & IBV_WC_GRH.rawValue != 0)
        let grh = bufB.base.assumingMemoryBound(to: ibv_grh.self)
        #expect(GID(grh.pointee.sgid) == GID(h.gid(0, 1)) && GID(grh.pointee.dgid) == GID(h.gid(1, 1)))
        #expect(UInt16(bigEndian: grh.pointee.paylen) == 4 && grh.pointee.hop_limit == 64)
        var back = ibv_ah_attr()
        #expect(h.L.init_ah_from_wc!(h.contexts[1], 1, &wc, grh, &back) == 0)
        #expect(back.is_global == 1 && GID(back.grh.dgid) == GID(h.gid(0, 1)) && back.grh.sgid_index == 1)
        let reply = try #require(h.L.create_ah!(pdB, &back))
        bufB.fill("pong")
        #expect(postSend(b, [bufB.sge(0, 4)]) { wr in
            wr.wr.ud.ah = reply
            wr.wr.ud.remote_qpn = wc.src_qp
            wr.wr.ud.remote_qkey = 0x11111111
        } == 0)
        let r = try #require(pollOne(cqA))
        #expect(r.status == IBV_WC_SUCCESS && r.wr_id == 2 && r.byte_len == 44)
        #expect(bufA.string(4, at: 512 + 40) == "pong")
    }

    @Test func multicastReachesEveryAttachedQP() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let a = h.qp(pdA, cqA, type: IBV_QPT_UD)
        let b1 = h.qp(pdB, cqB, type: IBV_QPT_UD), b2 = h.qp(pdA, cqA, type: IBV_QPT_UD)
        for q in [a, b1, b2] { h.toInit(q); h.toRTR(q, remote: 0, remoteQP: 0); h.toRTS(q) }
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        var mgid = ibv_gid()
        withUnsafeMutableBytes(of: &mgid) { $0[0] = 0xff; $0[1] = 0x12; $0[15] = 1 }
        #expect(h.L.attach_mcast!(b1, &mgid, 0xC001) == 0)
        #expect(h.L.attach_mcast!(b2, &mgid, 0xC001) == 0)
        #expect(h.L.attach_mcast!(b2, &mgid, 0xC001) == 0, "attaching twice is harmless")
        var attr = ibv_ah_attr()
        attr.port_num = 1
        attr.dlid = 0xC001
        attr.is_global = 1
        attr.grh.dgid = mgid
        let ah = try #require(h.L.create_ah!(pdA, &attr))
        func send() -> Int32 {
            postSend(a, [bufA.sge(0, 5)], id: 9) { wr in
                wr.wr.ud.ah = ah
                wr.wr.ud.remote_qpn = 0xFF_FFFF
                wr.wr.ud.remote_qkey = 0x11111111
            }
        }
        #expect(postRecv(b1, [bufB.sge(0, 100)], id: 1) == 0)
        #expect(postRecv(b1, [bufB.sge(100, 100)], id: 3) == 0)
        #expect(postRecv(b2, [bufA.sge(1000, 100)], id: 2) == 0)
        bufA.fill("group")
        #expect(send() == 0)
        let r1 = try #require(pollOne(cqB))
        #expect(r1.wr_id == 1 && r1.byte_len == 45 && r1.wc_flags & IBV_WC_GRH.rawValue != 0 && bufB.string(5, at: 40) == "group")
        let onA = poll(cqA)
        #expect(onA.count == 2 && Set(onA.map(\.wr_id)) == [9, 2], "the send's completion and b2's receive")
        #expect(bufA.string(5, at: 1040) == "group")
        #expect(h.L.detach_mcast!(b2, &mgid, 0xC001) == 0)
        #expect(send() == 0)
        #expect(try #require(pollOne(cqB)).wr_id == 3)
        #expect(poll(cqA).map(\.wr_id) == [9], "b2 left the group")
    }

    @Test func newPostAPIBuildsEveryOpcode() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let (a, ax) = h.qpEx(0, pdA, cqA)
        #expect(UnsafeMutableRawPointer(ax) == UnsafeMutableRawPointer(a), "ibv_qp_ex starts with its ibv_qp")
        let b = h.qp(pdB, cqB)
        h.connect(a, 0, b, 1)
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        for i in 0..<3 { #expect(postRecv(b, [bufB.sge(64 * i, 64)], id: 100 + UInt64(i)) == 0) }
        bufA.fill("inline via builder")
        let word = (bufB.base + 1024).assumingMemoryBound(to: UInt64.self)
        word.pointee = 5
        let signaled = IBV_SEND_SIGNALED.rawValue
        let q = ax.pointee
        q.wr_start!(ax)
        ax.pointee.wr_id = 1; ax.pointee.wr_flags = signaled | IBV_SEND_INLINE.rawValue
        q.wr_send!(ax); q.wr_set_inline_data!(ax, bufA.base, 18)
        ax.pointee.wr_id = 2; ax.pointee.wr_flags = signaled
        q.wr_send_imm!(ax, 0xabcd); q.wr_set_sge!(ax, bufA.lkey, bufA.addr, 6)
        ax.pointee.wr_id = 3
        q.wr_rdma_write!(ax, bufB.rkey, bufB.addr + 512)
        var list = [bufA.sge(0, 3), bufA.sge(7, 3)]
        q.wr_set_sge_list!(ax, 2, &list)
        ax.pointee.wr_id = 4
        q.wr_rdma_read!(ax, bufB.rkey, bufB.addr + 512); q.wr_set_sge!(ax, bufA.lkey, bufA.addr + 256, 6)
        ax.pointee.wr_id = 5
        q.wr_atomic_fetch_add!(ax, bufB.rkey, bufB.addr + 1024, 10); q.wr_set_sge!(ax, bufA.lkey, bufA.addr + 1024, 8)
        ax.pointee.wr_id = 6
        q.wr_atomic_cmp_swp!(ax, bufB.rkey, bufB.addr + 1024, 15, 99); q.wr_set_sge!(ax, bufA.lkey, bufA.addr + 1032, 8)
        ax.pointee.wr_id = 7; ax.pointee.wr_flags = 0
        q.wr_rdma_write_imm!(ax, bufB.rkey, bufB.addr + 2048, 0x77)
        var pieces = [ibv_data_buf(addr: bufA.base + 11, length: 3), ibv_data_buf(addr: bufA.base + 14, length: 4)]
        q.wr_set_inline_data_list!(ax, 2, &pieces)
        bufA.bytes[0] = UInt8(ascii: "I")  // inline data was copied by the setter
        #expect(pollOne(cqB) == nil, "nothing runs before wr_complete")
        #expect(q.wr_complete!(ax) == 0)

        let sends = poll(cqA)
        #expect(sends.map(\.wr_id) == [1, 2, 3, 4, 5, 6], "the unsignaled WR 7 makes no completion (sq_sig_all = 0)")
        #expect(sends.map(\.opcode) == [IBV_WC_SEND, IBV_WC_SEND, IBV_WC_RDMA_WRITE, IBV_WC_RDMA_READ, IBV_WC_FETCH_ADD, IBV_WC_COMP_SWAP])
        #expect(sends.allSatisfy { $0.status == IBV_WC_SUCCESS && $0.qp_num == a.pointee.qp_num })
        let recvs = poll(cqB)
        #expect(recvs.map(\.wr_id) == [100, 101, 102])
        #expect(recvs.map(\.opcode) == [IBV_WC_RECV, IBV_WC_RECV, IBV_WC_RECV_RDMA_WITH_IMM])
        #expect(recvs[0].byte_len == 18 && recvs[0].wc_flags & IBV_WC_WITH_IMM.rawValue == 0)
        #expect(recvs[1].imm_data == 0xabcd && recvs[2].imm_data == 0x77 && recvs[2].byte_len == 7)
        #expect(bufB.string(18) == "inline via builder" && bufB.string(6, at: 64) == "Inline")
        #expect(bufB.string(6, at: 512) == "Inlvia" && bufA.string(6, at: 256) == "Inlvia")
        #expect((bufA.base + 1024).assumingMemoryBound(to: UInt64.self).pointee == 5)
        #expect((bufA.base + 1032).assumingMemoryBound(to: UInt64.self).pointee == 15)
        #expect(word.pointee == 99)
        #expect(bufB.string(7, at: 2048) == "builder")
    }

    @Test func newPostAPIBatchesAreAllOrNothing() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let (a, ax) = h.qpEx(0, pdA, cqA)
        let b = h.qp(pdB, cqB)
        h.connect(a, 0, b, 1)
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        #expect(postRecv(b, [bufB.sge()], id: 1) == 0)
        let q = ax.pointee
        // Aborted: nothing was posted.
        q.wr_start!(ax)
        ax.pointee.wr_flags = IBV_SEND_SIGNALED.rawValue
        q.wr_send!(ax); q.wr_set_sge!(ax, bufA.lkey, bufA.addr, 4)
        q.wr_abort!(ax)
        #expect(pollOne(cqA) == nil && pollOne(cqB) == nil)
        #expect(SoftHCA.outstanding(qpNumber: b.pointee.qp_num)?.receives == 1)
        // One bad WR (inline data over max_inline_data) fails the batch with ENOMEM; the good one before it is not posted.
        q.wr_start!(ax)
        q.wr_send!(ax); q.wr_set_sge!(ax, bufA.lkey, bufA.addr, 4)
        q.wr_send!(ax); q.wr_set_inline_data!(ax, bufA.base, 65)
        #expect(q.wr_complete!(ax) == ENOMEM)
        #expect(pollOne(cqA) == nil && pollOne(cqB) == nil)
        // A setter with no WR to amend, and an opcode the transport lacks.
        q.wr_start!(ax)
        q.wr_set_sge!(ax, bufA.lkey, bufA.addr, 4)
        #expect(q.wr_complete!(ax) == EINVAL)
        let pdU = h.pd(0), cqU = h.cq(0)
        let (_, ux) = h.qpEx(0, pdU, cqU, type: IBV_QPT_UD)
        ux.pointee.wr_start!(ux)
        ux.pointee.wr_rdma_write!(ux, 1, 0)
        #expect(ux.pointee.wr_complete!(ux) == EOPNOTSUPP)
        // Posting before RTS is refused, like ibv_post_send.
        let (early, ex) = h.qpEx(0, pdA, cqA)
        h.toInit(early)
        ex.pointee.wr_start!(ex)
        ex.pointee.wr_send!(ex); ex.pointee.wr_set_sge!(ex, bufA.lkey, bufA.addr, 4)
        #expect(ex.pointee.wr_complete!(ex) == EINVAL)
        // The good batch goes through.
        q.wr_start!(ax)
        ax.pointee.wr_id = 42
        ax.pointee.wr_flags = IBV_SEND_SIGNALED.rawValue
        q.wr_send!(ax); q.wr_set_sge!(ax, bufA.lkey, bufA.addr, 4)
        #expect(q.wr_complete!(ax) == 0)
        #expect(try #require(pollOne(cqA)).wr_id == 42)
        #expect(try #require(pollOne(cqB)).wr_id == 1)
    }

    @Test func newPostAPIOnUnreliableDatagram() throws {
        let h = Harness("devices=2,link=eth")
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let (a, ax) = h.qpEx(0, pdA, cqA, type: IBV_QPT_UD)
        let b = h.qp(pdB, cqB, type: IBV_QPT_UD)
        for q in [a, b] { h.toInit(q); h.toRTR(q, remote: 0, remoteQP: 0); h.toRTS(q) }
        let bufB = h.buffer(pdB)
        var attr = ibv_ah_attr()
        attr.port_num = 1
        attr.is_global = 1
        attr.grh.dgid = h.gid(1, 0)
        let ah = try #require(h.L.create_ah!(pdA, &attr))
        #expect(postRecv(b, [bufB.sge(0, 100)], id: 8) == 0)
        var msg = Array("datagram via builder".utf8)
        ax.pointee.wr_start!(ax)
        ax.pointee.wr_id = 3
        ax.pointee.wr_flags = IBV_SEND_SIGNALED.rawValue
        ax.pointee.wr_send_imm!(ax, 5)
        ax.pointee.wr_set_ud_addr!(ax, ah, b.pointee.qp_num, 0x11111111)
        msg.withUnsafeMutableBytes { ax.pointee.wr_set_inline_data!(ax, $0.baseAddress, $0.count) }
        #expect(ax.pointee.wr_complete!(ax) == 0)
        #expect(try #require(pollOne(cqA)).wr_id == 3)
        let r = try #require(pollOne(cqB))
        #expect(r.byte_len == 40 + 20 && r.imm_data == 5 && r.src_qp == a.pointee.qp_num)
        #expect(bufB.string(20, at: 40) == "datagram via builder")
        // Without an address the WR cannot go.
        ax.pointee.wr_start!(ax)
        ax.pointee.wr_send!(ax)
        msg.withUnsafeMutableBytes { ax.pointee.wr_set_inline_data!(ax, $0.baseAddress, 4) }
        #expect(ax.pointee.wr_complete!(ax) == EINVAL)
    }

    @Test func extendedCompletionQueuePolling() throws {
        let h = Harness()
        let p = h.pair()
        var attr = ibv_cq_init_attr_ex()
        attr.cqe = 8
        attr.wc_flags = UInt64(IBV_WC_EX_WITH_BYTE_LEN.rawValue | IBV_WC_EX_WITH_IMM.rawValue | IBV_WC_EX_WITH_QP_NUM.rawValue |
            IBV_WC_EX_WITH_SRC_QP.rawValue | IBV_WC_EX_WITH_SLID.rawValue)
        let ctx = h.contexts[1]
        let cqx = try #require(verbsContext(ctx)?.pointee.create_cq_ex!(ctx, &attr))
        let cq = ibv_cq_ex_to_cq(cqx)!
        #expect(cq.pointee.context == ctx && cq.pointee.cqe == 8)
        let pdB = h.pd(1)
        let b = h.qp(pdB, cq)
        let a = h.qp(p.pdA, p.cqA)
        h.connect(a, 0, b, 1)
        let bufB = h.buffer(pdB)
        var pollAttr = ibv_poll_cq_attr()
        #expect(cqx.pointee.start_poll!(cqx, &pollAttr) == ENOENT, "empty")
        #expect(postRecv(b, [bufB.sge(0, 64)], id: 1) == 0)
        #expect(postRecv(b, [bufB.sge(64, 64)], id: 2) == 0)
        #expect(postSend(a, [p.bufA.sge(0, 10)], opcode: IBV_WR_SEND_WITH_IMM, imm: 0x55) == 0)
        #expect(postSend(a, [p.bufA.sge(0, 3)]) == 0)
        #expect(cqx.pointee.start_poll!(cqx, &pollAttr) == 0)
        #expect(cqx.pointee.wr_id == 1 && cqx.pointee.status == IBV_WC_SUCCESS)
        #expect(cqx.pointee.read_opcode!(cqx) == IBV_WC_RECV && cqx.pointee.read_byte_len!(cqx) == 10)
        #expect(cqx.pointee.read_imm_data!(cqx) == 0x55 && cqx.pointee.read_wc_flags!(cqx) & IBV_WC_WITH_IMM.rawValue != 0)
        #expect(cqx.pointee.read_qp_num!(cqx) == b.pointee.qp_num && cqx.pointee.read_src_qp!(cqx) == a.pointee.qp_num)
        #expect(cqx.pointee.read_slid!(cqx) == UInt32(h.portAttr(0).lid))
        #expect(cqx.pointee.next_poll!(cqx) == 0)
        #expect(cqx.pointee.wr_id == 2 && cqx.pointee.read_byte_len!(cqx) == 3)
        #expect(cqx.pointee.next_poll!(cqx) == ENOENT)
        cqx.pointee.end_poll!(cqx)
        #expect(h.L.destroy_qp!(b) == 0)
        #expect(h.L.destroy_cq!(cq) == 0)
    }

    @Test func queryReportsWhatModifySet() throws {
        let h = Harness()
        let p = h.pair()
        #expect(p.a.pointee.state == IBV_QPS_RTS, "modify_qp keeps qp->state current like libibverbs")
        var a = ibv_qp_attr(), i = ibv_qp_init_attr()
        #expect(h.L.query_qp!(p.a, &a, Int32(IBV_QP_STATE.rawValue | IBV_QP_CAP.rawValue), &i) == 0)
        #expect(a.qp_state == IBV_QPS_RTS && a.dest_qp_num == p.b.pointee.qp_num && a.path_mtu == IBV_MTU_1024)
        #expect(a.qp_access_flags == UInt32(accessAll) && a.timeout == 14 && a.retry_cnt == 7 && a.max_rd_atomic == 4)
        #expect(a.ah_attr.dlid == h.portAttr(1).lid && a.port_num == 1)
        #expect(a.cap.max_send_wr == 16 && a.cap.max_inline_data == 64)
        #expect(i.send_cq == p.cqA && i.recv_cq == p.cqA && i.qp_type == IBV_QPT_RC && i.sq_sig_all == 1)
    }

    @Test func sendQueueDrainedStateHoldsNewWork() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRecv(p.b, [p.bufB.sge()], id: 1) == 0)
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_SQD
        #expect(h.modify(p.a, attr, [IBV_QP_STATE]) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 5) == 0, "posting in SQD is allowed")
        #expect(pollOne(p.cqA) == nil && SoftHCA.outstanding(qpNumber: p.a.pointee.qp_num)?.sends == 1)
        attr.qp_state = IBV_QPS_RTS
        #expect(h.modify(p.a, attr, [IBV_QP_STATE]) == 0)
        #expect(try #require(pollOne(p.cqA)).wr_id == 5)
        #expect(try #require(pollOne(p.cqB)).wr_id == 1)
    }

    @Test func errorStateFlushesAndResetStartsOver() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRecv(p.a, [p.bufA.sge(0, 8)], id: 1) == 0)
        #expect(postRecv(p.a, [p.bufA.sge(8, 8)], id: 2) == 0)
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_ERR
        #expect(h.modify(p.a, attr, [IBV_QP_STATE]) == 0)
        let flushed = poll(p.cqA)
        #expect(flushed.map(\.wr_id) == [1, 2] && flushed.allSatisfy { $0.status == IBV_WC_WR_FLUSH_ERR && $0.qp_num == p.a.pointee.qp_num })
        #expect(postRecv(p.a, [p.bufA.sge(0, 8)], id: 3) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 8)], id: 4) == 0)
        #expect(poll(p.cqA).map { ($0.wr_id, $0.status == IBV_WC_WR_FLUSH_ERR) } .elementsEqual([(3, true), (4, true)], by: ==),
                "work posted in ERR completes at once with a flush error")
        // Back through RESET the QP is usable again.
        attr.qp_state = IBV_QPS_RESET
        #expect(h.modify(p.a, attr, [IBV_QP_STATE]) == 0)
        #expect(h.qpState(p.a) == IBV_QPS_RESET)
        h.toInit(p.a)
        h.toRTR(p.a, remote: 1, remoteQP: p.b.pointee.qp_num)
        h.toRTS(p.a)
        p.bufA.fill("again")
        #expect(postRecv(p.b, [p.bufB.sge()], id: 9) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 5)], id: 10) == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_SUCCESS)
        #expect(try #require(pollOne(p.cqB)).wr_id == 9 && p.bufB.string(5) == "again")
    }
}
