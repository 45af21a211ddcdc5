import CVerbs
import Glibc
import StableVerbsABI
import Testing
@testable import SoftHCA

/// The fault switch (failNext/inject/failCompletions and `fail=`), ports going down, and devices that
/// vanish (.fatal like mlx5 with disassociate, .waitForClose like rxe) and return.
extension SoftHCATests {
    @Test func injectedFailuresHitTheNamedCallOnly() throws {
        let h = Harness()
        let pd = h.pd()
        let cq = h.cq()
        SoftHCA.failNext("create_qp", errno: ENOMEM, count: 2, skip: 1)
        var attr = rcInitAttr(cq)
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
        var event = try #require(asyncEvent(h.L, h.contexts[0]))
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

    @Test func deviceGoneInTheMiddleOfACall() throws {
        let h = Harness()
        let pd = h.pd()
        let cq = h.cq()
        SoftHCA.removeDeviceIn("create_qp", skip: 1)
        var attr = rcInitAttr(cq)
        #expect(h.L.create_qp!(pd, &attr) != nil, "the first call is skipped")
        #expect(SoftHCA.isPresent("softhca0"))
        errno = 0
        #expect(h.L.create_qp!(pd, &attr) == nil && errno == EIO)
        #expect(!SoftHCA.isPresent("softhca0") && SoftHCA.isPresent("softhca1"), "that call's device vanished")
        var event = try #require(asyncEvent(h.L, h.contexts[0]))
        #expect(event.event_type == IBV_EVENT_DEVICE_FATAL)
        h.L.ack_async_event!(&event)
        errno = 0
        #expect(h.L.alloc_pd!(h.contexts[0]) == nil && errno == EIO, "a dead device, as after removeDevice(.fatal)")
        #expect(SoftHCA.pendingFaults.isEmpty)
        #expect(SoftHCA.restoreDevice("softhca0"))
    }

    @Test func removalThatWaitsForClose() throws {
        let h = Harness("devices=1")
        #expect(SoftHCA.removeDevice("softhca0", .waitForClose(portEvent: true)))
        #expect(SoftHCA.deviceNames.isEmpty)
        #expect(SoftHCA.removalPending("softhca0"))
        var event = try #require(asyncEvent(h.L, h.contexts[0]))
        #expect(event.event_type == IBV_EVENT_PORT_ERR && event.element.port_num == 1)
        h.L.ack_async_event!(&event)
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil, "objects stay usable locally (no disassociate)")
        #expect(h.L.close_device!(h.contexts[0]) == 0)
        #expect(!SoftHCA.removalPending("softhca0"))
    }

