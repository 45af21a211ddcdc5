// The runtime directory: where every shimmed process puts its control socket, `<dir>/<pid>.sock`.
//
//   $STABLEVERBS_RUNTIME_DIR, else $XDG_RUNTIME_DIR/stableverbs, else /tmp/stableverbs-<euid>
//
// The shim creates the directory 0700 and refuses to use one that is not a real directory owned by
// its effective uid, or that the group or others can reach: anyone who can write there could plant
// a socket the command would talk to, anyone who can search it could connect to a process. The
// command applies the same check before it trusts what it finds (root may inspect any user's).

import Glibc

public enum RuntimeDirectory {
    /// The directory for a process whose environment is `environment`.
    public static func path(environment: (String) -> String?) -> String {
        if let dir = environment("STABLEVERBS_RUNTIME_DIR"), !dir.isEmpty { return trimmed(dir) }
        if let xdg = environment("XDG_RUNTIME_DIR"), xdg.hasPrefix("/") { return trimmed(xdg) + "/stableverbs" }
        return "/tmp/stableverbs-\(geteuid())"
    }

    /// The control socket of process `pid` in `directory`.
    public static func socketPath(_ directory: String, pid: Int32) -> String {
        "\(directory)/\(pid).sock"
    }

    /// The pid of a directory entry named `<pid>.sock`, nil for any other name.
    public static func pid(ofEntry name: String) -> Int32? {
        guard name.hasSuffix(".sock") else { return nil }
        let digits = name.dropLast(5)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let pid = Int32(digits), pid > 0 else {
            return nil
        }
        return pid
    }

    /// A unix socket path must fit sockaddr_un.sun_path with its NUL.
    public static let maxSocketPath = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    public enum Problem: Error, CustomStringConvertible, Equatable {
        case missing(String)
        case notDirectory(String)
        case wrongOwner(String, owner: UInt32, expected: UInt32)
        case accessible(String, mode: UInt32)
        case failed(String, what: String, errno: Int32)

        public var description: String {
            switch self {
            case .missing(let p):
                return "runtime directory \(p) does not exist"
            case .notDirectory(let p):
                return "runtime directory \(p) is not a directory (a symbolic link or another file is refused)"
            case .wrongOwner(let p, let owner, let expected):
                return "runtime directory \(p) is owned by uid \(owner), not by uid \(expected): refusing to use it "
                    + "(remove it, or set STABLEVERBS_RUNTIME_DIR to a directory of your own)"
            case .accessible(let p, let mode):
                return "runtime directory \(p) has mode \(octal(mode)): the group or others can reach it; refusing to use it "
                    + "(chmod 700 \(p), or set STABLEVERBS_RUNTIME_DIR to a private directory)"
            case .failed(let p, let what, let e):
                return "runtime directory \(p): \(what) failed: \(String(cString: strerror(e)))"
            }
        }
    }

    /// Creates `path` (mode 0700, its parent must exist) when it is missing and `create` is set, then
    /// checks it: a directory, owned by the effective uid (or, with `allowAnyOwnerForRoot`, any owner
    /// when that uid is 0), no group or other permission bits.
    public static func prepare(_ path: String, create: Bool, allowAnyOwnerForRoot: Bool = false) -> Problem? {
        var st = stat()
        if lstat(path, &st) != 0 {
            let e = errno
            guard e == ENOENT else { return .failed(path, what: "lstat", errno: e) }
            guard create else { return .missing(path) }
            if mkdir(path, 0o700) == 0 {
                _ = chmod(path, 0o700)  // mkdir honours the umask; the mode must be exactly 0700
            } else if errno != EEXIST {
                return .failed(path, what: "mkdir", errno: errno)
            }
            if lstat(path, &st) != 0 { return .failed(path, what: "lstat", errno: errno) }
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { return .notDirectory(path) }
        let me = geteuid()
        if st.st_uid != me && !(allowAnyOwnerForRoot && me == 0) {
            return .wrongOwner(path, owner: st.st_uid, expected: me)
        }
        if st.st_mode & 0o077 != 0 { return .accessible(path, mode: st.st_mode & 0o7777) }
        return nil
    }

    static func octal(_ mode: UInt32) -> String {
        let s = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }

    private static func trimmed(_ p: String) -> String {
        var s = Substring(p)
        while s.count > 1 && s.hasSuffix("/") { s = s.dropLast() }
        return String(s)
    }
}
