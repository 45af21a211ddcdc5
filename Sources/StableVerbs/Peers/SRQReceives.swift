// Receive completions an SRQ lost with the device (DESIGN §4, peer protocol).
//
// When the peer's `acked` is above what a QP completed, the completions of that many receives died
// with our device after the data landed (Peers/Reconnect.swift). On a QP's own receive queue they
// are the oldest not-done entries of its ring. The QPs on an SRQ share its ring, and which of its
// receives took which QP's message is known only to the device. What is known:
// - An SRQ hands out its receives in posting order (rxe's queue, mlx5's list, the software HCA), so
//   every receive it handed out precedes every one it did not; a receive whose completion was
//   polled, or drained from the lost device, is done in the ring. The lost messages therefore took
//   exactly the oldest not-done entries of the SRQ's ring, each QP's in its own message order.
// - One QP lost any: those entries are its lost receives, in order.
// - Two or more: each QP's messages are interleaved over those entries in an order only the
//   device knew. The senders describe each message with a hash of its payload (MessageDescription;
//   the bytes kept for inline data, or the gathered buffers while registered), and each entry's
//   buffer holds the payload that landed there. An interleaving that puts every message in an
//   entry holding its payload (a WRITE_WITH_IMM leaves nothing in the buffer: any entry) gives
//   every QP its messages in order with the right bytes; two such interleavings differ only in
//   buffers holding the same bytes. When no such interleaving is found (a sender reused its buffer
//   before it could be hashed, a message not described), nothing is remade (logged) rather than a
//   message shown on the wrong QP.
// Every other QP on the SRQ that could have received must be counted (lost none); else nothing is
// remade either.
//
// The counts of one recovery are gathered as the links are reconnected (and from in-process peers)
// and applied once, after the reconnect phase, before the replay (remakeSRQReceives).

import CVerbs
import StableVerbsABI

/// What the peer of a QP on an SRQ reported in a recovery: how many of its messages the QP's lost
/// completions stand for, and their descriptions.
struct SRQCount {
    let qp: QPRecord
    let label: String
    /// Receive completions the QP retired (its first lost message's number).
    let seen: UInt64
    /// Messages the peer saw acknowledged whose completions died here.
    let lost: UInt64
    let messages: [UInt64: MessageDescription]
}

/// An interleaving of `counts[i]` messages of each sequence i over `slots` slots, keeping each
/// sequence's order, in which `fits(slot, i, message)` holds for every slot: the sequence chosen
/// for each slot. nil when there is none (or more than `budget` steps would be needed to find one).
func interleaving(slots: Int, counts: [Int], budget: Int = 100_000, fits: (_ slot: Int, _ sequence: Int, _ message: Int) -> Bool) -> [Int]? {
    guard counts.allSatisfy({ $0 >= 0 }), counts.reduce(0, +) == slots else { return nil }
    var next = [Int](repeating: 0, count: counts.count)
    var chosen = [Int](repeating: -1, count: slots)
    var deadEnds = Set<[Int]>()  // positions (messages taken per sequence) from which no interleaving ends
    var steps = 0
    func from(_ slot: Int) -> Bool {
        if slot == slots { return true }
        if deadEnds.contains(next) { return false }
        steps += 1
        if steps > budget { return false }
        for i in counts.indices where next[i] < counts[i] && fits(slot, i, next[i]) {
            chosen[slot] = i
            next[i] += 1
            if from(slot + 1) { return true }
            next[i] -= 1
            if steps > budget { return false }
        }
        deadEnds.insert(next)
        return false
    }
    return from(0) ? chosen : nil
}

/// FNV-1a over `bytes`, continuing from `hash`.
func payloadHash(_ bytes: UnsafeRawBufferPointer, from hash: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
    var h = hash
    for b in bytes {
        h ^= UInt64(b)
        h &*= 0x0000_0100_0000_01b3
    }
    return h
}

extension Runtime {
    /// Keeps the peer's counts for `q`, a QP on `srq` (control lock).
    func noteSRQCounts(_ srq: SRQRecord, _ q: QPRecord, label: String, seen: UInt64, _ peer: PeerCounts) {
        srq.counted[key(q.ptr)] = SRQCount(qp: q, label: label, seen: seen, lost: peer.acked > seen ? peer.acked - seen : 0,
                                           messages: peer.messages)
    }

