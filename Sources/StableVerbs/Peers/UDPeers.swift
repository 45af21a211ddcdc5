// UD destinations in other processes (DESIGN §4, peer protocol): a UD send names its destination by
// address handle (a GID) and QPN — the QPN the remote application was given, its virtual one. Each
// address handle towards another host's GID points (sv_ah.peer) at a QPN map for that GID, shared
// by every address handle to it; while nothing moved the map is empty and the QPN goes out as is.
//
// After a move, the shim that moved tells the shims on the hosts its address handles point to
// (`ud-moved`, to every port of the peer range there) the real QPNs behind its UD QPs' virtual ones,
// before it replays its work: their UD sends to it then reach its new QPs. A claim is accepted
// only from the host the GID names (the request's source address must be that GID's address): UD
// has no connection whose introduction could have agreed a key.
//
// Limits: the moved shim only tells hosts it has address handles to (a UD server that only answers
// the source of each request, without an address handle of its own, is not told); a UD message in
// flight towards a device while it goes away is lost, as on a native path that drops it.

import CVerbs
import Glibc
import StableVerbsABI

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

    /// After a rebuild, before the replay: tells the hosts this group's address handles point to
    /// where its UD QPs are now. No lock held on entry.
    func announceUDMoves(_ group: [ContextRecord]) {
        guard peers.enabled else { return }
        let plan: [(PeerHost, PeerMessage)] = withControlLock {
            var out: [(PeerHost, PeerMessage)] = []
            for c in group {
                let ud = c.qps.values.filter { $0.type == IBV_QPT_UD }
                guard !ud.isEmpty else { continue }
                var hosts = Set<PeerHost>()
                for ah in c.ahs.values where ah.peerContext == nil && ah.attr.is_global != 0 {
                    if let h = peers.hostOverride ?? PeerHost(gid: ah.attr.grh.dgid) { hosts.insert(h) }
                }
                guard !hosts.isEmpty else { continue }
                var m = PeerMessage("ud-moved")
                var gids: [String] = []
                for port in c.ports {
                    for pair in port.gids.values where !isZeroGID(pair.virtual) && PeerHost(gid: pair.virtual) != nil {
                        gids.append(gidHex(pair.virtual))
                    }
                }
                m["gids"] = Set(gids).sorted().joined(separator: ",")
                m["qpns"] = ud.map { "\($0.virtualQPN):\($0.ptr.pointee.real_qpn)" }.joined(separator: ",")
                for h in hosts { out.append((h, m)) }
            }
            return out
        }
        for (host, m) in plan {
            var told = 0
            for i in 0..<peers.portCount {
                guard let reply = PeerSocket.exchange(host: host, port: peers.basePort &+ i, request: m.encoded(key: nil), timeoutMS: 300),
                      PeerMessage.decode(reply)?.message.verb == "noted" else { continue }
                told += 1
            }
            Log.info("peer: told \(told) shim(s) on \(host) where this process's UD QPs are now (\(m["qpns"] ?? ""))")
        }
    }

    /// The service's side of `ud-moved`: the sender's UD QPs (virtual → real) on GIDs that must
    /// name the sender's own address. Control lock taken here.
    func answerUDMoved(_ m: PeerMessage, from source: PeerHost?) -> PeerMessage {
        let gids = (m["gids"] ?? "").split(separator: ",").compactMap { gidFromHex(String($0)) }
        let qpns: [(UInt32, UInt32)] = (m["qpns"] ?? "").split(separator: ",").compactMap { p in
            let kv = p.split(separator: ":")
            guard kv.count == 2, let v = UInt32(kv[0]), let r = UInt32(kv[1]) else { return nil }
            return (v, r)
        }
        guard !gids.isEmpty, !qpns.isEmpty else { return PeerMessage("error") }
        // Only the host a GID names may speak for it (STABLEVERBS_PEER_HOST: the configured host).
        let allowed = gids.filter { g in
            guard let source else { return false }
            if let o = peers.hostOverride { return o == source || source.isLoopback }
            return PeerHost(gid: g).map { $0 == source || source.isLoopback && $0.isOwnAddress } ?? false
        }
        guard !allowed.isEmpty else {
            Log.warn("peer: a ud-moved claim from \(source.map { "\($0)" } ?? "?") for GIDs it does not own was refused")
            return PeerMessage("denied")
        }
        return withControlLock {
            for g in allowed {
                guard let ids = peers.udPeers[gidHex(g)] else { continue }
                let map = ids.pointer(to: \.qpns)!
                for (v, r) in qpns {
                    if v == r { IdentityMap.remove(map, key: v) } else { _ = IdentityMap.set(map, key: v, value: r) }
                }
            }
            Log.info("peer: UD QPs on \(allowed.map { PeerHost(gid: $0).map { "\($0)" } ?? "?" }.joined(separator: ",")) moved: \(qpns.map { "\(hex($0.0))→\(hex($0.1))" }.joined(separator: " "))")
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
