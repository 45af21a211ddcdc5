// One request to many processes at once: every socket is connected, sent the request line and read
// until the process closes it, all in one poll() loop, so a detach of ten processes takes as long
// as the slowest one. A process that has not answered by the deadline is reported as such (it may
// still be working on the request: the shim finishes a detach or attach it started).

import Glibc
import StableVerbsControl

struct Answer {
    enum Outcome {
        case ok
        case failed(String)
        /// Nobody listens on the socket (removed as stale): not a shimmed process.
        case stale
    }

    var target: Target
    var outcome: Outcome
    var records: [ControlProtocol.Record] = []
    var seconds: Double = 0

    var process: ControlProtocol.Record? { records.first { $0.kind == "process" } }
    var result: ControlProtocol.Record? { records.last }
    var program: String { process?["program"] ?? target.program ?? "?" }
}

private final class Conversation {
    let target: Target
    var fd: Int32 = -1
    var connected = false
    var input: [UInt8] = []
    var answer: Answer?

    init(_ target: Target) { self.target = target }

    func finish(_ outcome: Answer.Outcome, records: [ControlProtocol.Record] = [], started: Double) {
        if fd >= 0 { close(fd) }
        fd = -1
        answer = Answer(target: target, outcome: outcome, records: records, seconds: now() - started)
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

enum Exchange {
    /// Sends `request` to every target; one answer per target, in the targets' order.
    static func run(_ request: ControlProtocol.Request, to targets: [Target], timeout: Double) -> [Answer] {
        let started = now()
        let deadline = started + timeout
        let line = Array((request.line + "\n").utf8)
        let talks = targets.map(Conversation.init)
        while talks.contains(where: { $0.answer == nil }) {
            for t in talks where t.answer == nil && !t.connected { connect(t, line, started) }
            let open = talks.filter { $0.answer == nil && $0.connected }
            let waiting = talks.contains { $0.answer == nil && !$0.connected }  // backlog full: retry soon
            let left = deadline - now()
            if left <= 0 {
                for t in talks where t.answer == nil {
                    t.finish(.failed("no answer within \(seconds(timeout)) s"
                                     + (request == .status ? "" : " (the process may still be working on it)")),
                             started: started)
                }
                break
            }
            var fds = open.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ms = Int32(min(left, waiting ? 0.01 : 1) * 1000) + 1
            _ = poll(&fds, nfds_t(fds.count), ms)
            for (i, t) in open.enumerated() where fds[i].revents != 0 { read(t, started) }
        }
        return talks.map { $0.answer! }
    }

    private static func connect(_ t: Conversation, _ line: [UInt8], _ started: Double) {
        if t.fd < 0 { t.fd = UnixSocket.make(nonBlocking: true) }
        guard t.fd >= 0 else { return t.finish(.failed("socket(): \(String(cString: strerror(errno)))"), started: started) }
        let rc = UnixSocket.withAddress(t.target.path) { Glibc.connect(t.fd, $0, $1) }
        guard let rc else { return t.finish(.failed("socket path too long: \(t.target.path)"), started: started) }
        if rc != 0 {
            switch errno {
            case EAGAIN, EINTR:
                return  // the listen backlog is full: try again
            case ECONNREFUSED, ENOENT:
                // Nobody listens there (the process exited, or its pid now belongs to another program).
                var removed: [Int32] = []
                Discovery.removeStale(t.target, &removed)
                return t.finish(.stale, started: started)
            default:
                return t.finish(.failed("connect: \(String(cString: strerror(errno)))"), started: started)
            }
        }
        t.connected = true
        guard let peer = UnixSocket.peer(t.fd), UnixSocket.trusted(peer) else {
            return t.finish(.failed("the socket's owner is not uid \(geteuid()) or root: not talking to it"), started: started)
        }
        if UnixSocket.send(t.fd, line) != line.count {
            t.finish(.failed("sending the request: \(String(cString: strerror(errno)))"), started: started)
        }
    }

    private static func read(_ t: Conversation, _ started: Double) {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(t.fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                t.input += buf[0..<n]
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
            if n < 0 { return t.finish(.failed("reading the reply: \(String(cString: strerror(errno)))"), started: started) }
            return parse(t, started)  // EOF: the whole reply is in
        }
    }

    private static func parse(_ t: Conversation, _ started: Double) {
        let lines = String(decoding: t.input, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        guard let first = lines.first else { return t.finish(.failed("closed the connection without a reply"), started: started) }
        guard first == ControlProtocol.versionLine else {
            return t.finish(.failed("answered '\(first.prefix(80))', not '\(ControlProtocol.versionLine)' "
                                    + "(a shim of another protocol version?)"), started: started)
        }
        var records: [ControlProtocol.Record] = []
        for l in lines.dropFirst() {
            guard let r = ControlProtocol.Record(line: l) else {
                return t.finish(.failed("unreadable reply line '\(l.prefix(80))'"), started: started)
            }
            records.append(r)
        }
        switch records.last?.kind {
        case "ok":
            t.finish(.ok, records: records, started: started)
        case "error":
            let r = records.last!
            let e = Int32(r["errno"] ?? "") ?? 0
            let why = e > 0 ? " (\(String(cString: strerror(e))))" : ""
            t.finish(.failed((r["message"] ?? "error") + why), records: records, started: started)
        default:
            t.finish(.failed("the reply ended early (the process exited?)"), records: records, started: started)
        }
    }

    static func seconds(_ s: Double) -> String {
        s == s.rounded() ? String(Int(s)) : String(s)
    }
}