    /// Remakes the receive completions the SRQs of `contexts` lost, where they are known (see the
    /// header), before their rings are replayed. `lostDevice`: false for contexts that kept their
    /// device (a peer moved): a completion not polled yet is still to come from the device, so
    /// nothing is remade. Control lock.
    func remakeSRQReceives(_ contexts: [ContextRecord], lostDevice: Bool = true) {
        for c in contexts {
            for srq in c.nextOrder(c.srqs, { $0.sequence }) where !srq.counted.isEmpty {
                let counted = srq.counted
                srq.counted = [:]
                let losing = counted.values.filter { $0.lost > 0 }.sorted { $0.qp.sequence < $1.qp.sequence }
                guard lostDevice, !losing.isEmpty, let r = srq.ptr.pointee.recv_ring else { continue }
                let publicSRQ = srq.publicSRQ
                let uncounted = c.qps.values.filter { q in
                    guard q.initAttr.srq == publicSRQ, counted[key(q.ptr)] == nil else { return false }
                    let s = q.journal.qpState
                    return s == IBV_QPS_RTR || s == IBV_QPS_RTS || s == IBV_QPS_SQD || s == IBV_QPS_SQE
                }
                let what = losing.map { "\($0.lost) on \(hex($0.qp.virtualQPN))" }.joined(separator: ", ")
                var why = "\(uncounted.count) other QP(s) on it could have received and are not counted"
                if uncounted.isEmpty {
                    let slots = notDoneEntries(r, count: Int(losing.reduce(0) { $0 + $1.lost }))
                    if let order = srqOrder(slots, losing, c) {
                        remake(slots, order, losing, ring: r)
                        continue
                    }
                    why = losing.count == 1 ? "the SRQ handed out fewer receives"
                        : "no order of the messages over the receives the SRQ handed out fits their payloads"
                }
                Log.warn("peer: the SRQ of \(losing.map { hex($0.qp.virtualQPN) }.joined(separator: ", ")): messages the peers "
                         + "saw acknowledged landed in receives whose completions died with the device (\(what)); \(why), "
                         + "so which receive took which message is not known: they are not remade")
            }
        }
    }

    /// The oldest `count` not-done entries of an SRQ's ring (fewer if it has fewer).
    private func notDoneEntries(_ r: UnsafeMutablePointer<sv_wr_ring>, count: Int) -> [UnsafeMutablePointer<sv_ring_entry>] {
        var out: [UnsafeMutablePointer<sv_ring_entry>] = []
        var i = sv_ring_head(r)
        let tail = sv_ring_tail(r)
        while out.count < count, i != tail {
            let e = sv_ring_at(r, i)!
            i &+= 1
            if e.pointee.done == 0 { out.append(e) }
        }
        return out
    }

    /// Which of `losing` took each of `slots` (indices into `losing`), or nil (see the header).
    private func srqOrder(_ slots: [UnsafeMutablePointer<sv_ring_entry>], _ losing: [SRQCount], _ c: ContextRecord) -> [Int]? {
        if losing.count == 1 { return slots.count == Int(losing[0].lost) ? slots.map { _ in 0 } : nil }
        var hashes: [Int: [UInt32: UInt64?]] = [:]  // slot → length → hash of its first `length` bytes
        return interleaving(slots: slots.count, counts: losing.map { Int($0.lost) }) { slot, i, m in
            guard let d = losing[i].messages[losing[i].seen + UInt64(m)] else { return false }
            let op = ibv_wr_opcode(rawValue: d.opcode)
            if op == IBV_WR_RDMA_WRITE_WITH_IMM { return true }  // nothing lands in the receive's buffer
            guard let want = d.hash else { return false }
            if hashes[slot]?[d.length] == nil {
                hashes[slot, default: [:]][d.length] = .some(receivedPayloadHash(slots[slot], length: d.length, c))
            }
            return hashes[slot]![d.length]! == want
        }
    }

