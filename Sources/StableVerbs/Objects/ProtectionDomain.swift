// Protection domains.

import CVerbs
import Glibc
import StableVerbsABI

final class PDRecord {
    let ptr: UnsafeMutablePointer<sv_pd>
    let sequence: UInt64
    unowned let context: ContextRecord

    init(ptr: UnsafeMutablePointer<sv_pd>, sequence: UInt64, context: ContextRecord) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
    }

    var publicPD: UnsafeMutablePointer<ibv_pd> { UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_pd.self) }
    var real: UnsafeMutablePointer<ibv_pd> { ptr.pointee.real! }
}

/// The record behind a virtual PD (the caller checked its context is virtual).
func pdRecord(_ pd: UnsafeMutablePointer<ibv_pd>) -> PDRecord {
    record(UnsafeMutableRawPointer(pd).assumingMemoryBound(to: sv_pd.self).pointee.core, as: PDRecord.self)
}

extension Runtime {
    func allocPD(_ ctx: ContextRecord) -> UnsafeMutablePointer<ibv_pd>? {
        guard let alloc = ops.alloc_pd else {
            setErrno(ENOSYS)
            return nil
        }
        guard let real = alloc(ctx.real) else { return nil }
        guard let p = allocateZeroed(sv_pd.self) else {
            _ = ops.dealloc_pd?(real)
            setErrno(ENOMEM)
            return nil
        }
        p.pointee.pd.context = ctx.publicContext
        p.pointee.pd.handle = real.pointee.handle
        p.pointee.real = real
        p.pointee.ctx = ctx.ptr
        let rec = PDRecord(ptr: p, sequence: sequence(), context: ctx)
        p.pointee.core = opaque(rec)
        ctx.pds[key(p)] = rec
        return rec.publicPD
    }

    func deallocPD(_ rec: PDRecord) -> Int32 {
        guard let dealloc = ops.dealloc_pd else { return ENOSYS }
        let rc = rec.context.failed ? 0 : dealloc(rec.real)
        if rc != 0 { return rc }
        rec.context.pds[key(rec.ptr)] = nil
        free(rec.ptr)
        return 0
    }
}
