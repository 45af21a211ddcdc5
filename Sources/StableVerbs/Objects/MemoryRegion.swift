// Memory regions: the virtual lkey/rkey are the real ones at registration (unless taken by a
// virtual key still in use), published in the context's lkey map and its own rkey map (which local
// peers' QPs read to translate remote keys).

import CVerbs
import Glibc
import StableVerbsABI

enum MRKind {
    case plain                 // ibv_reg_mr
    case iova(UInt64)          // ibv_reg_mr_iova
    case iova2(UInt64)         // ibv_reg_mr_iova2 (what the ibv_reg_mr macro reaches with non-constant flags)
}

final class MRRecord {
    let ptr: UnsafeMutablePointer<sv_mr>
    let sequence: UInt64
    unowned let context: ContextRecord
    let pd: PDRecord
    let addr: UnsafeMutableRawPointer?
    let length: Int
    let access: UInt32
    let kind: MRKind

    init(ptr: UnsafeMutablePointer<sv_mr>, sequence: UInt64, context: ContextRecord, pd: PDRecord,
         addr: UnsafeMutableRawPointer?, length: Int, access: UInt32, kind: MRKind) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
        self.pd = pd
        self.addr = addr
        self.length = length
        self.access = access
        self.kind = kind
    }

    var publicMR: UnsafeMutablePointer<ibv_mr> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_mr.self) }
    var real: UnsafeMutablePointer<ibv_mr> { ptr.pointee.real! }
}

func mrRecord(_ mr: UnsafeMutablePointer<ibv_mr>) -> MRRecord {
    record(UnsafeMutableRawPointer(mr).assumingMemoryBound(to: sv_mr.self).pointee.core, as: MRRecord.self)
}

extension Runtime {
    /// Registers on the lower interface (the application's call, or a rebuild on a new real PD).
    func registerReal(_ realPD: UnsafeMutablePointer<ibv_pd>, addr: UnsafeMutableRawPointer?, length: Int,
                      access: UInt32, kind: MRKind) -> UnsafeMutablePointer<ibv_mr>? {
        switch kind {
        case .plain:
            guard let reg = ops.reg_mr else { setErrno(ENOSYS); return nil }
            return reg(realPD, addr, length, Int32(bitPattern: access))
        case .iova(let iova):
            if let reg = extra.reg_mr_iova { return reg(realPD, addr, length, iova, Int32(bitPattern: access)) }
            guard let reg2 = ops.reg_mr_iova2 else { setErrno(EOPNOTSUPP); return nil }
            return reg2(realPD, addr, length, iova, access)
        case .iova2(let iova):
            guard let reg2 = ops.reg_mr_iova2 else { setErrno(EOPNOTSUPP); return nil }
            return reg2(realPD, addr, length, iova, access)
        }
    }

    func registerMR(_ pd: PDRecord, addr: UnsafeMutableRawPointer?, length: Int, access: UInt32,
                    kind: MRKind) -> UnsafeMutablePointer<ibv_mr>? {
        let ctx = pd.context
        guard let real = registerReal(pd.real, addr: addr, length: length, access: access, kind: kind) else {
            return nil
        }
        guard let p = allocateZeroed(sv_mr.self) else {
            _ = ops.dereg_mr?(real)
            setErrno(ENOMEM)
            return nil
        }
        let vl = ctx.lkeys.claim(preferred: real.pointee.lkey)
        let vr = ctx.rkeys.claim(preferred: real.pointee.rkey)
        p.pointee.mr.context = ctx.publicContext
        p.pointee.mr.pd = pd.publicPD
        p.pointee.mr.addr = real.pointee.addr
        p.pointee.mr.length = real.pointee.length
        p.pointee.mr.handle = real.pointee.handle
        p.pointee.mr.lkey = vl
        p.pointee.mr.rkey = vr
        p.pointee.real = real
        p.pointee.ctx = ctx.ptr
        IdentityMap.set(ctx.lkeyMap, key: vl, value: real.pointee.lkey)
        IdentityMap.set(ctx.rkeyMap, key: vr, value: real.pointee.rkey)
        let rec = MRRecord(ptr: p, sequence: sequence(), context: ctx, pd: pd, addr: addr, length: length,
                           access: access, kind: kind)
        p.pointee.core = opaque(rec)
        ctx.mrs[key(p)] = rec
        Log.debug("reg_mr \(length) bytes: lkey \(hex(vl)) rkey \(hex(vr))")
        return rec.publicMR
    }

    func deregisterMR(_ rec: MRRecord) -> Int32 {
        guard let dereg = ops.dereg_mr else { return ENOSYS }
        let rc = rec.context.failed ? 0 : dereg(rec.real)
        if rc != 0 { return rc }
        let ctx = rec.context
        let vl = rec.ptr.pointee.mr.lkey, vr = rec.ptr.pointee.mr.rkey
        IdentityMap.remove(ctx.lkeyMap, key: vl)
        IdentityMap.remove(ctx.rkeyMap, key: vr)
        ctx.lkeys.release(vl)
        ctx.rkeys.release(vr)
        ctx.mrs[key(rec.ptr)] = nil
        free(rec.ptr)
        return 0
    }
}