    /// Makes the completions: slot k's receive took the next lost message of `losing[order[k]]`.
    private func remake(_ slots: [UnsafeMutablePointer<sv_ring_entry>], _ order: [Int], _ losing: [SRQCount],
                        ring r: UnsafeMutablePointer<sv_wr_ring>) {
        var made = [UInt64](repeating: 0, count: losing.count)
        var touched: [CQRecord] = []
        for (e, i) in zip(slots, order) {
            let loss = losing[i]
            guard let cq = loss.qp.initAttr.recv_cq.map({ cqRecord($0) }) else { continue }
            cq.pending.append(remadeReceive(sv_ring_recv_wr(e)!.pointee.wr_id, of: loss.qp, msgno: loss.seen + made[i], loss.messages, label: loss.label))
            e.pointee.done = 1
            made[i] += 1
            if !touched.contains(where: { $0 === cq }) { touched.append(cq) }
        }
        for cq in touched { cq.publishPending() }
        for (loss, n) in zip(losing, made) {
            sv_qp_add_recv_seen(loss.qp.ptr, n)
            Log.info("peer: \(loss.label): \(n) receive completion(s) remade from its SRQ")
        }
        sv_ring_settle(r)
    }

    // MARK: - Payloads

    /// The bytes an SGE names in this process, if a registered memory region of `c` covers them.
    func localBytes(_ sge: ibv_sge, _ c: ContextRecord) -> UnsafeRawBufferPointer? {
        for mr in c.mrs.values where mr.ptr.pointee.mr.lkey == sge.lkey {
            guard let addr = mr.addr else { return nil }
            var base = UInt64(UInt(bitPattern: addr))
            switch mr.kind {
            case .plain: break
            case .iova(let iova), .iova2(let iova): base = iova
            }
            guard sge.addr >= base, sge.addr - base + UInt64(sge.length) <= UInt64(mr.length) else { return nil }
            return UnsafeRawBufferPointer(start: addr + Int(sge.addr - base), count: Int(sge.length))
        }
        return nil
    }

    /// The hash of what a SEND of a send ring's entry carried: the bytes kept for inline data, or
    /// its gathered buffers while registered (nil: not readable, or not a SEND). Control lock.
    func sentPayloadHash(_ e: UnsafeMutablePointer<sv_ring_entry>, _ r: UnsafeMutablePointer<sv_wr_ring>, _ c: ContextRecord) -> UInt64? {
        let w = e.pointee.wr.send
        guard w.opcode == IBV_WR_SEND || w.opcode == IBV_WR_SEND_WITH_IMM || w.opcode == IBV_WR_SEND_WITH_INV else { return nil }
        if e.pointee.inline_len > 0 {
            let kept = UnsafeRawPointer(sv_ring_sges(e) + Int(r.pointee.max_sge))
            return payloadHash(UnsafeRawBufferPointer(start: kept, count: Int(e.pointee.inline_len)))
        }
        var h = payloadHash(UnsafeRawBufferPointer(start: nil, count: 0))
        for k in 0..<Int(max(0, w.num_sge)) {
            guard let bytes = localBytes(sv_ring_sges(e)[k], c) else { return nil }
            h = payloadHash(bytes, from: h)
        }
        return h
    }

    /// The hash of the first `length` bytes a receive's buffers hold (nil: not readable, or
    /// shorter). Control lock.
    func receivedPayloadHash(_ e: UnsafeMutablePointer<sv_ring_entry>, length: UInt32, _ c: ContextRecord) -> UInt64? {
        let w = sv_ring_recv_wr(e)!.pointee
        var h = payloadHash(UnsafeRawBufferPointer(start: nil, count: 0))
        var left = Int(length)
        for k in 0..<Int(max(0, w.num_sge)) where left > 0 {
            guard let sg = w.sg_list?[k], let bytes = localBytes(sg, c) else { return nil }
            let n = min(left, bytes.count)
            h = payloadHash(UnsafeRawBufferPointer(rebasing: bytes[0..<n]), from: h)
            left -= n
        }
        return left == 0 ? h : nil
    }
}
