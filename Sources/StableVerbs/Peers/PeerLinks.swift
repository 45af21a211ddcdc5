// Links: the RC connections whose remote end is a QP of another process, and what this shim knows
// of the shim that owns that end (DESIGN §4, peer protocol).
//
// A link is made when the application moves an RC QP to RTR towards a destination outside this
// process. Of the two ends, the one with the lower (virtual GID, virtual LID, virtual QPN)
// introduces itself: it asks the services listening on the peer's host (the address inside the
// destination GID, or where the GID names none, the hosts of the program's own connections:
// PeerDiscovery.swift; ports STABLEVERBS_PEER_PORT ... +STABLEVERBS_PEER_PORTS-1) which of them
// owns the destination QPN, and the owner answers. Each side brings a nonce; the link key derived
// from both authenticates every later message about the connection: a claim that it moved is
// accepted only from the shim that took part in the introduction. A destination without a shim
// (no service answers) leaves the link unmanaged: a move breaks that connection as it would
// natively.

import CVerbs
import Glibc
import StableVerbsABI

final class PeerLink {
    enum State: String {
        /// Waiting for the introduction (sent by us, or expected from the peer).
        case introducing
        /// Both shims know the link and share its key.
        case ready
        /// This end moved (rebuilt, the QP waits in INIT) and the reconnection is under way.
        case awaiting
        /// No shim owns the remote end, or the peer never came back: nothing more is done.
        case unmanaged
        /// One of the applications ended the connection (its QP moved to the error state, reset or
        /// destroyed; LinkClosing.swift): its error completions are its own and nothing more is done.
        case closed
    }

    unowned let qp: QPRecord
    /// The remote end as the application names it (virtual values).
    let remoteQPN: UInt32
    let remoteGID: ibv_gid
    /// This end's virtual GID (the one its path uses).
    let localGID: ibv_gid
    /// The LIDs of a connection by LID only (both GIDs zero): this port's virtual LID, the
    /// destination's.
    var localLID: UInt16 = 0
    var remoteLID: UInt16 = 0
    /// Where to look for the peer's shim when its address names no host: the hosts of this
    /// process's connections when the application connected the QP (its exchange socket may be
    /// closed by the time the introduction is made).
    var candidates: [PeerHost] = []
    /// Where the peer's shim is: the host its GID names, and where it moved to since (Reconnect.swift).
    var host: PeerHost?
    var state: State = .introducing
    var servicePort: UInt16 = 0
    var key: [UInt8] = []
    /// The remote end's current real identities.
    var remoteRealQPN: UInt32
    var remoteRealGID: ibv_gid
    var remoteRealLID: UInt16 = 0
    /// The remote shim's rkeys (virtual → real) for the data path (q->peer), and QPNs.
    let ids: UnsafeMutablePointer<sv_peer_ids>
    /// Error completions of this QP held back since (ns): the peer may be moving.
    var suspectSince: UInt64?
    /// The status of the first completion held back: what the application gets first if the
    /// connection fails after all.
    var heldStatus = IBV_WC_RETRY_EXC_ERR
    /// The shim completed the QP's outstanding work itself (failLink): error completions the real
    /// CQ still returns for that work are duplicates.
    var flushed = false
    /// The peer announced a planned detach: wait for it until then (ns) before giving up.
    var pausedUntil: UInt64 = 0
    var introduceAttempts = 0
    var nextAttempt: UInt64 = 0

    init(qp: QPRecord, remoteQPN: UInt32, remoteGID: ibv_gid, localGID: ibv_gid, host: PeerHost?) {
        self.qp = qp
        self.remoteQPN = remoteQPN
        self.remoteGID = remoteGID
        self.localGID = localGID
        self.host = host
        self.remoteRealQPN = remoteQPN
        self.remoteRealGID = remoteGID
        ids = allocateZeroed(sv_peer_ids.self)!
        IdentityMap.initialize(ids.pointer(to: \.rkeys)!)
        IdentityMap.initialize(ids.pointer(to: \.qpns)!)
    }

    /// The lower end introduces itself: by GID, then (by LID only) LID, then QPN.
    var introducer: Bool {
        let a = gidHex(localGID), b = gidHex(remoteGID)
        if a != b { return a < b }
        return localLID != remoteLID ? localLID < remoteLID : qp.virtualQPN < remoteQPN
    }

    var label: String { "\(hex(qp.virtualQPN))↔\(host.map { "\($0)" } ?? "?")/\(hex(remoteQPN))" }

    func free() {
        IdentityMap.destroy(ids.pointer(to: \.rkeys)!)
        IdentityMap.destroy(ids.pointer(to: \.qpns)!)
        ids.deallocate()
    }
}

