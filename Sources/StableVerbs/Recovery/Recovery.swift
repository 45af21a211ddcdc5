// The recovery engine (DESIGN §4), phase A: recovery inside one process.
//
// States of a context (sv_context.state; anything but LIVE sends the data path to its cold paths):
//
//     LIVE ──planned──▶ QUIESCING ──▶ RELEASED ──▶ REBUILDING ──▶ RECONNECTING ──▶ LIVE
//       └──unplanned (device fatal, port error with the device gone, EIO/ENODEV)──▶ RELEASED
//
//   QUIESCING   new posts are buffered in the queue's work ring (not given to hardware); the engine
//               drains the real CQs into per-CQ pending queues until every send handed to hardware
//               has completed or is stuck behind a receive its in-process peer does not have in
//               hardware, or STABLEVERBS_QUIESCE_MS passed (what is left is replayed). An unplanned
//               loss settles the same way, in RELEASED, while the device still makes progress
//               (rxe's removal waits for the shim: its QPs keep working meanwhile).
//   RELEASED    every real object destroyed and the device context closed (an rxe removal, a VF
//               detach, can complete). Completion-channel fd numbers are held by placeholders; the
//               async fd the application sees is the shim's own eventfd. Posts are buffered; polls
//               serve the pending completions.
//   REBUILDING  waiting for a device that matches STABLEVERBS_MATCH (polling the device list with
//               a bounded backoff), then Rebuild.swift makes every real object again. An unplanned
//               loss waits up to STABLEVERBS_LOSS_WAIT_MS, a planned attach STABLEVERBS_DEVICE_WAIT_MS.
//   RECONNECTING the QPs' journals are replayed (reconnect to the rebuilt local peers), then the work
//               rings are re-posted: every receive not completed, then every send not completed,
//               then what was buffered, in order. Then LIVE.
//   FAILED      the device of an unplanned loss did not come back in time: the application was
//               given what a dead device gives natively (DeviceGone.swift); never rebuilt.
//
// Recoveries act on a *group*: the contexts named (or whose device failed) and every context with a
// connection or address handle into them, so both ends of an in-process connection move together.
//
// Threads. One watcher thread (started with the first virtual context) poll()s every live context's
// real async fd (non-blocking) and a wake eventfd: it forwards ordinary async events to the
// application's queue, swallows the ones the shim's recovery answers (DEVICE_FATAL; PORT_ERR when
// the device left the device list), and runs unplanned recoveries. It also rescans the device list
// every STABLEVERBS_RESCAN_MS (default 500) to notice a device that vanished without an event.
// Planned recoveries run on the caller's thread (stableverbs_detach / stableverbs_attach). One
// recovery at a time (recoveryMutex); object state changes under the control lock.
//
// Connections to other processes (the peer protocol, Peers/): the rebuild leaves their QPs in INIT
// and reconnectLinks (after the rebuild, before the replay) agrees fresh PSNs and counts with each
// peer shim; their error completions are held back while a peer may be moving.
//
// Limits (documented in the issue's closing note and README):
// - the data path races the state flip: a post or poll that read LIVE just before the flip may
//   still be inside the provider; the engine waits a grace period before touching real objects:
//   2 ms, then until every CQ of the group was polled through the cold path (its one poller is out
//   of the fast path) or STABLEVERBS_GRACE_US (50 ms) passed. A per-thread epoch would make this
//   exact (a poller descheduled longer than that between its LIVE check and the provider's poll
//   can still see newer completions before older ones kept for it).
// - work rings are single-producer/single-consumer per queue (one posting thread per queue, one
//   polling thread per CQ at a time); extended CQs (ibv_create_cq_ex) retire and hide like the
//   others and serve what a recovery kept through their poll session (ExtendedCQs.swift), without
//   the fields an ibv_wc does not hold (timestamps, flow tag: 0). Work posted with the ibv_wr_*
//   API is recorded as the legacy WR it stands for (WRBatches.swift); TSO, atomic writes and XRC
//   are not (their QP's ring is then marked lost, logged at the replay).
// - unplanned loss, both ends in this process, of a device that stops working at once (a pulled
//   NIC, a fatal error): a send whose data reached the peer but whose acknowledgement died with the
//   device is replayed (a duplicate; atomics executed twice). A device that still works while its
//   removal waits (rxe) settles first: exact. On the software HCA transfers are synchronous, so
//   this cannot happen there. Between processes the peer protocol's counts make SENDs exact; an
//   atomic a later delivered SEND shows executed is not executed again, but its result is lost
//   (logged); one after the last delivered SEND is replayed (twice if its request had arrived).
// - UD peers in other processes are told of a move only when this process has an address handle
//   to their host (UDPeers.swift).

import CVerbs
import Glibc
import StableVerbsABI

/// Phase durations of one recovery, in nanoseconds.
struct RecoveryTimes {
    var quiesce: UInt64 = 0
    var release: UInt64 = 0
    var deviceWait: UInt64 = 0
    var rebuild: UInt64 = 0
    var reconnect: UInt64 = 0
    var replay: UInt64 = 0
    /// CLOCK_MONOTONIC instants (not durations): the recovery began; the group's (last) device was
    /// found again; the group went LIVE (work replayed).
    var startedAt: UInt64 = 0
    var deviceFoundAt: UInt64 = 0
    var liveAt: UInt64 = 0
}

struct RecoveryStats {
    var count: UInt64 = 0
    var last = RecoveryTimes()
    var lastPlanned = false
    var lastContexts: UInt32 = 0
    var lastReplayed: UInt64 = 0
    var lastError: Int32 = 0
}

enum MatchPolicy {
    case name, guid, any, nameThenAny

    init(_ s: String?) {
        switch s?.lowercased() {
        case "name": self = .name
        case "guid": self = .guid
        case "any": self = .any
        default: self = .nameThenAny
        }
    }
}

/// Recovery state of the runtime (control lock, except where noted).
final class RecoveryState {
    var stats = RecoveryStats()
    var watcherStarted = false
    /// Wakes the watcher (eventfd).
    var wakeFD: Int32 = -1
    /// Contexts an unplanned recovery must take (keys of sv_context), each with the generation the
    /// loss was seen at: a loss seen before a rebuild that has committed since (a post failing while
    /// the recovery that answers it runs) needs no other recovery.
    var triggered: [UInt: UInt32] = [:]
    /// Port events waiting for their grace to end (PortEvents.swift).
    var heldPortEvents: [HeldPortEvent] = []
    /// How long a port event is held before the application sees it (STABLEVERBS_EVENT_GRACE_MS).
    let eventGraceNS: UInt64
    /// How long after a move the new device's GID/LID/P_Key/SM events are its settling (STABLEVERBS_SETTLE_MS).
    let settleNS: UInt64
    /// Readable (never reset) once a recovery finished: threads waiting for a completion event on
    /// a channel poll it too, and re-poll the channel's (new) file. Replaced at every recovery.
    var epochFD: Int32 = -1
    var retiredEpochs: [Int32] = []
    /// Quiesce/release durations of a detach, for the attach that completes the recovery.
    var pendingTimes: RecoveryTimes?
    /// Work ring (address) → its tail when the first post was buffered in it since the context
    /// left LIVE: entries before it were handed to hardware, entries from it on were not.
    var bufferedFrom: [UInt: UInt64] = [:]
    /// CQs (keys) polled through the cold path since the last flip away from LIVE: their poller
    /// (one per CQ) is out of the fast path.
    var polledSince: Set<UInt> = []
    let policy: MatchPolicy
    let quiesceNS: UInt64
    /// After a flip away from LIVE: at least graceMinUS, at most graceUS (STABLEVERBS_GRACE_US)
    /// until every CQ was polled through the cold path (waitForStragglers).
    let graceUS: UInt32
    let graceMinUS: UInt32
    let deviceWaitNS: UInt64
    /// How long an unplanned loss waits for the device (STABLEVERBS_LOSS_WAIT_MS; nil: for ever).
    let lossWaitNS: UInt64?
    let matchWaitNS: UInt64
    let rescanNS: UInt64
    /// How long a control verb waits for the hardware a recovery took away (HardwareGate.swift).
    let controlWaitNS: UInt64
    /// Serialises recoveries (not the control lock: device waits run without that).
    let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        func number(_ name: String, _ def: UInt64) -> UInt64 {
            guard let s = Configuration.environment(name), let v = UInt64(s) else { return def }
            return v
        }
        policy = MatchPolicy(Configuration.environment("STABLEVERBS_MATCH"))
        quiesceNS = number("STABLEVERBS_QUIESCE_MS", 2000) * 1_000_000
        graceUS = UInt32(min(number("STABLEVERBS_GRACE_US", 50_000), 1_000_000))
        graceMinUS = min(2000, graceUS)
        deviceWaitNS = number("STABLEVERBS_DEVICE_WAIT_MS", 60_000) * 1_000_000
        let loss = number("STABLEVERBS_LOSS_WAIT_MS", 300_000)
        lossWaitNS = loss == 0 ? nil : loss * 1_000_000
        matchWaitNS = number("STABLEVERBS_MATCH_WAIT_MS", 1000) * 1_000_000
        rescanNS = number("STABLEVERBS_RESCAN_MS", 500) * 1_000_000
        controlWaitNS = number("STABLEVERBS_CONTROL_WAIT_MS", 60_000) * 1_000_000
        eventGraceNS = number("STABLEVERBS_EVENT_GRACE_MS", 300) * 1_000_000
        settleNS = number("STABLEVERBS_SETTLE_MS", 10_000) * 1_000_000
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        epochFD = sv_eventfd(0, 0)
    }
}

