// The peer protocol's wire (Peers/PeerWire.swift): signed messages and batches of them. The
// protocol itself runs between processes on real rxe: Tests/LabTests/PeerRecoveryLabTests.swift.

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
}