/// The peer protocol's state in this process (control lock unless noted).
final class PeerRegistry {
    var links: [UInt: PeerLink] = [:]     // by QP (key(sv_qp))
    /// QPN maps of UD destinations on other hosts, by GID (UDPeers.swift); never freed (address
    /// handles of any generation may point at them).
    var udPeers: [String: UnsafeMutablePointer<sv_peer_ids>] = [:]
    /// UD destinations whose shim announced it is moving (`ud-pausing`): until when sends to them
    /// wait for their new QPN (UDPeers.swift).
    var udHolds: [UDHold: UInt64] = [:]
    /// The other side: the peer-service ports, by host, whose shims hold their UD sends to this
    /// process while it moves (set by `ud-pausing`, told and cleared by `ud-moved`).
    var udHolding: [PeerHost: [UInt16]] = [:]
    /// UD senders in other processes that moved (`ud-moved`), by GID: their real QPN → virtual
    /// QPN, for the src_qp of receives from them (Identity/UDSenders.swift); never freed. And the
    /// real QPN each of them was last said to have, by (GID, virtual QPN).
    var udSenderMaps: [String: UnsafeMutablePointer<sv_idmap>] = [:]
    var udSenderReal: [UDHold: UInt32] = [:]
    /// GIDs of other hosts' UD peers that moved to another address (virtual GID hex → the real
    /// GID now), the commitments their owners gave (GID hex → SHA-256 of the owner's secret), this
    /// process's own secret, the hosts still to be given its commitment (`ud-hello`) and those
    /// given it, and the real AHs replaced towards moved GIDs (UDAddresses.swift).
    var udMovedGIDs: [String: ibv_gid] = [:]
    var udCommitments: [String: [UInt8]] = [:]
    var udSecret: [UInt8] = randomBytes(32)
    var udGreet: Set<PeerHost> = []
    var udGreeted: Set<PeerHost> = []
    /// The hosts whose shims greeted this one (`ud-hello`): their processes have address handles
    /// towards this host, so they are told of this process's UD moves even where it has no
    /// address handle towards them (a receive-only UD service).
    var udGreeters: Set<PeerHost> = []
    var retiredAHs = RetiredAddressHandles()
    /// `closed` notices for the peers of connections the application ended (LinkClosing.swift).
    var closing = CloseNotices()
    var serviceStarted = false
    var listenFD: Int32 = -1
    var port: UInt16 = 0
    var wakeFD: Int32 = -1
    let basePort: UInt16
    let portCount: UInt16
    /// The peer-service ports every shim may listen on (STABLEVERBS_PEER_PORT, _PORTS).
    var portRange: [UInt16] { (0..<portCount).map { basePort &+ $0 } }
    let timeoutNS: UInt64
    let hostOverride: PeerHost?
    /// Where a peer shim is looked for (PeerDiscovery.swift).
    let finding: Finding
    let enabled: Bool
    /// How long a peer that announced a planned detach is waited for.
    let plannedTimeoutNS: UInt64
    /// How long a peer that announced an unplanned move is waited for: it noticed its device
    /// going while a port still worked and said so; the device's return (a NIC replaced, a VF
    /// re-attached) takes longer than a silent peer is given.
    let moveTimeoutNS: UInt64

    init() {
        basePort = UInt16(Configuration.environment("STABLEVERBS_PEER_PORT").flatMap { UInt16($0) } ?? 18_800)
        portCount = max(1, Configuration.environment("STABLEVERBS_PEER_PORTS").flatMap { UInt16($0) } ?? 16)
        timeoutNS = (Configuration.environment("STABLEVERBS_PEER_TIMEOUT_MS").flatMap { UInt64($0) } ?? 10_000) * 1_000_000
        hostOverride = Configuration.environment("STABLEVERBS_PEER_HOST").flatMap { PeerHost(text: $0) }
        finding = PeerRegistry.finding()
        enabled = Configuration.environment("STABLEVERBS_PEER") != "off"
        plannedTimeoutNS = (Configuration.environment("STABLEVERBS_PEER_PLANNED_TIMEOUT_MS").flatMap { UInt64($0) } ?? 600_000) * 1_000_000
        moveTimeoutNS = (Configuration.environment("STABLEVERBS_PEER_MOVE_TIMEOUT_MS").flatMap { UInt64($0) } ?? 30_000) * 1_000_000
    }
}

