// The GRH area of a UD receive (sv_senders.c): reading its GIDs and writing virtual ones back, as
// Identity/UDSenders.swift does after a move — for an InfiniBand/IPv6 GRH and for RoCEv2 over
// IPv4, whose header the application's ibv_init_ah_from_wc trusts only with a valid checksum.

import StableVerbsABI
import Testing

/// The IPv4 header checksum as RFC 791 defines it (checksum field taken as zero).
private func ipv4Checksum(_ h: ArraySlice<UInt8>) -> UInt16 {
    var sum: UInt32 = 0
    let b = Array(h)
    for i in stride(from: 0, to: 20, by: 2) where i != 10 { sum += UInt32(b[i]) << 8 | UInt32(b[i + 1]) }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    return ~UInt16(sum)
}

private func mapped(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> [UInt8] {
    Array(repeating: 0, count: 10) + [0xff, 0xff, a, b, c, d]
}

/// A RoCEv2 GRH area over IPv4: 20 bytes of zeros, then an IPv4/UDP header from `src` to `dst`.
private func ipv4GRH(src: [UInt8], dst: [UInt8]) -> [UInt8] {
    var g = [UInt8](repeating: 0, count: 40)
    let h = 20
    g[h] = 0x45; g[h + 3] = 0x54; g[h + 8] = 64; g[h + 9] = 17  // IPv4, 84 bytes, TTL 64, UDP
    for i in 0..<4 { g[h + 12 + i] = src[i]; g[h + 16 + i] = dst[i] }
    let c = ipv4Checksum(g[h..<h + 20])
    g[h + 10] = UInt8(c >> 8); g[h + 11] = UInt8(c & 0xff)
    return g
}

private func gids(_ grh: [UInt8]) -> (version: Int32, sgid: [UInt8], dgid: [UInt8]) {
    var s = [UInt8](repeating: 0, count: 16), d = [UInt8](repeating: 0, count: 16)
    let v = grh.withUnsafeBytes { sv_grh_gids($0.baseAddress!, &s, &d) }
    return (v, s, d)
}

@Suite("UD receive GRH")
struct GRHTests {
    @Test("RoCEv2 over IPv4: addresses read as IPv4-mapped GIDs, rewritten with a valid checksum")
    func ipv4() throws {
        var g = ipv4GRH(src: [10, 77, 0, 2], dst: [10, 77, 0, 1])
        let (v, s, d) = gids(g)
        #expect(v == 4 && s == mapped(10, 77, 0, 2) && d == mapped(10, 77, 0, 1))
        let ns = mapped(192, 168, 5, 9), nd = mapped(172, 16, 0, 3)
        let rc = g.withUnsafeMutableBytes { sv_grh_set_gids($0.baseAddress!, 4, ns, nd) }
        #expect(rc == 0)
        #expect(Array(g[32..<36]) == [192, 168, 5, 9] && Array(g[36..<40]) == [172, 16, 0, 3])
        #expect(UInt16(g[30]) << 8 | UInt16(g[31]) == ipv4Checksum(g[20..<40]), "checksum not recomputed")
        #expect(g[0..<20].allSatisfy { $0 == 0 } && g[20] == 0x45 && g[28] == 64 && g[29] == 17, "other fields changed")
        let again = gids(g)
        #expect(again.version == 4 && again.sgid == ns && again.dgid == nd)
        // Only the destination: the source stays.
        let rc2 = g.withUnsafeMutableBytes { sv_grh_set_gids($0.baseAddress!, 4, nil, mapped(10, 0, 0, 1)) }
        #expect(rc2 == 0 && gids(g).sgid == ns && gids(g).dgid == mapped(10, 0, 0, 1))
        #expect(UInt16(g[30]) << 8 | UInt16(g[31]) == ipv4Checksum(g[20..<40]))
    }

    @Test("RoCEv2 over IPv4: a GID that is not IPv4-mapped cannot be written; nothing changes")
    func ipv4Refuses() {
        var g = ipv4GRH(src: [10, 77, 0, 2], dst: [10, 77, 0, 1])
        let before = g
        let linkLocal: [UInt8] = [0xfe, 0x80] + Array(repeating: 0, count: 6) + [2, 0, 0x5e, 0xff, 0xfe, 0, 0, 1]
        let rc = g.withUnsafeMutableBytes { sv_grh_set_gids($0.baseAddress!, 4, mapped(1, 2, 3, 4), linkLocal) }
        #expect(rc == -1 && g == before)
    }

    @Test("InfiniBand / IPv6 GRH: GIDs at bytes 8 and 24, rewritten in place")
    func ipv6() {
        var g = [UInt8](repeating: 0, count: 40)
        g[0] = 0x60; g[6] = 0x1b; g[7] = 64
        let s: [UInt8] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x5e, 0xff, 0xfe, 0, 0x10]
        let d: [UInt8] = mapped(10, 0, 0, 2)  // an IPv4-mapped GID in a GRH (its first bytes are not zero)
        for i in 0..<16 { g[8 + i] = s[i]; g[24 + i] = d[i] }
        let (v, rs, rd) = gids(g)
        #expect(v == 6 && rs == s && rd == d)
        let ns: [UInt8] = Array(repeating: 0x11, count: 16), nd: [UInt8] = Array(repeating: 0x22, count: 16)
        let rc = g.withUnsafeMutableBytes { sv_grh_set_gids($0.baseAddress!, 6, ns, nd) }
        #expect(rc == 0 && Array(g[8..<24]) == ns && Array(g[24..<40]) == nd && g[0] == 0x60 && g[6] == 0x1b)
    }
}
