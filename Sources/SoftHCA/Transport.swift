import CVerbs
import StableVerbsABI
import Glibc

/// The data path: posting, and executing work synchronously inside the post (or when a receive
/// arrives for a requester waiting on RNR). Everything here runs with the global lock held.

private let opSend = IBV_WR_SEND
private let opSendImm = IBV_WR_SEND_WITH_IMM
private let opWrite = IBV_WR_RDMA_WRITE
private let opWriteImm = IBV_WR_RDMA_WRITE_WITH_IMM
private let opRead = IBV_WR_RDMA_READ
private let opCAS = IBV_WR_ATOMIC_CMP_AND_SWP
private let opFAA = IBV_WR_ATOMIC_FETCH_AND_ADD

func isAtomic(_ op: ibv_wr_opcode) -> Bool { op == opCAS || op == opFAA }

/// Whether the opcode exists on this transport (rxe's wr_opcode_mask).
func opcodeAllowed(_ op: ibv_wr_opcode, _ type: ibv_qp_type) -> Bool {
    switch op {
    case opSend, opSendImm: return true
    case opWrite, opWriteImm: return type == IBV_QPT_RC || type == IBV_QPT_UC
    case opRead, opCAS, opFAA: return type == IBV_QPT_RC
    default: return false
    }
}

func completionOpcode(_ op: ibv_wr_opcode) -> ibv_wc_opcode {
    switch op {
    case opWrite, opWriteImm: return IBV_WC_RDMA_WRITE
    case opRead: return IBV_WC_RDMA_READ
    case opCAS: return IBV_WC_COMP_SWAP
    case opFAA: return IBV_WC_FETCH_ADD
    default: return IBV_WC_SEND
    }
}

/// Reads the bytes of an SGE list straight from memory (inline data is copied at post time).
func readSGEs(_ sges: [ibv_sge]) -> [UInt8] {
    var out: [UInt8] = []
    for s in sges where s.length > 0 {
        guard let p = UnsafeRawPointer(bitPattern: UInt(s.addr)) else { continue }
        out.append(contentsOf: UnsafeRawBufferPointer(start: p, count: Int(s.length)))
    }
    return out
}

enum Outcome { case done, stalled }

extension QueuePair {
    // MARK: validation shared by post_send and wr_complete

    /// Checks one send WR at post time (rxe's validate_send_wr); returns an errno.
    func validate(_ w: SendWork) -> Int32 {
        if !opcodeAllowed(w.opcode, type) { return EINVAL }
        if w.inlineData == nil && w.sges.count > Int(caps.max_send_sge) { return EINVAL }
        if let d = w.inlineData, d.count > Int(caps.max_inline_data) { return EINVAL }
        if isAtomic(w.opcode) {
            if w.remoteAddr & 7 != 0 || w.length < 8 { return EINVAL }
        }
        if type == IBV_QPT_UD && w.ah == nil { return EINVAL }
        return 0
    }

    /// Accepts one validated WR: flushes it in ERR/SQE, holds it in SQD, else queues and runs it.
    func accept(_ w: SendWork) {
        var w = w
        w.signaled = w.signaled || sigAll || w.flags & UInt32(IBV_SEND_SIGNALED.rawValue) != 0
        switch state {
        case IBV_QPS_ERR, IBV_QPS_SQE:
            completeSend(w, status: IBV_WC_WR_FLUSH_ERR)
        case IBV_QPS_SQD:
            heldQueue.append(w)
        default:
            sendQueue.append(w)
            pump()
        }
    }

    var sendQueueDepth: Int { sendQueue.count + heldQueue.count }

    /// The errno for posting sends in this state, if any.
    var sendStateError: Int32? {
        if let e = context.commandError { return e }
        switch state {
        case IBV_QPS_RESET, IBV_QPS_INIT, IBV_QPS_RTR: return EINVAL
        default: return nil
        }
    }

    // MARK: completions

    func completeSend(_ w: SendWork, status: ibv_wc_status, byteLen: Int? = nil) {
        guard w.signaled || status != IBV_WC_SUCCESS else { return }
        var wc = ibv_wc()
        wc.wr_id = w.wrID
        wc.status = status
        wc.opcode = completionOpcode(w.opcode)
        wc.byte_len = UInt32(truncatingIfNeeded: byteLen ?? (isAtomic(w.opcode) ? 8 : w.length))
        wc.qp_num = number
        if status != IBV_WC_SUCCESS && status != IBV_WC_WR_FLUSH_ERR { wc.vendor_err = 0x81 }
        sendCQ.push(wc)
    }

