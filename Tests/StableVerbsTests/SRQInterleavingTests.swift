// Which SRQ receive took which QP's message, when the completions died with the device
// (Peers/SRQReceives.swift): the interleaving of each QP's lost messages over the SRQ's oldest
// not-done receives that fits their payloads, and the senders' descriptions on the wire. The whole
// path runs in RecoveryTests.srqLostReceives.

import Testing

@testable import StableVerbs

@Suite("SRQ lost receives")
struct SRQInterleavingTests {
    /// Slots holding payloads (letters); sequences of messages (letters) in order.
    private func order(_ slots: String, _ sequences: [String]) -> [Int]? {
        let s = Array(slots), q = sequences.map(Array.init)
        return interleaving(slots: s.count, counts: q.map(\.count)) { slot, i, m in s[slot] == q[i][m] }
    }

    @Test("the one interleaving that fits is found, each sequence kept in order")
    func unique() {
        #expect(order("abxcy", ["abc", "xy"]) == [0, 0, 1, 0, 1])
        #expect(order("xabyc", ["abc", "xy"]) == [1, 0, 0, 1, 0])
        #expect(order("aaab", ["aab", "a"]) != nil)
        // A choice that only fails later is undone: "a" from the second sequence first.
        #expect(order("abac", ["ac", "ab"]) == [1, 1, 0, 0])
    }

    @Test("no interleaving fits: nil, never a guess")
    func none() {
        #expect(order("abxc", ["abc", "y"]) == nil)   // a payload nobody sent
        #expect(order("bacx", ["abc", "x"]) == nil)   // a sequence out of order
        #expect(order("abc", ["abc", "x"]) == nil)    // more messages than slots
        #expect(order("abcx", ["abc"]) == nil)        // more slots than messages
    }

    @Test("equal payloads: any interleaving fits, each slot taken once")
    func equalPayloads() throws {
        let chosen = try #require(order("aaaaaaaa", ["aaaa", "aa", "aa"]))
        #expect(chosen.filter { $0 == 0 }.count == 4 && chosen.filter { $0 == 1 }.count == 2 && chosen.filter { $0 == 2 }.count == 2)
    }

    @Test("a search past its budget gives up")
    func budget() {
        // 12 sequences of 8 equal payloads and a last slot nobody's: every prefix fits, the end never.
        let n = 12 * 8
        let found = interleaving(slots: n, counts: Array(repeating: 8, count: 12), budget: 5_000) { slot, _, _ in slot < n - 1 }
        #expect(found == nil)
    }

    @Test("a message description travels with its payload hash; one without a hash still parses")
    func wire() throws {
        var m = PeerMessage("moved")
        for (k, v) in ["qpn": "17", "gid": String(repeating: "0", count: 32), "lid": "1", "psn": "5", "acked": "9", "seen": "3"] { m[k] = v }
        m["msgs"] = "8:0:64:0:12345678901234567890,7:2:16:99"
        let end = try #require(PeerEndpoint(m))
        #expect(end.counts.messages[8]?.length == 64 && end.counts.messages[8]?.hash == 12_345_678_901_234_567_890)
        #expect(end.counts.messages[7]?.imm == 99 && end.counts.messages[7]?.hash == nil)
    }

    @Test("FNV-1a: the published vectors, and continuing over pieces equals hashing the whole")
    func hash() {
        func h(_ s: String) -> UInt64 { Array(s.utf8).withUnsafeBytes { payloadHash($0) } }
        #expect(h("") == 0xcbf2_9ce4_8422_2325)
        #expect(h("a") == 0xaf63_dc4c_8601_ec8c)
        #expect(h("foobar") == 0x8594_4171_f739_67e8)
        let whole = h("foobar")
        let pieces = Array("bar".utf8).withUnsafeBytes { b in payloadHash(b, from: h("foo")) }
        #expect(pieces == whole)
    }
}
