// Finding the shimmed processes: every `<pid>.sock` in the runtime directory. A socket whose process
// is gone (its pid no longer exists, or nobody listens on it any more) is stale and removed.

import Glibc
import StableVerbsControl

/// One shimmed process's control socket.
struct Target: Sendable {
    var pid: Int32
    var path: String

    /// /proc/<pid>/comm, when the process is still there.
    var program: String? {
        let fd = open("/proc/\(pid)/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].filter { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }
}

/// A failure of the command itself (not of one process): message, exit status.
struct CommandFailure: Error {
    var message: String
    var status: Int32
}

enum Discovery {
    /// The sockets in `directory`, after removing those of dead pids (reported in `removed`).
    static func targets(in directory: String, removed: inout [Int32]) throws -> [Target] {
        if let problem = RuntimeDirectory.prepare(directory, create: false, allowAnyOwnerForRoot: true) {
            if case .missing = problem { return [] }
            throw CommandFailure(message: "\(problem)", status: 1)
        }
        guard let dir = opendir(directory) else {
            throw CommandFailure(message: "cannot read \(directory): \(String(cString: strerror(errno)))", status: 1)
        }
        defer { closedir(dir) }
        var found: [Target] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let pid = RuntimeDirectory.pid(ofEntry: name) else { continue }
            let target = Target(pid: pid, path: RuntimeDirectory.socketPath(directory, pid: pid))
            if kill(pid, 0) != 0 && errno == ESRCH {
                removeStale(target, &removed)
                continue
            }
            found.append(target)
        }
        return found.sorted { $0.pid < $1.pid }
    }

    static func removeStale(_ target: Target, _ removed: inout [Int32]) {
        if unlink(target.path) == 0 || errno == ENOENT { removed.append(target.pid) }
    }
}