    func checkDrained() {
        if state == IBV_QPS_SQD && drainNotify && sendQueue.isEmpty {
            drainNotify = false
            let q = qp
            context.post(IBV_EVENT_SQ_DRAINED) { $0.element.qp = q }
        }
    }

    // MARK: execution

    /// Runs queued WRs in order until one waits for a receive at its responder.
    func pump() {
        if blockedOn != nil { unblock() }
        while canSend, !sendQueue.isEmpty {
            let w = sendQueue.removeFirst()
            if execute(w) == .stalled {
                sendQueue.insert(w, at: 0)
                return
            }
        }
        checkDrained()
    }

    /// A requester-side failure: the WR completes in error and the QP enters the error state.
    private func fail(_ w: SendWork, _ status: ibv_wc_status) -> Outcome {
        completeSend(w, status: status)
        enterError()
        return .done
    }

    private func execute(_ w: SendWork) -> Outcome {
        if let status = fabric.fault("completion_error", device: context.device) {
            return fail(w, ibv_wc_status(rawValue: UInt32(status)))
        }
        guard let port, port.isActive, !context.dead else {
            if type == IBV_QPT_RC { return fail(w, IBV_WC_RETRY_EXC_ERR) }
            completeSend(w, status: IBV_WC_SUCCESS)
            return .done
        }
        // Local data: what goes out is read now (lkey checked), what comes back needs local write.
        var payload: [UInt8] = []
        if w.opcode == opRead || isAtomic(w.opcode) {
            for s in w.sges where s.length > 0 {
                if localTarget(s, write: true) == nil { return fail(w, IBV_WC_LOC_PROT_ERR) }
            }
        } else if let d = w.inlineData {
            payload = d
        } else {
            for s in w.sges where s.length > 0 {
                guard let p = localTarget(s, write: false) else { return fail(w, IBV_WC_LOC_PROT_ERR) }
                payload.append(contentsOf: UnsafeRawBufferPointer(start: p, count: Int(s.length)))
            }
        }
        if type == IBV_QPT_UD { return executeUD(w, payload: payload, port: port) }
        return executeConnected(w, payload: payload, port: port)
    }

    /// Host memory for a local SGE: the lkey names an MR of this PD that covers it.
    func localTarget(_ s: ibv_sge, write: Bool) -> UnsafeMutableRawPointer? {
        guard let mr = fabric.mrByLKey[s.lkey], mr.pd === pd else { return nil }
        if write && mr.access & accessLocalWrite == 0 { return nil }
        return mr.host(s.addr, Int(s.length))
    }

    /// Host memory for a remote access at this (responder) QP.
    func remoteTarget(rkey: UInt32, addr: UInt64, length: Int, access: UInt32) -> UnsafeMutableRawPointer? {
        if attr.qp_access_flags & access == 0 { return nil }
        if length == 0 { return UnsafeMutableRawPointer(bitPattern: 1) }
        guard let mr = fabric.mrByRKey[rkey], mr.pd === pd, mr.access & access != 0 else { return nil }
        return mr.host(addr, length)
    }

    /// The responder of a connected QP, if it is reachable and connected back to this QP.
    private func connectedPeer(from port: Port) -> QueuePair? {
        guard let remotePort = fabric.port(for: attr.ah_attr), remotePort.isActive,
              let peer = fabric.qpByNumber[attr.dest_qp_num], peer.type == type,
              peer.port === remotePort, peer.canReceive, !peer.context.dead,
              peer.attr.dest_qp_num == number, fabric.port(for: peer.attr.ah_attr) === port
        else { return nil }
        return peer
    }

    /// Takes the next receive of a responder (its SRQ's or its own), firing the SRQ limit event.
    func takeReceive() -> RecvWork? {
        if let srq {
            guard !srq.queue.isEmpty else { return nil }
            let r = srq.queue.removeFirst()
            srq.checkLimit()
            return r
        }
        guard !recvQueue.isEmpty else { return nil }
        return recvQueue.removeFirst()
    }

    var hasReceive: Bool { srq.map { !$0.queue.isEmpty } ?? !recvQueue.isEmpty }

