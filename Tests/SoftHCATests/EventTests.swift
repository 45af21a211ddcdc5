import CVerbs
import Glibc
import StableVerbsABI
import Testing
@testable import SoftHCA

/// Completion channels and async events: real fds that poll(2) sees, arming rules, blocking and
/// non-blocking reads, acknowledgements that destroy waits for, and the async events an HCA raises.
extension SoftHCATests {
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
        #expect(cqEvent(h.L, ch)?.cq == cqB)
        h.L.ack_cq_events!(cqB, 1)
        #expect(Glibc.poll(&pfd, 1, 0) == 0, "the event was consumed")
        #expect(pollOne(cqB)?.status == IBV_WC_SUCCESS)
    }

    /// A pair whose receiving CQ (on device 1) reports to a completion channel.
    private func channelPair(_ h: Harness, cqContext: UnsafeMutableRawPointer? = nil)
        -> (p: Harness.Pair, channel: UnsafeMutablePointer<ibv_comp_channel>, cq: CQ, b: QP, bufB: Buffer) {
        let p = h.pair()
        let channel = h.L.create_comp_channel!(h.contexts[1])!
        let cq = h.L.create_cq!(h.contexts[1], 16, cqContext, channel, 0)!
        let pdB = h.pd(1)
        let b = h.qp(pdB, cq)
        let a = p.a
        // Re-point a at the new responder.
        var reset = ibv_qp_attr()
        reset.qp_state = IBV_QPS_RESET
        #expect(h.modify(a, reset, [IBV_QP_STATE]) == 0)
        h.connect(a, 0, b, 1)
        return (p, channel, cq, b, h.buffer(pdB))
    }

    @Test func oneEventPerArmingCarryingTheCQContext() throws {
        let h = Harness()
        let tag = UnsafeMutableRawPointer(bitPattern: 0x5eed)
        let (p, channel, cq, b, bufB) = channelPair(h, cqContext: tag)
        let fd = channel.pointee.fd
        #expect(fd >= 0 && fcntl(fd, F_GETFD) >= 0, "a real, open fd")
        for i in 0..<3 { #expect(postRecv(b, [bufB.sge(64 * i, 64)], id: UInt64(i)) == 0) }
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(!readable(fd), "not armed: the completion raises no event")
        #expect(ibv_req_notify_cq(cq, 0) == 0)
        #expect(!readable(fd), "arming alone raises nothing, though a completion is queued")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(readable(fd))
        let event = try #require(cqEvent(h.L, channel))
        #expect(event.cq == cq && event.context == tag)
        #expect(!readable(fd), "two completions after one arming make one event")
        h.L.ack_cq_events!(cq, 1)
        #expect(cq.pointee.comp_events_completed == 1)
        #expect(poll(cq).count == 3)
        // Re-armed, the next completion fires again.
        #expect(ibv_req_notify_cq(cq, 0) == 0)
        #expect(postRecv(b, [bufB.sge()], id: 9) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(readable(fd))
        #expect(cqEvent(h.L, channel)?.cq == cq)
        h.L.ack_cq_events!(cq, 1)
        #expect(cq.pointee.comp_events_completed == 2)
    }

    @Test func solicitedOnlyArming() throws {
        let h = Harness()
        let (p, channel, cq, b, bufB) = channelPair(h)
        let fd = channel.pointee.fd
        for i in 0..<4 { #expect(postRecv(b, [bufB.sge(64 * i, 64)], id: UInt64(i)) == 0) }
        #expect(ibv_req_notify_cq(cq, 1) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(!readable(fd), "an unsolicited message does not wake a solicited-only arming")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], flags: IBV_SEND_SOLICITED.rawValue) == 0)
        #expect(readable(fd))
        #expect(cqEvent(h.L, channel)?.cq == cq)
        h.L.ack_cq_events!(cq, 1)
        // An error completion wakes it too (the receives flushed by the error state).
        #expect(ibv_req_notify_cq(cq, 1) == 0)
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_ERR
        #expect(h.modify(b, attr, [IBV_QP_STATE]) == 0)
        #expect(cqEvent(h.L, channel, within: 0)?.cq == cq)
        h.L.ack_cq_events!(cq, 1)
        let wcs = poll(cq)
        #expect(wcs.count == 4 && wcs.suffix(2).allSatisfy { $0.status == IBV_WC_WR_FLUSH_ERR })
    }

    @Test func blockingWaitForACompletionEvent() throws {
        let h = Harness()
        let (p, channel, cq, b, bufB) = channelPair(h)
        #expect(ibv_req_notify_cq(cq, 0) == 0)
        #expect(postRecv(b, [bufB.sge()], id: 1) == 0)
        let shared = Unchecked((h.L.get_cq_event!, channel))
        nonisolated(unsafe) var result: (Int32, UnsafeMutablePointer<ibv_cq>?) = (-2, nil)
        let waiter = Background {
            var got: UnsafeMutablePointer<ibv_cq>?
            var ctx: UnsafeMutableRawPointer?
            let r = shared.value.0(shared.value.1, &got, &ctx)
            result = (r, got)
        }
        usleep(20_000)
        #expect(result.0 == -2, "the waiter is blocked in get_cq_event")
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(waiter.join())
        #expect(result.0 == 0 && result.1 == cq)
        h.L.ack_cq_events!(cq, 1)
        #expect(pollOne(cq)?.wr_id == 1)
    }

    @Test func nonBlockingAndRenumberedChannels() throws {
        let h = Harness()
        let (p, channel, cq, b, bufB) = channelPair(h)
        let old = channel.pointee.fd
        _ = fcntl(old, F_SETFL, fcntl(old, F_GETFL) | O_NONBLOCK)
        var got: UnsafeMutablePointer<ibv_cq>?
        var ctx: UnsafeMutableRawPointer?
        errno = 0
        #expect(h.L.get_cq_event!(channel, &got, &ctx) == -1 && errno == EAGAIN, "nothing pending on a non-blocking channel")
        // Move the channel to another fd number (dup2, as the shim does to keep numbers stable).
        let moved: Int32 = 900
        #expect(dup2(old, moved) == moved)
        #expect(close(old) == 0)
        channel.pointee.fd = moved
        #expect(ibv_req_notify_cq(cq, 0) == 0)
        #expect(postRecv(b, [bufB.sge()]) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(readable(moved))
        #expect(cqEvent(h.L, channel, within: 0)?.cq == cq)
        #expect(!readable(moved), "the event byte was consumed from the new number")
        h.L.ack_cq_events!(cq, 1)
        #expect(h.L.destroy_qp!(b) == 0 && h.L.destroy_cq!(cq) == 0 && h.L.destroy_comp_channel!(channel) == 0)
        #expect(fcntl(moved, F_GETFD) == -1, "destroying the channel closed the fd it had")
    }

    @Test func destroyingACQWaitsForItsEventsToBeAcknowledged() throws {
        let h = Harness()
        let (p, channel, cq, b, bufB) = channelPair(h)
        #expect(ibv_req_notify_cq(cq, 0) == 0)
        #expect(postRecv(b, [bufB.sge()]) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == 0)
        #expect(cqEvent(h.L, channel) != nil)
        #expect(h.L.destroy_qp!(b) == 0)
        let shared = Unchecked((h.L.destroy_cq!, cq))
        nonisolated(unsafe) var result: Int32 = -2
        let destroyer = Background { result = shared.value.0(shared.value.1) }
        usleep(30_000)
        #expect(result == -2 && SoftHCA.owns(cq), "destroy_cq waits: one event is not acknowledged")
        h.L.ack_cq_events!(cq, 1)
        #expect(destroyer.join())
        #expect(result == 0 && !SoftHCA.owns(cq))
        #expect(h.L.destroy_comp_channel!(channel) == 0)
    }

    @Test func portEventsOnTheAsyncFD() throws {
        let h = Harness()
        let fd0 = h.contexts[0].pointee.async_fd, fd1 = h.contexts[1].pointee.async_fd
        #expect(fd0 >= 0 && fd0 != fd1 && !readable(fd0))
        #expect(SoftHCA.setPort("softhca0", active: false))
        #expect(readable(fd0) && !readable(fd1))
        #expect(h.portAttr(0).state == IBV_PORT_DOWN)
        #expect(SoftHCA.setPort("softhca0", active: false), "already down")
        #expect(SoftHCA.setPort("softhca0", active: true))
        let events = h.asyncEvents(0)
        #expect(events.map(\.event_type) == [IBV_EVENT_PORT_ERR, IBV_EVENT_PORT_ACTIVE], "one event per change, in order")
        #expect(events.allSatisfy { $0.element.port_num == 1 })
        #expect(!readable(fd0) && h.asyncEvents(1).isEmpty)
        #expect(!SoftHCA.setPort("softhca0", port: 2, active: false), "no port 2")
        #expect(!SoftHCA.setPort("nosuch", active: false))

        // A thread blocked in get_async_event wakes for the next one.
        let shared = Unchecked((h.L.get_async_event!, h.L.ack_async_event!, h.contexts[1]))
        nonisolated(unsafe) var type = IBV_EVENT_DEVICE_FATAL
        nonisolated(unsafe) var rc: Int32 = -2
        let waiter = Background {
            var e = ibv_async_event()
            rc = shared.value.0(shared.value.2, &e)
            type = e.event_type
            shared.value.1(&e)
        }
        usleep(20_000)
        #expect(rc == -2)
        #expect(SoftHCA.setPort("softhca1", active: false))
        #expect(waiter.join())
        #expect(rc == 0 && type == IBV_EVENT_PORT_ERR)
    }

    @Test func sharedReceiveQueueLimitAndLastWQE() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        var sa = ibv_srq_init_attr()
        sa.attr.max_wr = 8
        sa.attr.max_sge = 1
        sa.srq_context = UnsafeMutableRawPointer(bitPattern: 0x77)
        let srq = try #require(h.L.create_srq!(pdB, &sa))
        #expect(srq.pointee.srq_context == UnsafeMutableRawPointer(bitPattern: 0x77))
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        for i in 0..<4 {
            var sge = bufB.sge(64 * i, 64)
            var wr = ibv_recv_wr()
            wr.wr_id = UInt64(i)
            wr.num_sge = 1
            var bad: UnsafeMutablePointer<ibv_recv_wr>?
            withUnsafeMutablePointer(to: &sge) { wr.sg_list = $0; #expect(ibv_post_srq_recv(srq, &wr, &bad) == 0) }
        }
        let a = h.qp(pdA, cqA), b = h.qp(pdB, cqB, srq: srq)
        h.connect(a, 0, b, 1)
        var limit = ibv_srq_attr()
        limit.srq_limit = 9
        #expect(h.L.modify_srq!(srq, &limit, Int32(IBV_SRQ_LIMIT.rawValue)) == EINVAL, "a limit above max_wr")
        limit.srq_limit = 3
        #expect(h.L.modify_srq!(srq, &limit, Int32(IBV_SRQ_LIMIT.rawValue)) == 0)
        #expect(h.asyncEvents(1).isEmpty, "4 receives are not below 3")
        #expect(postSend(a, [bufA.sge(0, 4)]) == 0)
        #expect(h.asyncEvents(1).isEmpty, "3 are not below 3")
        #expect(postSend(a, [bufA.sge(0, 4)]) == 0)
        let events = h.asyncEvents(1)
        #expect(events.count == 1 && events.first?.event_type == IBV_EVENT_SRQ_LIMIT_REACHED && events.first?.element.srq == srq)
        var q = ibv_srq_attr()
        #expect(h.L.query_srq!(srq, &q) == 0 && q.srq_limit == 0 && q.max_wr == 8, "the limit disarms once it fires")
        #expect(postSend(a, [bufA.sge(0, 4)]) == 0)
        #expect(h.asyncEvents(1).isEmpty)
        #expect(poll(cqB).count == 3)

        // A QP of an SRQ that enters the error state reports its last WQE.
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_ERR
        #expect(h.modify(b, attr, [IBV_QP_STATE]) == 0)
        let last = h.asyncEvents(1)
        #expect(last.count == 1 && last.first?.event_type == IBV_EVENT_QP_LAST_WQE_REACHED && last.first?.element.qp == b)
        #expect(b.pointee.events_completed == 1, "ack_async_event counts on the QP")
    }

    @Test func sendQueueDrainedEvent() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 1) == 0)  // waits for a receive
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_SQD
        attr.en_sqd_async_notify = 1
        #expect(h.modify(p.a, attr, [IBV_QP_STATE, IBV_QP_EN_SQD_ASYNC_NOTIFY]) == 0)
        var q = ibv_qp_attr(), i = ibv_qp_init_attr()
        #expect(h.L.query_qp!(p.a, &q, Int32(IBV_QP_STATE.rawValue), &i) == 0 && q.qp_state == IBV_QPS_SQD && q.sq_draining == 1)
        #expect(h.asyncEvents(0).isEmpty, "a WR is still outstanding")
        #expect(postRecv(p.b, [p.bufB.sge()]) == 0)
        #expect(pollOne(p.cqA)?.wr_id == 1)
        let events = h.asyncEvents(0)
        #expect(events.count == 1 && events.first?.event_type == IBV_EVENT_SQ_DRAINED && events.first?.element.qp == p.a)
    }

    @Test func completionQueueOverrun() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqB = h.cq(1)
        let small = h.cq(0, 2)
        let a = h.qp(pdA, small), b = h.qp(pdB, cqB)
        h.connect(a, 0, b, 1)
        let bufA = h.buffer(pdA), bufB = h.buffer(pdB)
        for i in 0..<3 { #expect(postRDMA(a, [bufA.sge(0, 1)], IBV_WR_RDMA_WRITE, remote: bufB.addr, rkey: bufB.rkey, id: UInt64(i)) == 0) }
        let events = h.asyncEvents(0)
        #expect(events.count == 1 && events.first?.event_type == IBV_EVENT_CQ_ERR && events.first?.element.cq == small)
        #expect(small.pointee.async_events_completed == 1)
        #expect(poll(small).map(\.wr_id) == [0, 1], "the completion that did not fit is lost")
    }

    @Test func destroyingAnObjectDropsItsQueuedEvents() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRDMA(p.a, [p.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: p.bufB.addr, rkey: 0xbad) == 0)
        let fd = h.contexts[1].pointee.async_fd
        #expect(readable(fd), "IBV_EVENT_QP_ACCESS_ERR is queued for the responder")
        #expect(h.L.destroy_qp!(p.b) == 0)
        #expect(!readable(fd) && h.asyncEvents(1).isEmpty, "the kernel drops events of a destroyed object")
    }

    @Test func destroyingAQPWaitsForItsEventsToBeAcknowledged() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postRDMA(p.a, [p.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: p.bufB.addr, rkey: 0xbad) == 0)
        var e = try #require(asyncEvent(h.L, h.contexts[1]))
        #expect(e.element.qp == p.b)
        let shared = Unchecked((h.L.destroy_qp!, p.b))
        nonisolated(unsafe) var result: Int32 = -2
        let destroyer = Background { result = shared.value.0(shared.value.1) }
        usleep(30_000)
        #expect(result == -2 && SoftHCA.owns(p.b))
        h.L.ack_async_event!(&e)
        #expect(destroyer.join())
        #expect(result == 0 && !SoftHCA.owns(p.b))
    }
}
