// The public API: include/stableverbs.h as @_cdecl exports, and the same for Swift callers.

import CVerbs
import Glibc
import StableVerbsABI

/// Swift entry points (tests, Swift programs linking the shim).
public enum StableVerbs {
    /// Chooses the lower interface before the first verbs call (e.g. `configure(lower: "softhca",
    /// softHCA: "...")` in tests). Returns false when the shim is already running (too late).
    @discardableResult
    public static func configure(lower: String, softHCA: String? = nil, passthrough: Bool = false,
                                 logLevel: String? = nil) -> Bool {
        sv_control_lock()
        defer { sv_control_unlock() }
        guard Runtime.shared == nil else { return false }
        var c = Configuration.fromEnvironment()
        c.lower = lower
        c.softHCA = softHCA
        c.passthrough = passthrough
        if let logLevel, let l = LogLevel(name: logLevel) { c.logLevel = l }
        Runtime.pending = c
        return true
    }

    public static var isActive: Bool { sv_stableverbs_is_active() != 0 }
    public static var lowerName: String { String(cString: sv_stableverbs_lower_name()) }

    /// stableverbs_rebuild_context: 0 or an errno value.
    public static func rebuild(_ context: UnsafeMutablePointer<ibv_context>) -> Int32 {
        sv_stableverbs_rebuild_context(context)
    }

    public static func generation(_ context: UnsafeMutablePointer<ibv_context>) -> UInt32? {
        var g: UInt32 = 0
        return sv_stableverbs_generation(context, &g) == 0 ? g : nil
    }

    public static func qpIdentity(_ qp: UnsafeMutablePointer<ibv_qp>) -> (virtual: UInt32, real: UInt32)? {
        var v: UInt32 = 0, r: UInt32 = 0
        return sv_stableverbs_qp_identity(qp, &v, &r) == 0 ? (v, r) : nil
    }

    public static func mrIdentity(_ mr: UnsafeMutablePointer<ibv_mr>)
        -> (virtualLkey: UInt32, realLkey: UInt32, virtualRkey: UInt32, realRkey: UInt32)? {
        var a: UInt32 = 0, b: UInt32 = 0, c: UInt32 = 0, d: UInt32 = 0
        return sv_stableverbs_mr_identity(mr, &a, &b, &c, &d) == 0 ? (a, b, c, d) : nil
    }

    public static func portLID(_ context: UnsafeMutablePointer<ibv_context>, port: UInt8) -> (virtual: UInt16, real: UInt16)? {
        var v: UInt16 = 0, r: UInt16 = 0
        return sv_stableverbs_port_lid(context, port, &v, &r) == 0 ? (v, r) : nil
    }

    /// Number of journal entries of a virtual QP (state changes since its last reset).
    public static func journalLength(_ qp: UnsafeMutablePointer<ibv_qp>) -> Int? {
        guard ownedByShim(qp) else { return nil }
        return withControlLock { qpRecord(qp).journal.count }
    }

    /// How many dlsym lookups on libibverbs' handle were answered with the shim's own function.
    public static var dlsymRedirections: UInt { UInt(sv_dlsym_redirections()) }
}

@_cdecl("stableverbs_is_active")
public func sv_stableverbs_is_active() -> Int32 {
    let rt = Runtime.current
    return rt.passthrough || !rt.lowerAvailable ? 0 : 1
}

@_cdecl("stableverbs_lower_name")
public func sv_stableverbs_lower_name() -> UnsafePointer<CChar> {
    Runtime.current.lowerName
}

@_cdecl("stableverbs_real_device_name")
public func sv_stableverbs_real_device_name(_ context: UnsafeMutablePointer<ibv_context>?, _ name: UnsafeMutablePointer<CChar>?, _ len: Int) -> Int32 {
    guard let context, isVirtual(context), let name, len > 0 else { return EINVAL }
    let rt = Runtime.current
    return withControlLock {
        let rec = rt.contextRecord(context)
        // The device the context lives on now (a recovery may have moved it to another name).
        guard !rec.released, !rec.currentDeviceName.isEmpty else { return ENOENT }
        let n = rec.currentDeviceName
        _ = n.withCString { strncpy(name, $0, len - 1) }
        name[len - 1] = 0
        return 0
    }
}

@_cdecl("stableverbs_generation")
public func sv_stableverbs_generation(_ context: UnsafeMutablePointer<ibv_context>?, _ generation: UnsafeMutablePointer<UInt32>?) -> Int32 {
    guard let context, isVirtual(context) else { return EINVAL }
    generation?.pointee = withControlLock { Runtime.current.contextRecord(context).generation }
    return 0
}

