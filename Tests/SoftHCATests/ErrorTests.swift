import CVerbs
import Glibc
import StableVerbsABI
import Testing
@testable import SoftHCA

/// Wrong input and misuse: bad keys and access rights complete with the status an HCA reports (and
/// put the QPs in error), malformed work requests and bad transitions are refused with the errno
/// rdma-core/rxe return, busy objects cannot be destroyed.
extension SoftHCATests {
    @Test func badKeysCompleteInError() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postSend(p.a, [p.bufA.sge(0, 8)], opcode: IBV_WR_RDMA_WRITE) { wr in
            wr.wr.rdma.remote_addr = p.bufB.addr
            wr.wr.rdma.rkey = p.bufB.rkey ^ 0x5a5a
        } == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_REM_ACCESS_ERR)

        let q = h.pair()
        var sge = q.bufA.sge(0, 8)
        sge.lkey ^= 0x5a5a
        #expect(postSend(q.a, [sge], opcode: IBV_WR_RDMA_WRITE) { wr in
            wr.wr.rdma.remote_addr = q.bufB.addr
            wr.wr.rdma.rkey = q.bufB.rkey
        } == 0)
        #expect(try #require(pollOne(q.cqA)).status == IBV_WC_LOC_PROT_ERR)
        // The QP is in error now: later work is flushed.
        #expect(postSend(q.a, [q.bufA.sge(0, 8)], id: 2) == 0)
        let flushed = try #require(pollOne(q.cqA))
        #expect(flushed.status == IBV_WC_WR_FLUSH_ERR && flushed.wr_id == 2)
    }

    @Test func invalidTransitionsAndBusyObjects() throws {
        let h = Harness()
        let pd = h.pd()
        let cq = h.cq()
        let qp = h.qp(pd, cq)
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_RTS
        #expect(h.modify(qp, a, [IBV_QP_STATE]) == EINVAL, "RESET -> RTS is not a valid transition")
        a.qp_state = IBV_QPS_INIT
        #expect(h.modify(qp, a, [IBV_QP_STATE]) == EINVAL, "RESET -> INIT needs pkey, port and access")
        h.toInit(qp)
        #expect(h.L.dealloc_pd!(pd) == EBUSY, "a PD with a QP on it is busy")
        #expect(h.L.destroy_cq!(cq) == EBUSY, "a CQ with a QP on it is busy")
        #expect(h.L.destroy_qp!(qp) == 0)
        #expect(h.L.destroy_cq!(cq) == 0)
        #expect(h.L.dealloc_pd!(pd) == 0)
    }

    @Test func badRemoteKeyOnReadPutsTheResponderInError() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRDMA(p.a, [p.bufA.sge(0, 8)], IBV_WR_RDMA_READ, remote: p.bufB.addr, rkey: p.bufB.rkey &+ 1, id: 3) == 0)
        let wc = try #require(pollOne(p.cqA))
        #expect(wc.status == IBV_WC_REM_ACCESS_ERR && wc.wr_id == 3 && wc.opcode == IBV_WC_RDMA_READ && wc.qp_num == p.a.pointee.qp_num)
        #expect(h.qpState(p.a) == IBV_QPS_ERR && h.qpState(p.b) == IBV_QPS_ERR)
        let events = h.asyncEvents(1)
        #expect(events.count == 1 && events.first?.event_type == IBV_EVENT_QP_ACCESS_ERR && events.first?.element.qp == p.b,
                "the responder's owner learns of the access violation")
        #expect(h.asyncEvents(0).isEmpty)
    }

    @Test func remoteAccessNeedsTheQPAndTheRegionToAllowIt() throws {
        let h = Harness()
        // The responder QP allows local write only.
        do {
            let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
            let a = h.qp(pdA, cqA), b = h.qp(pdB, cqB)
            h.toInit(a)
            h.toInit(b, access: Int32(IBV_ACCESS_LOCAL_WRITE.rawValue))
            h.toRTR(a, remote: 1, remoteQP: b.pointee.qp_num); h.toRTR(b, remote: 0, remoteQP: a.pointee.qp_num)
            h.toRTS(a); h.toRTS(b)
            let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
            #expect(postRDMA(a, [bufA.sge(0, 8)], IBV_WR_RDMA_WRITE, remote: bufB.addr, rkey: bufB.rkey) == 0)
            #expect(try #require(pollOne(cqA)).status == IBV_WC_REM_ACCESS_ERR)
        }
        // The region lacks remote read / remote atomic.
        let p = h.pair()
        let local = h.buffer(p.pdB, 64, access: Int32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue))
        #expect(postRDMA(p.a, [p.bufA.sge(0, 8)], IBV_WR_RDMA_WRITE, remote: local.addr, rkey: local.rkey) == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_SUCCESS, "remote write is allowed")
        #expect(postRDMA(p.a, [p.bufA.sge(0, 8)], IBV_WR_RDMA_READ, remote: local.addr, rkey: local.rkey) == 0)
        #expect(try #require(pollOne(p.cqA)).status == IBV_WC_REM_ACCESS_ERR)
        let q = h.pair()
        let noAtomic = h.buffer(q.pdB, 64, access: Int32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_READ.rawValue))
        #expect(postSend(q.a, [q.bufA.sge(0, 8)], opcode: IBV_WR_ATOMIC_FETCH_AND_ADD) { wr in
            wr.wr.atomic.remote_addr = noAtomic.addr
            wr.wr.atomic.rkey = noAtomic.rkey
            wr.wr.atomic.compare_add = 1
        } == 0)
        #expect(try #require(pollOne(q.cqA)).status == IBV_WC_REM_ACCESS_ERR)
        // Past the end of the region.
        let r = h.pair()
        #expect(postRDMA(r.a, [r.bufA.sge(0, 16)], IBV_WR_RDMA_WRITE, remote: r.bufB.addr + 4090, rkey: r.bufB.rkey) == 0)
        #expect(try #require(pollOne(r.cqA)).status == IBV_WC_REM_ACCESS_ERR)
        #expect(r.bufB.bytes[4095] == 0, "nothing was written")
    }

    @Test func responderSideErrors() throws {
        let h = Harness()
        // A receive too small for the message: the responder reports a length error, the requester
        // an invalid request; both QPs are in error.
        let p = h.pair()
        #expect(postRecv(p.b, [p.bufB.sge(0, 4)], id: 1) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 8)], id: 2) == 0)
        let r = try #require(pollOne(p.cqB))
        #expect(r.status == IBV_WC_LOC_LEN_ERR && r.wr_id == 1 && r.qp_num == p.b.pointee.qp_num)
        let s = try #require(pollOne(p.cqA))
        #expect(s.status == IBV_WC_REM_INV_REQ_ERR && s.wr_id == 2)
        #expect(h.qpState(p.a) == IBV_QPS_ERR && h.qpState(p.b) == IBV_QPS_ERR)
        // A receive whose lkey is wrong: local protection error there, remote operational error here.
        let q = h.pair()
        var bad = q.bufB.sge(0, 64)
        bad.lkey = q.bufB.lkey &+ 0x100
        #expect(postRecv(q.b, [bad], id: 3) == 0)
        #expect(postSend(q.a, [q.bufA.sge(0, 8)], id: 4) == 0)
        #expect(try #require(pollOne(q.cqB)).status == IBV_WC_LOC_PROT_ERR)
        #expect(try #require(pollOne(q.cqA)).status == IBV_WC_REM_OP_ERR)
        // The data of an RDMA read must land in locally writable memory.
        let t = h.pair()
        let readOnly = h.buffer(t.pdA, 64, access: 0)
        #expect(postRDMA(t.a, [readOnly.sge(0, 8)], IBV_WR_RDMA_READ, remote: t.bufB.addr, rkey: t.bufB.rkey) == 0)
        #expect(try #require(pollOne(t.cqA)).status == IBV_WC_LOC_PROT_ERR)
        // A key of another PD is no key here.
        let u = h.pair()
        let otherPD = h.buffer(h.pd(0), 64)
        #expect(postRecv(u.b, [u.bufB.sge()]) == 0)
        #expect(postSend(u.a, [otherPD.sge(0, 8)]) == 0)
        #expect(try #require(pollOne(u.cqA)).status == IBV_WC_LOC_PROT_ERR)
    }

    @Test func unreachablePeersExhaustRetries() throws {
        let h = Harness()
        let pdA = h.pd(0), cqA = h.cq(0)
        let a = h.qp(pdA, cqA)
        h.toInit(a)
        h.toRTR(a, remote: 1, remoteQP: 0xABCDE)  // nobody has that QPN
        h.toRTS(a)
        let buf = h.buffer(pdA)
        #expect(postSend(a, [buf.sge(0, 4)], id: 1) == 0)
        #expect(postSend(a, [buf.sge(0, 4)], id: 2) == 0)
        let wcs = poll(cqA)
        #expect(wcs.count == 2 && wcs[0].status == IBV_WC_RETRY_EXC_ERR && wcs[0].wr_id == 1)
        #expect(wcs[1].status == IBV_WC_WR_FLUSH_ERR && wcs[1].wr_id == 2, "the QP is in error after the first")
        #expect(wcs[0].vendor_err != 0 && wcs[1].vendor_err == 0)
    }

    @Test func postingChecksWorkRequests() throws {
        let h = Harness()
        let pd = h.pd(0), cq = h.cq(0)
        let buf = h.buffer(pd)
        // Sends before RTS, receives before INIT.
        let early = h.qp(pd, cq)
        #expect(postSend(early, [buf.sge(0, 4)]) == EINVAL, "RESET")
        #expect(postRecv(early, [buf.sge(0, 4)]) == EINVAL, "RESET")
        h.toInit(early)
        #expect(postSend(early, [buf.sge(0, 4)]) == EINVAL, "INIT")
        #expect(postRecv(early, [buf.sge(0, 4)]) == 0, "receives may be posted from INIT on")
        h.toRTR(early, remote: 1, remoteQP: 0x999)
        #expect(postSend(early, [buf.sge(0, 4)]) == EINVAL, "RTR")

        let p = h.pair(wr: 2)
        let five = [ibv_sge](repeating: p.bufA.sge(0, 1), count: 5)
        #expect(postSend(p.a, five) == EINVAL, "more SGEs than max_send_sge")
        #expect(postRecv(p.b, five) == EINVAL, "more SGEs than max_recv_sge")
        #expect(postSend(p.a, [p.bufA.sge(0, 65)], flags: IBV_SEND_INLINE.rawValue) == EINVAL, "more inline data than max_inline_data")
        #expect(postSend(p.a, [p.bufA.sge(0, 8)], opcode: IBV_WR_ATOMIC_FETCH_AND_ADD) { wr in
            wr.wr.atomic.remote_addr = p.bufB.addr + 4
            wr.wr.atomic.rkey = p.bufB.rkey
        } == EINVAL, "a misaligned atomic")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], opcode: IBV_WR_ATOMIC_CMP_AND_SWP) { wr in
            wr.wr.atomic.remote_addr = p.bufB.addr
            wr.wr.atomic.rkey = p.bufB.rkey
        } == EINVAL, "an atomic needs 8 bytes of local memory")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], opcode: ibv_wr_opcode(rawValue: 77)) == EINVAL, "an unknown opcode")
        #expect(pollOne(p.cqA) == nil, "nothing refused was executed")
        // The send queue holds max_send_wr WRs (two wait for receives here), the receive queue max_recv_wr.
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 1) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 2) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 3) == ENOMEM)
        #expect(postRecv(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(postRecv(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(postRecv(p.a, [p.bufA.sge(0, 4)]) == ENOMEM)

        // Opcodes the transport lacks.
        let uc = h.pair(type: IBV_QPT_UC)
        #expect(postRDMA(uc.a, [uc.bufA.sge(0, 4)], IBV_WR_RDMA_READ, remote: uc.bufB.addr, rkey: uc.bufB.rkey) == EINVAL)
        let ud = h.qp(pd, cq, type: IBV_QPT_UD)
        h.toInit(ud); h.toRTR(ud, remote: 0, remoteQP: 0); h.toRTS(ud)
        #expect(postRDMA(ud, [buf.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: buf.addr, rkey: buf.rkey) == EINVAL)
    }

    @Test func aBadWorkRequestStopsTheChainAndIsReported() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRecv(p.b, [p.bufB.sge()], id: 50) == 0)
        let sges = UnsafeMutablePointer<ibv_sge>.allocate(capacity: 5)
        sges.initialize(repeating: p.bufA.sge(0, 1), count: 5)
        let wrs = UnsafeMutablePointer<ibv_send_wr>.allocate(capacity: 3)
        wrs.initialize(repeating: ibv_send_wr(), count: 3)
        defer { sges.deallocate(); wrs.deallocate() }
        for i in 0..<3 {
            wrs[i].wr_id = UInt64(i + 1)
            wrs[i].sg_list = sges
            wrs[i].num_sge = i == 1 ? 5 : 1
            wrs[i].opcode = IBV_WR_SEND
            wrs[i].next = i < 2 ? wrs + i + 1 : nil
        }
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        #expect(ibv_post_send(p.a, wrs, &bad) == EINVAL)
        #expect(bad == wrs + 1, "bad_wr names the refused WR")
        #expect(poll(p.cqA).map(\.wr_id) == [1], "the WR before it was posted, the ones after it were not")
        #expect(try #require(pollOne(p.cqB)).wr_id == 50)

        let rwrs = UnsafeMutablePointer<ibv_recv_wr>.allocate(capacity: 2)
        rwrs.initialize(repeating: ibv_recv_wr(), count: 2)
        defer { rwrs.deallocate() }
        rwrs[0].sg_list = sges; rwrs[0].num_sge = 1; rwrs[0].next = rwrs + 1; rwrs[0].wr_id = 7
        rwrs[1].sg_list = sges; rwrs[1].num_sge = -1
        var badRecv: UnsafeMutablePointer<ibv_recv_wr>?
        #expect(ibv_post_recv(p.b, rwrs, &badRecv) == EINVAL && badRecv == rwrs + 1)
        #expect(SoftHCA.outstanding(qpNumber: p.b.pointee.qp_num)?.receives == 1)
    }

    @Test func modifyRefusesWhatTheStateMachineForbids() throws {
        let h = Harness()
        let pd = h.pd(), cq = h.cq()
        let qp = h.qp(pd, cq)
        var a = ibv_qp_attr()
        a.qp_state = IBV_QPS_INIT
        a.port_num = 1
        a.qp_access_flags = UInt32(accessAll)
        #expect(h.modify(qp, a, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS, IBV_QP_SQ_PSN]) == EINVAL,
                "an attribute the transition does not take")
        a.port_num = 2
        #expect(h.modify(qp, a, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS]) == EINVAL, "no port 2")
        a.port_num = 1
        a.pkey_index = 64
        #expect(h.modify(qp, a, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS]) == EINVAL, "pkey index out of the table")
        #expect(h.qpState(qp) == IBV_QPS_RESET && qp.pointee.state == IBV_QPS_RESET, "a refused modify changes nothing")
        h.toInit(qp)

        var rtr = ibv_qp_attr()
        rtr.qp_state = IBV_QPS_RTR
        rtr.path_mtu = IBV_MTU_1024
        rtr.dest_qp_num = 0x55
        rtr.max_dest_rd_atomic = 1
        rtr.min_rnr_timer = 1
        rtr.ah_attr.port_num = 1
        rtr.ah_attr.dlid = h.portAttr(1).lid
        let rtrMasks = [IBV_QP_STATE, IBV_QP_AV, IBV_QP_PATH_MTU, IBV_QP_DEST_QPN, IBV_QP_RQ_PSN, IBV_QP_MAX_DEST_RD_ATOMIC, IBV_QP_MIN_RNR_TIMER]
        #expect(h.modify(qp, rtr, rtrMasks.filter { $0 != IBV_QP_DEST_QPN }) == EINVAL, "RTR needs the destination QPN")
        var badMTU = rtr
        badMTU.path_mtu = ibv_mtu(rawValue: 6)
        #expect(h.modify(qp, badMTU, rtrMasks) == EINVAL)
        var badTimer = rtr
        badTimer.min_rnr_timer = 32
        #expect(h.modify(qp, badTimer, rtrMasks) == EINVAL)
        var badGID = rtr
        badGID.ah_attr.is_global = 1
        badGID.ah_attr.grh.sgid_index = 7
        #expect(h.modify(qp, badGID, rtrMasks) == EINVAL, "a GID index the port does not have")
        #expect(h.modify(qp, rtr, rtrMasks) == 0)

        var rts = ibv_qp_attr()
        rts.qp_state = IBV_QPS_RTS
        rts.timeout = 14; rts.retry_cnt = 7; rts.rnr_retry = 7; rts.max_rd_atomic = 1
        let rtsMasks = [IBV_QP_STATE, IBV_QP_SQ_PSN, IBV_QP_TIMEOUT, IBV_QP_RETRY_CNT, IBV_QP_RNR_RETRY, IBV_QP_MAX_QP_RD_ATOMIC]
        for change in [{ (x: inout ibv_qp_attr) in x.timeout = 32 }, { $0.retry_cnt = 8 }, { $0.rnr_retry = 8 }, { $0.max_rd_atomic = 200 }] {
            var bad = rts
            change(&bad)
            #expect(h.modify(qp, bad, rtsMasks) == EINVAL)
        }
        #expect(h.modify(qp, rts, [IBV_QP_STATE, IBV_QP_SQ_PSN]) == EINVAL, "RC RTS needs timeout, retries and rd_atomic")
        #expect(h.modify(qp, rts, rtsMasks) == 0)
        #expect(h.qpState(qp) == IBV_QPS_RTS)

        var s = ibv_qp_attr()
        s.qp_state = IBV_QPS_RTR
        #expect(h.modify(qp, s, [IBV_QP_STATE]) == EINVAL, "RTS -> RTR")
        s.qp_state = ibv_qp_state(rawValue: 7)
        #expect(h.modify(qp, s, [IBV_QP_STATE]) == EINVAL, "no such state")
        s.qp_state = IBV_QPS_ERR
        #expect(h.modify(qp, s, [IBV_QP_STATE]) == 0, "any state -> ERR")
        s.qp_state = IBV_QPS_RTS
        #expect(h.modify(qp, s, [IBV_QP_STATE]) == EINVAL, "ERR -> RTS")
        s.qp_state = IBV_QPS_RESET
        #expect(h.modify(qp, s, [IBV_QP_STATE]) == 0, "ERR -> RESET")

        // UD takes a Q_Key, not access flags; RoCE needs a GRH.
        let ud = h.qp(pd, cq, type: IBV_QPT_UD)
        #expect(h.modify(ud, a, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS]) == EINVAL)
        let eth = Harness("devices=1,link=eth")
        let eqp = eth.qp(eth.pd(), eth.cq())
        eth.toInit(eqp)
        var noGRH = rtr
        noGRH.ah_attr.dlid = 0
        #expect(eth.modify(eqp, noGRH, rtrMasks) == EINVAL, "RoCE address vectors are global")
    }

    @Test func constructorsCheckTheirArguments() throws {
        let h = Harness()
        let ctx = h.contexts[0]
        let pd = h.pd(0), cq = h.cq(0), otherCQ = h.cq(1)
        func qp(_ configure: (inout ibv_qp_init_attr) -> Void) -> (QP?, Int32) {
            var a = ibv_qp_init_attr()
            a.send_cq = cq; a.recv_cq = cq; a.qp_type = IBV_QPT_RC
            a.cap = ibv_qp_cap(max_send_wr: 4, max_recv_wr: 4, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0)
            configure(&a)
            return withErrno { h.L.create_qp!(pd, &a) }
        }
        #expect(qp { $0.cap.max_send_wr = 0x4001 } .1 == EINVAL)
        #expect(qp { $0.cap.max_send_sge = 33 } .1 == EINVAL)
        #expect(qp { $0.cap.max_inline_data = 513 } .1 == EINVAL)
        #expect(qp { $0.recv_cq = otherCQ } .1 == EINVAL, "a CQ of another device")
        #expect(qp { $0.qp_type = IBV_QPT_RAW_PACKET } .1 == EOPNOTSUPP)
        #expect(qp { $0.qp_type = IBV_QPT_XRC_SEND } .1 == EOPNOTSUPP)

        var ex = ibv_qp_init_attr_ex()
        ex.qp_type = IBV_QPT_RC; ex.send_cq = cq; ex.recv_cq = cq; ex.pd = pd
        ex.cap = ibv_qp_cap(max_send_wr: 4, max_recv_wr: 4, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0)
        let create = verbsContext(ctx)!.pointee.create_qp_ex!
        ex.comp_mask = UInt32(IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue)
        #expect(withErrno { create(ctx, &ex) } .1 == EINVAL, "create_qp_ex needs the PD")
        ex.comp_mask = UInt32(IBV_QP_INIT_ATTR_PD.rawValue | IBV_QP_INIT_ATTR_XRCD.rawValue)
        #expect(withErrno { create(ctx, &ex) } .1 == EOPNOTSUPP)
        ex.comp_mask = UInt32(IBV_QP_INIT_ATTR_PD.rawValue | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.rawValue)
        ex.qp_type = IBV_QPT_UD
        ex.send_ops_flags = UInt64(IBV_QP_EX_WITH_RDMA_READ.rawValue)
        #expect(withErrno { create(ctx, &ex) } .1 == EOPNOTSUPP, "RDMA read on UD")
        ex.comp_mask = UInt32(IBV_QP_INIT_ATTR_PD.rawValue)
        let plain = try #require(create(ctx, &ex))
        #expect(h.L.qp_to_qp_ex!(plain) == nil, "only QPs made with send ops flags have the new post API")
        #expect(h.L.qp_to_qp_ex!(h.qp(pd, cq)) == nil)

        #expect(withErrno { h.L.create_cq!(ctx, 0, nil, nil, 0) } .1 == EINVAL)
        #expect(withErrno { h.L.create_cq!(ctx, 0x8000, nil, nil, 0) } .1 == EINVAL)
        let otherChannel = try #require(h.L.create_comp_channel!(h.contexts[1]))
        #expect(withErrno { h.L.create_cq!(ctx, 4, nil, otherChannel, 0) } .1 == EINVAL, "a channel of another device")
        var cqAttr = ibv_cq_init_attr_ex()
        cqAttr.cqe = 4
        cqAttr.wc_flags = UInt64(IBV_WC_EX_WITH_COMPLETION_TIMESTAMP.rawValue)
        #expect(withErrno { verbsContext(ctx)!.pointee.create_cq_ex!(ctx, &cqAttr) } .1 == EOPNOTSUPP)

        let access = { (bits: [ibv_access_flags]) in Int32(bits.reduce(0) { $0 | $1.rawValue }) }
        let mem = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { mem.deallocate() }
        #expect(withErrno { h.L.reg_mr!(pd, mem, 64, access([IBV_ACCESS_REMOTE_WRITE])) } .1 == EINVAL, "remote write needs local write")
        #expect(withErrno { h.L.reg_mr!(pd, mem, 64, access([IBV_ACCESS_REMOTE_ATOMIC])) } .1 == EINVAL)
        #expect(withErrno { h.L.reg_mr!(pd, mem, 0, 0) } .1 == EINVAL)
        #expect(withErrno { h.L.reg_mr!(pd, nil, 64, 0) } .1 == EFAULT)
        #expect(withErrno { h.L.reg_mr!(pd, mem, 64, access([IBV_ACCESS_ON_DEMAND])) } .1 == EOPNOTSUPP)
        #expect(h.L.reg_mr!(pd, mem, 64, access([IBV_ACCESS_REMOTE_READ])) != nil, "remote read alone is fine")

        var srq = ibv_srq_init_attr()
        srq.attr.max_wr = 0
        #expect(withErrno { h.L.create_srq!(pd, &srq) } .1 == EINVAL)
        srq.attr.max_wr = 8; srq.attr.max_sge = 28
        #expect(withErrno { h.L.create_srq!(pd, &srq) } .1 == EINVAL)
        srq.attr.max_sge = 1; srq.attr.srq_limit = 9
        #expect(withErrno { h.L.create_srq!(pd, &srq) } .1 == EINVAL)

        var ah = ibv_ah_attr()
        ah.port_num = 2
        ah.dlid = 1
        #expect(withErrno { h.L.create_ah!(pd, &ah) } .1 == EINVAL, "no port 2")
        ah.port_num = 1; ah.is_global = 1; ah.grh.sgid_index = 3
        #expect(withErrno { h.L.create_ah!(pd, &ah) } .1 == EINVAL, "no GID 3")
        let eth = Harness("devices=1,link=eth")
        var plainAH = ibv_ah_attr()
        plainAH.port_num = 1
        #expect(withErrno { eth.L.create_ah!(eth.pd(), &plainAH) } .1 == EINVAL, "RoCE needs a GRH")
    }

    @Test func resizeAndMulticastAndECE() throws {
        let h = Harness()
        let p = h.pair()
        for i in 0..<3 { #expect(postRDMA(p.a, [p.bufA.sge(0, 1)], IBV_WR_RDMA_WRITE, remote: p.bufB.addr, rkey: p.bufB.rkey, id: UInt64(i)) == 0) }
        #expect(h.L.resize_cq!(p.cqA, 2) == EINVAL, "fewer entries than completions held")
        #expect(h.L.resize_cq!(p.cqA, 128) == 0 && p.cqA.pointee.cqe == 128)
        #expect(poll(p.cqA).count == 3)

        var mgid = ibv_gid()
        withUnsafeMutableBytes(of: &mgid) { $0[0] = 0xff; $0[1] = 0x12; $0[15] = 9 }
        #expect(h.L.attach_mcast!(p.a, &mgid, 0xC009) == EINVAL, "RC QPs do not join groups")
        let ud = h.qp(p.pdA, p.cqA, type: IBV_QPT_UD)
        var unicast = h.gid(1)
        #expect(h.L.attach_mcast!(ud, &unicast, 0) == EINVAL)
        #expect(h.L.detach_mcast!(ud, &mgid, 0xC009) == EINVAL, "not attached")
        var ece = ibv_ece()
        #expect(h.L.query_ece!(p.a, &ece) == EOPNOTSUPP && h.L.set_ece!(p.a, &ece) == EOPNOTSUPP)
    }

    @Test func queriesOfGIDsAndPKeys() throws {
        let h = Harness()
        let ctx = h.contexts[0]
        var g = ibv_gid()
        errno = 0
        #expect(h.L.query_gid!(ctx, 1, 128, &g) == -1 && errno == EINVAL, "beyond the 128-entry IB table")
        #expect(h.L.query_gid!(ctx, 1, 5, &g) == 0 && GID(g).isZero, "an empty entry reads as zero")
        var entry = ibv_gid_entry()
        #expect(h.L.query_gid_ex!(ctx, 1, 5, &entry, 0, MemoryLayout<ibv_gid_entry>.size) == ENODATA)
        #expect(h.L.query_gid_ex!(ctx, 1, 0, &entry, 0, MemoryLayout<ibv_gid_entry>.size) == 0)
        #expect(entry.gid_type == IBV_GID_TYPE_IB.rawValue && entry.port_num == 1 && GID(entry.gid) == GID(h.gid(0)))
        var table = [ibv_gid_entry](repeating: ibv_gid_entry(), count: 4)
        #expect(h.L.query_gid_table!(ctx, &table, 4, 0, MemoryLayout<ibv_gid_entry>.size) == 1)
        #expect(h.L.query_gid_table!(ctx, &table, 0, 0, MemoryLayout<ibv_gid_entry>.size) == -Int(EINVAL))

        var pkey: UInt16 = 0
        #expect(h.L.query_pkey!(ctx, 1, 0, &pkey) == 0 && pkey == UInt16(0xFFFF).bigEndian)
        #expect(h.L.get_pkey_index!(ctx, 1, UInt16(0xFFFF).bigEndian) == 0)
        #expect(h.L.get_pkey_index!(ctx, 1, UInt16(0x7FFF).bigEndian) == 0, "limited membership of the default partition")
        #expect(h.L.get_pkey_index!(ctx, 1, UInt16(0x8001).bigEndian) == -1)

        let eth = Harness("devices=1,link=eth")
        var etable = [ibv_gid_entry](repeating: ibv_gid_entry(), count: 4)
        #expect(eth.L.query_gid_table!(eth.contexts[0], &etable, 4, 0, MemoryLayout<ibv_gid_entry>.size) == 2)
        #expect(etable[0].gid_type == IBV_GID_TYPE_ROCE_V2.rawValue && etable[1].ndev_ifindex != 0)
        #expect(Array(withUnsafeBytes(of: etable[1].gid) { Array($0) }.prefix(12)) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
                "GID 1 is the IPv4-mapped address")
    }

    @Test func busyObjectsCannotBeDestroyed() throws {
        let h = Harness()
        let ctx = h.contexts[0]
        let pd = h.pd()
        let buf = h.buffer(pd)
        #expect(h.L.dealloc_pd!(pd) == EBUSY, "an MR lives in it")
        #expect(h.L.dereg_mr!(buf.mr) == 0)
        var ahAttr = ibv_ah_attr()
        ahAttr.port_num = 1
        ahAttr.dlid = h.portAttr(1).lid
        let ah = try #require(h.L.create_ah!(pd, &ahAttr))
        #expect(h.L.dealloc_pd!(pd) == EBUSY, "an AH lives in it")
        #expect(h.L.destroy_ah!(ah) == 0)
        var sa = ibv_srq_init_attr()
        sa.attr.max_wr = 4; sa.attr.max_sge = 1
        let srq = try #require(h.L.create_srq!(pd, &sa))
        let channel = try #require(h.L.create_comp_channel!(ctx))
        let cq = h.cq(0, channel: channel)
        #expect(channel.pointee.refcnt == 1)
        let qp = h.qp(pd, cq, srq: srq)
        #expect(h.L.destroy_srq!(srq) == EBUSY, "a QP uses it")
        #expect(h.L.destroy_comp_channel!(channel) == EBUSY, "a CQ uses it")
        #expect(h.L.destroy_cq!(cq) == EBUSY)
        #expect(h.L.dealloc_pd!(pd) == EBUSY)
        #expect(h.L.destroy_qp!(qp) == 0)
        #expect(h.L.destroy_srq!(srq) == 0)
        #expect(h.L.destroy_cq!(cq) == 0)
        #expect(channel.pointee.refcnt == 0)
        #expect(h.L.destroy_comp_channel!(channel) == 0)
        #expect(h.L.dealloc_pd!(pd) == 0)
        #expect(SoftHCA.liveObjects.filter { $0.key != "contexts" }.values.allSatisfy { $0 == 0 })
        // Closing a context releases whatever is still in it, and only that.
        let p = h.pair()
        _ = p
        #expect(h.L.close_device!(h.contexts[1]) == 0)
        #expect(SoftHCA.liveObjects["qps"] == 1 && SoftHCA.liveObjects["mrs"] == 1 && SoftHCA.liveObjects["contexts"] == 1)
        #expect(!SoftHCA.owns(p.b) && SoftHCA.owns(p.a))
    }

    @Test(arguments: [("devices=2", 4096), ("devices=2,link=eth", 1024)])
    func datagramsOverTheMTUOrOverTheReceive(_ config: String, _ mtu: Int) throws {
        let h = Harness(config)
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let a = h.qp(pdA, cqA, type: IBV_QPT_UD), b = h.qp(pdB, cqB, type: IBV_QPT_UD)
        for q in [a, b] { h.toInit(q); h.toRTR(q, remote: 0, remoteQP: 0); h.toRTS(q) }
        #expect(h.portAttr(0).active_mtu.rawValue == (mtu == 4096 ? IBV_MTU_4096 : IBV_MTU_1024).rawValue)
        let bufA = h.buffer(pdA, 8192), bufB = h.buffer(pdB, 8192)
        var attr = ibv_ah_attr()
        attr.port_num = 1
        attr.dlid = h.portAttr(1).lid
        if config.contains("eth") { attr.is_global = 1; attr.grh.dgid = h.gid(1) }
        let ah = try #require(h.L.create_ah!(pdA, &attr))
        func send(_ len: Int, id: UInt64) -> Int32 {
            postSend(a, [bufA.sge(0, len)], id: id) { wr in
                wr.wr.ud.ah = ah
                wr.wr.ud.remote_qpn = b.pointee.qp_num
                wr.wr.ud.remote_qkey = 0x11111111
            }
        }
        #expect(postRecv(b, [bufB.sge(0, 40 + mtu + 1)], id: 1) == 0)
        // IB spec C10-93.1.1 (rxe does this): over the port MTU nothing is sent and no error raised.
        #expect(send(mtu + 1, id: 10) == 0)
        let over = try #require(pollOne(cqA))
        #expect(over.status == IBV_WC_SUCCESS && over.wr_id == 10)
        #expect(pollOne(cqB) == nil && h.qpState(a) == IBV_QPS_RTS)
        #expect(send(mtu, id: 11) == 0)
        #expect(pollOne(cqA)?.status == IBV_WC_SUCCESS)
        let r = try #require(pollOne(cqB))
        #expect(r.wr_id == 1 && r.byte_len == UInt32(40 + mtu), "exactly one MTU arrives")
        // A receive too small for the datagram: the receiver's error, not the sender's.
        #expect(postRecv(b, [bufB.sge(0, 40 + 4)], id: 2) == 0)
        #expect(send(8, id: 12) == 0)
        #expect(pollOne(cqA)?.status == IBV_WC_SUCCESS)
        let small = try #require(pollOne(cqB))
        #expect(small.status == IBV_WC_LOC_LEN_ERR && small.wr_id == 2)
        #expect(h.qpState(b) == IBV_QPS_ERR && h.qpState(a) == IBV_QPS_RTS)
    }
}
