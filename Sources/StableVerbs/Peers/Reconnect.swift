// Reconnecting a link after one end (or both) moved (DESIGN §4).
//
// The end that moved rebuilt its QP and left it in INIT. It sends `moved` to the peer's service:
// its new real QPN/GID/LID, the PSN its receive queue now expects, its counts — `seen`, the
// receives its QP has completed; `acked`, the receive-consuming messages (SEND, SEND_WITH_IMM,
// WRITE_WITH_IMM) of its send queue known complete — its MRs' rkeys (virtual → real) and the
// descriptions of its last acked messages. The peer holds its context (posts buffered), drains its
// CQs (and, when the mover's old QP executed atomics of its own whose responses died, asks the
// mover's shim for the words they target: `words`, Peers/ExecutedWork.swift), resets its QP and
// brings it to RTS towards the new end with fresh PSNs, applies the counts and answers
// `reconnected` with the same fields; the mover then brings its QP to RTS.
//
// Applying the counts (each side, for its own queues):
// - sends: an entry whose `msgno` (receive-consuming messages before it) is below the peer's `seen`
//   was executed by the peer (RC executes in order): it is retired, with the success completion the
//   application is owed when it was signaled; the rest is replayed. So every SEND is delivered
//   once; WRITEs may repeat (idempotent); READs after the last delivered message are re-read.
// - receives: when the peer's `acked` is above our `seen`, the completions of that many receives
//   died with our device after the data landed; they are made again (in order, from the peer's
//   descriptions: opcode, length, immediate) so no message is lost and no receive consumed twice.
//   On an SRQ they are remade once every QP on it is counted: in posting order when one QP lost
//   any, else in the order the senders' payload hashes fit (Peers/SRQReceives.swift).
// Both ends moving at once: both send `moved`; the end with the lower (GID, QPN) wins — the other
// answers its request as the responder (`collide` tells the lower end to wait for that).

import CVerbs
import Glibc
import StableVerbsABI

private let stateMask = bits(IBV_QP_STATE)

/// The remote end as a `moved`/`reconnected` message describes it.
struct PeerEndpoint {
    var qpn: UInt32
    var gid: ibv_gid
    var lid: UInt16
    var psn: UInt32
    var counts: PeerCounts
    var rkeys: [(UInt32, UInt32)]

    init?(_ m: PeerMessage) {
        guard let qpn = m.number("qpn"), let gid = m["gid"].flatMap(gidFromHex), let lid = m.number("lid"),
              let psn = m.number("psn"), let acked = m.number("acked") else { return nil }
        self.qpn = UInt32(truncatingIfNeeded: qpn)
        self.gid = gid
        self.lid = UInt16(truncatingIfNeeded: lid)
        self.psn = UInt32(truncatingIfNeeded: psn) & 0xFFFFFF
        counts = PeerCounts(seen: m["seen"] == "unknown" ? nil : m.number("seen"), acked: acked, messages: [:],
                            expected: m.number("rq_done").map { UInt32(truncatingIfNeeded: $0) & 0xFF_FFFF })
        rkeys = (m["rkeys"] ?? "").split(separator: ",").compactMap { p in
            let kv = p.split(separator: ":")
            guard kv.count == 2, let v = UInt32(kv[0]), let r = UInt32(kv[1]) else { return nil }
            return (v, r)
        }
        counts.atomicTargets = PeerMessage.targetList(m["atomics"])
        counts.atomicWords = PeerMessage.wordList(m["values"])
        for p in (m["msgs"] ?? "").split(separator: ",") {
            let f = p.split(separator: ":").compactMap { UInt64($0) }
            guard f.count == 4 || f.count == 5 else { continue }
            counts.messages[f[0]] = MessageDescription(opcode: UInt32(truncatingIfNeeded: f[1]), length: UInt32(truncatingIfNeeded: f[2]),
                                                       imm: UInt32(truncatingIfNeeded: f[3]), hash: f.count == 5 ? f[4] : nil)
        }
    }
}

/// What one end of a connection tells the other about the traffic between them (see the header).
struct PeerCounts {
    var seen: UInt64?          // receives this end completed; nil: not known (not recorded)
    var acked: UInt64          // receive-consuming messages of its send queue known complete
    /// The last acked ones still in its ring, by msgno.
    var messages: [UInt64: MessageDescription]
    /// The PSN its old QP's receive queue expected next, when it could still be asked
    /// (Peers/ExecutedWork.swift); nil: not known.
    var expected: UInt32? = nil
    /// The targets of its atomics in flight (a mover's), and the words they hold now (the live
    /// end's answer).
    var atomicTargets: [(rkey: UInt32, addr: UInt64)] = []
    var atomicWords: [(rkey: UInt32, addr: UInt64, value: UInt64)] = []
}

/// A receive-consuming message as its sender describes it.
struct MessageDescription {
    var opcode: UInt32
    var length: UInt32
    var imm: UInt32
    /// A hash of its payload (payloadHash), where the sender could still read it: the bytes kept
    /// for inline data, or the gathered buffers while their memory regions are registered.
    var hash: UInt64?
}

