// Local peers: the remote end of a connection, or the target of an address handle, that is a port
// of one of this process's own virtual contexts. Those are the only remote identities the shim can
// translate before the peer protocol exists: their virtual LID/GID/QPN/rkeys are known here.
//
// Matching works on virtual values (what the application passes): a global route matches a port
// whose GID table holds the destination GID; a LID route matches a port's virtual LID. For a
// connection (a destination QPN is known) the matching context must also own that QPN: a process on
// the same port (same LID/GID) is not a local peer. Address handles have no QPN and match by
// address alone.

import CVerbs
import StableVerbsABI

extension Runtime {
    /// The local context that owns the destination of `ah`, if any.
    func localPeer(for ah: ibv_ah_attr, destQPN: UInt32?) -> ContextRecord? {
        var matches: [ContextRecord] = []
        for c in orderedContexts() {
            let hit = c.ports.contains { p in
                if ah.is_global != 0, !isZeroGID(ah.grh.dgid) {
                    return p.virtualGIDIndex(of: ah.grh.dgid) != nil
                }
                return ah.dlid != 0 && p.virtualLID == ah.dlid
            }
            if hit { matches.append(c) }
        }
        // A connection names its remote QP: the peer is local only if one of the matching contexts
        // owns that QPN (another process on the same port shares the address but not the QPN).
        if let q = destQPN { return matches.first { $0.qpns.contains(q) } }
        return matches.first
    }

    /// Virtual → real destination address through a local peer's current identities.
    func translateDown(_ ah: inout ibv_ah_attr, peer: ContextRecord) {
        if ah.is_global != 0 {
            for p in peer.ports {
                if let i = p.virtualGIDIndex(of: ah.grh.dgid), let pair = p.gids[i] {
                    ah.grh.dgid = pair.real
                    break
                }
            }
        }
        if ah.dlid != 0 {
            ah.dlid = UInt16(truncatingIfNeeded: IdentityMap.translate(peer.lidDownMap, UInt32(ah.dlid)))
        }
    }

    /// Real → virtual address as a completion or the lower library reports it (init_ah_from_wc):
    /// any local port whose real LID/GID it is.
    func translateUp(_ ah: inout ibv_ah_attr) {
        var gidDone = ah.is_global == 0
        var lidDone = ah.dlid == 0
        for c in orderedContexts() {
            for p in c.ports {
                if !gidDone, let i = p.realGIDIndex(of: ah.grh.dgid), let pair = p.gids[i] {
                    ah.grh.dgid = pair.virtual
                    gidDone = true
                }
                if !lidDone, p.realLID == ah.dlid {
                    ah.dlid = p.virtualLID
                    lidDone = true
                }
            }
        }
    }

    /// A virtual LID of any local port → its real LID (unchanged when not local).
    func realLID(ofVirtual lid: UInt16) -> UInt16 {
        for c in orderedContexts() {
            for p in c.ports where lid != 0 && p.virtualLID == lid { return p.realLID }
        }
        return lid
    }
}
