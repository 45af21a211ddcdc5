// The recovery controls of include/stableverbs.h, and test-only controls of the software HCA.

import CVerbs
import Glibc
import SoftHCA
import StableVerbsABI

@_cdecl("stableverbs_detach")
public func sv_stableverbs_detach(_ device: UnsafePointer<CChar>?) -> Int32 {
    let rt = Runtime.current
    guard rt.lowerAvailable, !rt.passthrough else { return ENOTSUP }
    return rt.detach(device: device.map { String(cString: $0) })
}

@_cdecl("stableverbs_attach")
public func sv_stableverbs_attach() -> Int32 {
    let rt = Runtime.current
    guard rt.lowerAvailable, !rt.passthrough else { return ENOTSUP }
    return rt.attach()
}

@_cdecl("stableverbs_recovery_stats")
public func sv_stableverbs_recovery_stats(_ out: UnsafeMutableRawPointer?, _ size: Int) -> Int32 {
    guard let out else { return EINVAL }
    let rt = Runtime.current
    let s = withControlLock { rt.recovery.stats }
    let words: [UInt64] = [s.count, s.last.quiesce, s.last.release, s.last.deviceWait, s.last.rebuild,
                           s.last.reconnect, s.last.replay, s.lastReplayed]
    let appended: [UInt64] = [s.last.startedAt, s.last.deviceFoundAt, s.last.liveAt]
    var bytes = [UInt8](repeating: 0, count: 8 * words.count + 8 + 8 * appended.count)
    bytes.withUnsafeMutableBytes { b in
        for (i, w) in words.enumerated() { b.storeBytes(of: w, toByteOffset: 8 * i, as: UInt64.self) }
        b.storeBytes(of: UInt32(s.lastPlanned ? 1 : 0), toByteOffset: 8 * words.count, as: UInt32.self)
        b.storeBytes(of: s.lastContexts, toByteOffset: 8 * words.count + 4, as: UInt32.self)
        for (i, w) in appended.enumerated() { b.storeBytes(of: w, toByteOffset: 8 * words.count + 8 + 8 * i, as: UInt64.self) }
    }
    bytes.withUnsafeBytes { b in out.copyMemory(from: b.baseAddress!, byteCount: min(size, b.count)) }
    return 0
}

extension StableVerbs {
    /// stableverbs_detach (nil: every device).
    public static func detach(device: String? = nil) -> Int32 {
        guard let device else { return sv_stableverbs_detach(nil) }
        return device.withCString { sv_stableverbs_detach($0) }
    }

    /// stableverbs_attach.
    public static func attach() -> Int32 { sv_stableverbs_attach() }
}

// MARK: - Test-only controls of the software HCA (not in include/stableverbs.h)
//
// C programs run through the shim on the software HCA (STABLEVERBS_LOWER=softhca) reach the
// double's removal and fault switches with these (dlsym them; with any other lower they answer
// ENOTSUP):
//   int stableverbs_softhca_remove_device(const char *name, int mode);
//         mode 0: fatal (mlx5-like: DEVICE_FATAL, QPs in error), 1: rxe-like (leaves the list,
//         ports down, PORT_ERR, removal waits for the contexts to close), 2: as 1 without the event,
//         3 / 4: as 0, and the completions of sends / of receives not polled yet are lost
//   int stableverbs_softhca_restore_device(const char *name, const char *new_name_or_null, int new_identity);
//   int stableverbs_softhca_removal_pending(const char *name);   1 while an rxe-like removal waits
//   int stableverbs_softhca_fail(const char *entry, int err, int count, int skip);
//   int stableverbs_softhca_gone_in(const char *entry, int skip);  the call of entry after skip
//         more makes its device vanish (mode 0) and fails with EIO; "entry@device": only the
//         calls on that device count
//   int stableverbs_softhca_present(const char *name);   1 while the device is in the list
//   int stableverbs_softhca_set_port(const char *name, int port, int active);  the port goes down
//         (PORT_ERR on every open context) or up (PORT_ACTIVE), the device staying

private func softHCAActive() -> Bool {
    let rt = Runtime.current
    return rt.lowerAvailable && String(cString: rt.lowerName) == "softhca"
}

@_cdecl("stableverbs_softhca_remove_device")
public func sv_softhca_remove_device(_ name: UnsafePointer<CChar>?, _ mode: Int32) -> Int32 {
    guard softHCAActive() else { return ENOTSUP }
    guard let name else { return EINVAL }
    let how: SoftHCA.Removal
    switch mode {
    case 0: how = .fatal
    case 1, 2: how = .waitForClose(portEvent: mode == 1)
    case 3, 4: how = .fatalLosingCompletions(sends: mode == 3)
    default: return EINVAL
    }
    return SoftHCA.removeDevice(String(cString: name), how) ? 0 : ENODEV
}

@_cdecl("stableverbs_softhca_restore_device")
public func sv_softhca_restore_device(_ name: UnsafePointer<CChar>?, _ newName: UnsafePointer<CChar>?, _ newIdentity: Int32) -> Int32 {
    guard softHCAActive() else { return ENOTSUP }
    guard let name else { return EINVAL }
    return SoftHCA.restoreDevice(String(cString: name), newIdentity: newIdentity != 0,
                                 newName: newName.map { String(cString: $0) }) ? 0 : ENODEV
}

@_cdecl("stableverbs_softhca_removal_pending")
public func sv_softhca_removal_pending(_ name: UnsafePointer<CChar>?) -> Int32 {
    guard softHCAActive(), let name else { return 0 }
    return SoftHCA.removalPending(String(cString: name)) ? 1 : 0
}

@_cdecl("stableverbs_softhca_fail")
public func sv_softhca_fail(_ entry: UnsafePointer<CChar>?, _ err: Int32, _ count: Int32, _ skip: Int32) -> Int32 {
    guard softHCAActive() else { return ENOTSUP }
    guard let entry else { return EINVAL }
    SoftHCA.failNext(String(cString: entry), errno: err, count: count <= 0 ? nil : Int(count), skip: Int(max(0, skip)))
    return 0
}

@_cdecl("stableverbs_softhca_gone_in")
public func sv_softhca_gone_in(_ entry: UnsafePointer<CChar>?, _ skip: Int32) -> Int32 {
    guard softHCAActive() else { return ENOTSUP }
    guard let entry else { return EINVAL }
    // ENTRY or ENTRY@DEVICE (only that device's calls count).
    let parts = String(cString: entry).split(separator: "@", maxSplits: 1).map(String.init)
    guard let name = parts.first else { return EINVAL }
    SoftHCA.removeDeviceIn(name, skip: Int(max(0, skip)), device: parts.count == 2 ? parts[1] : nil)
    return 0
}

@_cdecl("stableverbs_softhca_present")
public func sv_softhca_present(_ name: UnsafePointer<CChar>?) -> Int32 {
    guard softHCAActive(), let name else { return 0 }
    return SoftHCA.isPresent(String(cString: name)) ? 1 : 0
}

@_cdecl("stableverbs_softhca_set_port")
public func sv_softhca_set_port(_ name: UnsafePointer<CChar>?, _ port: Int32, _ active: Int32) -> Int32 {
    guard softHCAActive() else { return ENOTSUP }
    guard let name, port >= 1, port <= 255 else { return EINVAL }
    return SoftHCA.setPort(String(cString: name), port: UInt8(port), active: active != 0) ? 0 : ENODEV
}
