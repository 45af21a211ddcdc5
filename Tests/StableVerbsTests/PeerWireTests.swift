// The peer protocol's wire (Peers/PeerWire.swift): signed messages and batches of them. The
// protocol itself runs between processes on real rxe: Tests/LabTests/PeerRecoveryLabTests.swift.

import Crypto
import Foundation
import Testing

@testable import StableVerbs

@Suite("Peer protocol wire")
struct PeerWireTests {
    private let keyA: [UInt8] = Array(repeating: 0x11, count: 32)
    private let keyB: [UInt8] = Array(repeating: 0x22, count: 32)

    private func moved(_ qpn: Int) -> PeerMessage {
        var m = PeerMessage("moved")
        m["to_qpn"] = "\(qpn)"
        m["msgs"] = "1:2:3:4,5:6:7:8"
        return m
    }

    @Test("a signed message verifies only under its own key and unaltered")
    func signedMessage() throws {
        let bytes = moved(17).encoded(key: keyA)
        let d = try #require(PeerMessage.decode(bytes))
        #expect(d.message.verb == "moved" && d.message["to_qpn"] == "17" && d.message["msgs"] == "1:2:3:4,5:6:7:8")
        #expect(PeerMessage.verify(d, key: keyA))
        #expect(!PeerMessage.verify(d, key: keyB))
        var altered = bytes
        altered[altered.firstIndex(of: UInt8(ascii: "7"))!] = UInt8(ascii: "8")  // to_qpn=18
        let a = try #require(PeerMessage.decode(altered))
        #expect(a.message["to_qpn"] == "18" && !PeerMessage.verify(a, key: keyA))
        #expect(!PeerMessage.verify(try #require(PeerMessage.decode(moved(17).encoded(key: nil))), key: keyA))
    }

    @Test("a batch carries each part, signed with its own link's key, in order")
    func batchRoundTrip() throws {
        let parts = [moved(17).encoded(key: keyA), moved(18).encoded(key: keyB), []]
        let bytes = PeerBatch.encode(parts)
        #expect(PeerMessage.decode(bytes) == nil)  // not a single message
        let back = try #require(PeerBatch.decode(bytes))
        #expect(back == parts)
        let a = try #require(PeerMessage.decode(back[0])), b = try #require(PeerMessage.decode(back[1]))
        #expect(PeerMessage.verify(a, key: keyA) && !PeerMessage.verify(a, key: keyB))
        #expect(PeerMessage.verify(b, key: keyB) && b.message["to_qpn"] == "18")
        #expect(PeerBatch.decode(PeerBatch.encode([])) == [])
    }

    @Test("a malformed or truncated batch is refused as a whole")
    func malformedBatch() {
        let bytes = PeerBatch.encode([moved(17).encoded(key: keyA), moved(18).encoded(key: keyB)])
        #expect(PeerBatch.decode(Array(bytes.dropLast())) == nil)                      // last part short
        #expect(PeerBatch.decode(moved(17).encoded(key: keyA)) == nil)                 // a single message
        #expect(PeerBatch.decode(PeerBatch.header + Array("part=x\n".utf8)) == nil)    // no length
        #expect(PeerBatch.decode(PeerBatch.header + Array("part=-1\n".utf8)) == nil)   // negative length
        #expect(PeerBatch.decode(PeerBatch.header + Array("junk\n".utf8)) == nil)
    }

    // MARK: - HMAC-SHA256 (Peers/HMACSHA256.swift)

    private func bytes(_ hex: String) -> [UInt8] { bytesFromHex(hex)! }