    enum ScatterResult { case ok, protection, length }

    /// Writes `data` into a receive's SGEs, leaving the first `skip` bytes untouched.
    func scatter(_ data: [UInt8], into sges: [ibv_sge], skip: Int = 0) -> ScatterResult {
        let capacity = sges.reduce(0) { $0 + Int($1.length) }
        if capacity < data.count { return .length }
        var offset = 0
        var targets: [(UnsafeMutableRawPointer, Int, Int)] = []  // host, sge offset, count
        for s in sges where offset < data.count {
            let n = min(Int(s.length), data.count - offset)
            if n > 0 {
                guard let p = localTarget(ibv_sge(addr: s.addr, length: UInt32(n), lkey: s.lkey), write: true) else { return .protection }
                targets.append((p, offset, n))
            }
            offset += n
        }
        data.withUnsafeBytes { src in
            for (p, start, n) in targets {
                let from = max(start, skip)
                let end = start + n
                if from < end {
                    (p + (from - start)).copyMemory(from: src.baseAddress! + from, byteCount: end - from)
                }
            }
        }
        return .ok
    }

    private func receiveCompletion(_ r: RecvWork, status: ibv_wc_status, opcode: ibv_wc_opcode, byteLen: Int,
                                   from requester: QueuePair, imm: UInt32?, grh: Bool, sl: UInt8) -> ibv_wc {
        var wc = ibv_wc()
        wc.wr_id = r.wrID
        wc.status = status
        wc.opcode = opcode
        wc.byte_len = UInt32(truncatingIfNeeded: byteLen)
        wc.qp_num = number
        wc.src_qp = requester.number
        wc.slid = requester.port?.lid ?? 0
        wc.sl = sl
        wc.pkey_index = attr.pkey_index
        if let imm {
            wc.imm_data = imm
            wc.wc_flags |= UInt32(IBV_WC_WITH_IMM.rawValue)
        }
        if grh { wc.wc_flags |= UInt32(IBV_WC_GRH.rawValue) }
        if status != IBV_WC_SUCCESS { wc.vendor_err = 0x82 }
        return wc
    }

    /// The responder fails on its side (length or protection error on a receive).
    private func responderError(_ r: RecvWork, _ status: ibv_wc_status, event: ibv_event_type?, requester: QueuePair) {
        recvCQ.push(receiveCompletion(r, status: status, opcode: IBV_WC_RECV, byteLen: 0, from: requester, imm: nil, grh: false, sl: 0))
        if let event {
            let q = qp
            context.post(event) { $0.element.qp = q }
        }
        enterError()
    }

    private func executeConnected(_ w: SendWork, payload: [UInt8], port: Port) -> Outcome {
        let rc = type == IBV_QPT_RC
        guard let peer = connectedPeer(from: port) else {
            // Nobody answers: RC retries until the transport retry count is exceeded; UC just sends.
            if rc { return fail(w, IBV_WC_RETRY_EXC_ERR) }
            completeSend(w, status: IBV_WC_SUCCESS)
            return .done
        }
        let sl = attr.ah_attr.sl
        switch w.opcode {
        case opSend, opSendImm:
            guard let r = peer.takeReceive() else {
                if rc { return stall(on: peer) }
                completeSend(w, status: IBV_WC_SUCCESS)
                return .done
            }
            switch peer.scatter(payload, into: r.sges) {
            case .length:
                peer.responderError(r, IBV_WC_LOC_LEN_ERR, event: nil, requester: self)
                if rc { return fail(w, IBV_WC_REM_INV_REQ_ERR) }
            case .protection:
                peer.responderError(r, IBV_WC_LOC_PROT_ERR, event: nil, requester: self)
                if rc { return fail(w, IBV_WC_REM_OP_ERR) }
            case .ok:
                let wc = peer.receiveCompletion(r, status: IBV_WC_SUCCESS, opcode: IBV_WC_RECV, byteLen: payload.count, from: self,
                                                imm: w.opcode == opSendImm ? w.imm : nil, grh: false, sl: sl)
                peer.recvCQ.push(wc, solicited: w.solicited)
                advancePSNs(peer, length: payload.count)
            }
            completeSend(w, status: IBV_WC_SUCCESS)
            return .done

        case opWrite, opWriteImm:
            let withImm = w.opcode == opWriteImm
            if withImm && !peer.hasReceive {
                if rc { return stall(on: peer) }
                completeSend(w, status: IBV_WC_SUCCESS)
                return .done
            }
            guard let dst = peer.remoteTarget(rkey: w.rkey, addr: w.remoteAddr, length: payload.count, access: accessRemoteWrite) else {
                if rc {
                    let q = peer.qp
                    peer.context.post(IBV_EVENT_QP_ACCESS_ERR) { $0.element.qp = q }
                    peer.enterError()
                    return fail(w, IBV_WC_REM_ACCESS_ERR)
                }
                completeSend(w, status: IBV_WC_SUCCESS)
                return .done
            }
            if !payload.isEmpty { payload.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: payload.count) } }
            if withImm, let r = peer.takeReceive() {
                let wc = peer.receiveCompletion(r, status: IBV_WC_SUCCESS, opcode: IBV_WC_RECV_RDMA_WITH_IMM, byteLen: payload.count,
                                                from: self, imm: w.imm, grh: false, sl: sl)
                peer.recvCQ.push(wc, solicited: w.solicited)
            }
            advancePSNs(peer, length: payload.count)
            completeSend(w, status: IBV_WC_SUCCESS)
            return .done

