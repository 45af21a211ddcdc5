// Rebuild: every real object behind a context made again, in place, from the handle tables and the
// journal — the recovery engine's "rebuild" step, callable on its own (stableverbs_rebuild_context).
//
//   1. check: a connected QP whose remote end is outside this process cannot be reconnected until
//      the peer protocol exists → ENOTSUP, nothing changed;
//   2. build, on a freshly opened real device (same name): PDs, MRs (same address, length, access
//      → new keys), completion channels, CQs (same size, vector clamped), SRQs (+ their modifies),
//      QPs (same creation attributes). Any failure: everything new is destroyed, nothing changed;
//   3. commit (context state REBUILDING): fds kept (the new async and channel files are dup2'ed
//      onto the numbers the application holds), every `real` pointer swapped, every identity map
//      updated (virtual values unchanged), LIDs/GIDs re-read, generation bumped;
//   4. replay each QP's journal (ECE, then its transitions since the last reset) with the
//      destination translated through the already rebuilt local peers; QPs of other contexts that
//      are connected to this one are reset and replayed too (their peer's QPNs changed);
//   5. address handles made again (this context's, and other contexts' that point here);
//   6. the old real objects destroyed (outstanding event acks settled first), the old device closed;
//      CQs with a completion channel re-armed; state LIVE.
//
// Work still posted when the rebuild starts is not replayed (the work log belongs to the recovery
// issue): callers let every posted request complete first.

import CVerbs
import Glibc
import StableVerbsABI

extension Runtime {
    /// stableverbs_rebuild_context: the live context's real objects made again on the device of
    /// the same name; LIVE afterwards.
    func rebuild(_ ctx: ContextRecord) -> Int32 {
        var reconnect: UInt64 = 0
        return rebuild(ctx, on: nil, finalState: SV_CTX_LIVE.rawValue, reconnectNS: &reconnect)
    }

