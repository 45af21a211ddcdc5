// The peer protocol's wire (DESIGN §4): one request per TCP connection, answered by one reply.
//
//     stableverbs-peer 1 <verb>\n
//     key=value\n ...
//     mac=<hex HMAC-SHA256 of everything above, with the link's key>\n     (all but `hello`)
//
// The requester half-closes after its request; the service answers and closes. Values are decimal
// numbers, hex strings (GIDs, nonces, MACs) or comma-separated lists. Nothing here touches verbs
// objects: PeerService.swift and Reconnect.swift give the messages their meaning.

import CVerbs
import Glibc

/// A message as decoded: its fields, the bytes its MAC covers, the MAC.
typealias DecodedPeerMessage = (message: PeerMessage, signed: [UInt8], mac: String?)

struct PeerMessage {
    static let magic = "stableverbs-peer 1"
    var verb: String
    var fields: [(String, String)] = []

    init(_ verb: String) { self.verb = verb }

    subscript(_ key: String) -> String? {
        get { fields.first { $0.0 == key }?.1 }
        set {
            fields.removeAll { $0.0 == key }
            if let newValue { fields.append((key, newValue)) }
        }
    }

    func number(_ key: String) -> UInt64? { self[key].flatMap { UInt64($0) } }

    /// The text of the message; with `key`, signed (a last `mac=` line).
    func encoded(key: [UInt8]?) -> [UInt8] {
        var text = "\(PeerMessage.magic) \(verb)\n"
        for (k, v) in fields { text += "\(k)=\(v)\n" }
        var bytes = Array(text.utf8)
        if let key {
            bytes += Array("mac=\(PeerMessage.mac(bytes, key: key))\n".utf8)
        }
        return bytes
    }

    static func mac(_ bytes: [UInt8], key: [UInt8]) -> String {
        hexString(HMACSHA256.code(key: key, message: bytes))
    }

    /// Parses a message. The `mac` line, when present, is returned with the bytes it covers.
    static func decode(_ bytes: [UInt8]) -> DecodedPeerMessage? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        guard let first = lines.first, first.hasPrefix(magic + " ") else { return nil }
        var message = PeerMessage(String(first.dropFirst(magic.count + 1)))
        var mac: String? = nil
        var signedLength = 0
        for (i, line) in lines.enumerated() {
            if i == 0 {
                signedLength += line.utf8.count + 1
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { return nil }
            let k = String(line[..<eq]), v = String(line[line.index(after: eq)...])
            if k == "mac" {
                mac = v
                break
            }
            message.fields.append((k, v))
            signedLength += line.utf8.count + 1
        }
        return (message, Array(bytes.prefix(signedLength)), mac)
    }

    /// Whether `decoded` carries a valid MAC under `key` (constant-time comparison).
    static func verify(_ decoded: DecodedPeerMessage, key: [UInt8]) -> Bool {
        guard let mac = decoded.mac, let given = bytesFromHex(mac), !key.isEmpty else { return false }
        return HMACSHA256.isValid(given, key: key, message: decoded.signed)
    }
}

/// Several messages in one exchange (a mover announcing its move to, or reconnecting, many links to
/// one peer process):
///
///     stableverbs-peer 1 batch\n
///     part=<length>\n<the part's bytes: a whole message, signed with its own link's key>  ...
///
/// The reply is a batch too, one part per request part, in order.
enum PeerBatch {
    static let header = Array("\(PeerMessage.magic) batch\n".utf8)

    static func encode(_ parts: [[UInt8]]) -> [UInt8] {
        var out = header
        for p in parts { out += Array("part=\(p.count)\n".utf8) + p }
        return out
    }

    /// What goes on the wire for several signed messages to one shim: one alone, more as a batch.
    static func request(_ parts: [[UInt8]]) -> [UInt8] {
        parts.count == 1 ? parts[0] : encode(parts)
    }

    /// The answers to a `request` of `count` messages, decoded, one per message in order; nil
    /// when the reply holds another number of parts.
    static func answers(_ reply: [UInt8], count: Int) -> [DecodedPeerMessage?]? {
        if count == 1 { return [PeerMessage.decode(reply)] }
        guard let parts = decode(reply), parts.count == count else { return nil }
        return parts.map(PeerMessage.decode)
    }