        case opRead:
            let length = w.length
            guard let src = peer.remoteTarget(rkey: w.rkey, addr: w.remoteAddr, length: length, access: accessRemoteRead) else {
                let q = peer.qp
                peer.context.post(IBV_EVENT_QP_ACCESS_ERR) { $0.element.qp = q }
                peer.enterError()
                return fail(w, IBV_WC_REM_ACCESS_ERR)
            }
            var offset = 0
            for s in w.sges where s.length > 0 {
                let dst = localTarget(s, write: true)!
                dst.copyMemory(from: src + offset, byteCount: Int(s.length))
                offset += Int(s.length)
            }
            advancePSNs(peer, length: length)
            completeSend(w, status: IBV_WC_SUCCESS, byteLen: length)
            return .done

        case opCAS, opFAA:
            guard let target = peer.remoteTarget(rkey: w.rkey, addr: w.remoteAddr, length: 8, access: accessRemoteAtomic) else {
                let q = peer.qp
                peer.context.post(IBV_EVENT_QP_ACCESS_ERR) { $0.element.qp = q }
                peer.enterError()
                return fail(w, IBV_WC_REM_ACCESS_ERR)
            }
            guard let s = w.sges.first(where: { $0.length > 0 }),
                  let local = localTarget(ibv_sge(addr: s.addr, length: 8, lkey: s.lkey), write: true)
            else { return fail(w, IBV_WC_LOC_PROT_ERR) }
            let word = target.assumingMemoryBound(to: UInt64.self)
            let original = word.pointee
            if w.opcode == opCAS {
                if original == w.compareAdd { word.pointee = w.swap }
            } else {
                word.pointee = original &+ w.compareAdd
            }
            advancePSNs(peer, length: 0)
            var result = original
            local.copyMemory(from: &result, byteCount: 8)
            completeSend(w, status: IBV_WC_SUCCESS, byteLen: 8)
            return .done

