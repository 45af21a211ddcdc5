// Which of a connection's work the responder executed, by PSN (DESIGN §4, the peer protocol).
//
// A SEND's delivery is counted by its receiver (`seen`); an atomic leaves no trace there. So each
// send-ring entry carries the PSN of its first packet on the connection it was handed to (the
// poster takes them from the ring's `next_psn`, which follows the QP's SQ PSN and path MTU, and a
// replay hands them out again on the new connection), and an end whose old QP can still be asked
// reports the PSN its receive queue expected next (`rq_done`): the live end asks its QP before it
// resets it; an end that detached on purpose asked before it destroyed it. RC executes in order,
// so an entry whose last packet comes before that PSN was executed — an atomic among them is not
// posted again, whatever the SEND count says. Without it (the responder's device died with the
// PSN), the SEND count decides, as before: an atomic after the last SEND the peer completed is
// posted again.
//
// An atomic the responder executed whose response died with the requester's device took its
// result with it. The mover names the targets of its atomics in flight (`atomics`: virtual rkey
// and address) and the live end reads them after its QP stopped executing (`values`); the mover
// then works each lost result out backwards from the word's value now: a FETCH_AND_ADD returned
// the value less what it and the later lost ones on that word added, a CMP_AND_SWP returned the
// word unchanged when it holds something else than its swap value, else its compare value (the
// swap happened). Exact when nothing else wrote the word after them (a word this connection
// owns: a counter, a lock, a ticket); the log says how many results were worked out so.
//
// The other way round — the live end's atomics executed by the mover's old QP (its `rq_done`),
// their responses dead with the mover's device — the words are in the mover's memory: the live end
// asks the mover's shim for them (`words`, signed with the link's key, a nonce echoed) while it
// answers the `moved` claim, before it counts; the mover's QP is not connected then, so nothing
// of this connection changes them.

import CVerbs
import Glibc
import StableVerbsABI

/// `a` comes before `b` in the 24-bit PSN space (within half of it).
func psnBefore(_ a: UInt32, _ b: UInt32) -> Bool {
    let d = (b &- a) & 0xFF_FFFF
    return d != 0 && d < 0x80_0000
}

extension Runtime {
    /// After a successful real modify_qp: the send ring's next PSN and path MTU follow the QP's
    /// (control lock; the application does not post while it moves its QP to RTS).
    func noteSendPSNs(_ q: QPRecord, _ attr: ibv_qp_attr, _ mask: Int32) {
        guard let r = q.ptr.pointee.send_ring else { return }
        if mask & bits(IBV_QP_PATH_MTU) != 0, attr.path_mtu.rawValue >= 1, attr.path_mtu.rawValue <= 5 {
            r.pointee.mtu_shift = 7 + attr.path_mtu.rawValue
        }
        if mask & bits(IBV_QP_SQ_PSN) != 0 { r.pointee.next_psn = attr.sq_psn & 0xFF_FFFF }
    }

    /// The PSN `q`'s real QP expects next on its receive side, when its device still answers
    /// (control lock).
    func expectedPSN(of q: QPRecord) -> UInt32? {
        guard let query = ops.query_qp else { return nil }
        var attr = ibv_qp_attr()
        var initAttr = ibv_qp_init_attr()
        guard query(q.real, &attr, bits(IBV_QP_RQ_PSN), &initAttr) == 0 else { return nil }
        return attr.rq_psn & 0xFF_FFFF
    }

    /// Before a release destroys the QPs of `c` (stopped: nothing executes any more): the PSN each
    /// connected QP expected, for the peer's count of what we executed. Known when the device still
    /// answers (a planned detach, a loss noticed while a port worked); nil on a dead one.
    func keepExpectedPSNs(_ c: ContextRecord) {
        // A link still awaiting its reconnection (gone again before it) keeps what its last
        // connection's QP said: the QP here is a rebuilt one, not connected yet.
        for q in c.qps.values where peers.links[key(q.ptr)]?.state == .ready {
            q.expectedPSNAtRelease = expectedPSN(of: q)
        }
    }

