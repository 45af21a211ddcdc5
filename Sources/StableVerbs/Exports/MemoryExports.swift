// Exported verbs: protection domains, memory regions, completion channels.

import CVerbs
import Glibc
import StableVerbsABI

@_cdecl("ibv_alloc_pd")
public func sv_ibv_alloc_pd(_ context: UnsafeMutablePointer<ibv_context>?) -> UnsafeMutablePointer<ibv_pd>? {
    let rt = Runtime.current
    guard let context, isVirtual(context) else {
        guard let f = rt.ops.alloc_pd else { setErrno(ENOSYS); return nil }
        return f(context)
    }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: nil) { rt.allocPD($0) }
}

@_cdecl("ibv_dealloc_pd")
public func sv_ibv_dealloc_pd(_ pd: UnsafeMutablePointer<ibv_pd>?) -> Int32 {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd) else {
        guard let f = rt.ops.dealloc_pd else { return ENOSYS }
        return f(pd)
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: EIO, destroying: true) { _ in rt.deallocPD(pdRecord(pd)) }
}

@_cdecl("ibv_reg_mr")
public func sv_ibv_reg_mr(_ pd: UnsafeMutablePointer<ibv_pd>?, _ addr: UnsafeMutableRawPointer?, _ length: Int,
                          _ access: Int32) -> UnsafeMutablePointer<ibv_mr>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd) else {
        guard let f = rt.ops.reg_mr else { setErrno(ENOSYS); return nil }
        return f(pd, addr, length, access)
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
        rt.registerMR(pdRecord(pd), addr: addr, length: length, access: UInt32(bitPattern: access), kind: .plain)
    }
}

@_cdecl("ibv_reg_mr_iova")
public func sv_ibv_reg_mr_iova(_ pd: UnsafeMutablePointer<ibv_pd>?, _ addr: UnsafeMutableRawPointer?, _ length: Int,
                               _ iova: UInt64, _ access: Int32) -> UnsafeMutablePointer<ibv_mr>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd) else {
        if let f = rt.extra.reg_mr_iova { return f(pd, addr, length, iova, access) }
        guard let f = rt.ops.reg_mr_iova2 else { setErrno(EOPNOTSUPP); return nil }
        return f(pd, addr, length, iova, UInt32(bitPattern: access))
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
        rt.registerMR(pdRecord(pd), addr: addr, length: length, access: UInt32(bitPattern: access), kind: .iova(iova))
    }
}

@_cdecl("ibv_reg_mr_iova2")
public func sv_ibv_reg_mr_iova2(_ pd: UnsafeMutablePointer<ibv_pd>?, _ addr: UnsafeMutableRawPointer?, _ length: Int,
                                _ iova: UInt64, _ access: UInt32) -> UnsafeMutablePointer<ibv_mr>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd) else {
        guard let f = rt.ops.reg_mr_iova2 else { setErrno(EOPNOTSUPP); return nil }
        return f(pd, addr, length, iova, access)
    }
    return rt.withHardware(of: { pdRecord(pd).context }, gone: nil) { _ in
        rt.registerMR(pdRecord(pd), addr: addr, length: length, access: access, kind: .iova2(iova))
    }
}

@_cdecl("ibv_rereg_mr")
public func sv_ibv_rereg_mr(_ mr: UnsafeMutablePointer<ibv_mr>?, _ flags: Int32, _ pd: UnsafeMutablePointer<ibv_pd>?,
                            _ addr: UnsafeMutableRawPointer?, _ length: Int, _ access: Int32) -> Int32 {
    let rt = Runtime.current
    guard let mr, ownedByShim(mr) else {
        guard let f = rt.extra.rereg_mr else { setErrno(EOPNOTSUPP); return IBV_REREG_MR_ERR_INPUT.rawValue }
        return f(mr, flags, pd, addr, length, access)
    }
    // The old MR stays valid (IBV_REREG_MR_ERR_INPUT), as when a provider lacks rereg.
    Log.unsupported("ibv_rereg_mr")
    setErrno(EOPNOTSUPP)
    return IBV_REREG_MR_ERR_INPUT.rawValue
}

@_cdecl("ibv_dereg_mr")
public func sv_ibv_dereg_mr(_ mr: UnsafeMutablePointer<ibv_mr>?) -> Int32 {
    let rt = Runtime.current
    guard let mr, ownedByShim(mr) else {
        guard let f = rt.ops.dereg_mr else { return ENOSYS }
        return f(mr)
    }
    return rt.withHardware(of: { mrRecord(mr).context }, gone: EIO, destroying: true) { _ in rt.deregisterMR(mrRecord(mr)) }
}