    @Test func failNextReachesEveryKindOfEntry() throws {
        let h = Harness()
        let L = h.L
        let ctx = h.contexts[0]
        let p = h.pair()
        /// `entry` fails once with `code` (what `call` returns), then works again.
        func once(_ entry: String, _ code: Int32 = EAGAIN, _ call: () -> Int32, sourceLocation: SourceLocation = #_sourceLocation) {
            SoftHCA.failNext(entry, errno: code)
            #expect(call() == code, "\(entry) fails", sourceLocation: sourceLocation)
            #expect(call() == 0, "\(entry) works again", sourceLocation: sourceLocation)
            #expect(SoftHCA.pendingFaults.isEmpty, sourceLocation: sourceLocation)
        }
        /// For constructors: nil and errno.
        func made<T>(_ body: () -> T?) -> Int32 {
            let (r, e) = withErrno(body)
            return r == nil ? e : 0
        }
        /// For calls that say -1 and errno.
        func minusOne(_ body: () -> Int32) -> Int32 {
            errno = 0
            let r = body()
            return r == -1 ? errno : r
        }
        var n: Int32 = 0
        once("get_device_list") { made { L.get_device_list!(&n) } }
        once("open_device") { made { L.open_device!(h.devices[1]) } }
        once("query_device") { var a = ibv_device_attr(); return L.query_device!(ctx, &a) }
        once("query_port") { var a = ibv_port_attr(); return ___ibv_query_port(ctx, 1, &a) }
        once("query_gid") { var g = ibv_gid(); return minusOne { L.query_gid!(ctx, 1, 0, &g) } }
        once("alloc_pd") { made { L.alloc_pd!(ctx) } }
        once("reg_mr") { made { L.reg_mr!(p.pdA, p.bufA.base, 64, 0) } }
        once("reg_mr") { made { L.reg_mr_iova2!(p.pdA, p.bufA.base, 64, 0, 0) } }  // the family name covers iova2
        once("create_comp_channel") { made { L.create_comp_channel!(ctx) } }
        once("create_cq") { made { L.create_cq!(ctx, 4, nil, nil, 0) } }
        once("create_cq") { var a = ibv_cq_init_attr_ex(); a.cqe = 4; return made { verbsContext(ctx)!.pointee.create_cq_ex!(ctx, &a) } }
        once("create_srq") { var a = ibv_srq_init_attr(); a.attr.max_wr = 2; return made { L.create_srq!(p.pdA, &a) } }
        once("create_ah") { var a = ibv_ah_attr(); a.port_num = 1; a.dlid = 1; return made { L.create_ah!(p.pdA, &a) } }
        once("create_qp") { made { h.qpExOrNil(0, p.pdA, p.cqA) } }  // covers create_qp_ex
        once("modify_qp", EIO) { var a = ibv_qp_attr(); a.qp_state = IBV_QPS_RTS; return h.modify(p.a, a, [IBV_QP_STATE]) }
        once("query_qp") { var a = ibv_qp_attr(), i = ibv_qp_init_attr(); return L.query_qp!(p.a, &a, 0, &i) }
        once("post_recv", ENOMEM) { postRecv(p.b, [p.bufB.sge()]) }
        once("post_send", ENOMEM) { postSend(p.a, [p.bufA.sge(0, 4)]) }
        once("poll_cq") { minusOne { ibv_poll_cq(p.cqB, 1, nil) } }  // (n, nil) polls nothing when it works
        once("req_notify_cq") { ibv_req_notify_cq(p.cqA, 0) }
        once("get_async_event", EIO) {
            _ = fcntl(ctx.pointee.async_fd, F_SETFL, O_NONBLOCK)
            var e = ibv_async_event()
            let r = minusOne { L.get_async_event!(ctx, &e) }
            return r == EAGAIN ? 0 : r
        }
        once("fork_init", EINVAL) { L.fork_init!() }
        #expect(poll(p.cqA).count == 1 && poll(p.cqB).count == 1, "the one send went through")

        // Failing destructors leave the object intact and destroyable.
        let pd = h.pd(0)
        SoftHCA.failNext("dealloc_pd", errno: EIO)
        #expect(L.dealloc_pd!(pd) == EIO && SoftHCA.owns(pd))
        #expect(L.dealloc_pd!(pd) == 0)
        SoftHCA.failNext("destroy_qp", errno: EIO)
        #expect(L.destroy_qp!(p.a) == EIO && SoftHCA.owns(p.a))
        #expect(L.destroy_qp!(p.a) == 0)
        SoftHCA.failNext("close_device", errno: EIO)
        #expect(L.close_device!(h.contexts[1]) == EIO && SoftHCA.owns(h.contexts[1]))
        #expect(L.close_device!(h.contexts[1]) == 0)
    }

