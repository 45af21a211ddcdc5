// UD destinations in other processes (DESIGN §4, peer protocol): a UD send names its destination by
// address handle (a GID) and QPN — the QPN the remote application was given, its virtual one. Each
// address handle towards another host's GID points (sv_ah.peer) at a QPN map for that GID, shared
// by every address handle to it; while nothing moved the map is empty and the QPN goes out as is.
//
// A shim whose device is going away (planned detach, or a loss noticed while the device still
// works: rxe keeps running until its contexts are closed) first tells the shims on the hosts its
// address handles point to (`ud-pausing`, to every port of the peer range there) which of its UD
// QPs are moving; they mark those QPNs held (svUDHeld) and their UD sends to them wait in post_send
// (bounded: the announced time, then the old address) instead of going to a device about to
// vanish. It then drains its queues for the quiesce's grace, so a datagram already on its way
// still lands. After the rebuild, once its receives are posted again, it tells them the real QPNs
// behind its UD QPs' virtual ones (`ud-moved`), which ends the hold; then it replays its sends.
// A claim is accepted only from the host the GID names (the request's source address must be that
// GID's address): UD has no connection whose introduction could have agreed a key. A claim that a
// GID moved to another address comes from the new one and needs a proof (UDAddresses.swift).
//
// The same claim tells the receiving side who a UD receive's sender is: its src_qp (the sender's
// new real QPN) is shown as the virtual one (Identity/UDSenders.swift), for every process on the
// host told, whether or not it has an address handle to the mover.
//
// The moving shim tells the hosts it has address handles to, and the hosts whose shims greeted it
// (`ud-hello`, UDAddresses.swift: a process there made an address handle towards this host), so a
// UD service that only receives is found by its senders too. Limits: a sender greets the shims
// running on the host when its application makes the address handle (a process started there
// later is not greeted, and does not tell that sender of its moves); a device gone before its shim
// could announce the move (a NIC pulled: no port left to speak through) loses the datagrams on
// their way to it, as a native path that drops them does.

import CVerbs
import Glibc
import StableVerbsABI

/// A UD destination held while its shim moves: its host's GID (hex) and its virtual QPN.
struct UDHold: Hashable {
    let gid: String
    let qpn: UInt32
}

extension PeerRegistry {
    /// The QPN map of the UD destinations on GID `gid` (created on first use). Control lock.
    func udPeer(gid: ibv_gid) -> UnsafeMutablePointer<sv_peer_ids> {
        let k = gidHex(gid)
        if let ids = udPeers[k] { return ids }
        let ids = allocateZeroed(sv_peer_ids.self)!
        IdentityMap.initialize(ids.pointer(to: \.rkeys)!)
        IdentityMap.initialize(ids.pointer(to: \.qpns)!)
        udPeers[k] = ids
        return ids
    }
}

extension Runtime {
    /// The identities an address handle's UD sends go through: the local peer's, or for a GID of
    /// another host the QPN map the peer protocol keeps for it. Control lock.
    func ahPeerIDs(_ attr: ibv_ah_attr, local: ContextRecord?) -> UnsafeMutablePointer<sv_peer_ids>? {
        if let local { return local.peerIDs }
        guard peers.enabled, attr.is_global != 0, PeerHost(gid: attr.grh.dgid) != nil else { return nil }
        return peers.udPeer(gid: attr.grh.dgid)
    }

    /// The UD announcements of `group` (`verb`): for each host its address handles point to, a
    /// message naming the group's GIDs; `fill` adds the UD QPs. Control lock.
    private func udAnnouncements(_ group: [ContextRecord], verb: String,
                                 fill: (inout PeerMessage, [QPRecord]) -> Void) -> [(PeerHost, PeerMessage)] {
        var out: [(PeerHost, PeerMessage)] = []
        for c in group {
            let ud = c.qps.values.filter { $0.type == IBV_QPT_UD }
            guard !ud.isEmpty else { continue }
            var hosts = Set<PeerHost>()
            for ah in c.ahs.values where ah.peerContext == nil && ah.attr.is_global != 0 {
                if let h = peers.host(of: ah.attr.grh.dgid) { hosts.insert(h) }
            }
            hosts.formUnion(peers.udGreeters)
            guard !hosts.isEmpty else { continue }
            // Only a GID that names a host has UD peers to tell (an InfiniBand link-local one has none).
            let gids = ownedGIDs(c)
            guard !gids.isEmpty else { continue }
            var m = PeerMessage(verb)
            m["gids"] = gids.map(\.virtual).joined(separator: ",")
            m["real"] = gids.map(\.real).joined(separator: ",")
            fill(&m, ud)
            for h in hosts { out.append((h, m)) }
        }
        return out
    }