/// The shim process that answers for a link's remote end: its host and service port.
struct PeerProcess: Hashable {
    var host: PeerHost?
    var port: UInt16
}

/// `items` grouped by the peer process each goes to, groups and items in their first order (one
/// exchange per process).
func groupedByProcess<T>(_ items: [T], _ process: (T) -> PeerProcess) -> [(PeerProcess, [T])] {
    var order: [PeerProcess] = [], groups: [PeerProcess: [T]] = [:]
    for item in items {
        let p = process(item)
        if groups[p] == nil { order.append(p) }
        groups[p, default: []].append(item)
    }
    return order.map { ($0, groups[$0]!) }
}

extension Runtime {
    // MARK: - This end, as the peer needs it

    /// Fills `m` with this end of `link`: identities, counts, rkeys, recent messages, and the PSN
    /// its old QP expected (`expected`, when known). Control lock.
    func describeEnd(_ link: PeerLink, psn: UInt32, expected: UInt32?, into m: inout PeerMessage) {
        let q = link.qp
        let c = q.context
        m["from_qpn"] = String(q.virtualQPN)
        m["from_gid"] = gidHex(link.localGID)
        m["to_qpn"] = String(link.remoteQPN)
        m["to_gid"] = gidHex(link.remoteGID)
        m["qpn"] = String(q.ptr.pointee.real_qpn)
        var realGID = link.localGID, lid: UInt16 = 0
        if let av = q.lastAV, let port = c.port(av.port_num) {
            lid = port.realLID
            if av.is_global != 0, let pair = port.gids[Int32(av.grh.sgid_index)] { realGID = pair.real }
        }
        m["gid"] = gidHex(realGID)
        m["lid"] = String(lid)
        m["psn"] = String(psn)
        let counts = self.counts(of: q)
        m["seen"] = counts.seen.map { String($0) } ?? "unknown"
        m["acked"] = String(counts.acked)
        if let expected { m["rq_done"] = String(expected) }
        m["msgs"] = counts.messages.sorted { $0.key > $1.key }
            .map { "\($0.key):\($0.value.opcode):\($0.value.length):\($0.value.imm)\($0.value.hash.map { ":\($0)" } ?? "")" }
            .joined(separator: ",")
        m["rkeys"] = c.mrs.values.map { "\($0.ptr.pointee.mr.rkey):\($0.ptr.pointee.real?.pointee.rkey ?? 0)" }.joined(separator: ",")
    }

    /// How many receive completions `q` retired (nil: not tracked). A QP's own receive ring
    /// retires in order (its head is the count); the QPs on an SRQ share its ring, so each counts
    /// the receive completions it retired. Control lock.
    func receivedCount(of q: QPRecord) -> UInt64? {
        if q.initAttr.srq != nil { return sv_qp_recv_seen(q.ptr) }
        return q.ptr.pointee.recv_ring.map { sv_ring_head($0) }
    }

    /// The counts `q`'s end reports (control lock).
    func counts(of q: QPRecord) -> PeerCounts {
        var counts = PeerCounts(seen: receivedCount(of: q), acked: 0, messages: [:])
        if let r = q.ptr.pointee.send_ring {
            let head = sv_ring_head(r), tail = sv_ring_tail(r)
            counts.acked = head != tail ? sv_ring_at(r, head).pointee.msgno : r.pointee.msg_count
            // The last acked receive-consuming messages still in the ring (entries before head
            // survive until the ring wraps over them).
            let oldest = tail >= UInt64(r.pointee.capacity) ? tail - UInt64(r.pointee.capacity) : 0
            var i = head
            while i > oldest && counts.messages.count < 64 {
                i -= 1
                let e = sv_ring_at(r, i)!
                let w = e.pointee.wr.send
                guard sv_opcode_consumes(w.opcode) != 0 else { continue }
                let len = sv_ring_entry_length(e)
                counts.messages[e.pointee.msgno] = MessageDescription(opcode: w.opcode.rawValue, length: len, imm: w.imm_data,
                                                                      hash: sentPayloadHash(e, r, q.context))
            }
        }
        return counts
    }

    // MARK: - Bringing a QP to RTS towards the peer's new end

