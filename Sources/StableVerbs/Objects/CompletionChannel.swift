// Completion channels: the virtual channel shows the real channel's fd number, and keeps that
// number across rebuilds (the new real channel's file is dup2'ed onto it).

import CVerbs
import Glibc
import StableVerbsABI

final class ChannelRecord {
    let ptr: UnsafeMutablePointer<sv_comp_channel>
    let sequence: UInt64
    unowned let context: ContextRecord
    /// Threads inside the real get_cq_event on this channel (a release waits for them).
    var inCall = 0

    init(ptr: UnsafeMutablePointer<sv_comp_channel>, sequence: UInt64, context: ContextRecord) {
        self.ptr = ptr
        self.sequence = sequence
        self.context = context
    }

    var publicChannel: UnsafeMutablePointer<ibv_comp_channel> {
        UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_comp_channel.self)
    }
    var real: UnsafeMutablePointer<ibv_comp_channel> { ptr.pointee.real! }
}

func channelRecord(_ ch: UnsafeMutablePointer<ibv_comp_channel>) -> ChannelRecord {
    record(UnsafeMutableRawPointer(ch).assumingMemoryBound(to: sv_comp_channel.self).pointee.core, as: ChannelRecord.self)
}

extension Runtime {
    func createChannel(_ ctx: ContextRecord) -> UnsafeMutablePointer<ibv_comp_channel>? {
        guard let create = ops.create_comp_channel else {
            setErrno(ENOSYS)
            return nil
        }
        guard let real = create(ctx.real) else { return nil }
        guard let p = allocateZeroed(sv_comp_channel.self) else {
            _ = ops.destroy_comp_channel?(real)
            setErrno(ENOMEM)
            return nil
        }
        p.pointee.channel.context = ctx.publicContext
        p.pointee.channel.fd = real.pointee.fd
        p.pointee.channel.refcnt = 0
        p.pointee.real = real
        p.pointee.ctx = ctx.ptr
        let rec = ChannelRecord(ptr: p, sequence: sequence(), context: ctx)
        p.pointee.core = opaque(rec)
        ctx.channels[key(p)] = rec
        return rec.publicChannel
    }

    func destroyChannel(_ rec: ChannelRecord) -> Int32 {
        guard let destroy = ops.destroy_comp_channel else { return ENOSYS }
        let rc = rec.context.failed ? 0 : destroy(rec.real)
        if rc != 0 { return rc }
        rec.context.channels[key(rec.ptr)] = nil
        free(rec.ptr)
        return 0
    }
}