    @Test("SHA-256: FIPS 180-4's examples and a million 'a's")
    func sha256Vectors() {
        #expect(hexString(SHA256Hash.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hexString(SHA256Hash.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hexString(SHA256Hash.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var s = SHA256Hash()
        for _ in 0..<1000 { s.update([UInt8](repeating: UInt8(ascii: "a"), count: 1000)) }
        #expect(hexString(s.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test("HMAC-SHA256: RFC 4231's test cases 1-4, 6 and 7")
    func hmacVectors() {
        let cases: [(key: [UInt8], data: [UInt8], mac: String)] = [
            ([UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8),
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ([UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (bytes("0102030405060708090a0b0c0d0e0f10111213141516171819"), [UInt8](repeating: 0xcd, count: 50),
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            ([UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            ([UInt8](repeating: 0xaa, count: 131),
             Array("This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".utf8),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
        ]
        for (i, c) in cases.enumerated() {
            #expect(hexString(HMACSHA256.code(key: c.key, message: c.data)) == c.mac, "case \(i)")
            #expect(HMACSHA256.isValid(bytes(c.mac), key: c.key, message: c.data))
            var wrong = bytes(c.mac)
            wrong[31] ^= 1
            #expect(!HMACSHA256.isValid(wrong, key: c.key, message: c.data))
            #expect(!HMACSHA256.isValid(Array(bytes(c.mac).prefix(16)), key: c.key, message: c.data))
        }
    }

    @Test("HMAC-SHA256 agrees with swift-crypto on keys and messages of every length around the block size")
    func hmacAgainstSwiftCrypto() {
        var rng = SystemRandomNumberGenerator()
        for keyLength in [0, 1, 31, 32, 55, 56, 63, 64, 65, 100, 128, 129] {
            for length in 0...200 {
                let key = (0..<keyLength).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let message = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let reference = Array(HMAC<Crypto.SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
                #expect(HMACSHA256.code(key: key, message: message) == reference, "key \(keyLength) B, message \(length) B")
            }
        }
    }

    // MARK: - Sockets

    /// A loopback TCP socket bound to a free port of 127.0.0.`host` (listening or not) and its port.
    private func loopbackSocket(listening: Bool, host: UInt32 = 1) -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_addr.s_addr = (0x7f00_0000 | host).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        if listening { _ = listen(fd, 4) }
        _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, UInt16(bigEndian: sa.sin_port))
    }

    /// Answers one connection on listening socket `fd` (a thread): the whole request, then `reply`'s bytes.
    private func serveOnce(_ fd: Int32, reply: @escaping @Sendable ([UInt8]) -> [UInt8]) {
        Thread.detachNewThread {
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            var request = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 256)
            while true {
                let n = recv(c, &buf, buf.count, 0)
                if n <= 0 { break }
                request += buf[0..<n]
            }
            let bytes = reply(request)
            _ = send(c, bytes, bytes.count, Int32(MSG_NOSIGNAL))
            close(c)
        }
    }

    @Test("exchangeAll asks every port at once and returns the replies of those that answer, in port order")
    func exchangeAllPorts() throws {
        let a = loopbackSocket(listening: true), b = loopbackSocket(listening: true)
        let refused = loopbackSocket(listening: false)   // bound, not listening: connection refused
        defer { for s in [a, b, refused] { close(s.fd) } }
        for (s, word) in [(a, "one"), (b, "two")] {
            serveOnce(s.fd) { Array("\(String(decoding: $0, as: UTF8.self)) -> \(word)".utf8) }
        }
        let host = try #require(PeerHost(text: "127.0.0.1"))
        let replies = PeerSocket.exchangeAll(host: host, ports: [refused.port, b.port, a.port], request: Array("ping".utf8), timeoutMS: 2000)
        #expect(replies.map(\.0) == [b.port, a.port])
        #expect(replies.map { String(decoding: $0.1, as: UTF8.self) } == ["ping -> two", "ping -> one"])
    }

    @Test("exchangeAll(targets:) asks every port of several hosts at once, in groups: the replies of those that answer, in the targets' order")
    func exchangeAllHosts() throws {
        // Three hosts of 127/8 (every one of them is this machine's loopback): a shim on .2 and
        // one on .3, nothing on .4's port.
        let two = loopbackSocket(listening: true, host: 2), three = loopbackSocket(listening: true, host: 3)
        let none = loopbackSocket(listening: false, host: 4)
        defer { for s in [two, three, none] { close(s.fd) } }
        for (s, word) in [(two, "two"), (three, "three")] {
            serveOnce(s.fd) { Array("\(String(decoding: $0, as: UTF8.self)) -> \(word)".utf8) }
        }
        let h2 = try #require(PeerHost(text: "127.0.0.2")), h3 = try #require(PeerHost(text: "127.0.0.3"))
        let h4 = try #require(PeerHost(text: "127.0.0.4"))
        // Each host asked on every port of the others too (refused there), as an introduction asks
        // a peer range on every candidate host; more targets than one group holds.
        let ports = [two.port, three.port, none.port]
        var targets = [h4, h3, h2].flatMap { h in ports.map { PeerTarget(host: h, port: $0) } }
        let filler = PeerTarget(host: h4, port: none.port)
        targets = Array(repeating: filler, count: PeerSocket.concurrentConnections) + targets
        let replies = PeerSocket.exchangeAll(targets: targets, request: Array("hello".utf8), timeoutMS: 2000)
        #expect(replies.map(\.0) == [PeerTarget(host: h3, port: three.port), PeerTarget(host: h2, port: two.port)])
        #expect(replies.map { String(decoding: $0.1, as: UTF8.self) } == ["hello -> three", "hello -> two"])
    }

    @Test("exchangeParts: one request goes alone, several as a batch; answers per request, all nil when the count differs or nobody answers")
    func exchangeParts() throws {
        let host = try #require(PeerHost(text: "127.0.0.1"))
        let (keyA, keyB) = (self.keyA, self.keyB)
        let requests = [moved(1).encoded(key: keyA), moved(2).encoded(key: keyB)]
        // Each part answered `ok` under the key of the link it names (to_qpn 1: keyA, 2: keyB).
        let answerParts: @Sendable ([UInt8]) -> [[UInt8]] = { bytes in
            let parts = PeerBatch.decode(bytes) ?? [bytes]
            return parts.map { p in
                let qpn = PeerMessage.decode(p)?.message["to_qpn"] ?? "?"
                var m = PeerMessage("ok")
                m["to_qpn"] = qpn
                return m.encoded(key: qpn == "1" ? keyA : keyB)
            }
        }
        let batch = loopbackSocket(listening: true), single = loopbackSocket(listening: true)
        let short = loopbackSocket(listening: true), refused = loopbackSocket(listening: false)
        defer { for s in [batch, single, short, refused] { close(s.fd) } }
        serveOnce(batch.fd) { PeerBatch.encode(answerParts($0)) }
        serveOnce(single.fd) { PeerBatch.decode($0) == nil ? answerParts($0)[0] : [] }
        serveOnce(short.fd) { PeerBatch.encode(Array(answerParts($0).prefix(1))) }

        let both = PeerSocket.exchangeParts(host: host, port: batch.port, requests: requests, timeoutMS: 2000)
        #expect(both.count == 2)
        #expect(both.map { $0?.message["to_qpn"] } == ["1", "2"])
        #expect(both[0].map { PeerMessage.verify($0, key: keyA) } == true)
        #expect(both[1].map { PeerMessage.verify($0, key: keyB) } == true)
        #expect(both[1].map { PeerMessage.verify($0, key: keyA) } == false)

        let one = PeerSocket.exchangeParts(host: host, port: single.port, requests: [requests[0]], timeoutMS: 2000)
        #expect(one.count == 1 && one[0]?.message.verb == "ok" && one[0]?.message["to_qpn"] == "1")

        let mismatched = PeerSocket.exchangeParts(host: host, port: short.port, requests: requests, timeoutMS: 2000)
        #expect(mismatched.count == 2 && mismatched.allSatisfy { $0 == nil })
        let unreachable = PeerSocket.exchangeParts(host: host, port: refused.port, requests: requests, timeoutMS: 500)
        #expect(unreachable.count == 2 && unreachable.allSatisfy { $0 == nil })
        #expect(PeerSocket.exchangeParts(host: host, port: refused.port, requests: [], timeoutMS: 500).isEmpty)
    }
}