func monotonicNS() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func sleepNS(_ ns: UInt64) {
    var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var rem = timespec()
    while nanosleep(&ts, &rem) != 0 && currentErrno() == EINTR { ts = rem }
}

func signalFD(_ fd: Int32) {
    var one: UInt64 = 1
    _ = write(fd, &one, 8)
}

private func drainFD(_ fd: Int32) {
    var v: UInt64 = 0
    while read(fd, &v, 8) == 8 {}
}

extension Runtime {
    // MARK: - Context set-up (called by openContext / closeContext)

    /// Gives a new virtual context what recovery needs: the application's async fd (the shim's
    /// eventfd), the real-QPN index, a non-blocking real async fd; starts the watcher.
    func prepareRecovery(_ rec: ContextRecord) {
        let efd = sv_eventfd(1, 0)
        if efd >= 0 {
            rec.asyncFD = efd
            rec.ptr.pointee.vctx.context.async_fd = efd
        }
        if sv_qp_index_create(rec.ptr) != 0 { Log.warn("out of memory for the real-QPN index: work is not tracked for recovery") }
        rec.currentDeviceName = rec.device.name
        setNonBlocking(rec.real.pointee.async_fd)
        startWatcher()
        wakeWatcher()
        startPeerService()
    }

    func finishRecovery(_ rec: ContextRecord) {
        if rec.asyncFD >= 0 { Glibc.close(rec.asyncFD) }
        sv_qp_index_destroy(rec.ptr)
        recovery.triggered.removeValue(forKey: key(rec.ptr))
        wakeWatcher()
    }

    func setNonBlocking(_ fd: Int32) {
        guard fd >= 0 else { return }
        let fl = fcntl(fd, F_GETFL)
        if fl >= 0 { _ = fcntl(fd, F_SETFL, fl | O_NONBLOCK) }
    }

    /// Work rings of a new QP (nil rings: untracked, see the limits above).
    func attachRings(_ rec: QPRecord, cap: ibv_qp_cap) -> Bool {
        let ctx = rec.context
        let p = rec.ptr
        if rec.type == IBV_QPT_RAW_PACKET { return true }
        guard let send = sv_ring_create(cap.max_send_wr, cap.max_send_sge, cap.max_inline_data, 1,
                                        rec.initAttr.sq_sig_all != 0 ? 1 : 0) else { return false }
        p.pointee.send_ring = send
        if let srq = rec.initAttr.srq {
            p.pointee.recv_ring = UnsafeMutableRawPointer(srq).assumingMemoryBound(to: sv_srq.self).pointee.recv_ring
        } else {
            guard let recv = sv_ring_create(cap.max_recv_wr, cap.max_recv_sge, 0, 0, 0) else {
                sv_ring_destroy(send)
                p.pointee.send_ring = nil
                return false
            }
            p.pointee.recv_ring = recv
        }
        let rc = sv_qp_index_insert(ctx.ptr, p.pointee.real_qpn, p)
        if rc != 0 { Log.warn("QP \(hex(rec.virtualQPN)): not in the real-QPN index (errno \(rc)); its work is not tracked for recovery") }
        return true
    }

    func detachRings(_ p: UnsafeMutablePointer<sv_qp>) {
        if let ctx = p.pointee.ctx { sv_qp_index_remove(ctx, p.pointee.real_qpn) }
        sv_ring_destroy(p.pointee.send_ring)
        if p.pointee.qpx.qp_base.srq == nil { sv_ring_destroy(p.pointee.recv_ring) }
        p.pointee.send_ring = nil
        p.pointee.recv_ring = nil
    }

    // MARK: - The watcher

    func wakeWatcher() {
        if recovery.wakeFD >= 0 { signalFD(recovery.wakeFD) }
    }

