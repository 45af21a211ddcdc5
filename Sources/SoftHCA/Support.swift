import CVerbs
import StableVerbsABI
import Glibc

/// Small helpers shared by the files of the double.

typealias RawKey = UnsafeMutableRawPointer

@inline(__always) func key<T>(_ p: UnsafeMutablePointer<T>) -> RawKey { RawKey(p) }

/// Allocates one zeroed C structure.
func allocateZeroed<T>(_ type: T.Type, extra: Int = 0) -> UnsafeMutablePointer<T> {
    let size = MemoryLayout<T>.size + extra
    let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: max(MemoryLayout<T>.alignment, 16))
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    return raw.assumingMemoryBound(to: T.self)
}

func freeStructure<T>(_ p: UnsafeMutablePointer<T>) {
    UnsafeMutableRawPointer(p).deallocate()
}

/// Returns nil after setting errno: the native failure shape of a constructor.
@inline(__always) func failNull<T>(_ code: Int32) -> T? {
    errno = code
    return nil
}

/// Copies a Swift string into a fixed-size C char array (a tuple), NUL-terminated.
func setCString<T>(_ field: inout T, _ value: String) {
    withUnsafeMutableBytes(of: &field) { buffer in
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let bytes = Array(value.utf8.prefix(buffer.count - 1))
        for (i, b) in bytes.enumerated() { buffer[i] = b }
    }
}

/// 16-byte GIDs as Swift values.
struct GID: Hashable, Sendable, CustomStringConvertible {
    var bytes: [UInt8]

    init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    init(_ gid: ibv_gid) {
        var g = gid
        bytes = withUnsafeBytes(of: &g) { Array($0.prefix(16)) }
    }

    static let zero = GID(bytes: [UInt8](repeating: 0, count: 16))

    /// fe80::<interface id>
    static func linkLocal(interfaceID: UInt64) -> GID {
        var b: [UInt8] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0]
        for i in 0..<8 { b.append(UInt8(truncatingIfNeeded: interfaceID >> (56 - 8 * UInt64(i)))) }
        return GID(bytes: b)
    }

    /// ::ffff:a.b.c.d
    static func ipv4Mapped(_ address: UInt32) -> GID {
        var b = [UInt8](repeating: 0, count: 10) + [0xff, 0xff]
        for i in 0..<4 { b.append(UInt8(truncatingIfNeeded: address >> (24 - 8 * UInt32(i)))) }
        return GID(bytes: b)
    }

    var isMulticast: Bool { bytes[0] == 0xff }
    var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    var cValue: ibv_gid {
        var g = ibv_gid()
        withUnsafeMutableBytes(of: &g) { dst in
            for i in 0..<16 { dst[i] = bytes[i] }
        }
        return g
    }

    var description: String {
        stride(from: 0, to: 16, by: 2).map { i in
            let v = UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1])
            return String(v, radix: 16)
        }.joined(separator: ":")
    }
}

/// A connected socket pair whose first end is handed to the application as a pollable fd
/// (a completion channel's fd or a context's async_fd); one byte is queued per pending event.
/// The real fd pair behind an event queue (async events, a completion channel). The read end's
/// number lives in the verbs object (`async_fd`, `channel->fd`) once bound: like libibverbs, the
/// double always uses the number the object holds now, so a user that renumbers it with dup2 (the
/// shim keeps fd numbers stable across a rebuild that way) stays correct.
final class EventPipe {
    private let initialReadFD: Int32
    let writeFD: Int32
    private var readSlot: UnsafeMutablePointer<Int32>?

    private init(readFD: Int32, writeFD: Int32) {
        initialReadFD = readFD
        self.writeFD = writeFD
    }

    static func make() -> EventPipe? {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { return nil }
        return EventPipe(readFD: fds[0], writeFD: fds[1])
    }

    /// Stores the read end's number in `slot` (a field of the verbs object) and reads it from there.
    func bind(_ slot: UnsafeMutablePointer<Int32>) {
        slot.pointee = initialReadFD
        readSlot = slot
    }

    var readFD: Int32 { readSlot?.pointee ?? initialReadFD }

    func signal() {
        var b: UInt8 = 1
        _ = send(writeFD, &b, 1, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
    }

    /// Consumes one queued byte without blocking (the caller knows one is there).
    func consume() {
        var b: UInt8 = 0
        _ = recv(readFD, &b, 1, Int32(MSG_DONTWAIT))
    }

    var isNonBlocking: Bool { (fcntl(readFD, F_GETFL) & O_NONBLOCK) != 0 }

    /// Blocks until the read end is readable (outside the global lock).
    func waitReadable() {
        var pfd = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
        while poll(&pfd, 1, -1) < 0 && errno == EINTR {}
    }

    func close() {
        _ = Glibc.close(readFD)
        _ = Glibc.close(writeFD)
        readSlot = nil
    }
}
