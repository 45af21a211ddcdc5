// UD peers whose address changed with their move (DESIGN §4, peer protocol): a process on another
// host whose device came back under another GID (a NIC re-addressed, a VF on another port) says so
// in its `ud-moved` claim (`real=`: the real GID now behind each virtual GID it names). Every shim
// told then
//   - sends to the new GID: the real address handles of the application's AHs towards the old
//     GID are made again towards the new one (the application's AH, its virtual GID and the QPNs
//     it sends to are unchanged); the replaced real AH is destroyed a grace later, since a post on
//     another thread may still be reading it (RetiredAddressHandles);
//   - shows receives from the new GID as from the old one: the senders' table names the sender's
//     map under its real GID, with the old GID as the virtual one (Identity/UDSenders.swift), so
//     src_qp and the GRH's source are the ones the application knows;
//   - finds the mover's shim at its new address (its next announcements come from there).
// An RC peer that reconnects from another GID (its `moved` claim is signed with the connection's
// key) updates the same table (Reconnect.swift): its link's host, new connections towards its old
// GID and UD address handles towards it follow it too.
//
// Ownership: a claim that a GID moved comes from the new address, not from the host the old GID
// names, so the source address proves nothing. Each shim keeps a secret and hands out its hash (a
// commitment) with the GIDs it owns, from the address they name: in `ud-pausing` before it moves
// and in `ud-hello` when the application makes its first address handle towards a host. The claim
// that a GID moved reveals the secret (`proof=`), which only the committer knows, and commits to the
// next one (`commit=`). A claim that a GID moved without a proof matching its stored commitment is
// refused for that GID.
//
// Limits: a GID is the address of a host here (IPv4-mapped or global IPv6, as the peer protocol
// needs to reach a host); an IB link-local GID has no host to tell, and a LID is never re-mapped.

import CVerbs
import Glibc
import StableVerbsABI

/// A real address handle replaced while the application may still be posting through it: it is
/// destroyed once no post can still be reading it (`grace`), if its context still runs on the
/// device it was made on.
struct RetiredAddressHandles {
    static let grace: UInt64 = 5_000_000_000
    var pending: [(ah: UnsafeMutablePointer<ibv_ah>, context: ContextRecord, device: UnsafeMutablePointer<ibv_context>, at: UInt64)] = []
}

extension PeerRegistry {
    /// The GID a virtual GID of another host is really at now (itself when it did not move).
    func currentGID(of gid: ibv_gid) -> ibv_gid {
        udMovedGIDs[gidHex(gid)] ?? gid
    }

    /// The host whose shim speaks for `gid` now (its moved address when it moved).
    func host(of gid: ibv_gid) -> PeerHost? {
        hostOverride ?? PeerHost(gid: currentGID(of: gid))
    }

    /// This process's commitment to its current secret (sent with the GIDs it owns).
    var udCommitment: String { hexString(SHA256Hash.hash(udSecret)) }

    /// Whether `proof` is the secret behind the commitment stored for `gid`.
    func provesOwnership(of gid: String, _ proof: String?) -> Bool {
        guard let stored = udCommitments[gid], let proof, let secret = bytesFromHex(proof) else { return false }
        let h = SHA256Hash.hash(secret)
        return h.count == stored.count && zip(h, stored).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

extension Runtime {
    /// `gids` (hex) now really at `real` (GIDs of another host; itself: back at its own address).
    /// Makes the real AHs towards them again. Control lock.
    func noteMovedGIDs(_ moves: [(virtual: ibv_gid, real: ibv_gid)]) {
        var changed: [String] = []
        for (v, r) in moves {
            let k = gidHex(v)
            let before = peers.currentGID(of: v)
            peers.udMovedGIDs[k] = sameGID(v, r) ? nil : r
            if !sameGID(before, r) { changed.append(k) }
        }
        guard !changed.isEmpty else { return }
        let now = monotonicNS()
        var remade = 0, failed = 0
        for c in orderedContexts() where !c.released && !c.failed {
            for ah in c.ahs.values where ah.peerContext == nil && ah.attr.is_global != 0 && changed.contains(gidHex(ah.attr.grh.dgid)) {
                let (made, _) = makeRealAH(ah.pd.real, ah.attr)
                guard let n = made else {
                    failed += 1
                    Log.error("peer: an address handle towards \(gidHex(ah.attr.grh.dgid)) could not be made towards its new GID (errno \(currentErrno())): its sends still go to the old one")
                    continue
                }
                peers.retiredAHs.pending.append((ah.real, c, c.real, now))
                ah.install(n)
                remade += 1
            }
        }
        // UD receives from the new GID show the old one from now on (a process without UD QPs
        // keeps its polls as they were).
        if hasUDQPs { noteUDSendersMoved() }
        publishUDSenders()
        Log.info("peer: \(changed.count) GID(s) of a peer moved: \(remade) address handle(s) made towards the new address\(failed > 0 ? ", \(failed) not" : "")")
    }

    /// Destroys the replaced real AHs whose grace passed (peer chores thread).
    func destroyRetiredAHs() {
        let now = monotonicNS()
        withControlLock {
            peers.retiredAHs.pending.removeAll { e in
                guard now &- e.at >= RetiredAddressHandles.grace else { return false }
                // A context closed, released or rebuilt since: its device took the AH with it.
                let c = e.context
                if contexts.values.contains(where: { $0 === c }), !c.released, !c.failed, c.ptr.pointee.real == e.device {
                    _ = ops.destroy_ah?(e.ah)
                }
                return true
            }
        }
    }
}