    /// Whether the responder executed the send entry `e`, from the PSN it expected next.
    static func executed(_ e: UnsafeMutablePointer<sv_ring_entry>, in r: UnsafeMutablePointer<sv_wr_ring>, before expected: UInt32) -> Bool {
        let w = e.pointee.wr.send
        let n = sv_wr_psns(w.opcode, sv_ring_entry_length(e), r.pointee.mtu_shift)
        return psnBefore((e.pointee.psn &+ max(n, 1) &- 1) & 0xFF_FFFF, expected)
    }

    /// The atomics not done among a send ring's entries [from, to).
    static func atomicsAhead(_ r: UnsafeMutablePointer<sv_wr_ring>, from: UInt64, to: UInt64) -> Int {
        var n = 0, i = from
        while i != to {
            let e = sv_ring_at(r, i)!
            i &+= 1
            let op = e.pointee.wr.send.opcode
            if e.pointee.done == 0 && sv_opcode_is_atomic(op) != 0 { n += 1 }
        }
        return n
    }

    /// The targets (virtual rkey, address) of the atomics not done in `q`'s send ring, oldest
    /// first, at most 256; with `expected`, only those the responder executed (control lock).
    func atomicTargets(of q: QPRecord, executedBefore expected: UInt32? = nil) -> [(rkey: UInt32, addr: UInt64)] {
        guard let r = q.ptr.pointee.send_ring else { return [] }
        var out: [(rkey: UInt32, addr: UInt64)] = []
        var i = sv_ring_head(r)
        let tail = sv_ring_tail(r)
        while i != tail && out.count < 256 {
            let e = sv_ring_at(r, i)!
            i &+= 1
            let w = e.pointee.wr.send
            guard e.pointee.done == 0, sv_opcode_is_atomic(w.opcode) != 0 else { continue }
            if let expected, !Runtime.executed(e, in: r, before: expected) { break }
            if !out.contains(where: { $0.rkey == w.wr.atomic.rkey && $0.addr == w.wr.atomic.remote_addr }) {
                out.append((w.wr.atomic.rkey, w.wr.atomic.remote_addr))
            }
        }
        return out
    }

    /// The 64-bit words a peer's atomics target, read from the memory regions its responder `q`
    /// could execute them on — those of its PD with remote atomic access, as the hardware checks
    /// (nothing of that connection executes here any more). Control lock.
    func atomicWords(_ targets: [(rkey: UInt32, addr: UInt64)], at q: QPRecord) -> [(rkey: UInt32, addr: UInt64, value: UInt64)] {
        let atomicAccess = UInt32(IBV_ACCESS_REMOTE_ATOMIC.rawValue)
        return targets.compactMap { t in
            guard t.addr & 7 == 0,
                  let mr = q.context.mrs.values.first(where: { $0.ptr.pointee.mr.rkey == t.rkey }),
                  mr.access & atomicAccess != 0, q.pd.map({ $0 === mr.pd }) ?? true,
                  let base = mr.addr else { return nil }
            let start = UInt64(UInt(bitPattern: base))
            guard t.addr >= start, t.addr &+ 8 <= start &+ UInt64(mr.length),
                  let word = UnsafeRawPointer(bitPattern: UInt(t.addr)) else { return nil }
            return (t.rkey, t.addr, word.load(as: UInt64.self))
        }
    }

    /// Writes the results of atomics the peer executed whose responses died (`lost`, oldest
    /// first) into their local buffers, from the words' values the peer read (see the header).
    /// Returns how many it could.
    static func restoreAtomicResults(_ lost: [UnsafeMutablePointer<sv_ring_entry>], _ words: [(rkey: UInt32, addr: UInt64, value: UInt64)]) -> Int {
        var now: [String: UInt64] = [:]
        for w in words { now["\(w.rkey):\(w.addr)"] = w.value }
        var restored = 0
        for e in lost.reversed() {
            let w = e.pointee.wr.send
            let k = "\(w.wr.atomic.rkey):\(w.wr.atomic.remote_addr)"
            guard let after = now[k], w.num_sge >= 1 else { continue }
            let old: UInt64
            if w.opcode == IBV_WR_ATOMIC_FETCH_AND_ADD {
                old = after &- w.wr.atomic.compare_add
            } else {
                old = after == w.wr.atomic.swap ? w.wr.atomic.compare_add : after
            }
            now[k] = old
            let sg = sv_ring_sges(e)!.pointee
            guard sg.length >= 8, let dst = UnsafeMutableRawPointer(bitPattern: UInt(sg.addr)) else { continue }
            dst.storeBytes(of: old, as: UInt64.self)
            restored += 1
        }
        return restored
    }

