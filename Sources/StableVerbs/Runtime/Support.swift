// Small helpers shared by the control path: errno, the control lock, C allocation, flag bits,
// record lookup from virtual objects.

import CVerbs
import Glibc
import StableVerbsABI

@inline(__always) func setErrno(_ e: Int32) { sv_set_errno(e) }
@inline(__always) func currentErrno() -> Int32 { sv_get_errno() }

/// Runs `body` under the process-wide control lock (recursive; see sv_control.h).
@inline(__always) func withControlLock<T>(_ body: () throws -> T) rethrows -> T {
    sv_control_lock()
    defer { sv_control_unlock() }
    return try body()
}

/// calloc'd storage for one C object (zero-filled, as rdma-core's own allocations are).
func allocateZeroed<T>(_ type: T.Type) -> UnsafeMutablePointer<T>? {
    guard let raw = calloc(1, MemoryLayout<T>.size) else { return nil }
    return raw.bindMemory(to: T.self, capacity: 1)
}

@inline(__always) func key<T>(_ p: UnsafeMutablePointer<T>) -> UInt { UInt(bitPattern: p) }

/// The bits of a C enum used as a flag in an `int` mask.
@inline(__always) func bits<E: RawRepresentable>(_ e: E) -> Int32 where E.RawValue == UInt32 {
    Int32(bitPattern: e.rawValue)
}
@inline(__always) func ubits<E: RawRepresentable>(_ e: E) -> UInt32 where E.RawValue == UInt32 {
    e.rawValue
}

/// Whether a context pointer is one of the shim's virtual contexts.
@inline(__always) func isVirtual(_ context: UnsafeMutablePointer<ibv_context>?) -> Bool {
    guard let context else { return false }
    return sv_is_virtual_context(context) != 0
}

@inline(__always) func virtualContext(_ c: UnsafeMutablePointer<ibv_context>) -> UnsafeMutablePointer<sv_context> {
    (UnsafeMutableRawPointer(c) - MemoryLayout<verbs_context>.offset(of: \verbs_context.context)!)
        .assumingMemoryBound(to: sv_context.self)
}

@inline(__always) func record<R: AnyObject>(_ core: UnsafeMutableRawPointer?, as: R.Type) -> R {
    Unmanaged<R>.fromOpaque(core!).takeUnretainedValue()
}

@inline(__always) func opaque(_ object: AnyObject) -> UnsafeMutableRawPointer {
    Unmanaged.passUnretained(object).toOpaque()
}

/// Byte equality of two GIDs.
func sameGID(_ a: ibv_gid, _ b: ibv_gid) -> Bool {
    withUnsafeBytes(of: a) { pa in withUnsafeBytes(of: b) { pb in memcmp(pa.baseAddress!, pb.baseAddress!, 16) == 0 } }
}
func isZeroGID(_ g: ibv_gid) -> Bool {
    withUnsafeBytes(of: g) { p in p.allSatisfy { $0 == 0 } }
}
func gidString(_ g: ibv_gid) -> String {
    withUnsafeBytes(of: g) { p in
        var s = ""
        for i in stride(from: 0, to: 16, by: 2) {
            if i > 0 { s += ":" }
            let w = UInt16(p[i]) << 8 | UInt16(p[i + 1])
            s += String(w, radix: 16)
        }
        return s
    }
}
func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

func cString<T>(_ tuple: inout T) -> String {
    withUnsafeBytes(of: &tuple) { raw in
        let bytes = raw.bindMemory(to: UInt8.self)
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        return String(decoding: bytes[0..<end], as: UTF8.self)
    }
}

/// Publishes a QP's or AH's peer pointer (release store: the data path reads it lock-free).
func storePeer(_ slot: UnsafeMutablePointer<UnsafeMutablePointer<sv_peer_ids>?>, _ value: UnsafeMutablePointer<sv_peer_ids>?) {
    sv_store_ptr(UnsafeMutableRawPointer(slot).assumingMemoryBound(to: UnsafeMutableRawPointer?.self),
                 value.map { UnsafeMutableRawPointer($0) })
}

/// Whether a verbs object (every rdma-core object starts with its `struct ibv_context *context`)
/// belongs to one of the shim's virtual contexts. A real object — a provider calling a public verb
/// from inside another verb, or an object made in pass-through mode — is forwarded untouched.
@inline(__always) func ownedByShim<T>(_ object: UnsafeMutablePointer<T>?) -> Bool {
    guard let object else { return false }
    return isVirtual(UnsafeMutableRawPointer(object).load(as: UnsafeMutablePointer<ibv_context>?.self))
}