    /// Replays the QP's journal onto its real QP with the peer's real identities and the agreed
    /// PSNs: from RTR on (`fromRTR`, the QP waits in INIT), or all of it after a reset.
    func connect(_ link: PeerLink, to peer: PeerEndpoint, rqPSN: UInt32, fromRTR: Bool) -> Int32 {
        guard let modify = ops.modify_qp else { return ENOSYS }
        let q = link.qp
        let real = q.real
        if !fromRTR {
            var reset = ibv_qp_attr()
            reset.qp_state = IBV_QPS_RESET
            let rc = modify(real, &reset, stateMask)
            if rc != 0 { return rc }
        }
        var reachedRTR = false
        for t in q.journal.qpTransitions {
            let isRTR = t.mask & stateMask != 0 && t.attr.qp_state == IBV_QPS_RTR
            if isRTR { reachedRTR = true }
            if fromRTR && !reachedRTR { continue }
            var a = t.attr
            if t.mask & bits(IBV_QP_DEST_QPN) != 0 { a.dest_qp_num = peer.qpn }
            if t.mask & bits(IBV_QP_AV) != 0 {
                if a.ah_attr.is_global != 0 { a.ah_attr.grh.dgid = peer.gid }
                if a.ah_attr.dlid != 0 { a.ah_attr.dlid = peer.lid }
            }
            if t.mask & bits(IBV_QP_RQ_PSN) != 0 { a.rq_psn = rqPSN }
            if t.mask & bits(IBV_QP_SQ_PSN) != 0 { a.sq_psn = peer.psn }
            let rc = modify(real, &a, t.mask)
            if rc != 0 {
                Log.error("peer: \(link.label): QP to state \(a.qp_state.rawValue) failed (errno \(rc))")
                return rc
            }
            noteSendPSNs(q, a, t.mask)
        }
        q.expectedPSNAtRelease = nil  // the entries' PSNs now count on the new connection
        // Errors held back before the move was noticed (a NIC pulled: the first error completions
        // come before the port goes down) belonged to the old connection: its work is replayed.
        link.suspectSince = nil
        link.remoteRealQPN = peer.qpn
        link.remoteRealGID = peer.gid
        link.remoteRealLID = peer.lid
        // A peer whose address changed with its move (its NIC re-addressed): its shim is found
        // there from now on, and so are new connections and UD address handles towards its old
        // GID (the claim was signed with the connection's key: it comes from the shim that owned it).
        if peers.gidNamesHost(link.remoteGID), peers.gidNamesHost(peer.gid) {
            link.host = peerHost(of: link, movedTo: peer)
            noteMovedGIDs([(link.remoteGID, peer.gid)])  // nothing when it is where it was
        }
        let rk = link.ids.pointer(to: \.rkeys)!
        for (v, r) in peer.rkeys { _ = IdentityMap.set(rk, key: v, value: r) }
        return 0
    }

    /// Where the shim of `link`'s peer is once its end moved to `peer`: the host its new GID
    /// names, when its GIDs name hosts and STABLEVERBS_PEER_HOST does not say; else where it was.
    func peerHost(of link: PeerLink, movedTo peer: PeerEndpoint) -> PeerHost? {
        guard peers.hostOverride == nil, peers.gidNamesHost(link.remoteGID), peers.gidNamesHost(peer.gid),
              let now = PeerHost(gid: peer.gid) else { return link.host }
        return now
    }

    // MARK: - Counts

    /// Retires what the peer already has (see the header) and remakes the receive completions that
    /// died with our device. `replayAtomics`: an atomic the peer executed is posted again rather
    /// than completed without its result (both ends in this process, phase A). Control lock; the
    /// QP's queues are not in use by hardware.
    func applyCounts(_ q: QPRecord, label: String, _ peer: PeerCounts, replayAtomics: Bool = false) {
        var skipped = 0, remade = 0
        if let seen = peer.seen, let r = q.ptr.pointee.send_ring {
            let sigAll = r.pointee.sig_all != 0
            let cq = q.initAttr.send_cq.map { cqRecord($0) }
            var i = sv_ring_head(r)
            let tail = sv_ring_tail(r)
            var atomicsLost = 0, atomicsAgain = 0
            var lostResults: [UnsafeMutablePointer<sv_ring_entry>] = []
            while i != tail {
                let e = sv_ring_at(r, i)!
                i &+= 1
                if e.pointee.done != 0 { continue }
                let w = e.pointee.wr.send
                let atomic = sv_opcode_is_atomic(w.opcode) != 0
                // A SEND counts by the peer's receives; the rest, when the peer's old QP could be
                // asked, by the PSN it expected next (Peers/ExecutedWork.swift) — else by the
                // SENDs around them, as RC executes in order.
                let done: Bool
                if let expected = peer.expected, sv_opcode_consumes(w.opcode) == 0 {
                    done = Runtime.executed(e, in: r, before: expected)
                } else {
                    done = e.pointee.msgno < seen
                }
                guard done else {
                    if !replayAtomics && peer.expected == nil { atomicsAgain = Runtime.atomicsAhead(r, from: i &- 1, to: tail) }
                    break
                }
                if w.opcode == IBV_WR_RDMA_READ { continue }  // re-read when replayed
                if atomic {
                    if replayAtomics { continue }
                    atomicsLost += 1
                    lostResults.append(e)
                }
                e.pointee.done = 1
                skipped += 1
                if sigAll || w.send_flags & UInt32(IBV_SEND_SIGNALED.rawValue) != 0, let cq {
                    var wc = ibv_wc()
                    wc.wr_id = w.wr_id
                    wc.status = IBV_WC_SUCCESS
                    wc.opcode = completionOpcode(w.opcode)
                    wc.qp_num = q.virtualQPN
                    cq.pending.append(wc)
                }
            }
            sv_ring_settle(r)
            let restored = Runtime.restoreAtomicResults(lostResults, peer.atomicWords)
            cq?.publishPending()
            if restored > 0 {
                Log.info("peer: \(label): \(restored) atomic(s) executed by the peer whose responses died: results worked out from the words the peer read")
            }
            if atomicsLost > restored {
                Log.warn("peer: \(label): \(atomicsLost - restored) atomic(s) executed by the peer lost their results with the device (not executed again)")
            }
            if atomicsAgain > 0 {
                Log.warn("peer: \(label): the peer's QP could not be asked what it executed: \(atomicsAgain) atomic(s) after the last SEND it received are posted again (executed twice if they had reached it)")
            }
        }
        if q.initAttr.srq == nil, let r = q.ptr.pointee.recv_ring {
            let cq = q.initAttr.recv_cq.map { cqRecord($0) }
            var seen = sv_ring_head(r)
            while seen < peer.acked, sv_ring_head(r) != sv_ring_tail(r), let cq {
                let e = sv_ring_at(r, sv_ring_head(r))!
                cq.pending.append(remadeReceive(sv_ring_recv_wr(e)!.pointee.wr_id, of: q, msgno: seen, peer.messages, label: label))
                e.pointee.done = 1
                sv_ring_settle(r)
                seen += 1
                remade += 1
            }
            cq?.publishPending()
        } else if let srq = q.initAttr.srq, let seen = receivedCount(of: q) {
            // Which SRQ receives those messages took is known only once every QP on it is
            // counted (Peers/SRQReceives.swift).
            noteSRQCounts(srqRecord(srq), q, label: label, seen: seen, peer)
        }
        if skipped + remade > 0 {
            Log.info("peer: \(label): \(skipped) send(s) the peer already had retired, \(remade) receive completion(s) remade")
        }
    }

