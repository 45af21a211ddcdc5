import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal QMP client over a unix socket (blocking, with timeouts). QEMU's QMP socket takes one
/// client at a time: connect, do the job, close.
public final class QMPClient {
    let fd: Int32
    var buffer = [UInt8]()
    public private(set) var events: [[String: Any]] = []

    public init(path: String, timeout: Double = 10) throws {
        fd = try UnixSocket.connect(path: path, timeout: timeout)
        guard let greeting = try readObject(timeout: timeout), greeting["QMP"] != nil else {
            close(fd); throw LabError.qmp("no QMP greeting on \(path)")
        }
        _ = try execute("qmp_capabilities")
    }
    deinit { close(fd) }

    /// Runs a command; returns its "return" value, throws its "error".
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: Any]? = nil, timeout: Double = 10) throws -> Any {
        var msg: [String: Any] = ["execute": command]
        if let arguments { msg["arguments"] = arguments }
        var data = try JSONSerialization.data(withJSONObject: msg)
        data.append(UInt8(ascii: "\n"))
        try UnixSocket.writeAll(fd, data)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0, let obj = try readObject(timeout: left) else { throw LabError.qmp("\(command): no answer") }
            if let r = obj["return"] { return r }
            if let e = obj["error"] as? [String: Any] { throw LabError.qmp("\(command): \(e["desc"] ?? e)") }
            if obj["event"] != nil { events.append(obj) }
        }
    }

    /// Waits for an event (already received ones count), returns it or nil on timeout.
    public func waitEvent(_ name: String, timeout: Double, match: ([String: Any]) -> Bool = { _ in true }) throws -> [String: Any]? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let i = events.firstIndex(where: { ($0["event"] as? String) == name && match($0) }) {
                return events.remove(at: i)
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return nil }
            guard let obj = try readObject(timeout: left) else { return nil }
            if obj["event"] != nil { events.append(obj) }
        }
    }

    func readObject(timeout: Double) throws -> [String: Any]? {
        guard let line = try UnixSocket.readLine(fd, buffer: &buffer, timeout: timeout) else { return nil }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw LabError.qmp("unparseable QMP line: \(line)")
        }
        return obj
    }
}

enum UnixSocket {
    static func connect(path: String, timeout: Double) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw LabError.qmp("socket: errno \(errno)") }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { close(fd); throw LabError.qmp("socket path too long: \(path)") }
            withUnsafeMutableBytes(of: &addr.sun_path) { p in
                for (i, b) in bytes.enumerated() { p[i] = b }
                p[bytes.count] = 0
            }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return fd }
            let err = errno
            close(fd)
            if Date() > deadline { throw LabError.qmp("cannot connect to \(path): errno \(err)") }
            usleep(50_000)
        }
    }

    static func writeAll(_ fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
            var off = 0
            while off < p.count {
                let n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 { if errno == EINTR { continue }; throw LabError.qmp("write: errno \(errno)") }
                off += n
            }
        }
    }

    /// One line (without its newline); nil on timeout; throws on EOF.
    static func readLine(_ fd: Int32, buffer: inout [UInt8], timeout: Double) throws -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line.trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(min(left, 3600) * 1000))
            if r < 0 { if errno == EINTR { continue }; throw LabError.qmp("poll: errno \(errno)") }
            if r == 0 { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &chunk, chunk.count, 0)
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; throw LabError.qmp("read: errno \(errno)") }
            if n == 0 { throw LabError.qmp("connection closed") }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}

/// NIC hot-unplug / hot-plug of a running guest through its QMP socket (the closest the lab gets
/// to detaching an SR-IOV VF and attaching a new one).
public enum LabNIC {
    /// The ids of the guest's virtio-net-pci devices.
    public static func nics(_ q: QMPClient) throws -> [String] {
        let list = try q.execute("qom-list", ["path": "/machine/peripheral"]) as? [[String: Any]] ?? []
        return list.compactMap { e in
            guard let t = e["type"] as? String, t.contains("virtio-net-pci"), let n = e["name"] as? String else { return nil }
            return n
        }.sorted()
    }

    /// device_del of the guest's NIC; waits for DEVICE_DELETED. Returns the id removed.
    @discardableResult
    public static func unplug(qmpSocket: String, timeout: Double = 60) throws -> String {
        let q = try QMPClient(path: qmpSocket)
        guard let id = try nics(q).first else { throw LabError.qmp("the guest has no NIC to unplug") }
        try q.execute("device_del", ["id": id])
        guard try q.waitEvent("DEVICE_DELETED", timeout: timeout, match: { (($0["data"] as? [String: Any])?["device"] as? String) == id }) != nil else {
            throw LabError.qmp("device_del \(id): no DEVICE_DELETED within \(Int(timeout)) s (a process still holding the rxe device on it? DESIGN.md 2)")
        }
        return id
    }

    /// device_add of a new virtio-net-pci on netdev n0, with a MAC that no earlier NIC of this guest had.
    /// Returns (id, mac).
    @discardableResult
    public static func plug(qmpSocket: String, guest: Int) throws -> (String, String) {
        let q = try QMPClient(path: qmpSocket)
        let existing = try nics(q)
        if let id = existing.first { throw LabError.qmp("the guest already has a NIC (\(id)); unplug it first") }
        // nicN ids: N counts plugs; the MAC carries N, so every plug gets a new MAC.
        let stateFile = (qmpSocket as NSString).deletingLastPathComponent + "/nic\(guest).count"
        let n = (Int((try? String(contentsOfFile: stateFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0) + 1
        try "\(n)\n".write(toFile: stateFile, atomically: true, encoding: .utf8)
        let id = "nic\(n)"
        let mac = LabNIC.mac(guest: guest, generation: n)
        try q.execute("device_add", ["driver": "virtio-net-pci", "id": id, "netdev": "n0", "mac": mac])
        return (id, mac)
    }

    public static func mac(guest: Int, generation: Int) -> String {
        String(format: "52:54:00:77:%02x:%02x", guest + 1, generation & 0xff)
    }
}