    /// The rebuild proper. `device`: the real device to rebuild on (nil: the one carrying the
    /// context's name). A released context (ctx.released, Recovery.swift) has no old real objects:
    /// nothing is destroyed, the fd numbers held by placeholders get the new files. The state ends
    /// at `finalState`; `reconnectNS` receives the time spent replaying the QPs' journals.
    func rebuild(_ ctx: ContextRecord, on device: UnsafeMutablePointer<ibv_device>?, finalState: UInt32,
                 reconnectNS: inout UInt64) -> Int32 {
        let released = ctx.released
        let unmanaged = ctx.qps.values.filter { q in
            q.isConnected && q.external && !(link(of: q).map { $0.state == .ready || $0.state == .awaiting } ?? false)
        }
        if !unmanaged.isEmpty {
            Log.warn("rebuild of \(ctx.device.name): \(unmanaged.count) QP(s) connected to a process without a reachable peer shim: those connections break as they would natively")
        }
        guard let open = ops.open_device, let close = ops.close_device else { return ENOSYS }
        guard let realDevice = device ?? currentRealDevice(ctx.device) else { return ENODEV }
        guard let newCtx = open(realDevice) else { return nonzeroErrno() }

        let pds = ctx.nextOrder(ctx.pds) { $0.sequence }
        let mrs = ctx.nextOrder(ctx.mrs) { $0.sequence }
        let channels = ctx.nextOrder(ctx.channels) { $0.sequence }
        let cqs = ctx.nextOrder(ctx.cqs) { $0.sequence }
        let srqs = ctx.nextOrder(ctx.srqs) { $0.sequence }
        let qps = ctx.nextOrder(ctx.qps) { $0.sequence }
        let ahs = ctx.nextOrder(ctx.ahs) { $0.sequence }

        var newPD: [UInt: UnsafeMutablePointer<ibv_pd>] = [:]
        var newMR: [UInt: UnsafeMutablePointer<ibv_mr>] = [:]
        var newChannel: [UInt: UnsafeMutablePointer<ibv_comp_channel>] = [:]
        var newCQ: [UInt: (cq: UnsafeMutablePointer<ibv_cq>, ex: UnsafeMutablePointer<ibv_cq_ex>?)] = [:]
        var newSRQ: [UInt: UnsafeMutablePointer<ibv_srq>] = [:]
        var newQP: [UInt: UnsafeMutablePointer<ibv_qp>] = [:]

        func rollback(_ what: String) -> Int32 {
            let err = nonzeroErrno()
            Log.error("rebuild of \(ctx.device.name) failed making \(what) (errno \(err)); nothing changed")
            for q in newQP.values { _ = ops.destroy_qp?(q) }
            for s in newSRQ.values { _ = ops.destroy_srq?(s) }
            for c in newCQ.values { _ = ops.destroy_cq?(c.cq) }
            for ch in newChannel.values { _ = ops.destroy_comp_channel?(ch) }
            for m in newMR.values { _ = ops.dereg_mr?(m) }
            for p in newPD.values { _ = ops.dealloc_pd?(p) }
            _ = close(newCtx)
            return err
        }

        // 2. Build.
        for pd in pds {
            guard let n = ops.alloc_pd?(newCtx) else { return rollback("a PD") }
            newPD[key(pd.ptr)] = n
        }
        for mr in mrs {
            guard let pd = newPD[key(mr.pd.ptr)],
                  let n = registerReal(pd, addr: mr.addr, length: mr.length, access: mr.access, kind: mr.kind)
            else { return rollback("an MR") }
            newMR[key(mr.ptr)] = n
        }
        for ch in channels {
            guard let n = ops.create_comp_channel?(newCtx) else { return rollback("a completion channel") }
            newChannel[key(ch.ptr)] = n
        }
        let vectors = UInt32(max(1, newCtx.pointee.num_comp_vectors))
        for cq in cqs {
            let channel = cq.channel.flatMap { newChannel[key($0.ptr)] }
            let made = makeRealCQ(cq.ptr, on: newCtx, cqe: cq.requestedCQE, channel: channel,
                                  vector: min(cq.compVector, vectors - 1), ex: cq.ex)
            guard let c = made.cq else { return rollback("a CQ") }
            newCQ[key(cq.ptr)] = (c, made.ex)
        }
        let cqMap: (UnsafeMutablePointer<ibv_cq>?) -> UnsafeMutablePointer<ibv_cq>? = { p in
            guard let p else { return nil }
            return newCQ[UInt(bitPattern: p)]?.cq ?? lowerCQ(p)
        }
        for srq in srqs {
            var a = srq.attr
            guard let pd = newPD[key(srq.pd.ptr)],
                  let n = makeRealSRQ(srq.ptr, realContext: newCtx, realPD: pd, attr: &a, ex: srq.ex, cq: cqMap)
            else { return rollback("an SRQ") }
            newSRQ[key(srq.ptr)] = n
            for change in srq.journal.srqChanges {
                var attr = change.attr
                _ = ops.modify_srq?(n, &attr, change.mask)
            }
        }
        let srqMap: (UnsafeMutablePointer<ibv_srq>?) -> UnsafeMutablePointer<ibv_srq>? = { p in
            guard let p else { return nil }
            return newSRQ[UInt(bitPattern: p)] ?? lowerSRQ(p)
        }
        for qp in qps {
            var cap = qp.initAttr.cap
            let pd = qp.pd.flatMap { newPD[key($0.ptr)] }
            guard let n = makeRealQP(qp, realContext: newCtx, realPD: pd, cap: &cap, cq: cqMap, srq: srqMap) else {
                return rollback("a QP")
            }
            newQP[key(qp.ptr)] = n
        }

        // 3. Commit.
        sv_ctx_set_state(ctx.ptr, SV_CTX_REBUILDING.rawValue)
        let oldCtx = ctx.real
        // The application's async fd is the shim's own eventfd (Recovery.swift): the new real one
        // is read by the watcher, non-blocking.
        setNonBlocking(newCtx.pointee.async_fd)
        ctx.ptr.pointee.real = newCtx
        ctx.currentDeviceName = deviceName(realDevice)
        ctx.released = false
        ctx.ptr.pointee.real_vctx = verbs_get_ctx(newCtx)
        ctx.ptr.pointee.vctx.context.cmd_fd = newCtx.pointee.cmd_fd
        ctx.ptr.pointee.vctx.context.num_comp_vectors = newCtx.pointee.num_comp_vectors

        var oldPD: [UnsafeMutablePointer<ibv_pd>] = []
        for pd in pds {
            oldPD.append(pd.real)
            let n = newPD[key(pd.ptr)]!
            pd.ptr.pointee.real = n
            pd.ptr.pointee.pd.handle = n.pointee.handle
        }
        var oldMR: [UnsafeMutablePointer<ibv_mr>] = []
        for mr in mrs {
            oldMR.append(mr.real)
            let n = newMR[key(mr.ptr)]!
            mr.ptr.pointee.real = n
            mr.ptr.pointee.mr.handle = n.pointee.handle
            IdentityMap.set(ctx.lkeyMap, key: mr.ptr.pointee.mr.lkey, value: n.pointee.lkey)
            IdentityMap.set(ctx.rkeyMap, key: mr.ptr.pointee.mr.rkey, value: n.pointee.rkey)
        }
        var oldChannel: [UnsafeMutablePointer<ibv_comp_channel>] = []
        for ch in channels {
            let old = ch.real
            let n = newChannel[key(ch.ptr)]!
            if released {
                keepFDOverPlaceholder(virtual: &ch.ptr.pointee.channel.fd, new: &n.pointee.fd)
            } else {
                keepFD(virtual: &ch.ptr.pointee.channel.fd, old: &old.pointee.fd, new: &n.pointee.fd)
                oldChannel.append(old)
            }
            ch.ptr.pointee.real = n
        }
        var oldCQ: [(UnsafeMutablePointer<ibv_cq>, UInt32, UInt32)] = []
        for cq in cqs {
            let old = cq.real
            let n = newCQ[key(cq.ptr)]!
            oldCQ.append((old, cq.completionEvents.settleForRebuild(), cq.asyncEvents.settleForRebuild()))
            cq.ptr.pointee.real = n.cq
            cq.ptr.pointee.real_ex = n.ex
            cq.ptr.pointee.cq.handle = n.cq.pointee.handle
            cq.ptr.pointee.cq.cqe = n.cq.pointee.cqe
            if n.ex != nil {
                DataPath.installExtendedOps(cq: cq.ptr)
                // A poll session serving kept completions goes on reading them.
                if cq.ptr.pointee.session == SV_CQ_SESSION_KEPT.rawValue { svInstallCQExKeptReaders(cq.ptr) }
            }
        }
        var oldSRQ: [(UnsafeMutablePointer<ibv_srq>, UInt32)] = []
        for srq in srqs {
            oldSRQ.append((srq.real, srq.asyncEvents.settleForRebuild()))
            let n = newSRQ[key(srq.ptr)]!
            srq.ptr.pointee.real = n
            srq.ptr.pointee.srq.handle = n.pointee.handle
        }
        var oldQP: [(UnsafeMutablePointer<ibv_qp>, UInt32)] = []
        var oldRealQPNs: [UInt32] = []
        for qp in qps {
            let old = qp.real
            let n = newQP[key(qp.ptr)]!
            oldQP.append((old, qp.asyncEvents.settleForRebuild()))
            oldRealQPNs.append(qp.ptr.pointee.real_qpn)
            IdentityMap.remove(ctx.qpnUpMap, key: qp.ptr.pointee.real_qpn)
            sv_qp_index_remove(ctx.ptr, qp.ptr.pointee.real_qpn)
            qp.ptr.pointee.real = n
            qp.rebuiltNotCounted = true
            qp.ptr.pointee.real_qpn = n.pointee.qp_num
            qp.ptr.pointee.qpx.qp_base.handle = n.pointee.handle
            qp.ptr.pointee.real_qpx = ops.qp_to_qp_ex?(n)
            if qp.ptr.pointee.real_qpx != nil { DataPath.installExtendedOps(qp: qp.ptr) }
        }
        for qp in qps {
            IdentityMap.set(ctx.qpnUpMap, key: qp.ptr.pointee.real_qpn, value: qp.virtualQPN)
            IdentityMap.set(ctx.qpnMap, key: qp.virtualQPN, value: qp.ptr.pointee.real_qpn)
            if qp.ptr.pointee.send_ring != nil { _ = sv_qp_index_insert(ctx.ptr, qp.ptr.pointee.real_qpn, qp.ptr) }
        }
        for (qp, old) in zip(qps, oldRealQPNs) { noteUDSender(qp, old: old) }
        loadIdentities(ctx, first: false)
        publishLIDs()
        noteGIDsMoved(ctx)
        publishUDSenders()
        ctx.ptr.pointee.generation &+= 1

        // 4. Replay.
        let reconnectStart = monotonicNS()
        var failures = 0
        for qp in qps {
            // A connection to another process waits in INIT for the peer protocol (reconnectLinks).
            let link = link(of: qp).flatMap { $0.state == .ready || $0.state == .awaiting ? $0 : nil }
            failures += replay(qp, on: qp.real, resetFirst: false, stopAtRTR: link != nil)
            link?.state = .awaiting
        }
        for other in orderedContexts() where other !== ctx && !other.released {
            for qp in other.nextOrder(other.qps, { $0.sequence }) where qp.peerContext === ctx && qp.journal.count > 0 {
                failures += replay(qp, on: qp.real, resetFirst: true)
            }
        }

        reconnectNS = monotonicNS() &- reconnectStart

        // 5. Address handles.
        var oldAH: [UnsafeMutablePointer<ibv_ah>] = []
        var ownAHFailures = 0
        for ah in ahs {
            let (made, peer) = makeRealAH(ah.pd.real, ah.attr)
            guard let n = made else {
                failures += 1
                ownAHFailures += 1
                Log.error("rebuild of \(ctx.device.name): an address handle could not be made again (errno \(currentErrno()))")
                // A released context's old real AH is gone: nothing may use or destroy it again
                // (the context is released again below).
                if released { ah.ptr.pointee.real = nil }
                continue
            }
            if !released { oldAH.append(ah.real) }
            ah.install(n)
            ah.peerContext = peer
            storePeer(ah.ptr.pointer(to: \.peer)!, ahPeerIDs(ah.attr, local: peer))
        }
        for other in orderedContexts() where other !== ctx && !other.released {
            for ah in other.ahs.values where ah.peerContext === ctx {
                let (made, peer) = makeRealAH(ah.pd.real, ah.attr)
                guard let n = made else { failures += 1; continue }
                let old = ah.real
                ah.install(n)
                ah.peerContext = peer
                storePeer(ah.ptr.pointer(to: \.peer)!, ahPeerIDs(ah.attr, local: peer))
                _ = ops.destroy_ah?(old)
            }
        }

        // 6. The old real objects go (a released context has none).
        if !released {
        for a in oldAH { _ = ops.destroy_ah?(a) }
        for (q, asyncOwed) in oldQP {
            ackAsync(owed: asyncOwed, type: IBV_EVENT_QP_FATAL) { $0.element.qp = q }
            _ = ops.destroy_qp?(q)
        }
        for (s, asyncOwed) in oldSRQ {
            ackAsync(owed: asyncOwed, type: IBV_EVENT_SRQ_ERR) { $0.element.srq = s }
            _ = ops.destroy_srq?(s)
        }
        for (c, compOwed, asyncOwed) in oldCQ {
            if compOwed > 0 { ops.ack_cq_events?(c, compOwed) }
            ackAsync(owed: asyncOwed, type: IBV_EVENT_CQ_ERR) { $0.element.cq = c }
            _ = ops.destroy_cq?(c)
        }
        for ch in oldChannel { _ = ops.destroy_comp_channel?(ch) }
        for m in oldMR { _ = ops.dereg_mr?(m) }
        for p in oldPD { _ = ops.dealloc_pd?(p) }
        _ = close(oldCtx)
        }

        for cq in cqs where cq.channel != nil {
            let real = cq.real
            _ = real.pointee.context?.pointee.ops.req_notify_cq?(real, 0)
        }
        // A released context whose rebuild failed after the commit because the device went away
        // again (a QP's transitions, an address handle), or that lacks an address handle (its
        // work could not be posted): ENODEV, and the caller releases it and waits for the device
        // again (nothing was replayed on this one yet).
        if released && (ownAHFailures > 0 || failures > 0 && deviceVanished(ctx)) {
            Log.warn("rebuild of \(ctx.device.name) on \(ctx.currentDeviceName): \(failures) failure(s) after the commit\(ownAHFailures > 0 ? ", \(ownAHFailures) address handle(s) missing" : ", the device is gone again")")
            return ENODEV
        }
        sv_ctx_set_state(ctx.ptr, finalState)
        Log.info("rebuilt \(ctx.device.name)\(ctx.currentDeviceName != ctx.device.name ? " on \(ctx.currentDeviceName)" : ""): generation \(ctx.generation), \(pds.count) PD, \(mrs.count) MR, \(cqs.count) CQ, \(srqs.count) SRQ, \(qps.count) QP, \(ahs.count) AH\(failures > 0 ? ", \(failures) replay failure(s)" : "")")
        return failures > 0 ? EIO : 0
    }