    // MARK: - The words of the live end's atomics, from the mover's memory

    /// Asks the mover's shim (at `host`) for the words `targets` name in its memory: the results
    /// of `link`'s atomics its old QP executed are worked out from them. Empty when it does not
    /// answer in time or the answer is not the link's (service thread; no lock held on entry).
    func askWords(_ link: PeerLink, at host: PeerHost?, _ targets: [(rkey: UInt32, addr: UInt64)]) -> [(rkey: UInt32, addr: UInt64, value: UInt64)] {
        let nonce = hexString(randomBytes(16))
        let (request, key, port, label): ([UInt8], [UInt8], UInt16, String) = withControlLock {
            var m = PeerMessage("words")
            m["from_qpn"] = String(link.qp.virtualQPN)
            m["to_qpn"] = String(link.remoteQPN)
            m["to_gid"] = gidHex(link.remoteGID)
            m["atomics"] = PeerMessage.targetList(targets)
            m["nonce"] = nonce
            return (m.encoded(key: link.key), link.key, link.servicePort, link.label)
        }
        guard let host, let d = PeerSocket.exchangeParts(host: host, port: port, requests: [request], timeoutMS: 500)[0],
              d.message.verb == "words", PeerMessage.verify(d, key: key), d.message["nonce"] == nonce else {
            Log.warn("peer: \(label): the mover's shim did not tell the words its executed atomics target: their results are lost")
            return []
        }
        return PeerMessage.wordList(d.message["values"])
    }

    /// A live peer asks for the words its atomics target in our memory (service thread): answered
    /// only while our end of the link awaits its reconnection (its QP executes nothing of it).
    func answerWords(_ d: DecodedPeerMessage) -> [UInt8] {
        let m = d.message
        guard let toQPN = m.number("to_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let fromQPN = m.number("from_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let toGID = m["to_gid"].flatMap(gidFromHex), let nonce = m["nonce"] else {
            return PeerMessage("error").encoded(key: nil)
        }
        return withControlLock {
            guard let q = localQP(qpn: toQPN, gid: toGID), let link = peers.links[key(q.ptr)],
                  link.remoteQPN == fromQPN, PeerMessage.verify(d, key: link.key) else {
                return PeerMessage("denied").encoded(key: nil)
            }
            guard link.state == .awaiting else { return PeerMessage("busy").encoded(key: link.key) }
            let words = atomicWords(PeerMessage.targetList(m["atomics"]), at: q)
            var r = PeerMessage("words")
            r["values"] = PeerMessage.wordList(words)
            r["nonce"] = nonce
            Log.info("peer: \(link.label): told the peer the \(words.count) word(s) its atomics our old QP executed target")
            return r.encoded(key: link.key)
        }
    }
}

extension PeerMessage {
    /// `rkey:addr,...` (the `atomics` field).
    static func targetList(_ targets: [(rkey: UInt32, addr: UInt64)]) -> String {
        targets.map { "\($0.rkey):\($0.addr)" }.joined(separator: ",")
    }

    static func targetList(_ text: String?) -> [(rkey: UInt32, addr: UInt64)] {
        (text ?? "").split(separator: ",").compactMap { p in
            let f = p.split(separator: ":").compactMap { UInt64($0) }
            return f.count == 2 ? (UInt32(truncatingIfNeeded: f[0]), f[1]) : nil
        }
    }

    /// `rkey:addr:value,...` (the `values` field).
    static func wordList(_ words: [(rkey: UInt32, addr: UInt64, value: UInt64)]) -> String {
        words.map { "\($0.rkey):\($0.addr):\($0.value)" }.joined(separator: ",")
    }

    static func wordList(_ text: String?) -> [(rkey: UInt32, addr: UInt64, value: UInt64)] {
        (text ?? "").split(separator: ",").compactMap { p in
            let f = p.split(separator: ":").compactMap { UInt64($0) }
            return f.count == 3 ? (UInt32(truncatingIfNeeded: f[0]), f[1], f[2]) : nil
        }
    }
}