extension Runtime {
    /// modify_qp to RTR towards a destination outside the process: make (or renew) the QP's link
    /// and let the service thread introduce it. Control lock.
    func noteExternalConnection(_ rec: QPRecord, av: ibv_ah_attr, destQPN: UInt32) {
        guard peers.enabled, rec.type == IBV_QPT_RC else { return }
        var localGID = ibv_gid(), remoteGID = ibv_gid()
        if av.is_global != 0 {
            remoteGID = av.grh.dgid
            if let port = rec.context.port(av.port_num), let pair = port.gids[Int32(av.grh.sgid_index)] {
                localGID = pair.virtual
            }
        }
        let host = peers.hostOverride ?? (peers.gidNamesHost(remoteGID) ? peers.host(of: remoteGID) : nil)
        if let old = peers.links[key(rec.ptr)] {
            if old.remoteQPN == destQPN && sameGID(old.remoteGID, remoteGID) && old.remoteLID == (av.is_global != 0 ? 0 : av.dlid) { return }
            dropLink(rec)
        }
        let link = PeerLink(qp: rec, remoteQPN: destQPN, remoteGID: remoteGID, localGID: localGID, host: host)
        if av.is_global == 0 {
            link.localLID = rec.context.port(av.port_num)?.virtualLID ?? 0
            link.remoteLID = av.dlid
        }
        if host == nil {
            // The introducer looks for the peer's shim on the hosts of this process's connections
            // (PeerDiscovery.swift); the other end learns its host from the introducer's `hello`.
            if link.introducer { link.candidates = ConnectionHosts.current() }
            Log.info("peer: QP \(hex(rec.virtualQPN)) connects to \(hex(destQPN)) by \(av.is_global != 0 ? "a GID that names no host" : "LID only (LID \(hex(UInt32(av.dlid))))"): \(link.introducer ? "its shim is looked for on the hosts of this process's TCP connections" : "waiting for the peer's shim to introduce itself")")
        }
        peers.links[key(rec.ptr)] = link
        startPeerService()
        wakePeerService()
    }

    /// The QP is destroyed or reset, or connected elsewhere: its link goes, and the peer shim is
    /// told that the connection ended (`tellPeer`).
    func dropLink(_ rec: QPRecord, tellPeer: Bool = true) {
        guard let link = peers.links.removeValue(forKey: key(rec.ptr)) else { return }
        if tellPeer { noticeClosed(link) }
        if rec.ptr.pointee.peer == link.ids { storePeer(rec.ptr.pointer(to: \.peer)!, nil) }
        link.free()
    }

    func link(of rec: QPRecord) -> PeerLink? { peers.links[key(rec.ptr)] }

    /// The local QP a peer names: virtual QPN `qpn` on a port whose virtual GID is `gid`.
    func localQP(qpn: UInt32, gid: ibv_gid) -> QPRecord? {
        for c in orderedContexts() {
            guard c.qpns.contains(qpn) else { continue }
            let hasGID = isZeroGID(gid) || c.ports.contains { $0.virtualGIDIndex(of: gid) != nil }
            guard hasGID else { continue }
            if let q = c.qps.values.first(where: { $0.virtualQPN == qpn }) { return q }
        }
        return nil
    }

