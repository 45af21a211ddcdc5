// Where a peer shim is looked for when a connection's address names no host (Peers/PeerDiscovery.swift):
// the remote hosts of the process's TCP connections. The search itself runs between processes on
// real rxe: LabTests.peerFoundByConnections.

import Foundation
import Glibc
import Testing

@testable import StableVerbs

@Suite("Peer discovery through the process's connections")
struct PeerDiscoveryTests {
    /// Lines as Linux prints them (x86: each 32-bit word of an address in host order).
    private let tcp = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 00000000:4970 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
           1: 0100000A:C350 0200000A:4970 01 00000000:00000000 00:00000000 00000000     0        0 5678 1 0000000000000000 20 4 30 10 -1
           2: 0100000A:C352 0300000A:4970 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
        """
    private let tcp6 = """
          sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 0000000000000000FFFF00000100007F:4970 0000000000000000FFFF00000200007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 91 1 0000000000000000 20 4 30 10 -1
           1: 000080FE00000000FF00000201000000:4970 000080FE00000000FF00000202000000:C001 08 00000000:00000000 00:00000000 00000000     0        0 92 1 0000000000000000 20 4 30 10 -1
        """

    @Test("/proc/net/tcp and tcp6: remote addresses in network order, states and inodes; listeners left out")
    func parseTables() throws {
        let v4 = ConnectionHosts.parse(tcp)
        #expect(v4.map { "\($0.host) \($0.state) \($0.inode)" } == ["10.0.0.2 1 5678", "10.0.0.3 6 0"])
        let v6 = ConnectionHosts.parse(tcp6)
        #expect(v6.count == 2)
        #expect(v6.first.map { "\($0.host) \($0.state) \($0.inode)" } == "127.0.0.2 1 91")  // IPv4-mapped
        let ll = try #require(v6.last)
        #expect(ll.host.v6 == [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0xff, 0, 0, 0, 2] && ll.state == 8 && ll.inode == 92)
        #expect(ConnectionHosts.parse("header only\n").isEmpty)
    }

    @Test("hosts asked: this process's connections, then the namespace's established ones, then closing ones; each once, at most 64")
    func pickOrder() throws {
        func h(_ t: String) throws -> PeerHost { try #require(PeerHost(text: t)) }
        let entries: [(host: PeerHost, state: UInt8, inode: UInt64)] = [
            (try h("10.0.0.9"), 0x06, 0),     // TIME_WAIT (a closed exchange socket)
            (try h("10.0.0.5"), 0x01, 50),    // another process's (an MPI launcher's daemon)
            (try h("127.0.0.1"), 0x01, 7),    // this process's (to its local daemon)
            (try h("10.0.0.6"), 0x08, 51),    // another process's, closing
            (try h("10.0.0.5"), 0x01, 52),    // the same host again
            (try h("10.0.0.7"), 0x0A, 53),    // listening: not a connection
        ]
        let picked = ConnectionHosts.pick(entries, own: [7])
        #expect(picked.map { "\($0)" } == ["127.0.0.1", "10.0.0.5", "10.0.0.6", "10.0.0.9"])
        let many = try (0..<100).map { (host: try h("10.1.0.\($0)"), state: UInt8(1), inode: UInt64($0)) }
        let capped = ConnectionHosts.pick(many, own: [99])
        let own = try h("10.1.0.99")
        #expect(capped.count == ConnectionHosts.limit && capped.first == own)
    }

    @Test("the hosts of this process's own established connections come first")
    func ownConnections() throws {
        // A connection of this process to 127.0.0.1: its remote host must be found, first.
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(l >= 0)
        defer { close(l) }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, len) == 0 && listen(l, 1) == 0 && getsockname(l, $0, &len) == 0 }
        }
        try #require(bound)
        let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(c) }
        let connected = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, len) == 0 } }
        try #require(connected)
        let a = accept(l, nil, nil)
        defer { close(a) }
        let hosts = ConnectionHosts.current()
        #expect(hosts.first == PeerHost(text: "127.0.0.1"), "\(hosts)")
        #expect(hosts.count == Set(hosts).count && hosts.count <= ConnectionHosts.limit)
    }
}
