// The control protocol between the `stableverbs` command and a shimmed process's control socket.
//
// The client connects, writes one request line and reads reply lines until the server closes:
//
//   request   status | detach [DEVICE] | attach                               (one line, ≤ 4096 bytes)
//   reply     stableverbs-control 1                                           (the version line)
//             process pid=1234 program=ib_write_lat lower=libibverbs
//             context virtual=mlx5_0 device=mlx5_2 state=live detached=0 generation=1 qps=2 cqs=2 mrs=1 srqs=0 ahs=0
//             recovery count=1 last=planned contexts=1 quiesce_ms=0.102 release_ms=0.731 device_wait_ms=0.002
//                      rebuild_ms=1.250 reconnect_ms=0.300 replay_ms=0.010 replayed=6 error=0
//             ok contexts=1 ms=12.345                                     (or: error errno=19 message=...)
//
// Every reply line is a record: a kind and `key=value` fields separated by single spaces; values
// escape '%', '=', spaces, control bytes and DEL as %XX. The last line is `ok` or `error`; a reply
// that ends without one was cut short. `status` answers process, context (one per virtual context)
// and recovery records; `detach` and `attach` answer the process record and their result. A client
// that sees another major version than its own stops.

public enum ControlProtocol {
    public static let version = 1
    public static let versionLine = "stableverbs-control \(version)"
    public static let maxRequest = 4096

    public enum Request: Equatable, Sendable {
        case status
        case detach(device: String?)
        case attach

        /// Parses one request line (without its newline).
        public init?(line: String) {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            switch (words.first, words.count) {
            case ("status", 1): self = .status
            case ("attach", 1): self = .attach
            case ("detach", 1): self = .detach(device: nil)
            case ("detach", 2): self = .detach(device: String(words[1]))
            default: return nil
            }
        }

        public var line: String {
            switch self {
            case .status: "status"
            case .attach: "attach"
            case .detach(let d): d.map { "detach \($0)" } ?? "detach"
            }
        }
    }

    /// One reply line: `kind key=value ...`.
    public struct Record: Sendable {
        public var kind: String
        public var fields: [(key: String, value: String)]

        public init(_ kind: String, _ fields: [(String, String)] = []) {
            self.kind = kind
            self.fields = fields.map { (key: $0.0, value: $0.1) }
        }

        public subscript(_ key: String) -> String? { fields.first { $0.key == key }?.value }

        public var line: String {
            ([kind] + fields.map { "\($0.key)=\(ControlProtocol.escape($0.value))" }).joined(separator: " ")
        }

        /// Parses a reply line; nil when it is not `kind key=value ...`.
        public init?(line: Substring) {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let first = words.first, !first.contains("=") else { return nil }
            kind = String(first)
            fields = []
            for w in words.dropFirst() {
                guard let eq = w.firstIndex(of: "=") else { return nil }
                fields.append((key: String(w[..<eq]), value: ControlProtocol.unescape(w[w.index(after: eq)...])))
            }
        }
    }

    public static func escape(_ s: String) -> String {
        func plain(_ b: UInt8) -> Bool { b > 0x20 && b < 0x7F && b != UInt8(ascii: "%") && b != UInt8(ascii: "=") }
        guard !s.utf8.allSatisfy(plain) else { return s }
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        for b in s.utf8 {
            if plain(b) { bytes.append(b) } else { bytes += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]] }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public static func unescape(_ s: Substring) -> String {
        var bytes: [UInt8] = []
        var u = Array(s.utf8)[...]
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        while let b = u.popFirst() {
            if b == UInt8(ascii: "%"), u.count >= 2, let h = nibble(u[u.startIndex]), let l = nibble(u[u.startIndex + 1]) {
                bytes.append(h << 4 | l)
                u = u.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Milliseconds with three decimals, from nanoseconds ("12.345").
    public static func milliseconds(_ ns: UInt64) -> String {
        let us = ns / 1000
        let frac = String(us % 1000)
        return "\(us / 1000)." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