    /// Replays a QP's journal onto a real QP; returns the number of failed steps.
    private func replay(_ qp: QPRecord, on real: UnsafeMutablePointer<ibv_qp>, resetFirst: Bool, stopAtRTR: Bool = false) -> Int {
        var failures = 0
        if resetFirst, let modify = ops.modify_qp {
            var reset = ibv_qp_attr()
            reset.qp_state = IBV_QPS_RESET
            if modify(real, &reset, bits(IBV_QP_STATE)) != 0 { failures += 1 }
        }
        if var ece = qp.journal.lastECE { _ = ops.set_ece?(real, &ece) }
        for t in qp.journal.qpTransitions {
            if stopAtRTR && t.mask & bits(IBV_QP_STATE) != 0 && t.attr.qp_state == IBV_QPS_RTR { break }
            let rc = applyModify(qp, on: real, attr: t.attr, mask: t.mask, learn: false)
            if rc != 0 {
                failures += 1
                Log.error("replay of QP \(hex(qp.virtualQPN)) to state \(t.attr.qp_state.rawValue) failed (\(rc))")
                break
            }
        }
        qp.ptr.pointee.qpx.qp_base.state = qp.journal.qpState
        return failures
    }

    private func ackAsync(owed: UInt32, type: ibv_event_type, _ fill: (inout ibv_async_event) -> Void) {
        guard owed > 0, let ack = ops.ack_async_event else { return }
        var e = ibv_async_event()
        e.event_type = type
        fill(&e)
        for _ in 0..<owed { ack(&e) }
    }

