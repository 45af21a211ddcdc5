import CVerbs
import Glibc
import Testing
@testable import SoftHCA

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

    @Test func injectedFailuresHitTheNamedCallOnly() throws {
        let h = Harness()
        let pd = h.pd()
        let cq = h.cq()
        SoftHCA.failNext("create_qp", errno: ENOMEM, count: 2, skip: 1)
        var attr = ibv_qp_init_attr()
        attr.send_cq = cq
        attr.recv_cq = cq
        attr.qp_type = IBV_QPT_RC
        attr.cap = ibv_qp_cap(max_send_wr: 4, max_recv_wr: 4, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0)
        #expect(h.L.create_qp!(pd, &attr) != nil, "the first call is skipped")
        errno = 0
        #expect(h.L.create_qp!(pd, &attr) == nil && errno == ENOMEM)
        errno = 0
        #expect(h.L.create_qp!(pd, &attr) == nil && errno == ENOMEM)
        #expect(h.L.create_qp!(pd, &attr) != nil, "the rule is used up")
        #expect(SoftHCA.pendingFaults.isEmpty)

        SoftHCA.failNext("post_send", errno: ENOMEM)
        let p = h.pair()
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], opcode: IBV_WR_RDMA_WRITE) { wr in
            wr.wr.rdma.remote_addr = p.bufB.addr
            wr.wr.rdma.rkey = p.bufB.rkey
        } == ENOMEM)
        #expect(pollOne(p.cqA) == nil, "a refused post completes nothing")
    }

    @Test func injectedCompletionError() throws {
        let h = Harness()
        let p = h.pair()
        SoftHCA.failCompletions(status: IBV_WC_RETRY_EXC_ERR)
        #expect(postRecv(p.b, [p.bufB.sge()]) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 1) == 0)
        let wc = try #require(pollOne(p.cqA))
        #expect(wc.status == IBV_WC_RETRY_EXC_ERR && wc.wr_id == 1)
        var qa = ibv_qp_attr(), initAttr = ibv_qp_init_attr()
        #expect(h.L.query_qp!(p.a, &qa, Int32(IBV_QP_STATE.rawValue), &initAttr) == 0)
        #expect(qa.qp_state == IBV_QPS_ERR)
    }

    @Test func fatalRemovalAndReturn() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRecv(p.a, [p.bufA.sge()], id: 11) == 0)
        #expect(SoftHCA.removeDevice("softhca0", .fatal))
        #expect(SoftHCA.deviceNames == ["softhca1"])
        var event = ibv_async_event()
        #expect(h.L.get_async_event!(h.contexts[0], &event) == 0)
        #expect(event.event_type == IBV_EVENT_DEVICE_FATAL)
        h.L.ack_async_event!(&event)
        let flushed = try #require(pollOne(p.cqA), "outstanding work is still pollable")
        #expect(flushed.status == IBV_WC_WR_FLUSH_ERR && flushed.wr_id == 11)
        errno = 0
        #expect(h.L.alloc_pd!(h.contexts[0]) == nil && errno == EIO, "commands on a dead device fail with EIO")

        #expect(SoftHCA.restoreDevice("softhca0", newIdentity: true))
        #expect(SoftHCA.deviceNames.sorted() == ["softhca0", "softhca1"])
        var n: Int32 = 0
        let list = try #require(h.L.get_device_list!(&n))
        defer { h.L.free_device_list!(list) }
        let dev = try #require((0..<Int(n)).compactMap { list[$0] }.first { String(cString: h.L.get_device_name!($0)!) == "softhca0" })
        #expect(dev != h.devices[0], "a returning device is a new ibv_device")
        let fresh = try #require(h.L.open_device!(dev))
        #expect(h.L.alloc_pd!(fresh) != nil)
    }

    @Test func removalThatWaitsForClose() throws {
        let h = Harness("devices=1")
        #expect(SoftHCA.removeDevice("softhca0", .waitForClose(portEvent: true)))
        #expect(SoftHCA.deviceNames.isEmpty)
        #expect(SoftHCA.removalPending("softhca0"))
        var event = ibv_async_event()
        #expect(h.L.get_async_event!(h.contexts[0], &event) == 0)
        #expect(event.event_type == IBV_EVENT_PORT_ERR && event.element.port_num == 1)
        h.L.ack_async_event!(&event)
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil, "objects stay usable locally (no disassociate)")
        #expect(h.L.close_device!(h.contexts[0]) == 0)
        #expect(!SoftHCA.removalPending("softhca0"))
    }

    @Test func completionChannelIsARealFileDescriptor() throws {
        let h = Harness()
        let ch = try #require(h.L.create_comp_channel!(h.contexts[1]))
        let pdA = h.pd(0), pdB = h.pd(1)
        let cqA = h.cq(0), cqB = h.cq(1, channel: ch)
        let a = h.qp(pdA, cqA), b = h.qp(pdB, cqB)
        h.connect(a, 0, b, 1)
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        var pfd = pollfd(fd: ch.pointee.fd, events: Int16(POLLIN), revents: 0)
        #expect(Glibc.poll(&pfd, 1, 0) == 0, "nothing pending yet")
        #expect(ibv_req_notify_cq(cqB, 0) == 0)
        #expect(postRecv(b, [bufB.sge()]) == 0)
        #expect(postSend(a, [bufA.sge(0, 4)]) == 0)
        #expect(Glibc.poll(&pfd, 1, 1000) == 1, "the completion made the channel readable")
        var got: UnsafeMutablePointer<ibv_cq>?
        var ctx: UnsafeMutableRawPointer?
        #expect(h.L.get_cq_event!(ch, &got, &ctx) == 0 && got == cqB)
        h.L.ack_cq_events!(cqB, 1)
        #expect(Glibc.poll(&pfd, 1, 0) == 0, "the event was consumed")
        #expect(pollOne(cqB)?.status == IBV_WC_SUCCESS)
    }
}
