// Exported verbs: devices and contexts.
//
// Every export is `@_cdecl("ibv_x") public func sv_ibv_x` (DESIGN §7: the Swift name differs from
// the C prototype; the unversioned definition binds the application's versioned references and
// libibverbs'/librdmacm's own). Nothing here calls an ibv_* function by name: the lower interface
// is reached through Runtime.current.ops.

import CVerbs
import Glibc
import StableVerbsABI

@_cdecl("ibv_get_device_list")
public func sv_ibv_get_device_list(_ count: UnsafeMutablePointer<Int32>?) -> UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>? {
    let rt = Runtime.current
    guard rt.lowerAvailable else {
        count?.pointee = 0
        setErrno(ENOSYS)
        return nil
    }
    if rt.passthrough {
        guard let f = rt.ops.get_device_list else { setErrno(ENOSYS); return nil }
        return f(count)
    }
    return withControlLock { rt.deviceList(count) }
}

@_cdecl("ibv_free_device_list")
public func sv_ibv_free_device_list(_ list: UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>?) {
    guard let list else { return }
    let rt = Runtime.current
    if rt.passthrough {
        rt.ops.free_device_list?(list)
        return
    }
    withControlLock { rt.freeDeviceList(list) }
}

@_cdecl("ibv_get_device_name")
public func sv_ibv_get_device_name(_ device: UnsafeMutablePointer<ibv_device>?) -> UnsafePointer<CChar>? {
    let rt = Runtime.current
    if let rec = withControlLock({ rt.devices.record(device) }) {
        let base = UnsafeRawPointer(rec.publicDevice) + MemoryLayout<ibv_device>.offset(of: \ibv_device.name)!
        return base.assumingMemoryBound(to: CChar.self)
    }
    guard let f = rt.ops.get_device_name else { setErrno(ENOSYS); return nil }
    return f(device)
}

@_cdecl("ibv_get_device_guid")
public func sv_ibv_get_device_guid(_ device: UnsafeMutablePointer<ibv_device>?) -> UInt64 {
    let rt = Runtime.current
    if let rec = withControlLock({ rt.devices.record(device) }) { return rec.guid }
    guard let f = rt.ops.get_device_guid else { setErrno(ENOSYS); return 0 }
    return f(device)
}

@_cdecl("ibv_get_device_index")
public func sv_ibv_get_device_index(_ device: UnsafeMutablePointer<ibv_device>?) -> Int32 {
    let rt = Runtime.current
    if let rec = withControlLock({ rt.devices.record(device) }) { return rec.index }
    guard let f = rt.ops.get_device_index else { return -1 }
    return f(device)
}

@_cdecl("ibv_open_device")
public func sv_ibv_open_device(_ device: UnsafeMutablePointer<ibv_device>?) -> UnsafeMutablePointer<ibv_context>? {
    let rt = Runtime.current
    return withControlLock {
        if let rec = rt.devices.record(device) { return rt.openContext(rec) }
        guard let f = rt.ops.open_device else { setErrno(ENOSYS); return nil }
        return f(device)
    }
}

@_cdecl("ibv_close_device")
public func sv_ibv_close_device(_ context: UnsafeMutablePointer<ibv_context>?) -> Int32 {
    let rt = Runtime.current
    guard let context, isVirtual(context) else {
        guard let f = rt.ops.close_device else { return ENOSYS }
        return f(context)
    }
    return withControlLock { rt.closeContext(rt.contextRecord(context)) }
}

@_cdecl("ibv_query_device")
public func sv_ibv_query_device(_ context: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_device_attr>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.query_device else { return ENOSYS }
    guard let context, isVirtual(context) else { return f(context, attr) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: EIO) { rec in
        let rc = f(rec.real, attr)
        if rc == 0, let attr {
            attr.pointee.node_guid = rec.nodeGUID
            attr.pointee.sys_image_guid = rec.sysImageGUID
        }
        return rc
    }
}

/// The exported compat symbol (struct _compat_ibv_port_attr, 48 bytes). The inline ibv_query_port
/// never reaches it for a virtual context (vctx->query_port is set); old binaries do.
@_cdecl("ibv_query_port")
public func sv_ibv_query_port(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8, _ attr: OpaquePointer?) -> Int32 {
    guard let context else { return EINVAL }
    let size = sv_compat_port_attr_size()
    var full = ibv_port_attr()
    let rc = ContextOps.queryPort(context, port, &full, MemoryLayout<ibv_port_attr>.size)
    if rc == 0, let attr {
        withUnsafeBytes(of: &full) { src in
            UnsafeMutableRawPointer(attr).copyMemory(from: src.baseAddress!, byteCount: size)
        }
    }
    return rc
}

