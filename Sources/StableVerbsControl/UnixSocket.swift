// Unix stream socket helpers shared by the shim's control socket and the command: addresses, peer
// credentials, whole writes that never raise SIGPIPE.

import Glibc

public enum UnixSocket {
    /// A new unix stream socket (close-on-exec; non-blocking when asked), or -1 with errno set.
    public static func make(nonBlocking: Bool = false) -> Int32 {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        return socket(AF_UNIX, type, 0)
    }

    /// Calls `body` with the sockaddr_un of `path` (nil when the path does not fit).
    public static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + 1)
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// The credentials of the process at the other end (SO_PEERCRED: struct ucred).
    public struct Peer: Sendable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
    }

    public static func peer(_ fd: Int32) -> Peer? {
        var cred = Peer(pid: 0, uid: 0, gid: 0)
        var len = socklen_t(MemoryLayout<Peer>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, len == socklen_t(MemoryLayout<Peer>.size) else {
            return nil
        }
        return cred
    }

    /// Whether a peer may talk to us: the same effective uid, or root.
    public static func trusted(_ peer: Peer) -> Bool {
        peer.uid == geteuid() || peer.uid == 0
    }

    /// Writes all of `text` (MSG_NOSIGNAL: a client that went away is an error, not a signal).
    /// On a non-blocking socket, stops at EAGAIN and returns the bytes written.
    @discardableResult
    public static func send(_ fd: Int32, _ bytes: [UInt8]) -> Int {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                break
            }
            off += n
        }
        return off
    }

    /// Sets a receive and send timeout on a blocking socket.
    public static func setTimeouts(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}