    /// The parts of a batch; nil when `bytes` is not a well-formed batch.
    static func decode(_ bytes: [UInt8]) -> [[UInt8]]? {
        guard bytes.starts(with: header) else { return nil }
        var parts: [[UInt8]] = []
        var i = header.count
        let prefix = Array("part=".utf8)
        while i < bytes.count {
            guard bytes[i...].starts(with: prefix), let nl = bytes[i...].firstIndex(of: UInt8(ascii: "\n")),
                  let n = Int(String(decoding: bytes[(i + prefix.count)..<nl], as: UTF8.self)),
                  n >= 0, n <= bytes.count - nl - 1 else { return nil }
            parts.append(Array(bytes[(nl + 1)..<(nl + 1 + n)]))
            i = nl + 1 + n
        }
        return parts
    }
}

/// The key two shims share for one connection, from the nonces of the registration.
func linkKey(_ a: [UInt8], _ b: [UInt8], _ label: String) -> [UInt8] {
    SHA256Hash.hash(Array("stableverbs-link \(label)".utf8) + a + b)
}

func randomBytes(_ n: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    return (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
}

func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}

func bytesFromHex(_ s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
    var out = [UInt8]()
    out.reserveCapacity(u.count / 2)
    var i = 0
    while i < u.count {
        guard let h = nibble(u[i]), let l = nibble(u[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}

// MARK: - Sockets

enum PeerSocket {
    /// Sends `request` to host:port and returns the reply bytes; nil when the peer cannot be reached
    /// or does not answer (or answers nothing) within `timeoutMS`.
    static func exchange(host: PeerHost, port: UInt16, request: [UInt8], timeoutMS: Int32) -> [UInt8]? {
        exchangeAll(host: host, ports: [port], request: request, timeoutMS: timeoutMS).first?.1
    }

    /// One exchange of several signed messages with the shim at host:port: one alone, more as a
    /// `PeerBatch`. The answers, decoded, one per request in order; all nil when the peer cannot
    /// be reached, does not answer in time, or answers with another number of parts.
    static func exchangeParts(host: PeerHost, port: UInt16, requests: [[UInt8]], timeoutMS: Int32) -> [DecodedPeerMessage?] {
        let none = [DecodedPeerMessage?](repeating: nil, count: requests.count)
        guard !requests.isEmpty else { return [] }
        guard let bytes = exchange(host: host, port: port, request: PeerBatch.request(requests), timeoutMS: timeoutMS),
              let answers = PeerBatch.answers(bytes, count: requests.count) else { return none }
        return answers
    }

    /// `exchange` with every port in `ports` of `host` at once: the connections are made
    /// concurrently (most ports of a peer range have no shim: a refused connection costs a round
    /// trip, which across many ports was the cost of a UD announcement); the requests then go to
    /// the ports that accepted. Returns the replies by port, in `ports`' order.
    static func exchangeAll(host: PeerHost, ports: [UInt16], request: [UInt8], timeoutMS: Int32) -> [(UInt16, [UInt8])] {
        exchangeAll(targets: ports.map { PeerTarget(host: host, port: $0) }, request: request, timeoutMS: timeoutMS)
            .map { ($0.0.port, $0.1) }
    }

    /// At most this many connections are open at once (a process's descriptor limit is often 1 024).
    static let concurrentConnections = 256

    /// `exchange` with every target at once, `concurrentConnections` at a time, each group within
    /// `timeoutMS`: the replies of those that answered, in `targets`' order.
    static func exchangeAll(targets: [PeerTarget], request: [UInt8], timeoutMS: Int32) -> [(PeerTarget, [UInt8])] {
        var replies: [(PeerTarget, [UInt8])] = []
        var start = 0
        while start < targets.count {
            let group = targets[start..<min(targets.count, start + concurrentConnections)]
            replies += exchangeGroup(group, request: request, timeoutMS: timeoutMS)
            start += group.count
        }
        return replies
    }

    private static func exchangeGroup(_ targets: ArraySlice<PeerTarget>, request: [UInt8], timeoutMS: Int32) -> [(PeerTarget, [UInt8])] {
        let deadline = monotonicNS() &+ UInt64(timeoutMS) * 1_000_000
        var pending: [(target: PeerTarget, fd: Int32)] = []
        defer { for p in pending { close(p.fd) } }
        for t in targets {
            let fd = socket(t.host.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { continue }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let rc = t.host.withSockaddr(port: t.port) { sa, len in connect(fd, sa, len) }
            if rc != 0 && errno != EINPROGRESS { close(fd); continue }
            pending.append((t, fd))
        }
        // Until every connection is made or refused (or the deadline).
        var settled = Set<Int32>()
        while settled.count < pending.count {
            let now = monotonicNS()
            if now >= deadline { break }
            var fds = pending.filter { !settled.contains($0.fd) }.map { pollfd(fd: $0.fd, events: Int16(POLLOUT), revents: 0) }
            let r = poll(&fds, nfds_t(fds.count), Int32(max(1, (deadline - now) / 1_000_000)))
            if r < 0 && errno != EINTR { break }
            for p in fds where p.revents != 0 { settled.insert(p.fd) }
        }
        var replies: [(PeerTarget, [UInt8])] = []
        for p in pending where settled.contains(p.fd) {
            var err: Int32 = 0
            var errLen = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &errLen)
            guard err == 0, writeAll(p.fd, request, deadline) else { settled.remove(p.fd); continue }
            _ = shutdown(p.fd, Int32(SHUT_WR))
        }
        for p in pending where settled.contains(p.fd) {
            if let reply = readAll(p.fd, deadline), !reply.isEmpty { replies.append((p.target, reply)) }
        }
        return replies
    }

    static func waitFor(_ fd: Int32, _ events: Int16, _ deadline: UInt64) -> Bool {
        while true {
            let now = monotonicNS()
            if now >= deadline { return false }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&p, 1, Int32(max(1, (deadline - now) / 1_000_000)))
            if r > 0 { return true }
            if r < 0 && errno != EINTR { return false }
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], _ deadline: UInt64) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                off += n
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                guard waitFor(fd, Int16(POLLOUT), deadline) else { return false }
            } else {
                return false
            }
        }
        return true
    }

    /// Reads until EOF (at most 1 MiB).
    static func readAll(_ fd: Int32, _ deadline: UInt64) -> [UInt8]? {
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 16384)
        while out.count < 1 << 20 {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 {
                out += buf[0..<n]
            } else if n == 0 {
                return out
            } else if errno == EAGAIN || errno == EINTR {
                guard waitFor(fd, Int16(POLLIN), deadline) else { return nil }
            } else {
                return nil
            }
        }
        return nil
    }
}

