// UD senders: a UD receive's src_qp and GRH in the application's (virtual) terms.
//
// A UD completion's src_qp is the sender's real QPN. While nothing moved, real = virtual. Once a UD
// QP somewhere in this process has been rebuilt under another real QPN, a receive from it would show
// that number, and translating src_qp with the receiving context's own map (its QPs, real →
// virtual) is wrong for every other sender: another device's QPNs are not in it, and its real QPNs
// may equal those of any other device (rxe numbers from 0x11 on every device).
//
// So each context keeps a map of its UD QPs whose real QPN differs from the virtual one (senderUp,
// real → virtual), and a process-wide table (sv_senders.c, published lock-free) names the map of
// each real GID of each context; a replaced table, and the map of a closed context, are freed 5 s
// later (UDSenderGarbage). A receive's sender is the source GID of its GRH, in the receive
// buffer's first 40 bytes (found through the receive's work-ring entry, before it is retired).
// Once any UD QP of the process moved, every context's qpn_up carries `svUDSendersMoved`, which
// sends its polls down the translated path (PollOps.swift: svColdUDSenders); nothing changes on
// the fast path.
//
// The GRH itself holds real GIDs: where a context's real GIDs are no longer its virtual ones (its
// device came back with another port GUID or address), the table carries its GIDs too, and the
// GRH's source and destination are rewritten to the virtual ones (sv_grh_set_gids; over IPv4 the
// header's addresses and checksum), so ibv_create_ah_from_wc finds the destination GID among the
// port's and replies to the GID the application knows.
//
// Senders in other processes are in the table too, under the GIDs their `ud-moved` claims named
// (Peers/UDPeers.swift): a GID may then have two maps (a process on this host shares its GID with
// ours), tried in turn. A sender whose real GID changed with its move is not found (its src_qp
// stays as it came). Extended CQs get start_poll/next_poll variants that do the same for the
// completion they move to, and a read_src_qp that answers it (DataPath/CQExOps.swift).

import CVerbs
import Glibc
import StableVerbsABI

/// A flag in a context's qpn_up.moved (above any count of entries): a UD QP of this process has a
/// real QPN other than its virtual one, so UD receives' src_qp are translated by sender.
let svUDSendersMoved: UInt32 = 0x8000_0000

/// Whether `ctx`'s polls tell UD receives by sender (svUDSendersMoved is set).
@inline(__always) func svUDBySender(_ ctx: UnsafeMutablePointer<sv_context>) -> Bool {
    svMoved(svQpnUp(ctx)) & svUDSendersMoved != 0
}