@_cdecl("ibv_reg_dmabuf_mr")
public func sv_ibv_reg_dmabuf_mr(_ pd: UnsafeMutablePointer<ibv_pd>?, _ offset: UInt64, _ length: Int, _ iova: UInt64,
                                 _ fd: Int32, _ access: Int32) -> UnsafeMutablePointer<ibv_mr>? {
    let rt = Runtime.current
    guard let pd, ownedByShim(pd) else {
        guard let f = rt.extra.reg_dmabuf_mr else { setErrno(EOPNOTSUPP); return nil }
        return f(pd, offset, length, iova, fd, access)
    }
    Log.unsupported("ibv_reg_dmabuf_mr")
    setErrno(EOPNOTSUPP)
    return nil
}

@_cdecl("ibv_create_comp_channel")
public func sv_ibv_create_comp_channel(_ context: UnsafeMutablePointer<ibv_context>?) -> UnsafeMutablePointer<ibv_comp_channel>? {
    let rt = Runtime.current
    guard let context, isVirtual(context) else {
        guard let f = rt.ops.create_comp_channel else { setErrno(ENOSYS); return nil }
        return f(context)
    }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: nil) { rt.createChannel($0) }
}

@_cdecl("ibv_destroy_comp_channel")
public func sv_ibv_destroy_comp_channel(_ channel: UnsafeMutablePointer<ibv_comp_channel>?) -> Int32 {
    let rt = Runtime.current
    guard let channel, ownedByShim(channel) else {
        guard let f = rt.ops.destroy_comp_channel else { return ENOSYS }
        return f(channel)
    }
    return rt.withHardware(of: { channelRecord(channel).context }, gone: EIO, destroying: true) { _ in rt.destroyChannel(channelRecord(channel)) }
}

// MARK: - Imports (sharing objects across processes by handle) are not supported.

@_cdecl("ibv_import_device")
public func sv_ibv_import_device(_ cmdFD: Int32) -> UnsafeMutablePointer<ibv_context>? {
    let rt = Runtime.current
    if rt.passthrough, let f = rt.extra.import_device { return f(cmdFD) }
    Log.unsupported("ibv_import_device")
    setErrno(EOPNOTSUPP)
    return nil
}

@_cdecl("ibv_import_pd")
public func sv_ibv_import_pd(_ context: UnsafeMutablePointer<ibv_context>?, _ handle: UInt32) -> UnsafeMutablePointer<ibv_pd>? {
    let rt = Runtime.current
    if !isVirtual(context), let f = rt.extra.import_pd { return f(context, handle) }
    Log.unsupported("ibv_import_pd")
    setErrno(EOPNOTSUPP)
    return nil
}

@_cdecl("ibv_unimport_pd")
public func sv_ibv_unimport_pd(_ pd: UnsafeMutablePointer<ibv_pd>?) {
    let rt = Runtime.current
    if !ownedByShim(pd), let f = rt.extra.unimport_pd { f(pd); return }
    Log.unsupported("ibv_unimport_pd")
}

@_cdecl("ibv_import_mr")
public func sv_ibv_import_mr(_ pd: UnsafeMutablePointer<ibv_pd>?, _ handle: UInt32) -> UnsafeMutablePointer<ibv_mr>? {
    let rt = Runtime.current
    if !ownedByShim(pd), let f = rt.extra.import_mr { return f(pd, handle) }
    Log.unsupported("ibv_import_mr")
    setErrno(EOPNOTSUPP)
    return nil
}

@_cdecl("ibv_unimport_mr")
public func sv_ibv_unimport_mr(_ mr: UnsafeMutablePointer<ibv_mr>?) {
    let rt = Runtime.current
    if !ownedByShim(mr), let f = rt.extra.unimport_mr { f(mr); return }
    Log.unsupported("ibv_unimport_mr")
}

@_cdecl("ibv_import_dm")
public func sv_ibv_import_dm(_ context: UnsafeMutablePointer<ibv_context>?, _ handle: UInt32) -> UnsafeMutablePointer<ibv_dm>? {
    let rt = Runtime.current
    if !isVirtual(context), let f = rt.extra.import_dm { return f(context, handle) }
    Log.unsupported("ibv_import_dm")
    setErrno(EOPNOTSUPP)
    return nil
}

@_cdecl("ibv_unimport_dm")
public func sv_ibv_unimport_dm(_ dm: UnsafeMutablePointer<ibv_dm>?) {
    let rt = Runtime.current
    if !ownedByShim(dm), let f = rt.extra.unimport_dm { f(dm); return }
    Log.unsupported("ibv_unimport_dm")
}