        default:
            return fail(w, IBV_WC_LOC_QP_OP_ERR)
        }
    }

    /// A request `peer` executed: both ends' PSNs move past its packets (IBTA: one per MTU of a
    /// SEND, WRITE or READ response, at least one; one for an atomic), so that a query of the
    /// responder's RQ PSN tells what it executed, as on hardware.
    private func advancePSNs(_ peer: QueuePair, length: Int) {
        let shift = 7 + Int(min(max(attr.path_mtu.rawValue, 1), 5))
        let packets = UInt32(1 + (max(length, 1) - 1) >> shift)
        attr.sq_psn = (attr.sq_psn &+ packets) & 0xFF_FFFF
        peer.attr.rq_psn = (peer.attr.rq_psn &+ packets) & 0xFF_FFFF
    }

    /// The head WR waits at the responder until a receive is posted there (infinite RNR retry).
    private func stall(on peer: QueuePair) -> Outcome {
        blockedOn = peer.number
        if !peer.rnrWaiters.contains(number) { peer.rnrWaiters.append(number) }
        return .stalled
    }

    // MARK: UD

    private func executeUD(_ w: SendWork, payload: [UInt8], port: Port) -> Outcome {
        guard let ah = w.ah else { return fail(w, IBV_WC_LOC_QP_OP_ERR) }
        let mtuBytes = 128 << Int(port.activeMTU.rawValue)
        // IB spec C10-93.1.1: a UD message longer than the port MTU is not sent, and no error is
        // generated for it (rxe "fakes a successful UD send"): it completes successfully, unseen.
        if payload.count > mtuBytes {
            completeSend(w, status: IBV_WC_SUCCESS)
            return .done
        }
        let qkey = w.remoteQKey & 0x8000_0000 != 0 ? attr.qkey : w.remoteQKey
        let withGRH = ah.is_global != 0
        var grh = [UInt8](repeating: 0, count: 40)
        if withGRH {
            let sgid = port.gid(at: Int(ah.grh.sgid_index))?.gid ?? port.gids.first?.gid ?? .zero
            let vtf = UInt32(6) << 28 | UInt32(ah.grh.traffic_class) << 20 | (ah.grh.flow_label & 0xFFFFF)
            for i in 0..<4 { grh[i] = UInt8(truncatingIfNeeded: vtf >> (24 - 8 * UInt32(i))) }
            grh[4] = UInt8(truncatingIfNeeded: payload.count >> 8)
            grh[5] = UInt8(truncatingIfNeeded: payload.count)
            grh[6] = 0x1B
            grh[7] = ah.grh.hop_limit
            for i in 0..<16 { grh[8 + i] = sgid.bytes[i] }
            let dgid = GID(ah.grh.dgid)
            for i in 0..<16 { grh[24 + i] = dgid.bytes[i] }
        }
        let message = grh + payload

        var targets: [QueuePair] = []
        let multicastLID = ah.is_global == 0 && ah.dlid >= 0xC000 && ah.dlid != 0xFFFF
        if multicastLID || (withGRH && GID(ah.grh.dgid).isMulticast) {
            for (group, members) in fabric.multicast
            where withGRH ? group.gid == GID(ah.grh.dgid) : group.lid == ah.dlid {
                for n in members { if let q = fabric.qpByNumber[n], !targets.contains(where: { $0 === q }) { targets.append(q) } }
            }
        } else if let remotePort = fabric.port(for: ah), remotePort.isActive,
                  let q = fabric.qpByNumber[w.remoteQPN], q.port === remotePort {
            targets.append(q)
        }
        for peer in targets {
            guard peer.type == IBV_QPT_UD, peer.canReceive, !peer.context.dead, let peerPort = peer.port, peerPort.isActive else { continue }
            if peer.attr.qkey != qkey {
                peerPort.qkeyViolations &+= 1
                continue
            }
            guard let r = peer.takeReceive() else { continue }  // UD: no receive, packet dropped
            switch peer.scatter(message, into: r.sges, skip: withGRH ? 0 : 40) {
            case .length:
                peer.responderError(r, IBV_WC_LOC_LEN_ERR, event: nil, requester: self)
            case .protection:
                peer.responderError(r, IBV_WC_LOC_PROT_ERR, event: nil, requester: self)
            case .ok:
                let wc = peer.receiveCompletion(r, status: IBV_WC_SUCCESS, opcode: IBV_WC_RECV, byteLen: message.count, from: self,
                                                imm: w.opcode == opSendImm ? w.imm : nil, grh: withGRH, sl: ah.sl)
                peer.recvCQ.push(wc, solicited: w.solicited)
            }
        }
        completeSend(w, status: IBV_WC_SUCCESS)
        return .done
    }

    // MARK: receives

    func acceptReceive(_ r: RecvWork) {
        if state == IBV_QPS_ERR {
            var wc = ibv_wc()
            wc.wr_id = r.wrID
            wc.status = IBV_WC_WR_FLUSH_ERR
            wc.opcode = IBV_WC_RECV
            wc.qp_num = number
            recvCQ.push(wc)
            return
        }
        recvQueue.append(r)
        wakeRequesters()
    }

    /// A receive arrived: requesters waiting on RNR here run again.
    func wakeRequesters() {
        let waiters = rnrWaiters
        rnrWaiters = []
        for n in waiters {
            guard let r = fabric.qpByNumber[n], r.blockedOn == number else { continue }
            r.blockedOn = nil
            r.pump()
        }
    }
}

// MARK: - building SendWork from the legacy ibv_send_wr