    @Test func newAPIsShareTheirFamilyFaults() throws {
        let h = Harness()
        let pdA = h.pd(0), pdB = h.pd(1), cqA = h.cq(0), cqB = h.cq(1)
        let (a, ax) = h.qpEx(0, pdA, cqA)
        let b = h.qp(pdB, cqB)
        h.connect(a, 0, b, 1)
        let buf = h.buffer(pdA)
        SoftHCA.failNext("post_send", errno: ENOMEM)
        ax.pointee.wr_start!(ax)
        ax.pointee.wr_flags = IBV_SEND_SIGNALED.rawValue
        ax.pointee.wr_rdma_write!(ax, 0, 0)
        ax.pointee.wr_set_sge!(ax, buf.lkey, buf.addr, 0)
        #expect(ax.pointee.wr_complete!(ax) == ENOMEM, "a post_send fault hits wr_complete")
        #expect(pollOne(cqA) == nil)
        var attr = ibv_cq_init_attr_ex()
        attr.cqe = 4
        let cqx = try #require(verbsContext(h.contexts[0])!.pointee.create_cq_ex!(h.contexts[0], &attr))
        SoftHCA.failNext("poll_cq", errno: EIO)
        var pa = ibv_poll_cq_attr()
        #expect(cqx.pointee.start_poll!(cqx, &pa) == EIO, "a poll_cq fault hits start_poll")
        #expect(cqx.pointee.start_poll!(cqx, &pa) == ENOENT)
        SoftHCA.failNext("wr_complete", errno: EAGAIN)
        #expect(postSend(a, [buf.sge(0, 0)], opcode: IBV_WR_RDMA_WRITE, flags: IBV_SEND_SIGNALED.rawValue) == 0,
                "the extended name does not hit the legacy call")
        #expect(SoftHCA.pendingFaults.count == 1)
        SoftHCA.clearFaults()
        #expect(SoftHCA.pendingFaults.isEmpty)
    }

    @Test func faultsForeverOnOneDeviceAndInOrder() throws {
        let h = Harness()
        SoftHCA.failNext("alloc_pd", errno: ENOSPC, count: nil, device: "softhca1")
        for _ in 0..<5 {
            #expect(h.L.alloc_pd!(h.contexts[0]) != nil, "the other device is not affected")
            #expect(withErrno { h.L.alloc_pd!(h.contexts[1]) } .1 == ENOSPC)
        }
        #expect(SoftHCA.pendingFaults.count == 1, "a rule without a count stays")
        SoftHCA.clearFaults()
        #expect(h.L.alloc_pd!(h.contexts[1]) != nil)
        // Two rules for one entry apply one after the other; a skip only counts matching calls.
        SoftHCA.failNext("alloc_pd", errno: EAGAIN, count: 1, skip: 1, device: "softhca0")
        SoftHCA.failNext("alloc_pd", errno: ENOMEM)
        #expect(h.L.alloc_pd!(h.contexts[1]) == nil, "the second rule takes softhca1's call")
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil, "skipped")
        #expect(withErrno { h.L.alloc_pd!(h.contexts[0]) } .1 == EAGAIN)
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil)
        #expect(SoftHCA.pendingFaults.isEmpty)
    }

    @Test func configuredCompletionErrorsSkipAndStayOnTheirDevice() throws {
        let h = Harness("fail=completion_error:REM_ACCESS_ERR:1:1:softhca0")
        let forward = h.pair(0, 1), backward = h.pair(1, 0)
        #expect(postRDMA(backward.a, [backward.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: backward.bufB.addr, rkey: backward.bufB.rkey) == 0)
        #expect(pollOne(backward.cqA)?.status == IBV_WC_SUCCESS, "softhca1's work is not counted")
        #expect(postRDMA(forward.a, [forward.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: forward.bufB.addr, rkey: forward.bufB.rkey, id: 1) == 0)
        #expect(pollOne(forward.cqA)?.status == IBV_WC_SUCCESS, "skipped")
        #expect(postRDMA(forward.a, [forward.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: forward.bufB.addr, rkey: forward.bufB.rkey, id: 2) == 0)
        let wc = try #require(pollOne(forward.cqA))
        #expect(wc.status == IBV_WC_REM_ACCESS_ERR && wc.wr_id == 2 && wc.vendor_err != 0)
        #expect(h.qpState(forward.a) == IBV_QPS_ERR)
        #expect(postRDMA(forward.a, [forward.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: forward.bufB.addr, rkey: forward.bufB.rkey, id: 3) == 0)
        #expect(pollOne(forward.cqA)?.status == IBV_WC_WR_FLUSH_ERR)
        #expect(SoftHCA.pendingFaults.isEmpty)
    }

    @Test func aPortGoingDownBreaksTrafficThroughIt() throws {
        let h = Harness()
        let p = h.pair()
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 1) == 0)  // waits at b for a receive
        #expect(SoftHCA.setPort("softhca1", active: false))
        let waited = try #require(pollOne(p.cqA))
        #expect(waited.status == IBV_WC_RETRY_EXC_ERR && waited.wr_id == 1, "the responder stopped answering")
        #expect(h.qpState(p.a) == IBV_QPS_ERR)
        let q = h.pair()
        #expect(postRDMA(q.a, [q.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: q.bufB.addr, rkey: q.bufB.rkey) == 0)
        #expect(pollOne(q.cqA)?.status == IBV_WC_RETRY_EXC_ERR, "nobody answers behind a down port")
        let back = h.pair(1, 0)
        #expect(postRDMA(back.a, [back.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: back.bufB.addr, rkey: back.bufB.rkey) == 0)
        #expect(pollOne(back.cqA)?.status == IBV_WC_RETRY_EXC_ERR, "nor does anything leave through it")
        #expect(SoftHCA.setPort("softhca1", active: true))
        let r = h.pair()
        #expect(postRDMA(r.a, [r.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: r.bufB.addr, rkey: r.bufB.rkey) == 0)
        #expect(pollOne(r.cqA)?.status == IBV_WC_SUCCESS)
    }

    @Test(arguments: [false, true])
    func fatalRemovalFailsEveryLaterCommand(_ allowDestroy: Bool) throws {
        let h = Harness("disassoc_destroy=\(allowDestroy ? 1 : 0)")
        let L = h.L
        let second = try #require(L.open_device!(h.devices[0]), "a second context on the same device")
        let p = h.pair()
        #expect(postSend(p.a, [p.bufA.sge(0, 4)], id: 1) == 0)  // waits at b
        #expect(postRecv(p.a, [p.bufA.sge()], id: 2) == 0)
        let srqAttrPD = h.pd(0)
        var sa = ibv_srq_init_attr()
        sa.attr.max_wr = 2
        let srq = try #require(L.create_srq!(srqAttrPD, &sa))
        #expect(SoftHCA.removeDevice("softhca0", .fatal))
        #expect(!SoftHCA.removeDevice("softhca0", .fatal), "already gone")
        var n: Int32 = 0
        let list = try #require(L.get_device_list!(&n))
        #expect(n == 1 && String(cString: L.get_device_name!(list[0])!) == "softhca1")
        L.free_device_list!(list)

        for c in [h.contexts[0], second] {
            var e = try #require(asyncEvent(L, c))
            #expect(e.event_type == IBV_EVENT_DEVICE_FATAL, "every open context hears it")
            L.ack_async_event!(&e)
        }
        #expect(h.asyncEvents(1).isEmpty)
        let flushed = poll(p.cqA)
        #expect(flushed.map(\.wr_id) == [1, 2] && flushed.allSatisfy { $0.status == IBV_WC_WR_FLUSH_ERR })
        #expect(poll(p.cqA).isEmpty, "polling a dead device's CQ still works")

        // The peer's QP gets no answer any more.
        #expect(postRDMA(p.b, [p.bufB.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: p.bufA.addr, rkey: p.bufA.rkey) == 0)
        #expect(pollOne(p.cqB)?.status == IBV_WC_RETRY_EXC_ERR)

        let ctx = h.contexts[0]
        #expect(withErrno { L.alloc_pd!(ctx) } .1 == EIO)
        #expect(withErrno { L.create_cq!(ctx, 4, nil, nil, 0) } .1 == EIO)
        #expect(withErrno { L.create_comp_channel!(ctx) } .1 == EIO)
        #expect(withErrno { L.reg_mr!(p.pdA, p.bufA.base, 64, 0) } .1 == EIO)
        #expect(withErrno { h.qpExOrNil(0, p.pdA, p.cqA) } .1 == EIO)
        var da = ibv_device_attr()
        #expect(L.query_device!(ctx, &da) == EIO)
        var pa = ibv_port_attr()
        #expect(___ibv_query_port(ctx, 1, &pa) == EIO)
        var g = ibv_gid()
        errno = 0
        #expect(L.query_gid!(ctx, 1, 0, &g) == -1 && errno == EIO)
        var qa = ibv_qp_attr()
        qa.qp_state = IBV_QPS_RESET
        #expect(h.modify(p.a, qa, [IBV_QP_STATE]) == EIO)
        // The double's model (SoftHCA.Removal.fatal) refuses the data path of a dead context too;
        // a real provider would take the post and nothing would ever complete.
        #expect(postSend(p.a, [p.bufA.sge(0, 4)]) == EIO)
        #expect(postRecv(p.a, [p.bufA.sge(0, 4)]) == EIO)
        #expect(ibv_req_notify_cq(p.cqA, 0) == EIO)

        // Destroying: EIO unless RDMAV_ALLOW_DISASSOC_DESTROY semantics.
        let expected: Int32 = allowDestroy ? 0 : EIO
        #expect(L.destroy_qp!(p.a) == expected)
        #expect(L.destroy_srq!(srq) == expected)
        #expect(L.dereg_mr!(p.bufA.mr) == expected)
        #expect(L.destroy_cq!(p.cqA) == expected)
        #expect(L.dealloc_pd!(srqAttrPD) == expected)
        #expect(L.close_device!(second) == 0, "closing always works")
        #expect(L.close_device!(ctx) == 0)
        #expect(SoftHCA.liveObjects["contexts"] == 1)
    }

    @Test func aReturningDeviceIsANewIncarnation() throws {
        let h = Harness()
        let old = try #require(SoftHCA.identity(of: "softhca0"))
        let oldDevice = h.devices[0]
        let oldIndex = h.L.get_device_index!(oldDevice)
        #expect(!SoftHCA.restoreDevice("softhca0"), "it is present")
        #expect(SoftHCA.removeDevice("softhca0", .fatal))
        #expect(SoftHCA.identity(of: "softhca0")?.present == false)
        #expect(SoftHCA.restoreDevice("softhca0"))
        let same = try #require(SoftHCA.identity(of: "softhca0"))
        #expect(same.lid == old.lid && same.nodeGUID == old.nodeGUID && same.gids == old.gids, "the same VF came back")
        #expect(same.deviceIndex != old.deviceIndex)
        #expect(h.L.get_device_index!(oldDevice) == -1, "the old ibv_device is stale")
        #expect(withErrno { h.L.open_device!(oldDevice) } .1 == ENODEV)
        #expect(oldIndex == old.deviceIndex)

        #expect(SoftHCA.removeDevice("softhca0", .fatal))
        #expect(SoftHCA.restoreDevice("softhca0", newIdentity: true, newName: "vf7"))
        #expect(SoftHCA.deviceNames.sorted() == ["softhca1", "vf7"])
        let moved = try #require(SoftHCA.identity(of: "vf7"))
        #expect(moved.lid != old.lid && moved.nodeGUID != old.nodeGUID && moved.gids != old.gids && moved.portGUID != old.portGUID)
        var n: Int32 = 0
        let list = try #require(h.L.get_device_list!(&n))
        defer { h.L.free_device_list!(list) }
        let dev = try #require((0..<Int(n)).compactMap { list[$0] }.first { String(cString: h.L.get_device_name!($0)!) == "vf7" })
        #expect(h.L.get_device_guid!(dev) == moved.nodeGUID.bigEndian)
        #expect(h.L.get_device_index!(dev) == moved.deviceIndex)
        // The new device works end to end with a peer; the old context stays dead.
        let fresh = try #require(h.L.open_device!(dev))
        #expect(withErrno { h.L.alloc_pd!(h.contexts[0]) } .1 == EIO)
        h.contexts[0] = fresh
        var pa = ibv_port_attr()
        #expect(___ibv_query_port(fresh, 1, &pa) == 0 && pa.lid == moved.lid)
        let p = h.pair()
        p.bufA.fill("reborn")
        #expect(postRecv(p.b, [p.bufB.sge()]) == 0)
        #expect(postSend(p.a, [p.bufA.sge(0, 6)]) == 0)
        let r = try #require(pollOne(p.cqB))
        #expect(r.status == IBV_WC_SUCCESS && r.slid == moved.lid && p.bufB.string(6) == "reborn")
    }

    @Test func removalWaitingForCloseStrandsPeers() throws {
        let h = Harness()
        let p = h.pair()
        let q = h.pair(1, 0)
        #expect(postSend(q.a, [q.bufA.sge(0, 4)], id: 5) == 0)  // softhca1 waits on a receive at softhca0
        #expect(SoftHCA.removeDevice("softhca0", .waitForClose(portEvent: false)))
        #expect(SoftHCA.deviceNames == ["softhca1"] && SoftHCA.removalPending("softhca0"))
        #expect(h.asyncEvents(0).isEmpty, "rxe says nothing")
        let stranded = try #require(pollOne(q.cqA))
        #expect(stranded.status == IBV_WC_RETRY_EXC_ERR && stranded.wr_id == 5)
        #expect(h.portAttr(0).state == IBV_PORT_DOWN)
        #expect(withErrno { h.L.open_device!(h.devices[0]) } .1 == ENODEV, "gone from the list, not openable")
        // Locally the objects still work (no disassociate) but nothing reaches the peer.
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil)
        #expect(postRDMA(p.a, [p.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: p.bufB.addr, rkey: p.bufB.rkey) == 0)
        #expect(pollOne(p.cqA)?.status == IBV_WC_RETRY_EXC_ERR)
        #expect(h.L.close_device!(h.contexts[0]) == 0)
        #expect(!SoftHCA.removalPending("softhca0"))
        #expect(SoftHCA.deviceNames == ["softhca1"], "closing completes the removal; the device stays away")

        // It returns as a new generation: a new ibv_device with a new index; the old one is stale.
        #expect(SoftHCA.restoreDevice("softhca0"))
        var n: Int32 = 0
        let list = try #require(h.L.get_device_list!(&n))
        defer { h.L.free_device_list!(list) }
        let dev = try #require((0..<Int(n)).compactMap { list[$0] }.first { String(cString: h.L.get_device_name!($0)!) == "softhca0" })
        #expect(dev != h.devices[0])
        #expect(h.L.get_device_index!(h.devices[0]) == -1 && h.L.get_device_index!(dev) > 0)
        #expect(withErrno { h.L.open_device!(h.devices[0]) } .1 == ENODEV)
        let fresh = try #require(h.L.open_device!(dev))
        #expect(h.L.alloc_pd!(fresh) != nil)
        h.contexts[0] = fresh
        #expect(h.portAttr(0).state == IBV_PORT_ACTIVE)
        let again = h.pair(1, 0)
        #expect(postRDMA(again.a, [again.bufA.sge(0, 4)], IBV_WR_RDMA_WRITE, remote: again.bufB.addr, rkey: again.bufB.rkey) == 0)
        #expect(pollOne(again.cqA)?.status == IBV_WC_SUCCESS)
    }
}

/// Creation attributes of a small RC QP on `cq`.
private func rcInitAttr(_ cq: UnsafeMutablePointer<ibv_cq>?) -> ibv_qp_init_attr {
    var attr = ibv_qp_init_attr()
    attr.send_cq = cq
    attr.recv_cq = cq
    attr.qp_type = IBV_QPT_RC
    attr.cap = ibv_qp_cap(max_send_wr: 4, max_recv_wr: 4, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0)
    return attr
}