    /// After a release: the number the application holds has a placeholder; the new file takes it.
    private func keepFDOverPlaceholder(virtual: inout Int32, new: inout Int32) {
        let number = virtual
        guard number >= 0, new >= 0, number != new else { return }
        let flags = fcntl(number, F_GETFL)
        if flags >= 0 { _ = fcntl(new, F_SETFL, flags) }
        if dup2(new, number) >= 0 {
            Glibc.close(new)
            new = number
        } else {
            virtual = new
        }
    }

    /// Keeps the fd number the application holds (`virtual`, equal to `old`) while the file under
    /// it becomes the new real object's: the old object moves to a fresh duplicate (closed when it
    /// is destroyed), the new file is dup2'ed onto the number, with the old file status flags.
    private func keepFD(virtual: inout Int32, old: inout Int32, new: inout Int32) {
        let number = virtual
        guard number >= 0, new >= 0, number != new else { return }
        let flags = fcntl(number, F_GETFL)
        let moved = fcntl(old, F_DUPFD_CLOEXEC, 0)
        if moved >= 0 {
            if old == number { old = moved } else { Glibc.close(moved) }
        }
        if flags >= 0 { _ = fcntl(new, F_SETFL, flags) }
        if dup2(new, number) >= 0 {
            Glibc.close(new)
            new = number
        } else {
            virtual = new // could not keep the number: show the new one
        }
    }
}

func nonzeroErrno() -> Int32 {
    let e = currentErrno()
    return e != 0 ? e : EIO
}