    /// The completion of a receive (`wrID`) that took `q`'s message `msgno`, made again: opcode,
    /// length and immediate from the peer's descriptions of its last acked messages.
    func remadeReceive(_ wrID: UInt64, of q: QPRecord, msgno: UInt64,
                       _ messages: [UInt64: MessageDescription], label: String) -> ibv_wc {
        var wc = ibv_wc()
        wc.wr_id = wrID
        wc.status = IBV_WC_SUCCESS
        wc.qp_num = q.virtualQPN
        wc.opcode = IBV_WC_RECV
        if let d = messages[msgno] {
            wc.byte_len = d.length
            let op = ibv_wr_opcode(rawValue: d.opcode)
            if op == IBV_WR_RDMA_WRITE_WITH_IMM { wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM }
            if op == IBV_WR_RDMA_WRITE_WITH_IMM || op == IBV_WR_SEND_WITH_IMM {
                wc.wc_flags = UInt32(IBV_WC_WITH_IMM.rawValue)
                wc.imm_data = d.imm
            }
        } else {
            Log.warn("peer: \(label): message \(msgno) delivered but not described by the peer: its length is reported as 0")
        }
        return wc
    }

    // MARK: - The responder

    /// A peer says its end of one of our links moved (service thread).
    func answerMoved(_ d: DecodedPeerMessage) -> [UInt8] { answerMoved([d])[0] }