    private func startWatcher() {
        guard !recovery.watcherStarted else { return }
        recovery.watcherStarted = true
        recovery.wakeFD = sv_eventfd(0, 1)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { _ in
            Runtime.shared.unsafelyUnwrapped.watch()
            return nil
        }, nil)
        if rc == 0 {
            pthread_detach(thread)
        } else {
            Log.error("cannot start the recovery watcher thread (errno \(rc)); device loss is not detected")
        }
    }

    /// The watcher's loop (never returns).
    private func watch() {
        var lastRescan = monotonicNS()
        while true {
            var fds: [pollfd] = [pollfd(fd: recovery.wakeFD, events: Int16(POLLIN), revents: 0)]
            var owners: [UInt] = [0]
            let (pendingTriggers, nextDue): (Bool, UInt64?) = withControlLock {
                let nextDue = showDuePortEvents()
                for c in orderedContexts() where !c.released {
                    let st = sv_ctx_state(c.ptr)
                    guard st == SV_CTX_LIVE.rawValue || st == SV_CTX_QUIESCING.rawValue else { continue }
                    fds.append(pollfd(fd: c.real.pointee.async_fd, events: Int16(POLLIN), revents: 0))
                    owners.append(key(c.ptr))
                }
                return (!recovery.triggered.isEmpty, nextDue)
            }
            var waitNS = recovery.rescanNS
            if let nextDue { waitNS = min(waitNS, nextDue &- min(nextDue, monotonicNS())) }
            let timeoutMS = pendingTriggers ? 0 : Int32(max(1, (waitNS + 999_999) / 1_000_000))
            _ = poll(&fds, nfds_t(fds.count), timeoutMS)
            if fds[0].revents != 0 { drainFD(recovery.wakeFD) }
            for i in 1..<fds.count where fds[i].revents != 0 {
                withControlLock {
                    guard let c = contexts[owners[i]], !c.released, c.real.pointee.async_fd == fds[i].fd else { return }
                    readRealEvents(c)
                }
            }
            let now = monotonicNS()
            if now &- lastRescan >= recovery.rescanNS {
                lastRescan = now
                withControlLock { noticeVanishedDevices() }
            }
            runTriggeredRecoveries()
        }
    }

    /// Reads every queued real async event of `c` (non-blocking fd): forwards ordinary ones to the
    /// application's queue, swallows (and acknowledges) those the recovery answers: the loss itself,
    /// and what the loss does to the objects once it is known (QPs on an SRQ entering the error
    /// state report their last WQE; QPs, CQs, SRQs report errors): the recovery makes them again.
    private func readRealEvents(_ c: ContextRecord) {
        guard let get = ops.get_async_event else { return }
        while true {
            var e = ibv_async_event()
            if get(c.real, &e) != 0 { return }
            if isMoving(c) && (Runtime.consequencesOfLoss.contains(e.event_type) || EventKind(e.event_type) == .port) {
                Log.debug("\(c.currentDeviceName): async event \(e.event_type.rawValue) of the loss (not shown to the application)")
                ops.ack_async_event?(&e)
                continue
            }
            switch e.event_type {
            case IBV_EVENT_DEVICE_FATAL:
                Log.info("\(c.currentDeviceName): IBV_EVENT_DEVICE_FATAL: unplanned recovery (not shown to the application)")
                ops.ack_async_event?(&e)
                trigger(c)
            case IBV_EVENT_PORT_ERR where deviceVanished(c):
                Log.info("\(c.currentDeviceName): IBV_EVENT_PORT_ERR and the device left the device list: unplanned recovery (not shown to the application)")
                ops.ack_async_event?(&e)
                trigger(c)
            default:
                if EventKind(e.event_type) == .port {
                    holdPortEvent(c, e)
                } else {
                    queueForApplication(c, e)
                }
            }
        }
    }

    /// Async events a device's loss causes on its objects (hidden while the context is moving, as
    /// every port event is).
    static let consequencesOfLoss: Set<ibv_event_type> = [
        IBV_EVENT_QP_FATAL, IBV_EVENT_QP_REQ_ERR, IBV_EVENT_QP_ACCESS_ERR, IBV_EVENT_QP_LAST_WQE_REACHED,
        IBV_EVENT_CQ_ERR, IBV_EVENT_SRQ_ERR, IBV_EVENT_SQ_DRAINED,
    ]

    /// Whether `c` is being moved: a recovery is triggered for it, or it is not LIVE (control lock).
    func isMoving(_ c: ContextRecord) -> Bool {
        recovery.triggered[key(c.ptr)] != nil || sv_ctx_state(c.ptr) != SV_CTX_LIVE.rawValue
    }

    /// Whether the real device under `c` is gone from a fresh device list.
    func deviceVanished(_ c: ContextRecord) -> Bool {
        guard let getList = ops.get_device_list else { return false }
        var n: Int32 = 0
        guard let list = getList(&n) else { return true }
        refreshDevices(list, Int(n))
        for i in 0..<Int(n) {
            if let d = list[i], deviceName(d) == c.currentDeviceName { return false }
        }
        return true
    }

    private func noticeVanishedDevices() {
        let live = contexts.values.filter { !$0.released && sv_ctx_state($0.ptr) == SV_CTX_LIVE.rawValue }
        guard !live.isEmpty else { return }
        for c in live where deviceVanished(c) {
            Log.info("\(c.currentDeviceName) left the device list: unplanned recovery")
            trigger(c)
        }
    }

    /// Marks a context for an unplanned recovery (any thread; control lock held or not).
    func trigger(_ c: ContextRecord) {
        withControlLock {
            guard !c.plannedHold else { return }
            let g = c.ptr.pointee.generation
            recovery.triggered[key(c.ptr)] = max(g, recovery.triggered[key(c.ptr)] ?? g)
        }
        wakeWatcher()
    }

    /// A real control call failed with `rc`: EIO/ENODEV mean the device is gone.
    func noteRealFailure(_ c: ContextRecord, _ rc: Int32) {
        if rc == EIO || rc == ENODEV || rc == -EIO || rc == -ENODEV {
            Log.info("\(c.currentDeviceName): a real call failed with errno \(abs(rc)): unplanned recovery")
            trigger(c)
        }
    }

    private func runTriggeredRecoveries() {
        let seeds: [ContextRecord] = withControlLock {
            let s = recovery.triggered.compactMap { k, generation -> ContextRecord? in
                guard let c = contexts[k] else { return nil }
                if c.ptr.pointee.generation != generation {
                    Log.info("\(c.currentDeviceName): the loss seen at generation \(generation) was recovered meanwhile (generation \(c.ptr.pointee.generation) now)")
                    return nil
                }
                return c
            }
            recovery.triggered.removeAll()
            return s
        }
        guard !seeds.isEmpty else { return }
        pthread_mutex_lock(recovery.mutex)
        defer { pthread_mutex_unlock(recovery.mutex) }
        let group: [ContextRecord] = withControlLock { recoveryGroup(seeds.filter { !$0.plannedHold }) }
        guard !group.isEmpty else { return }
        var times = RecoveryTimes()
        let t0 = monotonicNS()
        times.startedAt = t0
        withControlLock {
            for c in group where !c.released { sv_ctx_set_state(c.ptr, SV_CTX_RELEASED.rawValue) }
            recovery.polledSince.removeAll()
        }
        // While a port still works the peers are told this group is moving (announceMove); the
        // settling below lets the datagrams already on their way land.
        announceMove(group, planned: false)
        // A device that still works while its removal waits for us (rxe) keeps executing what was
        // handed to it: let that settle first, or a message delivered (an atomic executed) whose
        // completion had not come back yet would be replayed — delivered twice. A dead device
        // (flushed, error completions) ends this at once.
        waitForStragglers(group)
        let unsettled = quiesce(group.filter { !$0.released }, stopOnError: true)
        if unsettled > 0 { Log.info("unplanned recovery: \(unsettled) send(s) in flight did not settle (replayed)") }
        times.quiesce = monotonicNS() &- t0
        let t1 = monotonicNS()
        release(group)
        times.release = monotonicNS() &- t1
        _ = reattach(group, planned: false, times: times, bound: recovery.lossWaitNS)
    }

    // MARK: - Groups

    /// `seeds` and every context connected to them (QP peers, AH peers), transitively, in opening order.
    func recoveryGroup(_ seeds: [ContextRecord]) -> [ContextRecord] {
        var members = Set(seeds.map { key($0.ptr) })
        var changed = true
        while changed {
            changed = false
            for c in contexts.values {
                let inGroup = members.contains(key(c.ptr))
                for q in c.qps.values {
                    guard let p = q.peerContext else { continue }
                    let peerIn = members.contains(key(p.ptr))
                    if inGroup && !peerIn { members.insert(key(p.ptr)); changed = true }
                    if peerIn && !inGroup { members.insert(key(c.ptr)); changed = true }
                }
                for a in c.ahs.values {
                    guard let p = a.peerContext else { continue }
                    let peerIn = members.contains(key(p.ptr))
                    if inGroup && !peerIn { members.insert(key(p.ptr)); changed = true }
                    if peerIn && !members.contains(key(c.ptr)) { members.insert(key(c.ptr)); changed = true }
                }
            }
        }
        // A context whose device never came back (DeviceGone.swift) takes no part any more.
        return orderedContexts().filter { members.contains(key($0.ptr)) && !$0.failed }
    }

    // MARK: - Planned: detach / attach

    /// stableverbs_detach: quiesce and release the contexts on `device` (all when nil) and those
    /// connected to them. Returns when released.
    func detach(device: String?) -> Int32 {
        pthread_mutex_lock(recovery.mutex)
        defer { pthread_mutex_unlock(recovery.mutex) }
        let group: [ContextRecord] = withControlLock {
            let seeds = contexts.values.filter { c in
                !c.released && (device == nil || c.currentDeviceName == device || c.device.name == device)
            }
            return recoveryGroup(Array(seeds)).filter { !$0.released }
        }
        if group.isEmpty {
            if let device, withControlLock({ devices.byName[device] == nil }) { return ENODEV }
            return 0
        }
        announceMove(group, planned: true)
        var times = RecoveryTimes()
        let t0 = monotonicNS()
        times.startedAt = t0
        withControlLock {
            for c in group {
                c.plannedHold = true
                sv_ctx_set_state(c.ptr, SV_CTX_QUIESCING.rawValue)
            }
            recovery.polledSince.removeAll()
        }
        waitForStragglers(group)
        let leftover = quiesce(group, stopOnError: false)
        times.quiesce = monotonicNS() &- t0
        let t1 = monotonicNS()
        withControlLock { for c in group { sv_ctx_set_state(c.ptr, SV_CTX_RELEASED.rawValue) } }
        release(group)
        times.release = monotonicNS() &- t1
        withControlLock { recovery.pendingTimes = times }
        Log.info("detached \(group.count) context(s) (\(group.map { $0.currentDeviceName }.joined(separator: ", "))): "
                 + "quiesce \(ms(times.quiesce)), release \(ms(times.release))"
                 + (leftover > 0 ? "; \(leftover) send(s) still in flight after the quiesce bound (replayed)" : ""))
        return 0
    }

    /// stableverbs_attach: rebuild every context a detach released (waits for a matching device up
    /// to STABLEVERBS_DEVICE_WAIT_MS).
    func attach() -> Int32 {
        pthread_mutex_lock(recovery.mutex)
        defer { pthread_mutex_unlock(recovery.mutex) }
        let (group, times): ([ContextRecord], RecoveryTimes) = withControlLock {
            let g = orderedContexts().filter { $0.plannedHold && $0.released }
            return (g, recovery.pendingTimes ?? RecoveryTimes())
        }
        guard !group.isEmpty else { return 0 }
        let rc = reattach(group, planned: true, times: times, bound: recovery.deviceWaitNS)
        if rc == 0 {
            withControlLock {
                for c in group { c.plannedHold = false }
                recovery.pendingTimes = nil
            }
        }
        return rc
    }

    /// The grace after a flip away from LIVE. A thread that read LIVE just before may still be in a
    /// fast-path op: a poll about to take completions from the real CQ — if the engine drained
    /// that CQ first, the thread would hand the application newer completions before the older
    /// ones kept for it (seen on rxe under TCG with the old fixed 2 ms). So: at least graceMinUS
    /// (posts), then until every CQ of the group has been polled through the cold path since the
    /// flip (its one poller is out of the fast path) and no ibv_wr_* batch started while LIVE is
    /// still open (its builders write into the real QP), or STABLEVERBS_GRACE_US passed.
    func waitForStragglers(_ group: [ContextRecord]) {
        let start = monotonicNS()
        if recovery.graceMinUS > 0 { usleep(recovery.graceMinUS) }
        let deadline = start &+ UInt64(recovery.graceUS) * 1000
        while monotonicNS() < deadline {
            let all: Bool = withControlLock {
                group.allSatisfy { c in
                    c.cqs.values.allSatisfy { recovery.polledSince.contains(key($0.ptr)) }
                        && c.qps.values.allSatisfy { sv_qp_wr_batch($0.ptr) != UInt32(SV_WR_BATCH_DIRECT) }
                }
            }
            if all { return }
            usleep(200)
        }
    }

    /// Drains the group's real CQs until every send handed to hardware has completed or cannot
    /// progress, or STABLEVERBS_QUIESCE_MS passed (with `stopOnError`, also once the device makes
    /// no progress at all: error completions show it flushed its queues, or no port of the group
    /// is active any more). A send cannot progress when it, the first one not completed on its
    /// queue, needs a receive and the QP's peer in this process has no receive in hardware (RNR,
    /// retried for ever; nothing behind it executes): the state is then exact and everything from
    /// it on is replayed. Unsignaled RDMA WRITEs and READs ahead of it (or alone: their completion
    /// is never seen) do not hold the settling up: replaying them is harmless. Returns how many
    /// sends did not settle.
    private func quiesce(_ group: [ContextRecord], stopOnError: Bool) -> Int {
        struct Mark {
            let ring: UnsafeMutablePointer<sv_wr_ring>
            let end: UInt64                              // entries before it were handed to hardware
            let peerRecv: UnsafeMutablePointer<sv_wr_ring>?
            let peerEnd: UInt64
        }
        func handed(_ r: UnsafeMutablePointer<sv_wr_ring>) -> UInt64 {
            recovery.bufferedFrom[UInt(bitPattern: r)] ?? sv_ring_tail(r)
        }
        let marks: [Mark] = withControlLock {
            var index = QPNIndex()
            return group.flatMap { c in
                c.qps.values.compactMap { q -> Mark? in
                    guard let r = q.ptr.pointee.send_ring else { return nil }
                    let pr = index.peer(of: q)?.ptr.pointee.recv_ring
                    return Mark(ring: r, end: handed(r), peerRecv: pr, peerEnd: pr.map(handed) ?? 0)
                }
            }
        }
        func needsReceive(_ op: ibv_wr_opcode) -> Bool {
            op == IBV_WR_SEND || op == IBV_WR_SEND_WITH_IMM || op == IBV_WR_RDMA_WRITE_WITH_IMM
        }
        func unsettled(_ m: Mark) -> Int {
            let sigAll = m.ring.pointee.sig_all != 0
            var first: UnsafeMutablePointer<sv_ring_entry>? = nil
            var n = 0
            var i = sv_ring_head(m.ring)
            while i < m.end {
                let e = sv_ring_at(m.ring, i)!
                i &+= 1
                guard e.pointee.done == 0 else { continue }
                n += 1
                let w = e.pointee.wr.send
                let silent = !sigAll && w.send_flags & ubits(IBV_SEND_SIGNALED) == 0
                if first == nil && !(silent && (w.opcode == IBV_WR_RDMA_WRITE || w.opcode == IBV_WR_RDMA_READ)) { first = e }
            }
            guard let first, n > 0 else { return 0 }
            if needsReceive(first.pointee.wr.send.opcode), let pr = m.peerRecv {
                var j = sv_ring_head(pr)
                while j < m.peerEnd {
                    if sv_ring_at(pr, j)!.pointee.done == 0 { return n }
                    j &+= 1
                }
                return 0 // blocked on a receive the peer does not have: it cannot progress
            }
            return n
        }
        let deadline = monotonicNS() &+ recovery.quiesceNS
        var round = 0
        while true {
            let (left, stalled): (Int, Bool) = withControlLock {
                var failed = false
                for c in group where drainCQs(c) { failed = true }
                let left = marks.reduce(0) { $0 + unsettled($1) }
                return (left, stopOnError && left > 0 && (failed || (round % 10 == 0 && !group.contains(where: hasActiveRealPort))))
            }
            if left == 0 || stalled || monotonicNS() >= deadline { return left }
            round += 1
            usleep(100)
        }
    }

    /// Tells the group's peers in other processes that it is about to move. RC peers then wait
    /// for it longer than for a silent peer (the device's return can take seconds); UD peers hold
    /// their sends to it (a datagram sent to a released device would be dropped). Only while a
    /// port of the group still works (rxe's removal waits for the release; a NIC replaced after
    /// its device was deleted) — with none the datagrams are lost anyway, and an unplanned loss
    /// (a NIC pulled) may have taken the route to the peers too — except that a planned detach
    /// is always announced to RC peers. No lock held on entry.
    func announceMove(_ group: [ContextRecord], planned: Bool) {
        let portWorks = withControlLock { group.contains { !$0.released && hasActiveRealPort($0) } }
        if planned || portWorks { announcePause(group, planned: planned) }
        if portWorks { announceUDPause(group, planned: planned) }
    }

    /// Whether a port of `c`'s real device is still active (the device still works). Control lock.
    func hasActiveRealPort(_ c: ContextRecord) -> Bool {
        var attr = ibv_port_attr()
        return (1...max(1, c.ports.count)).contains { c.queryRealPort(UInt8($0), &attr) == 0 && attr.state == IBV_PORT_ACTIVE }
    }

    // MARK: - Release

    /// Polls every real CQ of `c` empty: successful completions retire their ring entries and wait
    /// in the CQ's pending queue (already in virtual terms) for the application; error completions
    /// caused by the device loss are dropped (their work stays in the rings and is replayed).
    /// Returns whether there were error completions.
    @discardableResult
    func drainCQs(_ c: ContextRecord) -> Bool {
        guard !c.released else { return false }
        var failed = false
        var buf = [ibv_wc](repeating: ibv_wc(), count: 32)
        for cq in c.nextOrder(c.cqs, { $0.sequence }) {
            // An extended CQ is drained through ibv_poll_cq too (every provider polls one so),
            // unless the application is inside a poll session on it (waitForPollSessions).
            if cq.ptr.pointee.session == SV_CQ_SESSION_REAL.rawValue { continue }
            let real = cq.real
            guard let poll = real.pointee.context?.pointee.ops.poll_cq else { continue }
            let bySender = svUDBySender(c.ptr)
            while true {
                let n = buf.withUnsafeMutableBufferPointer { poll(real, 32, $0.baseAddress) }
                if n <= 0 { break }
                for i in 0..<Int(n) {
                    if buf[i].status != IBV_WC_SUCCESS { failed = true; continue }
                    if bySender { svColdUDSenders(c.ptr, &buf[i], 1) }
                    sv_ring_retire_one(c.ptr, &buf[i])
                    var w = buf[i]
                    svTranslateCompletions(c.ptr, &w, 1)
                    cq.pending.append(w)
                }
            }
            cq.publishPending()
        }
        return failed
    }

    /// Destroys every real object of the group (state already QUIESCING→RELEASED or RELEASED).
    func release(_ group: [ContextRecord]) {
        if recovery.graceMinUS > 0 { usleep(recovery.graceMinUS) }
        // Threads inside the real get_cq_event finish first (it does not block: the fd was
        // readable), and so do the application's destroys already under way (they could wait for
        // event acknowledgements: bounded at 2 s, then released with the rest).
        let deadline = monotonicNS() &+ 100_000_000
        while withControlLock({ group.contains { c in c.channels.values.contains { $0.inCall > 0 } } }),
              monotonicNS() < deadline {
            usleep(100)
        }
        waitForPollSessions(group)
        let destroys = monotonicNS() &+ 2_000_000_000
        while withControlLock({ group.contains { $0.destroysInFlight > 0 } }) {
            if monotonicNS() >= destroys {
                Log.warn("release: an application destroy of a CQ, QP or SRQ did not return within 2 s; its object is released with the rest")
                break
            }
            usleep(100)
        }
        withControlLock {
            // Every QP to ERROR first: nothing executes or retries any more (a send waiting for a
            // receive retries RNR for ever, and rxe's destroy_qp spins in the kernel until the QP's
            // tasks are idle: soft lockups with hundreds of QPs), and no completion can come after
            // the drain and be lost with its CQ. Then what completed before, then the destroys.
            for c in group where !c.released { stopQPs(c) }
            keepInProcessExpectedPSNs(group)
            for c in group where !c.released { drainCQs(c) }
            for c in group where !c.released { releaseContext(c) }
        }
    }

    private func stopQPs(_ c: ContextRecord) {
        guard let modify = ops.modify_qp else { return }
        for qp in c.qps.values {
            var attr = ibv_qp_attr()
            attr.qp_state = IBV_QPS_ERR
            _ = modify(qp.real, &attr, bits(IBV_QP_STATE)) // fails on a dead device: nothing runs there anyway
        }
        keepExpectedPSNs(c)
    }

    private func releaseContext(_ c: ContextRecord) {
        for ah in c.ahs.values {
            if let real = ah.ptr.pointee.real { _ = ops.destroy_ah?(real) }  // nil: not made again (Rebuild.swift)
        }
        for qp in c.nextOrder(c.qps, { $0.sequence }).reversed() {
            sv_qp_index_remove(c.ptr, qp.ptr.pointee.real_qpn)
            let owed = qp.asyncEvents.settleForRebuild()
            ackOwed(owed, IBV_EVENT_QP_FATAL) { $0.element.qp = qp.real }
            if let d = ops.destroy_qp, d(qp.real) != 0 { Log.debug("release: destroy_qp failed (device gone)") }
        }
        for srq in c.srqs.values {
            let owed = srq.asyncEvents.settleForRebuild()
            ackOwed(owed, IBV_EVENT_SRQ_ERR) { $0.element.srq = srq.real }
            _ = ops.destroy_srq?(srq.real)
        }
        for cq in c.cqs.values {
            let comp = cq.completionEvents.settleForRebuild()
            if comp > 0 { ops.ack_cq_events?(cq.real, comp) }
            let owed = cq.asyncEvents.settleForRebuild()
            ackOwed(owed, IBV_EVENT_CQ_ERR) { $0.element.cq = cq.real }
            _ = ops.destroy_cq?(cq.real)
        }
        for ch in c.channels.values {
            // Keep the number: the real channel's file moves to a fresh number (closed with it),
            // a placeholder (an eventfd that never fires) holds the number until the rebuild.
            let number = ch.ptr.pointee.channel.fd
            let real = ch.real
            if number >= 0 && real.pointee.fd == number {
                let moved = fcntl(number, F_DUPFD_CLOEXEC, 0)
                if moved >= 0 {
                    real.pointee.fd = moved
                    let placeholder = sv_eventfd(0, 0)
                    if placeholder >= 0 {
                        _ = dup2(placeholder, number)
                        Glibc.close(placeholder)
                    }
                }
            }
            _ = ops.destroy_comp_channel?(real)
        }
        for mr in c.mrs.values { _ = ops.dereg_mr?(mr.real) }
        for pd in c.pds.values { _ = ops.dealloc_pd?(pd.real) }
        let rc = ops.close_device?(c.real) ?? 0
        if rc != 0 { Log.warn("release: close_device of \(c.currentDeviceName) failed (\(rc))") }
        c.released = true
        Log.debug("released \(c.currentDeviceName): \(c.qps.count) QP, \(c.cqs.count) CQ, \(c.mrs.count) MR")
    }

    private func ackOwed(_ owed: UInt32, _ type: ibv_event_type, _ fill: (inout ibv_async_event) -> Void) {
        guard owed > 0, let ack = ops.ack_async_event else { return }
        var e = ibv_async_event()
        e.event_type = type
        fill(&e)
        for _ in 0..<owed { ack(&e) }
    }

    // MARK: - Device wait, rebuild, replay

    /// The real device a released context should be rebuilt on, by policy; nil: none yet.
    private func matchDevice(_ c: ContextRecord, missingSince: UInt64) -> UnsafeMutablePointer<ibv_device>? {
        guard let getList = ops.get_device_list else { return nil }
        var n: Int32 = 0
        guard let list = getList(&n) else { return nil }
        refreshDevices(list, Int(n))
        var present: [UnsafeMutablePointer<ibv_device>] = []
        for i in 0..<Int(n) { if let d = list[i] { present.append(d) } }
        func named(_ name: String) -> UnsafeMutablePointer<ibv_device>? { present.first { deviceName($0) == name } }
        let byName = named(c.device.name) ?? named(c.currentDeviceName)
        switch recovery.policy {
        case .name:
            return byName
        case .guid:
            return present.first { (ops.get_device_guid?($0) ?? 0) == c.device.guid }
        case .any:
            return byName ?? present.first { hasActivePort($0) }
        case .nameThenAny:
            if let byName { return byName }
            if monotonicNS() &- missingSince < recovery.matchWaitNS { return nil }
            return present.first { hasActivePort($0) }
        }
    }

    private func hasActivePort(_ d: UnsafeMutablePointer<ibv_device>) -> Bool {
        guard let open = ops.open_device, let close = ops.close_device, let ctx = open(d) else { return false }
        defer { _ = close(ctx) }
        var dattr = ibv_device_attr()
        let ports = (ops.query_device?(ctx, &dattr) ?? -1) == 0 ? max(1, Int(dattr.phys_port_cnt)) : 1
        for p in 1...ports {
            var attr = ibv_port_attr()
            if queryPortOf(real: ctx, UInt8(p), &attr, MemoryLayout<ibv_port_attr>.size) == 0, attr.state == IBV_PORT_ACTIVE {
                return true
            }
        }
        return false
    }

    /// Device wait + rebuild of every context of the group (with retries and a bounded backoff),
    /// then the replay, then LIVE. `bound` nil: wait for as long as it takes. Past the bound a
    /// planned attach fails (ETIMEDOUT, still detached); an unplanned loss fails the contexts still
    /// waiting as native verbs would (DeviceGone.swift) and goes on with the rest.
    private func reattach(_ initial: [ContextRecord], planned: Bool, times initialTimes: RecoveryTimes, bound: UInt64?) -> Int32 {
        var group = initial
        var times = initialTimes
        let start = monotonicNS()
        var backoff: UInt64 = 1_000_000  // 1 ms, doubling to 100 ms
        var attempts = 0
        var waiting = group
        var rebuildNS: UInt64 = 0
        var reconnectNS: UInt64 = 0
        var waitNS: UInt64 = 0
        var found: Set<UInt> = []
        while !waiting.isEmpty {
            var next: [ContextRecord] = []
            for c in waiting {
                let w0 = monotonicNS()
                let device: UnsafeMutablePointer<ibv_device>? = withControlLock { matchDevice(c, missingSince: start) }
                waitNS &+= monotonicNS() &- w0
                guard let device else { next.append(c); continue }
                if found.insert(key(c.ptr)).inserted { times.deviceFoundAt = max(times.deviceFoundAt, monotonicNS()) }
                let r0 = monotonicNS()
                var reconnect: UInt64 = 0
                // A rebuild that failed before its commit changed nothing (still released): retry.
                let (rc, committed): (Int32, Bool) = withControlLock {
                    sv_ctx_set_state(c.ptr, SV_CTX_REBUILDING.rawValue)
                    let rc = rebuild(c, on: device, finalState: SV_CTX_RECONNECTING.rawValue, reconnectNS: &reconnect)
                    if c.released { sv_ctx_set_state(c.ptr, SV_CTX_RELEASED.rawValue) }
                    return (rc, !c.released)
                }
                rebuildNS &+= monotonicNS() &- r0 &- reconnect
                reconnectNS &+= reconnect
                attempts += 1
                if !committed {
                    Log.warn("recovery: rebuilding \(c.device.name) failed (errno \(rc)); retrying")
                    next.append(c)
                } else if rc == ENODEV {
                    // Committed on a device that went away again: nothing was replayed on it yet.
                    Log.warn("recovery: \(c.device.name) cannot go on on this device (gone again, or an address handle missing); released, rebuilding again")
                    release([c])
                    withControlLock { sv_ctx_set_state(c.ptr, SV_CTX_RELEASED.rawValue) }
                    next.append(c)
                }
            }
            waiting = next
            if waiting.isEmpty { break }
            if let bound, monotonicNS() &- start >= bound {
                Log.error("recovery: no matching device for \(waiting.map { $0.device.name }.joined(separator: ", ")) within \(bound / 1_000_000) ms")
                withControlLock { recovery.stats.lastError = ETIMEDOUT }
                if planned { return ETIMEDOUT }
                withControlLock { for c in waiting { failDevice(c, waitedNS: monotonicNS() &- start) } }
                group.removeAll { c in waiting.contains { $0 === c } }
                if group.isEmpty { return ETIMEDOUT }
                break
            }
            let s0 = monotonicNS()
            sleepNS(backoff)
            waitNS &+= monotonicNS() &- s0
            backoff = min(backoff * 2, 100_000_000)
        }
        // Connections to other processes: the peer protocol (Peers/Reconnect.swift).
        let l0 = monotonicNS()
        let gaveUp = reconnectLinks(group)
        let failing = Set(gaveUp.map { ObjectIdentifier($0.qp) })  // not replayed: failed below
        reconnectNS &+= monotonicNS() &- l0
        times.deviceWait = waitNS
        times.rebuild = rebuildNS
        times.reconnect = reconnectNS

        // Replay: receives first (every context), then the UD peers are told where this group's
        // UD QPs are (their held sends then find receives posted), then sends; then LIVE.
        let p0 = monotonicNS()
        func replayReceives(from: [UInt: UInt64]) -> (UInt64, [UInt: UInt64]) {
            var n: UInt64 = 0
            var ends: [UInt: UInt64] = [:]
            func one(_ r: UnsafeMutablePointer<sv_wr_ring>, _ object: UnsafeMutableRawPointer, isSRQ: Bool) {
                n &+= replayRecv(r, object, isSRQ: isSRQ, from: from[UInt(bitPattern: r)] ?? 0)
                ends[UInt(bitPattern: r)] = sv_ring_tail(r)
            }
            for c in group {
                for srq in c.nextOrder(c.srqs, { $0.sequence }) {
                    if let r = srq.ptr.pointee.recv_ring { one(r, UnsafeMutableRawPointer(srq.ptr), isSRQ: true) }
                }
                for qp in c.nextOrder(c.qps, { $0.sequence }) where qp.initAttr.srq == nil && !failing.contains(ObjectIdentifier(qp)) {
                    if let r = qp.ptr.pointee.recv_ring { one(r, UnsafeMutableRawPointer(qp.ptr), isSRQ: false) }
                }
            }
            return (n, ends)
        }
        let (received, receiveEnds): (UInt64, [UInt: UInt64]) = withControlLock {
            applyInProcessCounts(group)
            remakeSRQReceives(group)
            return replayReceives(from: [:])
        }
        let u0 = monotonicNS()
        let udRest = announceUDMoves(group)
        let announceNS = monotonicNS() &- u0
        times.reconnect &+= announceNS
        let _: UInt64 = withControlLock {
            // Receives the application posted meanwhile (buffered: the context is not LIVE yet).
            var n = received &+ replayReceives(from: receiveEnds).0
            for c in group {
                for qp in c.nextOrder(c.qps, { $0.sequence }) where !failing.contains(ObjectIdentifier(qp)) {
                    if let r = qp.ptr.pointee.send_ring { n &+= replaySend(r, qp.ptr) }
                }
            }
            failGivenUpLinks(gaveUp)
            for c in group {
                for cq in c.cqs.values where cq.channel != nil && !cq.pending.isEmpty { cq.owedEvent = true }
                c.movedAt = monotonicNS()
                sv_ctx_set_state(c.ptr, SV_CTX_LIVE.rawValue)
            }
            recovery.bufferedFrom.removeAll() // one recovery at a time: every ring replayed is live again
            bumpRecoveryEpoch()
            // The stats with the flip to LIVE (one lock hold): whoever sees the work move again
            // sees this recovery counted.
            times.liveAt = monotonicNS()
            times.replay = times.liveAt &- p0 &- announceNS
            recovery.stats.count &+= 1
            recovery.stats.last = times
            recovery.stats.lastPlanned = planned
            recovery.stats.lastContexts = UInt32(group.count)
            recovery.stats.lastReplayed = n
            recovery.stats.lastError = 0
            // Logged before the lock is let go: a program that ends on the errors of a link given
            // up on (failed above) has the recovery in its log too.
            let names = group.map { c in c.device.name == c.currentDeviceName ? c.device.name : "\(c.device.name)→\(c.currentDeviceName)" }
            Log.info("recovery #\(recovery.stats.count) (\(planned ? "planned" : "unplanned"), \(group.count) context(s): \(names.joined(separator: ", "))): "
                     + "quiesce \(ms(times.quiesce)), release \(ms(times.release)), device wait \(ms(times.deviceWait)), "
                     + "rebuild \(ms(times.rebuild)), reconnect \(ms(times.reconnect)), replay \(ms(times.replay)) "
                     + "(\(n) work request(s) re-posted, \(attempts) rebuild attempt(s))")
            return n
        }
        announceUDMovesToOthers(udRest)
        return 0
    }

    /// Connections with both ends in this process: before the replay, each end learns from the
    /// other's rings what the peer protocol's counts would tell it (Peers/Reconnect.swift): a SEND
    /// the receiver already completed is not sent again, a receive completion that died with the
    /// device after the sender saw the message acknowledged is made again. An atomic the responder
    /// executed is not posted again when the responder's QP could be asked at the release (its
    /// device still answered: keepInProcessExpectedPSNs), and its result is worked out from the
    /// word it targets in this process's memory (Peers/ExecutedWork.swift); else it is posted
    /// again (at least once: its result died with the device). Control lock.
    private func applyInProcessCounts(_ group: [ContextRecord]) {
        var index = QPNIndex()
        let members = Set(group.map { ObjectIdentifier($0) })
        var told: [(QPRecord, PeerCounts)] = []
        for c in group {
            for q in c.nextOrder(c.qps, { $0.sequence }) {
                guard let peer = index.peer(of: q), members.contains(ObjectIdentifier(peer.context)) else { continue }
                var counts = counts(of: peer)  // every count read before any is applied
                if let expected = peer.expectedPSNAtRelease {
                    counts.expected = expected
                    counts.atomicWords = atomicWords(atomicTargets(of: q, executedBefore: expected), at: peer)
                }
                told.append((q, counts))
            }
        }
        for (q, counts) in told {
            applyCounts(q, label: "QP \(hex(q.virtualQPN)) (in-process peer)", counts, replayAtomics: counts.expected == nil)
        }
        for (q, _) in told { q.expectedPSNAtRelease = nil }
        for c in group { for q in c.qps.values { q.rebuiltNotCounted = false } }
    }

    /// Before a release destroys the QPs of `group` (stopped): the PSN each QP with an in-process
    /// peer expected next, where that peer has atomics not done (the only work whose execution
    /// the counts of SENDs cannot tell) and the QP's device still answers. A QP rebuilt by this
    /// recovery and released again before the counts (a device gone again) keeps what its old
    /// QP said. Control lock.
    private func keepInProcessExpectedPSNs(_ group: [ContextRecord]) {
        var index = QPNIndex()
        for c in group where !c.released {
            for q in c.qps.values where peers.links[key(q.ptr)] == nil && !q.rebuiltNotCounted {
                guard let peer = index.peer(of: q), let r = peer.ptr.pointee.send_ring,
                      Runtime.atomicsAhead(r, from: sv_ring_head(r), to: sv_ring_tail(r)) > 0 else { continue }
                q.expectedPSNAtRelease = expectedPSN(of: q)
            }
        }
    }

    /// Wakes threads waiting for completion events (on the old files, or for completions a
    /// recovery kept). Control lock.
    func bumpRecoveryEpoch() {
        let old = recovery.epochFD
        recovery.epochFD = sv_eventfd(0, 0)
        if old >= 0 {
            signalFD(old)
            recovery.retiredEpochs.append(old)
            if recovery.retiredEpochs.count > 4 { Glibc.close(recovery.retiredEpochs.removeFirst()) }
        }
    }

    /// Re-posts the not-completed entries of a ring, in order (control lock; real objects rebuilt).
    func replaySend(_ r: UnsafeMutablePointer<sv_wr_ring>, _ q: UnsafeMutablePointer<sv_qp>, from: UInt64 = 0) -> UInt64 {
        if sv_ring_is_lost(r) != 0 {
            Log.warn("replay: QP \(hex(q.pointee.qpx.qp_base.qp_num)) posted more than its work ring holds; some of its work in flight was not recorded and is not replayed")
        }
        let (n, rc, _) = postRingSends(r, q, from: from)
        if rc != 0 { logReplayFailure(n, "send(s)", rc) }
        return n
    }

    /// Posts the entries of a send ring from `from` to its tail that are not done, in order, through
    /// the translated path. Returns how many, the provider's answer, and the ring index of the entry
    /// it refused (the tail when none).
    func postRingSends(_ r: UnsafeMutablePointer<sv_wr_ring>, _ q: UnsafeMutablePointer<sv_qp>, from: UInt64) -> (UInt64, Int32, UInt64) {
        let head = sv_ring_head(r), tail = sv_ring_tail(r)
        var n: UInt64 = 0
        var first: UnsafeMutablePointer<ibv_send_wr>? = nil
        var last: UnsafeMutablePointer<ibv_send_wr>? = nil
        var i = max(head, from)
        while i != tail {
            let e = sv_ring_at(r, i)!
            i &+= 1
            if e.pointee.done != 0 { continue }
            sv_ring_take_psns(r, e, sv_ring_entry_length(e))  // its PSN on the QP it goes to now
            let w = sv_ring_send_wr(e)!
            if e.pointee.inline_len > 0 {
                let sg = sv_ring_sges(e)!
                let data = UnsafeMutableRawPointer(sg + Int(r.pointee.max_sge))
                sg.pointee = ibv_sge(addr: UInt64(UInt(bitPattern: data)), length: e.pointee.inline_len, lkey: 0)
                w.pointee.sg_list = sg
                w.pointee.num_sge = 1
            }
            w.pointee.next = nil
            if let l = last { l.pointee.next = w } else { first = w }
            last = w
            n &+= 1
        }
        guard let first else { return (0, 0, tail) }
        var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
        let rc = svPostSendTranslated(q, first, &bad)
        guard rc != 0, let bad else { return (n, rc, tail) }
        var j = max(head, from)
        while j != tail, sv_ring_send_wr(sv_ring_at(r, j)) != bad { j &+= 1 }
        if j != tail { r.pointee.next_psn = sv_ring_at(r, j).pointee.psn }  // not handed over
        return (n, rc, j)
    }

    /// A re-post the provider refused leaves its requests in the ring, not done. A device gone
    /// again (EIO, ENODEV: it also sent IBV_EVENT_DEVICE_FATAL or left the list) starts the next
    /// recovery, whose replay posts them; any other refusal leaves them without a completion.
    private func logReplayFailure(_ n: UInt64, _ what: String, _ rc: Int32) {
        if rc == EIO || rc == ENODEV {
            Log.warn("replay: re-posting \(n) \(what) failed (errno \(rc)): the device is gone again; they stay recorded for the next recovery")
        } else {
            Log.error("replay: re-posting \(n) \(what) failed (errno \(rc)); those are lost")
        }
    }

    func replayRecv(_ r: UnsafeMutablePointer<sv_wr_ring>, _ object: UnsafeMutableRawPointer, isSRQ: Bool, from: UInt64 = 0) -> UInt64 {
        let head = sv_ring_head(r), tail = sv_ring_tail(r)
        var n: UInt64 = 0
        var first: UnsafeMutablePointer<ibv_recv_wr>? = nil
        var last: UnsafeMutablePointer<ibv_recv_wr>? = nil
        var i = max(head, from)
        while i != tail {
            let e = sv_ring_at(r, i)!
            i &+= 1
            if e.pointee.done != 0 { continue }
            let w = sv_ring_recv_wr(e)!
            w.pointee.next = nil
            if let l = last { l.pointee.next = w } else { first = w }
            last = w
            n &+= 1
        }
        guard let first else { return 0 }
        var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
        let rc = svPostRecvTranslated(object, isSRQ, first, &bad)
        if rc != 0 { logReplayFailure(n, "receive(s)", rc) }
        return n
    }

    // MARK: - Cold data paths (called from DataPath when the context is not LIVE)

    /// A post while not LIVE: buffered in the ring (QUIESCING, RELEASED, REBUILDING, RECONNECTING:
    /// the replay that ends the recovery re-posts it after the older work, in order — posted
    /// directly while RECONNECTING, it would overtake that work and then be posted a second time
    /// by the replay), or posted (LIVE). Control lock: the state cannot change under it.
    func postSendNotLive(_ q: UnsafeMutablePointer<sv_qp>, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
                         _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?) -> Int32 {
        while true {
            let rc: Int32? = withControlLock {
                let st = sv_ctx_state(q.pointee.ctx)
                if st == SV_CTX_LIVE.rawValue || st == SV_CTX_PASSTHROUGH.rawValue {
                    return svPostSendRecorded(q, wr, bad)
                }
                if st == SV_CTX_FAILED.rawValue {  // the device never came back (DeviceGone.swift)
                    bad?.pointee = wr
                    return EIO
                }
                guard let ring = q.pointee.send_ring else { return nil }  // untracked: wait
                noteBuffering(ring)
                let psn = ring.pointee.next_psn  // buffered, not handed over: the replay numbers it
                defer { ring.pointee.next_psn = psn }
                if sv_ring_record_send(ring, wr) == UInt64.max {
                    bad?.pointee = wr
                    return ENOMEM
                }
                return 0
            }
            if let rc { return rc }
            usleep(1000)
        }
    }

    func postRecvNotLive(_ object: UnsafeMutableRawPointer, _ isSRQ: Bool, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
                         _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?) -> Int32 {
        while true {
            let rc: Int32? = withControlLock {
                let ctx = isSRQ ? object.assumingMemoryBound(to: sv_srq.self).pointee.ctx!
                                : object.assumingMemoryBound(to: sv_qp.self).pointee.ctx!
                let ring = isSRQ ? object.assumingMemoryBound(to: sv_srq.self).pointee.recv_ring
                                 : object.assumingMemoryBound(to: sv_qp.self).pointee.recv_ring
                let st = sv_ctx_state(ctx)
                if st == SV_CTX_LIVE.rawValue || st == SV_CTX_PASSTHROUGH.rawValue {
                    return svPostRecvRecorded(object, isSRQ, wr, bad)
                }
                if st == SV_CTX_FAILED.rawValue {
                    bad?.pointee = wr
                    return EIO
                }
                guard let ring else { return nil }
                noteBuffering(ring)
                if sv_ring_record_recv(ring, wr) == UInt64.max {
                    bad?.pointee = wr
                    return ENOMEM
                }
                return 0
            }
            if let rc { return rc }
            usleep(1000)
        }
    }

    /// Where buffering starts in a ring (control lock): what comes before was handed to hardware.
    func noteBuffering(_ ring: UnsafeMutablePointer<sv_wr_ring>) {
        let k = UInt(bitPattern: ring)
        if recovery.bufferedFrom[k] == nil { recovery.bufferedFrom[k] = sv_ring_tail(ring) }
    }

    /// A poll while not LIVE, or with completions pending: pending completions first, then the
    /// real CQ when it exists — under the control lock, so that it never interleaves with the
    /// engine draining the same CQ (which would hand out newer completions before older ones).
    func pollNotLive(_ c: UnsafeMutablePointer<sv_cq>, _ ne: Int32, _ wc: UnsafeMutablePointer<ibv_wc>?) -> Int32 {
        guard ne > 0, let wc else { return 0 }
        return withControlLock {
            let rec = record(c.pointee.core, as: CQRecord.self)
            let st = sv_ctx_state(c.pointee.ctx)
            if st != SV_CTX_LIVE.rawValue { recovery.polledSince.insert(key(c)) }
            let take = min(Int(ne), rec.pending.count)
            for i in 0..<take { wc[i] = rec.pending[i] }
            if take > 0 {
                rec.pending.removeFirst(take)
                rec.publishPending()
            }
            if take == Int(ne) || !realCQPollable(rec) { return Int32(take) }
            let n = svPollCQTranslatedRetiring(c, ne - Int32(take), wc + take)
            if n < 0 { return take > 0 ? Int32(take) : n }
            return Int32(take) + n
        }
    }

    /// Completions with an error status came back from the real CQ (first at `from`): those caused
    /// by a device loss are dropped (their work stays in the rings, the recovery replays it) and a
    /// recovery is triggered; others retire their work and reach the application. Returns the new
    /// count of entries in `wc`.
    func filterErrorCompletions(_ ctx: UnsafeMutablePointer<sv_context>, _ wc: UnsafeMutablePointer<ibv_wc>, _ n: Int, from: Int) -> Int {
        let c: ContextRecord = withControlLock { record(ctx.pointee.core, as: ContextRecord.self) }
        var lost: Bool? = nil
        var held = false
        var out = from
        for i in from..<n {
            let w = wc[i]
            if w.status != IBV_WC_SUCCESS {
                // A QP whose peer shim may be moving (or being reconnected): held back, its work
                // stays in the rings for the reconnection; given up after the peer timeout.
                // A connection whose work the shim completed itself (failLink) returns duplicates
                // of those completions from the real CQ: dropped.
                let (linked, first, duplicate): (Bool, Bool, Bool) = withControlLock {
                    if c.peerHold { return (true, false, false) }
                    guard let q = sv_qp_index_find(ctx, w.qp_num), let link = peers.links[key(q)] else { return (false, false, false) }
                    if link.flushed && sv_ring_outstanding(q, w.wr_id) == 0 { return (false, false, true) }
                    guard link.state == .ready || link.state == .awaiting else { return (false, false, false) }
                    guard link.suspectSince == nil else { return (true, false, false) }
                    link.suspectSince = monotonicNS()
                    link.heldStatus = w.status
                    Log.info("peer: \(link.label): error completion (status \(w.status.rawValue)) held back: waiting up to \(peers.timeoutNS / 1_000_000) ms for the peer")
                    return (true, true, false)
                }
                if duplicate { continue }
                if linked {
                    held = true
                    // Our own device may be the one that failed: looked at once per failure.
                    if first && lost == nil { lost = withControlLock { deviceLost(c) } }
                    continue
                }
                if lost == nil { lost = withControlLock { deviceLost(c) } }
                if lost == true { continue }
            }
            sv_ring_retire_one(ctx, wc + i)
            if out != i { wc[out] = w }
            out += 1
        }
        if lost == true && !withControlLock({ c.peerHold }) {
            Log.info("\(c.currentDeviceName): error completions while the device is gone: hidden, unplanned recovery")
            trigger(c)
        } else if held {
            wakePeerService()
        }
        return out
    }

    /// Whether the device under `c` is gone or unusable (a port query fails, no port active, or
    /// the device left the list). Control lock.
    func deviceLost(_ c: ContextRecord) -> Bool {
        if c.released || sv_ctx_state(c.ptr) != SV_CTX_LIVE.rawValue { return true }
        var attr = ibv_port_attr()
        let ports = max(1, c.ports.count)
        var anyActive = false
        for p in 1...ports {
            let rc = c.queryRealPort(UInt8(p), &attr)
            if rc == EIO || rc == ENODEV { return true }
            if rc == 0 && attr.state == IBV_PORT_ACTIVE { anyActive = true }
        }
        return !anyActive || deviceVanished(c)
    }

    // MARK: - Completion events across a recovery

    /// ibv_get_cq_event without blocking inside the real library: waits in poll() on the channel's
    /// fd number and the recovery epoch, then takes the event (the fd is readable: no blocking).
    func getCQEventSafely(_ ch: UnsafeMutablePointer<sv_comp_channel>,
                          _ cqOut: UnsafeMutablePointer<UnsafeMutablePointer<ibv_cq>?>?,
                          _ contextOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
        let number = ch.pointee.channel.fd
        let nonBlocking = fcntl(number, F_GETFL) & O_NONBLOCK != 0
        while true {
            // An event the recovery owes (completions kept across it while the app was waiting).
            let (owed, epoch, ready): (UnsafeMutablePointer<sv_cq>?, Int32, Bool) = withControlLock {
                let rec = record(ch.pointee.core, as: ChannelRecord.self)
                for cq in rec.context.cqs.values where cq.channel === rec && cq.owedEvent {
                    cq.owedEvent = false
                    cq.completionEvents.debt &+= 1 // the application's ack of it is not forwarded
                    return (cq.ptr, -1, false)
                }
                let ok = !rec.context.released && sv_ctx_state(rec.context.ptr) == SV_CTX_LIVE.rawValue
                if ok { rec.inCall += 1 }
                return (nil, recovery.epochFD, ok)
            }
            if let owed {
                cqOut?.pointee = UnsafeMutableRawPointer(owed).assumingMemoryBound(to: ibv_cq.self)
                contextOut?.pointee = owed.pointee.cq.cq_context
                return 0
            }
            if ready {
                var fds = [pollfd(fd: number, events: Int16(POLLIN), revents: 0)]
                let readable = poll(&fds, 1, 0) > 0
                var rc: Int32 = -1
                if readable || nonBlocking {
                    rc = getCQEvent(UnsafeMutableRawPointer(ch).assumingMemoryBound(to: ibv_comp_channel.self), cqOut, contextOut)
                }
                let err = currentErrno()
                withControlLock { record(ch.pointee.core, as: ChannelRecord.self).inCall -= 1 }
                if readable || nonBlocking {
                    if rc == 0 || nonBlocking { setErrno(err); return rc }
                }
            } else if nonBlocking {
                setErrno(EAGAIN)
                return -1
            }
            var fds = [pollfd(fd: number, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: epoch, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, epoch >= 0 ? 2 : 1, ready ? -1 : 50)
        }
    }

    // MARK: - Async events for the application

    /// Translates a real async event to virtual objects and queues it for the application (control
    /// lock). The real event is acknowledged at once (the real destroy verbs never wait for the
    /// application); the application's own ack of the queued copy is absorbed (Events.swift), and
    /// destroying a virtual object drops its undelivered events (dropQueuedEvents), as the kernel does.
    func queueForApplication(_ c: ContextRecord, _ event: ibv_async_event) {
        var e = event
        var real = event
        ops.ack_async_event?(&real)
        switch EventKind(e.event_type) {
        case .cq:
            if let r = e.element.cq, let v = r.pointee.cq_context?.assumingMemoryBound(to: sv_cq.self), v.pointee.core != nil {
                e.element.cq = UnsafeMutableRawPointer(v).assumingMemoryBound(to: ibv_cq.self)
            }
        case .qp:
            if let r = e.element.qp, let v = r.pointee.qp_context?.assumingMemoryBound(to: sv_qp.self), v.pointee.core != nil {
                e.element.qp = UnsafeMutableRawPointer(v).assumingMemoryBound(to: ibv_qp.self)
            }
        case .srq:
            if let r = e.element.srq, let v = r.pointee.srq_context?.assumingMemoryBound(to: sv_srq.self), v.pointee.core != nil {
                e.element.srq = UnsafeMutableRawPointer(v).assumingMemoryBound(to: ibv_srq.self)
            }
        case .wq, .port, .device:
            break
        }
        deliverToApplication(c, e)
    }

    /// Queues an acknowledged, translated event for the application and wakes its readers (control lock).
    func deliverToApplication(_ c: ContextRecord, _ e: ibv_async_event) {
        c.asyncQueue.append(e)
        if c.asyncFD >= 0 { signalFD(c.asyncFD) }
        Log.info("async event \(e.event_type.rawValue) on \(c.currentDeviceName)")
    }

    /// Drops the undelivered async events about a virtual object being destroyed (control lock).
    func dropQueuedEvents(_ c: ContextRecord, object: UnsafeMutableRawPointer) {
        let before = c.asyncQueue.count
        c.asyncQueue.removeAll { e in
            switch EventKind(e.event_type) {
            case .cq: return UnsafeMutableRawPointer(e.element.cq) == object
            case .qp: return UnsafeMutableRawPointer(e.element.qp) == object
            case .srq: return UnsafeMutableRawPointer(e.element.srq) == object
            default: return false
            }
        }
        for _ in 0..<(before - c.asyncQueue.count) {
            var v: UInt64 = 0
            _ = read(c.asyncFD, &v, 8)
        }
    }

    /// ibv_get_async_event on a virtual context: the next queued event; blocks (in read/poll on the
    /// shim's eventfd, never inside the real library) unless the application made the fd non-blocking.
    func getQueuedAsyncEvent(_ c: ContextRecord, _ event: UnsafeMutablePointer<ibv_async_event>) -> Int32 {
        let fd = c.asyncFD
        while true {
            let got: Bool = withControlLock {
                guard !c.asyncQueue.isEmpty else { return false }
                var v: UInt64 = 0
                _ = read(fd, &v, 8)
                event.pointee = c.asyncQueue.removeFirst()
                return true
            }
            if got { return 0 }
            if fcntl(fd, F_GETFL) & O_NONBLOCK != 0 {
                setErrno(EAGAIN)
                return -1
            }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, -1)
        }
    }
}

func ms(_ ns: UInt64) -> String {
    let us = ns / 1000
    return "\(us / 1000).\(String(us % 1000 + 1000).dropFirst()) ms"
}

/// Virtual QPN → QP record per context, each built on first use (thousands of QPs: no linear
/// search per QP). Control lock.
struct QPNIndex {
    private var byContext: [ObjectIdentifier: [UInt32: QPRecord]] = [:]

    mutating func qp(_ c: ContextRecord, _ qpn: UInt32) -> QPRecord? {
        let id = ObjectIdentifier(c)
        if byContext[id] == nil {
            byContext[id] = Dictionary(c.qps.values.map { ($0.virtualQPN, $0) }, uniquingKeysWith: { a, _ in a })
        }
        return byContext[id]![qpn]
    }

    /// The QP at the other end of `q`'s connection when that end is in this process.
    mutating func peer(of q: QPRecord) -> QPRecord? {
        guard q.isConnected, let pc = q.peerContext, let d = q.lastDestQPN else { return nil }
        return qp(pc, d)
    }
}