@_cdecl("ibv_query_gid")
public func sv_ibv_query_gid(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8, _ index: Int32,
                             _ gid: UnsafeMutablePointer<ibv_gid>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.query_gid else { return ENOSYS }
    guard let context, isVirtual(context) else { return f(context, port, index, gid) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: EIO) { rec in
        let rc = f(rec.real, port, index, gid)
        if rc == 0, let gid { gid.pointee = rt.virtualGID(rec, port: port, index: index, real: gid.pointee) }
        return rc
    }
}

@_cdecl("_ibv_query_gid_ex")
public func sv_ibv_query_gid_ex(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt32, _ index: UInt32,
                                _ entry: UnsafeMutablePointer<ibv_gid_entry>?, _ flags: UInt32, _ entrySize: Int) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.query_gid_ex else { return EOPNOTSUPP }
    guard let context, isVirtual(context) else { return f(context, port, index, entry, flags, entrySize) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: EIO) { rec in
        let rc = f(rec.real, port, index, entry, flags, entrySize)
        if rc == 0, let entry, port <= 255 {
            entry.pointee.gid = rt.virtualGID(rec, port: UInt8(port), index: Int32(bitPattern: index), real: entry.pointee.gid)
        }
        return rc
    }
}

@_cdecl("_ibv_query_gid_table")
public func sv_ibv_query_gid_table(_ context: UnsafeMutablePointer<ibv_context>?, _ entries: UnsafeMutablePointer<ibv_gid_entry>?,
                                   _ max: Int, _ flags: UInt32, _ entrySize: Int) -> Int {
    let rt = Runtime.current
    guard let f = rt.ops.query_gid_table else { return -Int(EOPNOTSUPP) }
    guard let context, isVirtual(context) else { return f(context, entries, max, flags, entrySize) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: -Int(EIO)) { rec in
        let n = f(rec.real, entries, max, flags, entrySize)
        if n > 0, let entries {
            let base = UnsafeMutableRawPointer(entries)
            for i in 0..<n {
                let e = (base + i * entrySize).assumingMemoryBound(to: ibv_gid_entry.self)
                if e.pointee.port_num <= 255 {
                    e.pointee.gid = rt.virtualGID(rec, port: UInt8(e.pointee.port_num),
                                                  index: Int32(bitPattern: e.pointee.gid_index), real: e.pointee.gid)
                }
            }
        }
        return n
    }
}

@_cdecl("ibv_query_pkey")
public func sv_ibv_query_pkey(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8, _ index: Int32,
                              _ pkey: UnsafeMutablePointer<UInt16>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.query_pkey else { return ENOSYS }
    guard let context, isVirtual(context) else { return f(context, port, index, pkey) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: EIO) { f($0.real, port, index, pkey) }
}

@_cdecl("ibv_get_pkey_index")
public func sv_ibv_get_pkey_index(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8, _ pkey: UInt16) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.get_pkey_index else { return -Int32(ENOSYS) }
    guard let context, isVirtual(context) else { return f(context, port, pkey) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: -Int32(EIO)) { f($0.real, port, pkey) }
}

@_cdecl("ibv_get_async_event")
public func sv_ibv_get_async_event(_ context: UnsafeMutablePointer<ibv_context>?, _ event: UnsafeMutablePointer<ibv_async_event>?) -> Int32 {
    let rt = Runtime.current
    guard let context, isVirtual(context), let event else {
        guard let f = rt.ops.get_async_event else { setErrno(ENOSYS); return -1 }
        return f(context, event)
    }
    return rt.getAsyncEvent(withControlLock { rt.contextRecord(context) }, event)
}

@_cdecl("ibv_ack_async_event")
public func sv_ibv_ack_async_event(_ event: UnsafeMutablePointer<ibv_async_event>?) {
    let rt = Runtime.current
    guard let event else {
        rt.ops.ack_async_event?(event)
        return
    }
    rt.ackAsyncEvent(event)
}

@_cdecl("ibv_fork_init")
public func sv_ibv_fork_init() -> Int32 {
    let rt = Runtime.current
    guard let f = rt.ops.fork_init else { return 0 }
    return f()
}

@_cdecl("ibv_resolve_eth_l2_from_gid")
public func sv_ibv_resolve_eth_l2_from_gid(_ context: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_ah_attr>?,
                                           _ mac: UnsafeMutablePointer<UInt8>?, _ vid: UnsafeMutablePointer<UInt16>?) -> Int32 {
    let rt = Runtime.current
    guard let f = rt.extra.resolve_eth_l2_from_gid else {
        Log.unsupported("ibv_resolve_eth_l2_from_gid", "not available on the \(String(cString: rt.lowerName)) lower interface")
        return EOPNOTSUPP
    }
    guard let context, isVirtual(context), let attr else { return f(context, attr, mac, vid) }
    return rt.withHardware(of: { rt.contextRecord(context) }, gone: EIO) { rec in
        var a = attr.pointee
        if let peer = rt.localPeer(for: a, destQPN: nil) { rt.translateDown(&a, peer: peer) }
        return f(rec.real, &a, mac, vid)
    }
}