func sendWork(from wr: ibv_send_wr, inlineFor qpCaps: ibv_qp_cap) -> (SendWork?, Int32) {
    if wr.num_sge < 0 { return (nil, EINVAL) }
    var w = SendWork(wrID: wr.wr_id, opcode: wr.opcode, flags: wr.send_flags)
    if wr.num_sge > 0 {
        guard let list = wr.sg_list else { return (nil, EINVAL) }
        w.sges = Array(UnsafeBufferPointer(start: list, count: Int(wr.num_sge)))
    }
    w.imm = wr.imm_data
    switch wr.opcode {
    case IBV_WR_RDMA_WRITE, IBV_WR_RDMA_WRITE_WITH_IMM, IBV_WR_RDMA_READ:
        w.remoteAddr = wr.wr.rdma.remote_addr
        w.rkey = wr.wr.rdma.rkey
    case IBV_WR_ATOMIC_CMP_AND_SWP, IBV_WR_ATOMIC_FETCH_AND_ADD:
        w.remoteAddr = wr.wr.atomic.remote_addr
        w.rkey = wr.wr.atomic.rkey
        w.compareAdd = wr.wr.atomic.compare_add
        w.swap = wr.wr.atomic.swap
    default:
        break
    }
    if w.isInline && (wr.opcode == opSend || wr.opcode == opSendImm || wr.opcode == opWrite || wr.opcode == opWriteImm) {
        let total = w.sges.reduce(0) { $0 + Int($1.length) }
        if total > Int(qpCaps.max_inline_data) { return (nil, EINVAL) }
        w.inlineData = readSGEs(w.sges)
    }
    return (w, 0)
}

// MARK: - ops

func sh_post_send(_ p: UnsafeMutablePointer<ibv_qp>?, _ wr: UnsafeMutablePointer<ibv_send_wr>?,
                  _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p) else { bad?.pointee = wr; return EINVAL }
        var cur = wr
        if let e = fabric.fault("post_send", device: qp.context.device) ?? qp.sendStateError {
            bad?.pointee = wr
            return e
        }
        while let c = cur {
            var (work, err) = sendWork(from: c.pointee, inlineFor: qp.caps)
            if err == 0, var w = work {
                if qp.type == IBV_QPT_UD {
                    if let ahp = c.pointee.wr.ud.ah, let ah = fabric.ahs[key(ahp)] {
                        w.ah = ah.attr
                        w.ahHandle = ahp
                    }
                    w.remoteQPN = c.pointee.wr.ud.remote_qpn & 0xFF_FFFF
                    w.remoteQKey = c.pointee.wr.ud.remote_qkey
                }
                err = qp.validate(w)
                if err == 0 && qp.sendQueueDepth >= Int(qp.caps.max_send_wr) { err = ENOMEM }
                work = w
            }
            if err != 0 {
                bad?.pointee = c
                return err
            }
            qp.accept(work!)
            // The QP may have been destroyed by nothing here (no callbacks), so keep going.
            cur = c.pointee.next
        }
        return 0
    }
}

func sh_post_recv(_ p: UnsafeMutablePointer<ibv_qp>?, _ wr: UnsafeMutablePointer<ibv_recv_wr>?,
                  _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_recv_wr>?>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p) else { bad?.pointee = wr; return EINVAL }
        if let e = fabric.fault("post_recv", device: qp.context.device) ?? qp.context.commandError {
            bad?.pointee = wr
            return e
        }
        if qp.state == IBV_QPS_RESET || qp.srq != nil {
            bad?.pointee = wr
            return EINVAL
        }
        var cur = wr
        while let c = cur {
            let n = c.pointee.num_sge
            if n < 0 || n > Int32(qp.caps.max_recv_sge) { bad?.pointee = c; return EINVAL }
            if qp.recvQueue.count >= Int(qp.caps.max_recv_wr) { bad?.pointee = c; return ENOMEM }
            var sges: [ibv_sge] = []
            if n > 0 {
                guard let list = c.pointee.sg_list else { bad?.pointee = c; return EINVAL }
                sges = Array(UnsafeBufferPointer(start: list, count: Int(n)))
            }
            qp.acceptReceive(RecvWork(wrID: c.pointee.wr_id, sges: sges))
            cur = c.pointee.next
        }
        return 0
    }
}