    /// The GIDs of `c` that name a host (hex, sorted by virtual GID), with the real GID behind each
    /// (the virtual one when the device has none at its index). Control lock.
    private func ownedGIDs(_ c: ContextRecord) -> [(virtual: String, real: String)] {
        var out: [String: String] = [:]
        for port in c.ports {
            for pair in port.gids.values where !isZeroGID(pair.virtual) && PeerHost(gid: pair.virtual) != nil {
                out[gidHex(pair.virtual)] = gidHex(isZeroGID(pair.real) ? pair.virtual : pair.real)
            }
        }
        return out.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Sends each announcement to the ports of the peer range on its host (`ports`: only those,
    /// when given for the host); returns, per announcement, the ports whose shim answered `answer`.
    /// No lock held.
    private func tellUDHosts(_ plan: [(PeerHost, PeerMessage)], answer: String,
                             ports: [PeerHost: [UInt16]] = [:]) -> [[UInt16]] {
        plan.map { host, m in
            let candidates = ports[host] ?? peers.portRange
            return PeerSocket.exchangeAll(host: host, ports: candidates, request: m.encoded(key: nil), timeoutMS: 300)
                .filter { PeerMessage.decode($0.1)?.message.verb == answer }.map(\.0)
        }
    }

    /// Before the release: asks the hosts this group's address handles point to to hold their UD
    /// sends to its UD QPs until it says where they went (or for the planned or the move timeout).
    /// Called by announceMove (only while a port of the group works). No lock held.
    func announceUDPause(_ group: [ContextRecord], planned: Bool) {
        guard peers.enabled else { return }
        let ms = (planned ? peers.plannedTimeoutNS : peers.moveTimeoutNS) / 1_000_000
        let plan: [(PeerHost, PeerMessage)] = withControlLock {
            udAnnouncements(group, verb: "ud-pausing") { m, ud in
                m["qpns"] = ud.map { String($0.virtualQPN) }.joined(separator: ",")
                m["ms"] = String(ms)
                m["commit"] = peers.udCommitment
            }
        }
        var holding: [PeerHost: [UInt16]] = [:]
        for ((host, m), ports) in zip(plan, tellUDHosts(plan, answer: "holding")) {
            holding[host, default: []] += ports
            Log.info("peer: asked \(ports.count) shim(s) on \(host) to hold their UD sends to this process's UD QPs (\(m["qpns"] ?? "")) while it moves")
        }
        // The move's end is told to the shims that hold (the whole range is asked otherwise).
        withControlLock { peers.udHolding = holding.filter { !$0.value.isEmpty }.mapValues { Array(Set($0)).sorted() } }
    }

    /// After a rebuild, once the receives are posted again and before the sends are replayed:
    /// tells the hosts this group's address handles point to where its UD QPs are now (which ends
    /// their hold) — first the shims that hold, when some do. Returns what is left to tell: the
    /// other ports of those hosts' peer ranges (shims started since the pause), for
    /// `announceUDMovesToOthers` once the application runs again. No lock held on entry.
    func announceUDMoves(_ group: [ContextRecord]) -> [(PeerHost, PeerMessage, [UInt16])] {
        guard peers.enabled else { return [] }
        let plan: [(PeerHost, PeerMessage)] = withControlLock {
            // The claim reveals the secret behind the commitment the peers hold (it proves that a
            // GID that moved is this process's) and commits to the next one.
            let next = randomBytes(32)
            let proof = hexString(peers.udSecret), commit = hexString(SHA256Hash.hash(next))
            let plan = udAnnouncements(group, verb: "ud-moved") { m, ud in
                m["qpns"] = ud.map { "\($0.virtualQPN):\($0.ptr.pointee.real_qpn)" }.joined(separator: ",")
                m["proof"] = proof
                m["commit"] = commit
            }
            if !plan.isEmpty { peers.udSecret = next }
            return plan
        }
        let holding: [PeerHost: [UInt16]] = withControlLock {
            defer { peers.udHolding = [:] }
            return peers.udHolding
        }
        var rest: [(PeerHost, PeerMessage, [UInt16])] = []
        let told = tellUDHosts(plan, answer: "noted", ports: holding)
        if !plan.isEmpty {
            // Every host greeted holds a commitment to the old secret for this process's other
            // GIDs too: greeted again, now that the claims (which reveal it) have been answered.
            withControlLock {
                peers.udGreet.formUnion(peers.udGreeted)
                peers.udGreeted = []
            }
            wakePeerService()
        }
        for ((host, m), ports) in zip(plan, told) {
            Log.info("peer: told \(ports.count) shim(s) on \(host) where this process's UD QPs are now (\(m["qpns"] ?? ""))")
            if let asked = holding[host] {
                let others = peers.portRange.filter { !asked.contains($0) }
                if !others.isEmpty { rest.append((host, m, others)) }
            }
        }
        return rest
    }

    /// The rest of `announceUDMoves` (the recovery's thread, the application running again).
    func announceUDMovesToOthers(_ rest: [(PeerHost, PeerMessage, [UInt16])]) {
        for (host, m, ports) in rest {
            let told = tellUDHosts([(host, m)], answer: "noted", ports: [host: ports])[0]
            if !told.isEmpty { Log.info("peer: told \(told.count) more shim(s) on \(host) where this process's UD QPs are now") }
        }
    }

    /// Whether `source` may speak for the host `gid` names (STABLEVERBS_PEER_HOST: the configured
    /// host), or is this host over loopback.
    private func speaks(for gid: ibv_gid, _ source: PeerHost?) -> Bool {
        guard let source else { return false }
        if let o = peers.hostOverride { return o == source || source.isLoopback }
        return PeerHost(gid: gid).map { $0 == source || source.isLoopback && $0.isOwnAddress } ?? false
    }

    /// The GIDs of a UD claim (`gids=`) that the request's source may speak for: those whose
    /// current address (UDAddresses.swift: where they moved) is the source's. Control lock.
    private func claimedGIDs(_ m: PeerMessage, from source: PeerHost?) -> [ibv_gid] {
        let gids = (m["gids"] ?? "").split(separator: ",").compactMap { gidFromHex(String($0)) }
        return gids.filter { speaks(for: peers.currentGID(of: $0), source) }
    }

    /// The GIDs of a `ud-moved` claim it may make, each with the real GID it says is behind it:
    /// one that stays where it is, from its current address; one that moved, from its new address
    /// and with the proof that the claimant is the shim that committed for it. Control lock.
    private func claimedMoves(_ m: PeerMessage, from source: PeerHost?) -> [(virtual: ibv_gid, real: ibv_gid)] {
        let gids = (m["gids"] ?? "").split(separator: ",").map(String.init)
        let reals = (m["real"] ?? "").split(separator: ",").map(String.init)
        var out: [(ibv_gid, ibv_gid)] = []
        for (i, k) in gids.enumerated() {
            guard let v = gidFromHex(k) else { continue }
            let r = i < reals.count ? gidFromHex(reals[i]) ?? v : v
            let stays = sameGID(r, peers.currentGID(of: v))
            if speaks(for: r, source) && (stays || peers.provesOwnership(of: k, m["proof"])) {
                out.append((v, r))
            } else if !stays {
                Log.warn("peer: a claim from \(source.map { "\($0)" } ?? "?") that \(hostsText([v])) moved to \(hostsText([r])) was refused: \(peers.udCommitments[k] == nil ? "its owner never committed to a secret here" : "no proof that it owns that GID")")
            }
        }
        return out
    }

    /// Keeps the commitment a claim carries for the GIDs its source was found to own. Control lock.
    private func keepCommitment(_ m: PeerMessage, for gids: [ibv_gid]) {
        guard let c = m["commit"].flatMap(bytesFromHex), c.count == 32 else { return }
        for g in gids { peers.udCommitments[gidHex(g)] = c }
    }

    private func hostsText(_ gids: [ibv_gid]) -> String {
        gids.map { PeerHost(gid: $0).map { "\($0)" } ?? gidHex($0) }.joined(separator: ",")
    }

    /// Gives the hosts the application's address handles newly point to this process's commitment
    /// for its GIDs (`ud-hello`), so that they can believe a later claim that those GIDs moved.
    /// Peer chores thread; no lock held on entry.
    func greetUDHosts() {
        let plan: [(PeerHost, PeerMessage)] = withControlLock {
            // Only a process with UD QPs has UD identities to move; a few hosts per pass, so that
            // the other chores (introductions of new connections) are not held up behind them.
            guard !peers.udGreet.isEmpty, hasUDQPs else { return [] }
            var m = PeerMessage("ud-hello")
            let gids = Set(contexts.values.filter { !$0.failed }.flatMap { ownedGIDs($0).map(\.virtual) }).sorted()
            guard !gids.isEmpty else { return [] }
            m["gids"] = gids.joined(separator: ",")
            m["commit"] = peers.udCommitment
            let hosts = Array(peers.udGreet.sorted { "\($0)" < "\($1)" }.prefix(8))
            peers.udGreeted.formUnion(hosts)
            peers.udGreet.subtract(hosts)
            return hosts.map { ($0, m) }
        }
        for ((host, _), ports) in zip(plan, tellUDHosts(plan, answer: "noted")) where !ports.isEmpty {
            Log.debug("peer: gave \(ports.count) shim(s) on \(host) this process's commitment for its GIDs")
        }
    }

    /// An address handle towards `attr`'s GID, of another host: that host is greeted (once per
    /// secret). Control lock.
    func noteUDDestination(_ attr: ibv_ah_attr) {
        guard peers.enabled, attr.is_global != 0, let h = peers.host(of: attr.grh.dgid), !peers.udGreeted.contains(h) else { return }
        if peers.udGreet.insert(h).inserted { wakePeerService() }
    }

    /// The service's side of `ud-hello`: the sender's commitment for the GIDs it owns. Control
    /// lock taken here.
    func answerUDHello(_ m: PeerMessage, from source: PeerHost?) -> PeerMessage {
        withControlLock {
            let allowed = claimedGIDs(m, from: source)
            guard !allowed.isEmpty, m["commit"] != nil, let source else { return PeerMessage("denied") }
            keepCommitment(m, for: allowed)
            peers.udGreeters.insert(source)
            return PeerMessage("noted")
        }
    }

    /// The service's side of `ud-pausing`: the sender's UD QPs (virtual QPNs) are about to move;
    /// UD sends to them wait until `ud-moved` or the announced bound (capped by the planned
    /// timeout). Control lock taken here.
    func answerUDPausing(_ m: PeerMessage, from source: PeerHost?) -> PeerMessage {
        let qpns = (m["qpns"] ?? "").split(separator: ",").compactMap { UInt32($0) }.filter { $0 & svUDHeld == 0 }
        guard !qpns.isEmpty, let ms = m.number("ms") else { return PeerMessage("error") }
        let bound = min(ms, peers.plannedTimeoutNS / 1_000_000) &* 1_000_000
        return withControlLock {
            let allowed = claimedGIDs(m, from: source)
            guard !allowed.isEmpty else {
                Log.warn("peer: a ud-pausing claim from \(source.map { "\($0)" } ?? "?") for GIDs it does not own was refused")
                return PeerMessage("denied")
            }
            keepCommitment(m, for: allowed)
            let until = monotonicNS() &+ bound
            for g in allowed {
                let k = gidHex(g)
                guard let ids = peers.udPeers[k] else { continue }
                let map = ids.pointer(to: \.qpns)!
                for v in qpns {
                    let now = IdentityMap.translateMoved(map, v) & ~svUDHeld
                    _ = IdentityMap.set(map, key: v, value: now | svUDHeld)
                    peers.udHolds[UDHold(gid: k, qpn: v)] = until
                }
            }
            Log.info("peer: UD QPs on \(hostsText(allowed)) are moving: UD sends to \(qpns.map { hex($0) }.joined(separator: " ")) wait for their new address (up to \(bound / 1_000_000) ms)")
            return PeerMessage("holding")
        }
    }

    /// Holds whose bound passed without a `ud-moved`: their sends go to the old address again.
    /// Peer chores thread.
    func releaseExpiredUDHolds() {
        let now = monotonicNS()
        withControlLock {
            for (h, until) in peers.udHolds where now >= until {
                peers.udHolds[h] = nil
                guard let ids = peers.udPeers[h.gid] else { continue }
                let map = ids.pointer(to: \.qpns)!
                let old = IdentityMap.translateMoved(map, h.qpn) & ~svUDHeld
                if old == h.qpn { IdentityMap.remove(map, key: h.qpn) } else { _ = IdentityMap.set(map, key: h.qpn, value: old) }
                Log.warn("peer: the UD QP \(hex(h.qpn)) on \(gidFromHex(h.gid).map { hostsText([$0]) } ?? h.gid) did not say where it went in time: UD sends to it go to its old address")
            }
        }
    }

    /// An application thread's UD send to a held destination (svColdUDHeld): waits while the
    /// destination is held and the context is LIVE (the recovery's own replay never waits), at
    /// most the planned timeout; returns the QPN to send to.
    func waitForUDDestination(_ ctx: UnsafeMutablePointer<sv_context>, _ ah: UnsafeMutablePointer<ibv_ah>?,
                              _ qpn: UInt32, _ held: UInt32) -> UInt32 {
        // An application QPN with bit 31 set that nothing maps is the application's own value.
        guard let ah, let peer = svAH(ah).pointee.peer, held != qpn else { return held }
        let map = svQpns(peer)
        let deadline = monotonicNS() &+ peers.plannedTimeoutNS
        var v = held
        while v & svUDHeld != 0 && sv_ctx_state(ctx) == SV_CTX_LIVE.rawValue && monotonicNS() < deadline {
            usleep(200)
            v = IdentityMap.translateMoved(map, qpn)
        }
        return v & ~svUDHeld
    }

    /// The service's side of `ud-moved`: the sender's UD QPs (virtual → real) on GIDs that must
    /// name the sender's own address. Control lock taken here.
    func answerUDMoved(_ m: PeerMessage, from source: PeerHost?) -> PeerMessage {
        let qpns: [(UInt32, UInt32)] = (m["qpns"] ?? "").split(separator: ",").compactMap { p in
            let kv = p.split(separator: ":")
            guard kv.count == 2, let v = UInt32(kv[0]), let r = UInt32(kv[1]) else { return nil }
            return (v, r)
        }
        guard !qpns.isEmpty else { return PeerMessage("error") }
        return withControlLock {
            let moves = claimedMoves(m, from: source)
            guard !moves.isEmpty else {
                Log.warn("peer: a ud-moved claim from \(source.map { "\($0)" } ?? "?") for GIDs it does not own was refused")
                return PeerMessage("denied")
            }
            let allowed = moves.map(\.virtual)
            keepCommitment(m, for: allowed)
            noteMovedGIDs(moves)
            for g in allowed { noteRemoteUDSenders(gid: gidHex(g), qpns) }
            for g in allowed {
                let k = gidHex(g)
                for (v, _) in qpns { peers.udHolds[UDHold(gid: k, qpn: v)] = nil }
                guard let ids = peers.udPeers[k] else { continue }
                let map = ids.pointer(to: \.qpns)!
                for (v, r) in qpns {
                    if v == r { IdentityMap.remove(map, key: v) } else { _ = IdentityMap.set(map, key: v, value: r) }
                }
            }
            let away = moves.filter { !sameGID($0.virtual, $0.real) }.map(\.real)
            Log.info("peer: UD QPs on \(hostsText(allowed)) moved: \(qpns.map { "\(hex($0.0))→\(hex($0.1))" }.joined(separator: " "))\(away.isEmpty ? "" : " (now at \(hostsText(away)))")")
            return PeerMessage("noted")
        }
    }
}

extension PeerHost {
    /// The address a connection came from (IPv4 clients of the dual-stack listener arrive
    /// IPv4-mapped).
    init?(peerOf fd: Int32) {
        var sa = sockaddr_in6()
        var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let rc = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } }
        guard rc == 0, sa.sin6_family == sa_family_t(AF_INET6) else { return nil }
        self.init(address: withUnsafeBytes(of: &sa.sin6_addr) { Array($0) })
    }

    /// 127.0.0.1 or ::1.
    var isLoopback: Bool {
        if let v4 { return v4 == UInt32(0x7f00_0001).bigEndian }
        return v6 == Array(repeating: 0, count: 15) + [1]
    }

    /// An address of this host (a request over loopback may speak for it).
    var isOwnAddress: Bool {
        var fd: Int32 = -1
        fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withSockaddr(port: 0) { sa, len in bind(fd, sa, len) == 0 }
    }
}