@_cdecl("stableverbs_qp_identity")
public func sv_stableverbs_qp_identity(_ qp: UnsafeMutablePointer<ibv_qp>?, _ virtualQPN: UnsafeMutablePointer<UInt32>?,
                                       _ realQPN: UnsafeMutablePointer<UInt32>?) -> Int32 {
    guard let qp, ownedByShim(qp) else { return EINVAL }
    return withControlLock {
        let s = UnsafeMutableRawPointer(qp).assumingMemoryBound(to: sv_qp.self)
        virtualQPN?.pointee = s.pointee.qpx.qp_base.qp_num
        guard s.pointee.real != nil else { return ENOENT }
        realQPN?.pointee = s.pointee.real_qpn
        return 0
    }
}

@_cdecl("stableverbs_mr_identity")
public func sv_stableverbs_mr_identity(_ mr: UnsafeMutablePointer<ibv_mr>?, _ vl: UnsafeMutablePointer<UInt32>?, _ rl: UnsafeMutablePointer<UInt32>?,
                                       _ vr: UnsafeMutablePointer<UInt32>?, _ rr: UnsafeMutablePointer<UInt32>?) -> Int32 {
    guard let mr, ownedByShim(mr) else { return EINVAL }
    return withControlLock {
        let s = UnsafeMutableRawPointer(mr).assumingMemoryBound(to: sv_mr.self)
        vl?.pointee = s.pointee.mr.lkey
        vr?.pointee = s.pointee.mr.rkey
        guard let real = s.pointee.real else { return ENOENT }
        rl?.pointee = real.pointee.lkey
        rr?.pointee = real.pointee.rkey
        return 0
    }
}

@_cdecl("stableverbs_port_lid")
public func sv_stableverbs_port_lid(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8,
                                    _ virtualLID: UnsafeMutablePointer<UInt16>?, _ realLID: UnsafeMutablePointer<UInt16>?) -> Int32 {
    guard let context, isVirtual(context) else { return EINVAL }
    let rt = Runtime.current
    return withControlLock {
        let rec = rt.contextRecord(context)
        guard let p = rec.port(port) else { return EINVAL }
        virtualLID?.pointee = p.virtualLID
        var attr = ibv_port_attr()
        if rec.queryRealPort(port, &attr) != 0 { return ENOENT }
        realLID?.pointee = attr.lid
        return 0
    }
}

@_cdecl("stableverbs_gid_identity")
public func sv_stableverbs_gid_identity(_ context: UnsafeMutablePointer<ibv_context>?, _ port: UInt8, _ index: Int32,
                                        _ virtualGID: UnsafeMutablePointer<ibv_gid>?, _ realGID: UnsafeMutablePointer<ibv_gid>?) -> Int32 {
    guard let context, isVirtual(context) else { return EINVAL }
    let rt = Runtime.current
    return withControlLock {
        let rec = rt.contextRecord(context)
        guard rec.port(port) != nil else { return EINVAL }
        guard let q = rt.ops.query_gid else { return ENOENT }
        var real = ibv_gid()
        if q(rec.real, port, index, &real) != 0 { return ENOENT }
        virtualGID?.pointee = rt.virtualGID(rec, port: port, index: index, real: real)
        realGID?.pointee = real
        return 0
    }
}

@_cdecl("stableverbs_rebuild_context")
public func sv_stableverbs_rebuild_context(_ context: UnsafeMutablePointer<ibv_context>?) -> Int32 {
    guard let context, isVirtual(context) else { return EINVAL }
    let rt = Runtime.current
    return withControlLock {
        let rec = rt.contextRecord(context)
        // A recovery is moving this context (Recovery.swift): not now.
        if rec.released || sv_ctx_state(rec.ptr) != SV_CTX_LIVE.rawValue { return EBUSY }
        return rt.rebuild(rec)
    }
}

/// stableverbs_real_object (benchmarks and diagnostics): the real object behind a virtual one.
/// Type codes are `enum stableverbs_object_type` of include/stableverbs.h.
@_cdecl("stableverbs_real_object")
public func sv_stableverbs_real_object(_ type: Int32, _ object: UnsafeMutableRawPointer?,
                                       _ real: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    guard let object, let real else { return EINVAL }
    func answer(_ p: UnsafeMutableRawPointer?) -> Int32 {
        guard let p else { return ENOENT }
        real.pointee = p
        return 0
    }
    if type == 1 {  // CONTEXT
        let c = object.assumingMemoryBound(to: ibv_context.self)
        guard isVirtual(c) else { return EINVAL }
        return withControlLock { answer(UnsafeMutableRawPointer(virtualContext(c).pointee.real)) }
    }
    guard ownedByShim(object.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)) else { return EINVAL }
    return withControlLock {
        switch type {
        case 2: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_pd.self).pointee.real))
        case 3: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_mr.self).pointee.real))
        case 4: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_cq.self).pointee.real))
        case 5: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_cq.self).pointee.real_ex))
        case 6: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_srq.self).pointee.real))
        case 7: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_qp.self).pointee.real))
        case 8: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_qp.self).pointee.real_qpx))
        case 9: return answer(UnsafeMutableRawPointer(object.assumingMemoryBound(to: sv_ah.self).pointee.real))
        default: return EINVAL
        }
    }
}
