// Where to look for a peer shim when the connection's address names no host: an RC QP connected by
// LID only (InfiniBand without a GRH, as ibv_rc_pingpong, perftest and MPI libraries connect by
// default) or towards a link-local GID (fe80::GUID). An RDMA program exchanges its QPNs and LIDs
// over a connection of its own before it connects its QPs (a TCP socket in the rdma-core
// examples and perftest), so the peer's host is among the remote addresses of this process's TCP
// connections; then among those of the network namespace: the program may have closed its socket
// already (ibv_rc_pingpong's client closes it before it moves its QP to RTR; it waits in
// TIME_WAIT), or another process of the job made the exchange (an MPI launcher's daemon; the
// rank's own connections then lead only to that daemon). The introducer asks up to 64 of them,
// every port of every host at once (PeerSocket.exchangeAll(targets:)), which shim owns the
// destination QPN on a port with the destination LID; the other end learns the introducer's host
// from the address its `hello` came from.
//
// STABLEVERBS_PEER_FIND=connections looks there even when the GID names a host (and does not
// follow a peer to a new address with its GID): for networks where the shims' port is reachable
// only on the application's own network, and for testing this path on RoCE.

import CVerbs
import Glibc

extension PeerRegistry {
    enum Finding: String {
        /// The host a GID names (IPv4-mapped, global IPv6), else the hosts of the connections.
        case gid
        /// Always the hosts of this process's connections.
        case connections
    }

    static func finding() -> Finding {
        guard let v = Configuration.environment("STABLEVERBS_PEER_FIND") else { return .gid }
        if let f = Finding(rawValue: v) { return f }
        Log.warn("STABLEVERBS_PEER_FIND=\(v) is not gid or connections: using gid")
        return .gid
    }

    /// Whether a connection's GID says where its peer shim is (and where it moved to).
    func gidNamesHost(_ gid: ibv_gid) -> Bool {
        finding == .gid && PeerHost(gid: gid) != nil
    }
}

/// The remote hosts of TCP connections, read from /proc/self/net/tcp and tcp6.
enum ConnectionHosts {
    /// At most this many hosts are asked per introduction attempt (all at once).
    static let limit = 64

    /// This process's established connections first, then the namespace's (established, then
    /// closing ones: a program that closed its exchange socket, an address exchange made by
    /// another process of the job, as an MPI launcher's daemons do). Each host once, in that order.
    static func current() -> [PeerHost] {
        var entries: [(host: PeerHost, state: UInt8, inode: UInt64)] = []
        for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
            entries += parse(readText(file) ?? "")
        }
        return pick(entries, own: socketInodes())
    }

    /// The hosts `current` asks, from a table's entries and this process's socket inodes.
    static func pick(_ entries: [(host: PeerHost, state: UInt8, inode: UInt64)], own: Set<UInt64>) -> [PeerHost] {
        let connected: Set<UInt8> = [0x01, 0x08]  // ESTABLISHED, CLOSE_WAIT
        let ordered = entries.filter { connected.contains($0.state) && own.contains($0.inode) }
            + entries.filter { connected.contains($0.state) && !own.contains($0.inode) }
            + entries.filter { $0.state == 0x06 }  // TIME_WAIT
        return distinct(ordered.map(\.host))
    }

    /// The first `limit` distinct hosts of `hosts`, in their order.
    static func distinct(_ hosts: [PeerHost]) -> [PeerHost] {
        var out: [PeerHost] = []
        for h in hosts where !out.contains(h) {
            out.append(h)
            if out.count == limit { break }
        }
        return out
    }

    /// The lines of a /proc/net/tcp{,6} table: remote address, state, inode. An address is the
    /// kernel's 32-bit words printed in hex in host order (little-endian here), so each word's
    /// bytes come out in network order once read back as a host-order integer.
    static func parse(_ text: String) -> [(host: PeerHost, state: UInt8, inode: UInt64)] {
        var out: [(host: PeerHost, state: UInt8, inode: UInt64)] = []
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 10, let colon = f[2].firstIndex(of: ":"), let state = UInt8(f[3], radix: 16),
                  let inode = UInt64(f[9]) else { continue }
            let hex = f[2][..<colon]
            guard hex.count == 8 || hex.count == 32 else { continue }
            var bytes: [UInt8] = []
            var i = hex.startIndex
            while i < hex.endIndex {
                let j = hex.index(i, offsetBy: 8)
                guard let word = UInt32(hex[i..<j], radix: 16) else { break }
                bytes += withUnsafeBytes(of: word) { Array($0) }
                i = j
            }
            guard bytes.count * 2 == hex.count, bytes.contains(where: { $0 != 0 }) else { continue }
            let host = bytes.count == 4 ? PeerHost(address: Array(repeating: 0, count: 10) + [0xff, 0xff] + bytes)
                : PeerHost(address: bytes)
            out.append((host, state, inode))
        }
        return out
    }

    /// The inodes of this process's sockets (/proc/self/fd/N → "socket:[inode]").
    static func socketInodes() -> Set<UInt64> {
        guard let dir = opendir("/proc/self/fd") else { return [] }
        defer { closedir(dir) }
        var out: Set<UInt64> = []
        var buf = [CChar](repeating: 0, count: 64)
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int(name) != nil else { continue }
            let n = readlink("/proc/self/fd/" + name, &buf, buf.count - 1)
            guard n > 0 else { continue }
            let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if target.hasPrefix("socket:["), let inode = UInt64(target.dropFirst(8).dropLast()) { out.insert(inode) }
        }
        return out
    }

    static func readText(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            data += chunk[0..<n]
        }
        return String(decoding: data, as: UTF8.self)
    }
}