    /// Introduces the links this end is responsible for (service thread; no lock held on entry).
    func introducePendingLinks() {
        let now = monotonicNS()
        let todo: [(PeerLink, PeerMessage, PeerHost?, [UInt8])] = withControlLock {
            peers.links.values.compactMap { l in
                guard l.state == .introducing, l.introducer, now >= l.nextAttempt else { return nil }
                var m = PeerMessage("hello")
                m["from_qpn"] = String(l.qp.virtualQPN)
                m["from_gid"] = gidHex(l.localGID)
                m["to_qpn"] = String(l.remoteQPN)
                m["to_gid"] = gidHex(l.remoteGID)
                if l.remoteLID != 0 {
                    m["from_lid"] = String(l.localLID)
                    m["to_lid"] = String(l.remoteLID)
                }
                let nonce = randomBytes(16)
                m["nonce"] = hexString(nonce)
                m["port"] = String(peers.port)
                return (l, m, l.host, nonce)
            }
        }
        // Links whose address names no host: the hosts of this process's connections when the
        // link was made, then those of now (read once), all asked together.
        let hostless = todo.filter { $0.2 == nil }
        let found = hostless.isEmpty ? [] : ConnectionHosts.distinct(hostless.flatMap { $0.0.candidates } + ConnectionHosts.current())
        // One exchange per port of each host asked, all at once, carrying the hellos of every
        // link to be found there (a batch when several): a job's many connections to one host, or
        // all those whose address names no host, cost one round.
        var groups = groupedByProcess(todo.filter { $0.2 != nil }) { PeerProcess(host: $0.2, port: 0) }
            .map { (hosts: [$0.0.host!], items: $0.1) }
        if !hostless.isEmpty { groups.append((hosts: found, items: hostless)) }
        for (hosts, items) in groups {
            var introduced = Set<ObjectIdentifier>()
            let targets = hosts.flatMap { h in peers.portRange.map { PeerTarget(host: h, port: $0) } }
            let request = PeerBatch.request(items.map { $0.1.encoded(key: nil) })
            // The first owner in the hosts' order (only the shim with the destination QPN on a
            // port with its GID or LID answers `owner`).
            for (t, reply) in PeerSocket.exchangeAll(targets: targets, request: request, timeoutMS: 300) {
                guard let answers = PeerBatch.answers(reply, count: items.count) else { continue }
                for ((link, _, host, nonce), d) in zip(items, answers) where !introduced.contains(ObjectIdentifier(link)) {
                    guard let d, d.message.verb == "owner", let n2 = d.message["nonce"].flatMap(bytesFromHex) else { continue }
                    withControlLock {
                        guard peers.links[key(link.qp.ptr)] === link else { return }
                        link.key = linkKey(nonce, n2, "\(link.qp.virtualQPN)/\(link.remoteQPN)")
                        link.host = t.host
                        link.servicePort = t.port
                        link.state = .ready
                        storePeer(link.qp.ptr.pointer(to: \.peer)!, link.ids)
                    }
                    introduced.insert(ObjectIdentifier(link))
                    Log.info("peer: link \(link.label) introduced (peer shim on port \(t.port)\(host == nil ? " of \(t.host), found among the \(hosts.count) host(s) of this process's and its namespace's connections" : ""))")
                }
            }
            for (link, _, host, _) in items where !introduced.contains(ObjectIdentifier(link)) {
                withControlLock {
                    link.introduceAttempts += 1
                    if link.introduceAttempts >= 20 {
                        link.state = .unmanaged
                        let asked = host == nil ? " (asked the hosts of this process's and its namespace's connections: \(hosts.isEmpty ? "none" : hosts.map { "\($0)" }.joined(separator: ", ")); STABLEVERBS_PEER_HOST names the peer's host)" : ""
                        Log.info("peer: no shim owns \(link.label)\(asked): the connection is unmanaged (it does not survive a move)")
                    } else {
                        link.nextAttempt = monotonicNS() &+ UInt64(min(1000, 50 << min(link.introduceAttempts, 5))) * 1_000_000
                    }
                }
            }
        }
    }

    /// The service's side of an introduction: do we own `to_qpn`? Control lock taken here.
    func answerHello(_ m: PeerMessage, port: UInt16, from source: PeerHost?) -> PeerMessage {
        guard let toQPN = m.number("to_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let fromQPN = m.number("from_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let toGID = m["to_gid"].flatMap(gidFromHex), let fromGID = m["from_gid"].flatMap(gidFromHex),
              let n1 = m["nonce"].flatMap(bytesFromHex) else { return PeerMessage("error") }
        // By LID only: the destination's LID too (QPNs repeat from host to host; a LID is one port's).
        let toLID = m.number("to_lid").map { UInt16(truncatingIfNeeded: $0) } ?? 0
        let fromLID = m.number("from_lid").map { UInt16(truncatingIfNeeded: $0) } ?? 0
        return withControlLock {
            guard let q = localQP(qpn: toQPN, gid: toGID),
                  toLID == 0 || q.context.ports.contains(where: { $0.virtualLID == toLID }) else { return PeerMessage("not-mine") }
            let link: PeerLink
            var again = false  // a hello for a link already introduced (the peer retried: its answer came late)
            if let l = peers.links[key(q.ptr)], l.remoteQPN == fromQPN, sameGID(l.remoteGID, fromGID), l.remoteLID == fromLID {
                link = l
                again = l.state == .ready
            } else {
                // Introduced before the application moved this end to RTR: the link starts here.
                if peers.links[key(q.ptr)] != nil { dropLink(q, tellPeer: false) }
                link = PeerLink(qp: q, remoteQPN: fromQPN, remoteGID: fromGID, localGID: toGID,
                                host: peers.hostOverride ?? (peers.gidNamesHost(fromGID) ? PeerHost(gid: fromGID) : nil))
                link.localLID = toLID
                link.remoteLID = fromLID
                peers.links[key(q.ptr)] = link
            }
            // An address that names no host: the introducer's shim is where its `hello` came from.
            if link.host == nil { link.host = source }
            let n2 = randomBytes(16)
            link.key = linkKey(n1, n2, "\(fromQPN)/\(toQPN)")
            link.servicePort = UInt16(truncatingIfNeeded: m.number("port") ?? 0)
            link.state = .ready
            storePeer(q.ptr.pointer(to: \.peer)!, link.ids)
            var r = PeerMessage("owner")
            r["nonce"] = hexString(n2)
            r["port"] = String(port)
            Log.info("peer: link \(link.label) introduced by the peer\(again ? " again (a retried hello: the new key replaces the last)" : "")")
            return r
        }
    }
}