/// The version (4, 6) and the source and destination GIDs of a UD receive's GRH area.
func grhGIDs(_ grh: UnsafeRawPointer) -> (version: Int32, sgid: ibv_gid, dgid: ibv_gid) {
    var sgid = ibv_gid(), dgid = ibv_gid()
    let version = withUnsafeMutableBytes(of: &sgid) { s in
        withUnsafeMutableBytes(of: &dgid) { d in
            sv_grh_gids(grh, s.baseAddress!.assumingMemoryBound(to: UInt8.self), d.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }
    return (version, sgid, dgid)
}

/// A fresh, empty identity map on the heap (freed with IdentityMap.destroy and free).
private func newIdentityMap() -> UnsafeMutablePointer<sv_idmap>? {
    guard let m = allocateZeroed(sv_idmap.self) else { return nil }
    IdentityMap.initialize(m)
    return m
}

/// Tables and maps the senders' table no longer names, freed once no poller can still be in
/// them (a lookup takes well under a microsecond; they wait `UDSenderGarbage.grace`). Control lock.
struct UDSenderGarbage {
    static let grace: UInt64 = 5_000_000_000
    var tables: [(UnsafeMutableRawPointer, UInt64)] = []
    var maps: [(UnsafeMutablePointer<sv_idmap>, UInt64)] = []

    mutating func collect(now: UInt64) {
        tables.removeAll { t, at in
            guard now &- at >= UDSenderGarbage.grace else { return false }
            free(t)
            return true
        }
        maps.removeAll { m, at in
            guard now &- at >= UDSenderGarbage.grace else { return false }
            IdentityMap.destroy(m)
            free(m)
            return true
        }
    }
}

extension Runtime {
    /// The map of `ctx`'s UD QPs whose real QPN is not their virtual one (created on first use).
    /// Control lock.
    private func senderMap(_ ctx: ContextRecord) -> UnsafeMutablePointer<sv_idmap>? {
        if let m = ctx.senderUp { return m }
        guard let m = newIdentityMap() else { return nil }
        ctx.senderUp = m
        return m
    }

    /// A UD QP's real QPN is now `rec.ptr.pointee.real_qpn` (created, or rebuilt; `old`: the real
    /// QPN it had). Control lock.
    func noteUDSender(_ rec: QPRecord, old: UInt32? = nil) {
        guard rec.type == IBV_QPT_UD else { return }
        if let old, let m = rec.context.senderUp { IdentityMap.remove(m, key: old) }
        let real = rec.ptr.pointee.real_qpn
        guard real != rec.virtualQPN, let m = senderMap(rec.context) else { return }
        _ = IdentityMap.set(m, key: real, value: rec.virtualQPN)
        noteUDSendersMoved()
    }

    /// A `ud-moved` claim for `gid` (hex): its UD QPs (virtual, real). Control lock.
    func noteRemoteUDSenders(gid: String, _ qpns: [(UInt32, UInt32)]) {
        guard let m = peers.udSenderMaps[gid] ?? newIdentityMap() else { return }
        peers.udSenderMaps[gid] = m
        var moved = false
        for (v, r) in qpns {
            let k = UDHold(gid: gid, qpn: v)
            if let old = peers.udSenderReal[k] { IdentityMap.remove(m, key: old) }
            peers.udSenderReal[k] = r != v ? r : nil
            if r != v {
                _ = IdentityMap.set(m, key: r, value: v)
                moved = true
            }
        }
        if moved { noteUDSendersMoved() }
        publishUDSenders()
    }

    /// A rebuilt context's real GIDs are not all its virtual ones any more: when the process has UD
    /// QPs, their receives' GRHs are rewritten from now on. Control lock.
    func noteGIDsMoved(_ ctx: ContextRecord) {
        let changed = ctx.ports.contains { $0.gids.values.contains { !sameGID($0.real, $0.virtual) } }
        guard changed, hasUDQPs else { return }
        noteUDSendersMoved()
    }

    /// Whether any context of the process has a UD QP. Control lock.
    var hasUDQPs: Bool { contexts.values.contains { $0.qps.values.contains { $0.type == IBV_QPT_UD } } }

    /// The first UD identity of the process that moved (a UD QP's real QPN, a GID): the table is
    /// published, then every context polls through it. Control lock.
    func noteUDSendersMoved() {
        guard !udSendersMoved else { return }
        udSendersMoved = true
        publishUDSenders()
        for c in contexts.values { markUDSendersMoved(c) }
    }

    /// A UD QP is gone. Control lock.
    func forgetUDSender(_ rec: QPRecord) {
        guard rec.type == IBV_QPT_UD, let m = rec.context.senderUp else { return }
        IdentityMap.remove(m, key: rec.ptr.pointee.real_qpn)
    }

    /// Sets the flag on a context (one just opened, when a UD QP had already moved), and gives its
    /// extended CQs the polls that tell src_qp by sender (one serving kept completions gets them
    /// when it moves back to the real CQ). Control lock.
    func markUDSendersMoved(_ ctx: ContextRecord) {
        guard udSendersMoved else { return }
        let q = ctx.qpnUpMap
        sv_idmap_set_moved(q, sv_idmap_moved(q) | svUDSendersMoved)
        // A released context's real CQs are gone: its rebuild installs the ops. A session open on a
        // CQ now keeps, for the completion it is on, the src_qp its former reader would give.
        guard !ctx.released, !ctx.failed else { return }
        for cq in ctx.cqs.values where cq.ptr.pointee.real_ex != nil && cq.ptr.pointee.session != SV_CQ_SESSION_KEPT.rawValue {
            if cq.ptr.pointee.session == SV_CQ_SESSION_REAL.rawValue, let r = cq.ptr.pointee.real_ex, let read = r.pointee.read_src_qp {
                cq.ptr.pointee.src_qp = svTranslate(ctx.qpnUpMap, read(r))
            }
            svInstallCQExOps(cq.ptr)
        }
    }

    /// A context closes: the table no longer names it; its map goes once no poller can be in it.
    /// Control lock (the context is out of `contexts`).
    func forgetUDSenders(of ctx: ContextRecord) {
        guard let m = ctx.senderUp else { return }
        ctx.senderUp = nil
        publishUDSenders()
        udSenderGarbage.maps.append((m, monotonicNS()))
    }

    /// Publishes the table of the open contexts' real GIDs (their virtual GIDs and maps) and of the
    /// UD peers told (after an open, a close, a rebuild or a claim; nothing while no UD identity
    /// moved). A context's GID that did not change and has no map is left out. Control lock.
    func publishUDSenders() {
        guard udSendersMoved else { return }
        var entries: [(real: ibv_gid, virtual: ibv_gid, map: UnsafeMutablePointer<sv_idmap>?, remote: Bool)] = []
        for c in contexts.values.sorted(by: { $0.sequence < $1.sequence }) where !c.failed {
            for p in c.ports {
                for pair in p.gids.values where !isZeroGID(pair.real) {
                    if c.senderUp != nil || !sameGID(pair.real, pair.virtual) { entries.append((pair.real, pair.virtual, c.senderUp, false)) }
                }
            }
        }
        // A UD peer that moved to another GID sends from that one (Peers/UDAddresses.swift).
        for (k, m) in peers.udSenderMaps.sorted(by: { $0.key < $1.key }) {
            if let g = gidFromHex(k) { entries.append((peers.currentGID(of: g), g, m, true)) }
        }
        let size = MemoryLayout<sv_senders>.size + entries.count * MemoryLayout<sv_sender>.stride
        guard let raw = calloc(1, size) else { return }
        let t = raw.bindMemory(to: sv_senders.self, capacity: 1)
        t.pointee.count = UInt32(entries.count)
        let first = (raw + MemoryLayout<sv_senders>.size).bindMemory(to: sv_sender.self, capacity: entries.count)
        for (i, e) in entries.enumerated() {
            withUnsafeBytes(of: e.real) { g in withUnsafeMutableBytes(of: &first[i].gid) { $0.copyMemory(from: g) } }
            withUnsafeBytes(of: e.virtual) { g in withUnsafeMutableBytes(of: &first[i].vgid) { $0.copyMemory(from: g) } }
            first[i].up = e.map
            first[i].remote = e.remote ? 1 : 0
        }
        let now = monotonicNS()
        if let old = sv_senders_publish(t) { udSenderGarbage.tables.append((UnsafeMutableRawPointer(old), now)) }
        udSenderGarbage.collect(now: now)
    }
}

/// COLD (`svCold*`): before the work rings forget the receives, each UD receive with a GRH is told
/// in the application's terms: its src_qp becomes the sender's virtual QPN (the maps of its source
/// GID, in turn: only moved QPs are in them, so a hit is the answer; an unknown sender's stays as it
/// came), and the GRH's GIDs the virtual ones where they changed (so `ibv_create_ah_from_wc` finds
/// the destination GID among the port's).
@inline(never)
func svColdUDSenders(_ ctx: UnsafeMutablePointer<sv_context>, _ wc: UnsafeMutablePointer<ibv_wc>, _ count: Int) {
    for i in 0..<count {
        let e = wc + i
        guard e.pointee.status == IBV_WC_SUCCESS, e.pointee.opcode == IBV_WC_RECV,
              e.pointee.wc_flags & UInt32(IBV_WC_GRH.rawValue) != 0,
              let q = sv_qp_index_find(ctx, e.pointee.qp_num), q.pointee.qpx.qp_base.qp_type == IBV_QPT_UD,
              let grh = sv_ring_recv_grh(q, e.pointee.wr_id) else { continue }
        let (version, sgid, dgid) = grhGIDs(grh)
        withUnsafeBytes(of: sgid) { sb in
            withUnsafeBytes(of: dgid) { db in
                let s = sb.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let d = db.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let src = e.pointee.src_qp
                var newSource: UnsafeRawPointer? = nil, newDestination: UnsafeRawPointer? = nil
                var cursor: UInt32 = 0
                var translated = false
                while let entry = sv_senders_next(s, &cursor) {
                    if !translated, let map = entry.pointee.up {
                        let v = IdentityMap.translateMoved(map, src)
                        if v != src { e.pointee.src_qp = v; translated = true }
                    }
                    if newSource == nil, memcmp(s, entry.pointer(to: \.vgid)!, 16) != 0 {
                        newSource = UnsafeRawPointer(entry.pointer(to: \.vgid)!)
                    }
                }
                cursor = 0
                while newDestination == nil, let entry = sv_senders_next(d, &cursor) {
                    if entry.pointee.remote == 0, memcmp(d, entry.pointer(to: \.vgid)!, 16) != 0 { newDestination = UnsafeRawPointer(entry.pointer(to: \.vgid)!) }
                }
                if newSource != nil || newDestination != nil {
                    _ = sv_grh_set_gids(UnsafeMutableRawPointer(mutating: grh), version,
                                        newSource?.assumingMemoryBound(to: UInt8.self),
                                        newDestination?.assumingMemoryBound(to: UInt8.self))
                }
            }
        }
    }
}
