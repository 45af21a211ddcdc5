// The control socket in include/stableverbs.h.

import Glibc
import StableVerbsABI

/// stableverbs_control_path: this process's control socket path; ENOENT before it exists (no
/// device context opened yet in this process, or the runtime directory was refused), ERANGE when
/// `len` cannot hold it and its NUL.
@_cdecl("stableverbs_control_path")
public func sv_stableverbs_control_path(_ buf: UnsafeMutablePointer<CChar>?, _ len: Int) -> Int32 {
    guard let buf, len > 0 else { return EINVAL }
    _ = Runtime.current
    guard let path = withControlLock({ ControlSocket.currentPath }) else { return ENOENT }
    let bytes = Array(path.utf8)
    guard bytes.count < len else { return ERANGE }
    for (i, b) in bytes.enumerated() { buf[i] = CChar(bitPattern: b) }
    buf[bytes.count] = 0
    return 0
}

extension StableVerbs {
    /// stableverbs_control_path: this process's control socket, nil before it exists.
    public static var controlPath: String? {
        _ = Runtime.current
        return withControlLock { ControlSocket.currentPath }
    }
}
