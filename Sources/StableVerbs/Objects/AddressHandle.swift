// Address handles: the attributes are translated to a local peer's real address when the
// destination is a port of one of this process's contexts; the AH's `peer` then lets the data path
// translate the remote QPN of UD sends through it.

import CVerbs
import Glibc
import StableVerbsABI

final class AHRecord {
    let ptr: UnsafeMutablePointer<sv_ah>
    let sequence: UInt64
    unowned let context: ContextRecord
    let pd: PDRecord
    /// The attributes as the application gave them (virtual destination).
    let attr: ibv_ah_attr
    var peerContext: ContextRecord?

    init(ptr: UnsafeMutablePointer<sv_ah>, sequence: UInt64, context: ContextRecord, pd: PDRecord, attr: ibv_ah_attr) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
        self.pd = pd
        self.attr = attr
    }

    var publicAH: UnsafeMutablePointer<ibv_ah> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_ah.self) }
    var real: UnsafeMutablePointer<ibv_ah> { ptr.pointee.real! }

    /// Puts `real` behind the application's AH (made again: a rebuild, a peer that moved).
    func install(_ real: UnsafeMutablePointer<ibv_ah>) {
        ptr.pointee.real = real
        ptr.pointee.ah.handle = real.pointee.handle
    }
}

func ahRecord(_ ah: UnsafeMutablePointer<ibv_ah>) -> AHRecord {
    record(UnsafeMutableRawPointer(ah).assumingMemoryBound(to: sv_ah.self).pointee.core, as: AHRecord.self)
}

extension Runtime {
    /// A real AH for virtual attributes on a real PD; returns the local peer it resolved to.
    func makeRealAH(_ realPD: UnsafeMutablePointer<ibv_pd>, _ attr: ibv_ah_attr) -> (UnsafeMutablePointer<ibv_ah>?, ContextRecord?) {
        guard let create = ops.create_ah else {
            setErrno(ENOSYS)
            return (nil, nil)
        }
        var a = attr
        let peer = localPeer(for: a, destQPN: nil)
        routeDown(&a, peer: peer)
        return (create(realPD, &a), peer)
    }

    /// An address vector in real terms: towards `peer` (a context of this process), its real
    /// address; towards another host, the GID it moved to if it did (Peers/UDAddresses.swift).
    /// Control lock.
    func routeDown(_ a: inout ibv_ah_attr, peer: ContextRecord?) {
        if let peer {
            translateDown(&a, peer: peer)
        } else if a.is_global != 0 {
            a.grh.dgid = peers.currentGID(of: a.grh.dgid)
        }
    }

    func createAH(_ pd: PDRecord, _ attr: ibv_ah_attr) -> UnsafeMutablePointer<ibv_ah>? {
        let ctx = pd.context
        let (made, peer) = makeRealAH(pd.real, attr)
        guard let real = made else { return nil }
        guard let p = allocateZeroed(sv_ah.self) else {
            _ = ops.destroy_ah?(real)
            setErrno(ENOMEM)
            return nil
        }
        p.pointee.ah.context = ctx.publicContext
        p.pointee.ah.pd = pd.publicPD
        p.pointee.ah.handle = real.pointee.handle
        p.pointee.real = real
        p.pointee.ctx = ctx.ptr
        storePeer(p.pointer(to: \.peer)!, ahPeerIDs(attr, local: peer))
        if peer == nil, p.pointee.peer != nil { noteUDDestination(attr) }
        let rec = AHRecord(ptr: p, sequence: sequence(), context: ctx, pd: pd, attr: attr)
        rec.peerContext = peer
        p.pointee.core = opaque(rec)
        ctx.ahs[key(p)] = rec
        return rec.publicAH
    }

    func destroyAH(_ rec: AHRecord) -> Int32 {
        guard let destroy = ops.destroy_ah else { return ENOSYS }
        let rc = rec.context.failed ? 0 : destroy(rec.real)
        if rc != 0 { return rc }
        rec.context.ahs[key(rec.ptr)] = nil
        free(rec.ptr)
        return 0
    }

    /// ibv_init_ah_from_wc on a virtual context: the completion's virtual slid goes down to the
    /// real one, the lower library builds the attributes (reading the GRH, which carries real
    /// GIDs), and the result comes back up to virtual values for create_ah to translate again.
    func initAHFromWC(_ ctx: ContextRecord, port: UInt8, wc: UnsafeMutablePointer<ibv_wc>?,
                      grh: UnsafeMutablePointer<ibv_grh>?, attr: UnsafeMutablePointer<ibv_ah_attr>?) -> Int32 {
        guard let initAH = ops.init_ah_from_wc else {
            setErrno(ENOSYS)
            return -1
        }
        var realWC: ibv_wc? = wc?.pointee
        if realWC != nil { realWC!.slid = realLID(ofVirtual: realWC!.slid) }
        // The GRH names our GID as the application knows it (UDSenders.swift rewrites it once our
        // real GIDs changed); the real device looks it up among its own: a copy with the real one.
        var realGRH = grh?.pointee ?? ibv_grh()
        if grh != nil, let w = wc?.pointee, w.wc_flags & UInt32(IBV_WC_GRH.rawValue) != 0 {
            realizeDestination(ctx, &realGRH)
        }
        let rc: Int32 = withUnsafeMutablePointer(to: &realGRH) { g in
            let gp = grh == nil ? nil : g
            if realWC != nil { return initAH(ctx.real, port, &realWC!, gp, attr) }
            return initAH(ctx.real, port, nil, gp, attr)
        }
        if rc == 0, let attr { translateUp(&attr.pointee) }
        return rc
    }

    /// A GRH's destination GID, when it is one of `ctx`'s virtual GIDs whose real one differs:
    /// the real one. Control lock.
    private func realizeDestination(_ ctx: ContextRecord, _ grh: inout ibv_grh) {
        let (version, _, dgid) = withUnsafeBytes(of: &grh) { grhGIDs($0.baseAddress!) }
        for p in ctx.ports {
            guard let i = p.virtualGIDIndex(of: dgid), let pair = p.gids[i], !sameGID(pair.real, pair.virtual) else { continue }
            var real = pair.real
            withUnsafeMutableBytes(of: &grh) { g in
                withUnsafeBytes(of: &real) { r in
                    _ = sv_grh_set_gids(g.baseAddress!, version, nil, r.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
            return
        }
    }
}