/// One shim's service address: a host and one port of its range.
struct PeerTarget: Hashable {
    var host: PeerHost
    var port: UInt16
}

/// Where a peer shim is reached: the IP address inside a RoCE GID (IPv4-mapped or IPv6), or
/// STABLEVERBS_PEER_HOST.
struct PeerHost: Hashable, CustomStringConvertible {
    var v4: UInt32?          // network order
    var v6: [UInt8]?

    var family: Int32 { v4 != nil ? AF_INET : AF_INET6 }

    /// The host a GID names: an IPv4-mapped GID (::ffff:a.b.c.d) or a non-link-local IPv6 GID.
    init?(gid: ibv_gid) {
        var g = gid
        let b = withUnsafeBytes(of: &g.raw) { Array($0) }
        self.init(address: b)
        if v4 == nil && (b.allSatisfy({ $0 == 0 }) || (b[0] == 0xfe && b[1] & 0xc0 == 0x80)) {
            return nil  // no address, or link-local (the scope is not known here)
        }
    }

    /// The host of a 16-byte address: IPv4-mapped (::ffff:a.b.c.d) or IPv6.
    init(address b: [UInt8]) {
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {
            v4 = b[12..<16].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        } else {
            v6 = b
        }
    }

    init?(text: String) {
        var a = in_addr()
        if inet_pton(AF_INET, text, &a) == 1 {
            v4 = a.s_addr
            return
        }
        var a6 = in6_addr()
        if inet_pton(AF_INET6, text, &a6) == 1 {
            v6 = withUnsafeBytes(of: &a6) { Array($0) }
            return
        }
        return nil
    }

    func withSockaddr<T>(port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        if let v4 {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            sa.sin_addr.s_addr = v4
            return withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        var sa = sockaddr_in6()
        sa.sin6_family = sa_family_t(AF_INET6)
        sa.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &sa.sin6_addr) { d in for (i, b) in (v6 ?? []).enumerated() where i < 16 { d[i] = b } }
        return withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
    }

    var description: String {
        var buf = [CChar](repeating: 0, count: 64)
        if var a = v4.map({ in_addr(s_addr: $0) }) {
            _ = inet_ntop(AF_INET, &a, &buf, 64)
        } else {
            var a6 = in6_addr()
            withUnsafeMutableBytes(of: &a6) { d in for (i, b) in (v6 ?? []).enumerated() where i < 16 { d[i] = b } }
            _ = inet_ntop(AF_INET6, &a6, &buf, 64)
        }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

func gidHex(_ gid: ibv_gid) -> String {
    var g = gid
    return hexString(withUnsafeBytes(of: &g.raw) { Array($0) })
}

func gidFromHex(_ s: String) -> ibv_gid? {
    guard let b = bytesFromHex(s), b.count == 16 else { return nil }
    var g = ibv_gid()
    withUnsafeMutableBytes(of: &g.raw) { d in for i in 0..<16 { d[i] = b[i] } }
    return g
}