    /// A peer says its ends of several of our links moved (service thread; a `batch` from one
    /// mover, or one `moved`). Each claim is checked on its own (its link's key); the contexts of the
    /// links that were live are held once for all of them (one grace, one drain), every link is
    /// reset and brought to RTS towards its new end, then what the resets dropped and what was
    /// buffered is re-posted and the contexts go LIVE again. One reply per request, in order.
    func answerMoved(_ requests: [DecodedPeerMessage]) -> [[UInt8]] {
        let began = monotonicNS()
        enum Claim {
            case denied                         // unknown link or bad authentication
            case busy(PeerLink)                 // not now: the mover asks again
            case collide(PeerLink)              // both ends moved: the mover waits for our request
            case reset(PeerLink, PeerEndpoint)  // live here: reset towards the new end
            case finish(PeerLink, PeerEndpoint) // this end moved too and waits in INIT: from RTR on
            case closed(PeerLink)               // the connection ended here (LinkClosing.swift)
        }
        // Which links the claims name, and the contexts this answer holds (the links' that are live).
        let (claims, held): ([Claim], [ContextRecord]) = withControlLock {
            var held: [ContextRecord] = []
            let claims = requests.map { d -> Claim in
                let m = d.message
                guard m.verb == "moved", let toQPN = m.number("to_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
                      let fromQPN = m.number("from_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
                      let toGID = m["to_gid"].flatMap(gidFromHex), let peer = PeerEndpoint(m) else {
                    return .denied
                }
                guard let q = localQP(qpn: toQPN, gid: toGID), let link = peers.links[key(q.ptr)],
                      link.remoteQPN == fromQPN, PeerMessage.verify(d, key: link.key) else {
                    Log.warn("peer: a `moved` claim for QP \(hex(toQPN)) was refused (unknown link or bad authentication)")
                    return .denied
                }
                if link.state == .closed || (link.state == .unmanaged && link.flushed) { return .closed(link) }
                let c = q.context
                if held.contains(where: { $0 === c }) { return link.state == .ready ? .reset(link, peer) : .busy(link) }
                let st = sv_ctx_state(c.ptr)
                if c.released || c.peerHold { return .busy(link) }
                if st == SV_CTX_RECONNECTING.rawValue && link.state == .awaiting {
                    return link.introducer ? .collide(link) : .finish(link, peer)
                }
                guard st == SV_CTX_LIVE.rawValue, link.state == .ready else { return .busy(link) }
                // Hold the context: posts are buffered from here on, polls take the cold path.
                c.peerHold = true
                c.holdMarks = ringMarks(c)
                recovery.polledSince.removeAll()
                sv_ctx_set_state(c.ptr, SV_CTX_QUIESCING.rawValue)
                held.append(c)
                return .reset(link, peer)
            }
            return (claims, held)
        }
        if !held.isEmpty { waitForStragglers(held) }
        // Our atomics the mover's old QP executed whose responses died with its device: the words
        // they target are in its memory; its shim reads them (Peers/ExecutedWork.swift).
        let asks: [(index: Int, link: PeerLink, host: PeerHost?, targets: [(rkey: UInt32, addr: UInt64)])] = withControlLock {
            for c in held { drainCQs(c) }
            return claims.enumerated().compactMap { i, claim in
                let link: PeerLink, peer: PeerEndpoint
                switch claim {
                case .reset(let l, let p), .finish(let l, let p): (link, peer) = (l, p)
                default: return nil
                }
                guard let expected = peer.counts.expected else { return nil }
                let targets = atomicTargets(of: link.qp, executedBefore: expected)
                guard !targets.isEmpty else { return nil }
                return (i, link, peerHost(of: link, movedTo: peer), targets)
            }
        }
        var words: [Int: [(rkey: UInt32, addr: UInt64, value: UInt64)]] = [:]
        for a in asks { words[a.index] = askWords(a.link, at: a.host, a.targets) }
        return withControlLock {
            var replies: [[UInt8]] = []
            var reset: [QPRecord] = []   // live QPs reset towards their peer's new end
            for (i, claim) in claims.enumerated() {
                let link: PeerLink, wasLive: Bool
                var peer: PeerEndpoint
                switch claim {
                case .denied: replies.append(PeerMessage("denied").encoded(key: nil)); continue
                case .busy(let l): replies.append(PeerMessage("busy").encoded(key: l.key)); continue
                case .collide(let l): replies.append(PeerMessage("collide").encoded(key: l.key)); continue
                case .closed(let l): replies.append(PeerMessage("closed").encoded(key: l.key)); continue
                case .reset(let l, let p): (link, peer, wasLive) = (l, p, true)
                case .finish(let l, let p): (link, peer, wasLive) = (l, p, false)
                }
                if let w = words[i] { peer.counts.atomicWords = w }
                let rqPSN = UInt32.random(in: 0...0xFFFFFF)
                // What our old QP executed of the mover's work, asked before the reset.
                let expected = wasLive ? expectedPSN(of: link.qp) : link.qp.expectedPSNAtRelease
                let rc = connect(link, to: peer, rqPSN: rqPSN, fromRTR: !wasLive)
                var reply = PeerMessage(rc == 0 ? "reconnected" : "busy")
                if rc == 0 {
                    describeEnd(link, psn: rqPSN, expected: expected, into: &reply)
                    if expected != nil, !peer.counts.atomicTargets.isEmpty {
                        reply["values"] = PeerMessage.wordList(atomicWords(peer.counts.atomicTargets, at: link.qp))
                    }
                    applyCounts(link.qp, label: link.label, peer.counts)
                    link.state = .ready
                    link.suspectSince = nil
                    link.pausedUntil = 0  // the move it announced is over
                    if wasLive {
                        reset.append(link.qp)
                    } else {
                        Log.info("peer: \(link.label): reconnected (both ends moved)")
                    }
                }
                replies.append(reply.encoded(key: link.key))
            }
            // The held contexts never lost their hardware: re-post what the resets dropped on the
            // reconnected QPs and what was buffered on the others, then LIVE.
            remakeSRQReceives(held, lostDevice: false)
            for c in held {
                var n: UInt64 = 0
                let mine = reset.filter { $0.context === c }
                for q in mine {
                    if q.initAttr.srq == nil, let r = q.ptr.pointee.recv_ring {
                        n &+= replayRecv(r, UnsafeMutableRawPointer(q.ptr), isSRQ: false)
                    }
                    if let r = q.ptr.pointee.send_ring { n &+= replaySend(r, q.ptr) }
                }
                n &+= replayBuffered(c, marks: c.holdMarks, except: mine)
                for k in c.holdMarks.keys { recovery.bufferedFrom[k] = nil }  // posts buffered by the hold went out
                c.holdMarks = [:]
                c.peerHold = false
                sv_ctx_set_state(c.ptr, SV_CTX_LIVE.rawValue)
                bumpRecoveryEpoch()
                let labels = mine.compactMap { peers.links[key($0.ptr)]?.label }
                Log.info("peer: \(labels.count == 1 ? labels[0] : "\(labels.count) links"): reconnected to the peer's new end"
                         + " in \(ms(monotonicNS() &- began)), \(n) work request(s) re-posted")
            }
            return replies
        }
    }

    /// The tail of every ring of `c` (where buffering starts when the context is held).
    func ringMarks(_ c: ContextRecord) -> [UInt: UInt64] {
        var marks: [UInt: UInt64] = [:]
        for q in c.qps.values {
            if let r = q.ptr.pointee.send_ring { marks[UInt(bitPattern: r)] = sv_ring_tail(r) }
            if q.initAttr.srq == nil, let r = q.ptr.pointee.recv_ring { marks[UInt(bitPattern: r)] = sv_ring_tail(r) }
        }
        for s in c.srqs.values { if let r = s.ptr.pointee.recv_ring { marks[UInt(bitPattern: r)] = sv_ring_tail(r) } }
        return marks
    }

    /// Posts what was buffered on `c`'s queues (beyond their marks) while it was held.
    private func replayBuffered(_ c: ContextRecord, marks: [UInt: UInt64], except: [QPRecord]) -> UInt64 {
        var n: UInt64 = 0
        for s in c.nextOrder(c.srqs, { $0.sequence }) {
            if let r = s.ptr.pointee.recv_ring, let mark = marks[UInt(bitPattern: r)] {
                n &+= replayRecv(r, UnsafeMutableRawPointer(s.ptr), isSRQ: true, from: mark)
            }
        }
        for q in c.nextOrder(c.qps, { $0.sequence }) where !except.contains(where: { $0 === q }) {
            if q.initAttr.srq == nil, let r = q.ptr.pointee.recv_ring, let mark = marks[UInt(bitPattern: r)] {
                n &+= replayRecv(r, UnsafeMutableRawPointer(q.ptr), isSRQ: false, from: mark)
            }
        }
        for q in c.nextOrder(c.qps, { $0.sequence }) where !except.contains(where: { $0 === q }) {
            if let r = q.ptr.pointee.send_ring, let mark = marks[UInt(bitPattern: r)] { n &+= replaySend(r, q.ptr, from: mark) }
        }
        return n
    }

    // MARK: - The mover

    /// After a rebuild (recovery thread, no lock held): reconnects every link of the group's QPs
    /// that waits in INIT. Returns when each is reconnected or given up on. The links to one peer
    /// process (host and service port) go in one `batch` exchange, which that process answers
    /// holding its context once for all of them. Returns the links given up on (the peer shim did
    /// not answer in time): the recovery fails them once it is counted (failGivenUpLinks), so that
    /// an application that ends on their errors has seen it complete.
    func reconnectLinks(_ group: [ContextRecord]) -> [PeerLink] {
        let links: [PeerLink] = withControlLock {
            group.flatMap { c in c.nextOrder(c.qps, { $0.sequence }).compactMap { q in peers.links[key(q.ptr)].flatMap { $0.state == .awaiting ? $0 : nil } } }
        }
        guard !links.isEmpty else { return [] }
        var gaveUp: [PeerLink] = []
        let start = monotonicNS()
        let deadline = start &+ peers.timeoutNS
        var pending = links
        var delay: UInt32 = 2_000
        var attempts = 0
        while !pending.isEmpty {
            var next: [PeerLink] = []
            for (process, batch) in batchesByPeer(pending) {
                attempts += 1
                for (link, outcome) in zip(batch, reconnectBatch(batch, to: process)) where outcome != "reconnected" && outcome != "done" {
                    Log.info("peer: \(link.label): reconnect attempt \(attempts): \(outcome) after \(ms(monotonicNS() &- start))")
                    next.append(link)
                }
            }
            pending = next
            if pending.isEmpty { break }
            let now = monotonicNS()
            if now >= deadline {
                // A peer that announced it is moving too (both ends move) is waited for until the
                // bound it announced.
                pending = withControlLock {
                    pending.filter { link in
                        guard link.state == .awaiting else { return false }
                        if now < link.pausedUntil { return true }
                        Log.warn("peer: \(link.label): the peer shim did not answer within \(ms(now &- start)): the connection fails as it would natively")
                        link.state = .unmanaged  // failed by failGivenUpLinks; a late claim is answered `busy`
                        gaveUp.append(link)
                        return false
                    }
                }
                if pending.isEmpty { return gaveUp }
            }
            usleep(delay)
            delay = min(delay * 2, 50_000)
        }
        Log.info("peer: \(links.count) link(s) reconnected in \(ms(monotonicNS() &- start)) (\(attempts) exchange(s))")
        return gaveUp
    }

    /// The links reconnectLinks gave up on end as native verbs would end them: their QPs in error,
    /// their outstanding work completed in error (control lock).
    func failGivenUpLinks(_ links: [PeerLink]) {
        for link in links { failLink(link, status: IBV_WC_RETRY_EXC_ERR) }
    }

    /// `links` grouped by the peer process that answers for them, in order.
    private func batchesByPeer(_ links: [PeerLink]) -> [(PeerProcess, [PeerLink])] {
        withControlLock { groupedByProcess(links) { PeerProcess(host: $0.host, port: $0.servicePort) } }
    }

    /// One exchange with `process`, the peer of every link of `batch` (one `moved` per link;
    /// several go as a `batch`). Per link: "reconnected" or "done" when it no longer waits, else
    /// what happened.
    private func reconnectBatch(_ batch: [PeerLink], to process: PeerProcess) -> [String] {
        guard let host = process.host else { return batch.map { _ in "done" } }
        let port = process.port
        let prepared: [(request: [UInt8], key: [UInt8], psn: UInt32)?] = withControlLock {
            batch.map { link in
                guard link.state == .awaiting else { return nil }
                let psn = UInt32.random(in: 0...0xFFFFFF)
                var m = PeerMessage("moved")
                describeEnd(link, psn: psn, expected: link.qp.expectedPSNAtRelease, into: &m)
                let targets = atomicTargets(of: link.qp)
                if !targets.isEmpty { m["atomics"] = PeerMessage.targetList(targets) }
                return (m.encoded(key: link.key), link.key, psn)
            }
        }
        let live = zip(batch, prepared).compactMap { link, p in p.map { (link, $0) } }
        guard !live.isEmpty else { return batch.map { _ in "done" } }
        let sent = monotonicNS()
        let answers = PeerSocket.exchangeParts(host: host, port: port, requests: live.map(\.1.request),
                                               timeoutMS: 1000 + 100 * Int32(min(live.count, 100)))
        let took = ms(monotonicNS() &- sent)
        if live.count > 1 { Log.info("peer: `moved` for \(live.count) links to \(host) port \(port) answered in \(took)") }
        var outcomes: [UInt: String] = [:]
        for ((link, p), d) in zip(live, answers) {
            outcomes[key(link.qp.ptr)] = answered(link, d, psn: p.psn, key: p.key, noAnswer: "no answer from \(host) port \(port)",
                                                 took: live.count == 1 ? took : nil)
        }
        return batch.map { outcomes[key($0.qp.ptr)] ?? "done" }
    }

    /// What a link's `moved` was answered (`d`), acted upon.
    private func answered(_ link: PeerLink, _ d: DecodedPeerMessage?, psn: UInt32, key: [UInt8], noAnswer: String, took: String?) -> String {
        guard let d else { return noAnswer }
        if let took { Log.info("peer: \(link.label): `moved` answered `\(d.message.verb)` in \(took)") }
        guard PeerMessage.verify(d, key: key) else {
            Log.warn("peer: \(link.label): an unauthenticated answer (\(d.message.verb)) was ignored")
            return "unauthenticated answer"
        }
        switch d.message.verb {
        case "reconnected":
            guard let peer = PeerEndpoint(d.message) else { return "malformed answer" }
            return withControlLock {
                // Both ends moved and our service already answered the peer's request while this one
                // was on its way: the peer took ours as a new move (it reset its end with the PSN we
                // sent), so our QP, already past RTR, is reset and connected again to match.
                let fromRTR = link.state == .awaiting
                if !fromRTR { Log.info("peer: \(link.label): our request crossed the peer's: connecting again with its answer") }
                let rc = connect(link, to: peer, rqPSN: psn, fromRTR: fromRTR)
                if rc != 0 { return "local QP transition failed (errno \(rc))" }
                applyCounts(link.qp, label: link.label, peer.counts)
                link.state = .ready
                Log.info("peer: \(link.label): reconnected (peer's real QPN \(hex(peer.qpn)))")
                return "reconnected"
            }
        case "closed":
            // The peer's application ended the connection (or its shim gave up on us): it fails
            // here as it would natively, now rather than after the peer timeout.
            return withControlLock {
                guard link.state == .awaiting else { return "done" }
                Log.warn("peer: \(link.label): the peer's end of the connection is closed: the connection fails as it would natively")
                failLink(link, status: IBV_WC_RETRY_EXC_ERR)
                link.state = .closed
                return "done"
            }
        case "collide":
            // The peer moved too and wins: its request reaches our service, which answers it.
            return withControlLock { link.state != .awaiting } ? "done" : "collide (waiting for the peer's request)"
        default:
            return d.message.verb
        }
    }

    // MARK: - Announced moves (planned detach, or a loss noticed while a port works)

    /// Tells the peer of every link of the group that this end is about to go away: on purpose
    /// (stableverbs_detach: it then waits STABLEVERBS_PEER_PLANNED_TIMEOUT_MS), or because its
    /// device is being lost while a port still works (an unplanned move: it waits
    /// STABLEVERBS_PEER_MOVE_TIMEOUT_MS), rather than giving up after the ordinary peer timeout
    /// that a silent peer gets. No lock held on entry.
    func announcePause(_ group: [ContextRecord], planned: Bool) {
        let ms = (planned ? peers.plannedTimeoutNS : peers.moveTimeoutNS) / 1_000_000
        let links: [PeerLink] = withControlLock {
            group.flatMap { c in
                c.qps.values.compactMap { q in peers.links[key(q.ptr)].flatMap { $0.state == .ready && $0.host != nil ? $0 : nil } }
            }
        }
        // One exchange per peer process: its links' claims, each signed with its link's key, in a
        // batch (16 links to one process would otherwise take 16 round trips of the quiesce).
        for (process, batch) in batchesByPeer(links) {
            guard let host = process.host else { continue }
            let requests: [[UInt8]] = withControlLock {
                batch.map { l in
                    var m = PeerMessage("pausing")
                    m["from_qpn"] = String(l.qp.virtualQPN)
                    m["to_qpn"] = String(l.remoteQPN)
                    m["to_gid"] = gidHex(l.remoteGID)
                    m["ms"] = String(ms)
                    m["planned"] = planned ? "1" : "0"
                    return m.encoded(key: l.key)
                }
            }
            let answers = PeerSocket.exchangeParts(host: host, port: process.port, requests: requests,
                                                   timeoutMS: 500 + 20 * Int32(min(requests.count, 100)))
            for (link, d) in zip(batch, answers) where d?.message.verb != "ok" {
                Log.warn("peer: \(link.label): the peer did not acknowledge the \(planned ? "planned detach" : "move"); it waits only \(peers.timeoutNS / 1_000_000) ms")
            }
        }
    }

    /// A peer's planned detach or announced move (service thread).
    func answerPausing(_ d: DecodedPeerMessage) -> [UInt8] {
        let m = d.message
        guard let toQPN = m.number("to_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let fromQPN = m.number("from_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let toGID = m["to_gid"].flatMap(gidFromHex), let ms = m.number("ms") else {
            return PeerMessage("error").encoded(key: nil)
        }
        return withControlLock {
            guard let q = localQP(qpn: toQPN, gid: toGID), let link = peers.links[key(q.ptr)],
                  link.remoteQPN == fromQPN, PeerMessage.verify(d, key: link.key) else {
                return PeerMessage("denied").encoded(key: nil)
            }
            link.pausedUntil = monotonicNS() &+ min(ms, peers.plannedTimeoutNS / 1_000_000) &* 1_000_000
            let what = m["planned"] == "0" ? "that it is moving (its device is being lost)" : "a planned detach"
            Log.info("peer: \(link.label): the peer announced \(what): waiting for it up to \(ms) ms")
            return PeerMessage("ok").encoded(key: link.key)
        }
    }

    // MARK: - Giving up

    /// The peer is not coming back: the QP goes to the error state and every outstanding work
    /// request completes in error (the first send with `status`, the rest flushed). Control lock.
    func failLink(_ link: PeerLink, status: ibv_wc_status) {
        let q = link.qp
        link.state = .unmanaged
        link.suspectSince = nil
        link.flushed = true
        link.pausedUntil = 0  // the move it announced is over
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_ERR
        _ = ops.modify_qp?(q.real, &attr, stateMask)
        q.ptr.pointee.qpx.qp_base.state = IBV_QPS_ERR
        flushOutstanding(q, firstSendStatus: status)
        for cq in q.context.cqs.values where cq.channel != nil && !cq.pending.isEmpty { cq.owedEvent = true }
        bumpRecoveryEpoch()
    }
}

/// Completes every outstanding work request of `q` in error into its CQs' pending completions: the
/// first send with `firstSendStatus`, the rest flushed; the receives of its own queue (an SRQ's are
/// not the QP's). Control lock.
func flushOutstanding(_ q: QPRecord, firstSendStatus: ibv_wc_status) {
    if let r = q.ptr.pointee.send_ring, let cq = q.initAttr.send_cq.map({ cqRecord($0) }) {
        flush(r, into: cq, qpn: q.virtualQPN, firstStatus: firstSendStatus) { $0.pointee.wr.send.wr_id }
    }
    if q.initAttr.srq == nil, let r = q.ptr.pointee.recv_ring, let cq = q.initAttr.recv_cq.map({ cqRecord($0) }) {
        flush(r, into: cq, qpn: q.virtualQPN, firstStatus: IBV_WC_WR_FLUSH_ERR) { sv_ring_recv_wr($0)!.pointee.wr_id }
    }
}

/// Completes every outstanding entry of a ring in error into `cq`'s pending completions: the first
/// with `firstStatus`, the rest flushed.
private func flush(_ r: UnsafeMutablePointer<sv_wr_ring>, into cq: CQRecord, qpn: UInt32, firstStatus: ibv_wc_status,
                   wrID: (UnsafeMutablePointer<sv_ring_entry>) -> UInt64) {
    var status = firstStatus
    var i = sv_ring_head(r)
    while i != sv_ring_tail(r) {
        let e = sv_ring_at(r, i)!
        i &+= 1
        if e.pointee.done != 0 { continue }
        var wc = ibv_wc()
        wc.wr_id = wrID(e)
        wc.status = status
        wc.qp_num = qpn
        status = IBV_WC_WR_FLUSH_ERR
        cq.pending.append(wc)
        e.pointee.done = 1
    }
    sv_ring_settle(r)
    cq.publishPending()
}

func completionOpcode(_ op: ibv_wr_opcode) -> ibv_wc_opcode {
    switch op {
    case IBV_WR_RDMA_WRITE, IBV_WR_RDMA_WRITE_WITH_IMM: return IBV_WC_RDMA_WRITE
    case IBV_WR_RDMA_READ: return IBV_WC_RDMA_READ
    case IBV_WR_ATOMIC_CMP_AND_SWP: return IBV_WC_COMP_SWAP
    case IBV_WR_ATOMIC_FETCH_AND_ADD: return IBV_WC_FETCH_ADD
    case IBV_WR_BIND_MW: return IBV_WC_BIND_MW
    case IBV_WR_LOCAL_INV: return IBV_WC_LOCAL_INV
    default: return IBV_WC_SEND
    }
}
