// The control socket of a shimmed process: `<runtime dir>/<pid>.sock` (StableVerbsControl's
// RuntimeDirectory), through which the `stableverbs` command asks for the status and drives a planned
// detach/attach (protocol: StableVerbsControl/ControlProtocol.swift).
//
// Life cycle. Made by the first device context the process opens (openContext → startControlSocket,
// control lock held), never by the library constructor, so a process that never opens a device has
// no socket and no thread. The directory is created 0700 and refused, with one clear log line and
// no socket, when it is not a directory owned by this uid or the group or others can reach it. The
// socket is bound under a temporary name, made 0600, listened on, then renamed into place: a client
// never finds a path nobody listens on, and an old socket of a recycled pid is replaced atomically.
// An atexit handler removes it (only in the process that made it: a fork child inherits the
// handler) and lets a request being served send its reply first (≤ 2 s). A fork child has no server
// thread and another pid: its next context open closes the inherited listening fd (the parent's
// socket stays) and makes the child's own socket.
//
// Threads. One accept thread; each accepted connection is served on its own short-lived thread, so
// a `status` is answered while another client's attach waits for a device. Peers must have this
// process's effective uid or be root (SO_PEERCRED). Every thread starts with all signals blocked
// (the application's signals go to its own threads), talks to its client with 10 s timeouts and
// MSG_NOSIGNAL, and never runs on an application thread: the only effect on the application is
// the control lock held while a reply is built, and the recovery itself.

import Glibc
import StableVerbsABI
import StableVerbsControl

enum ControlSocket {
    // Control lock, except the atexit handler's reads (the process is exiting).
    nonisolated(unsafe) static var ownerPID: pid_t = 0
    nonisolated(unsafe) static var path: UnsafeMutablePointer<CChar>? = nil
    nonisolated(unsafe) static var listenFD: Int32 = -1
    /// The pid for which making the socket was refused or failed (logged once, not retried).
    nonisolated(unsafe) static var refusedPID: pid_t = 0
    nonisolated(unsafe) static var exitHandlerInstalled = false
    nonisolated(unsafe) static var connections = 0
    static let maxConnections = 16
    static let clientTimeoutSeconds = 10

    /// Makes this process's socket and starts its accept thread, once per pid (control lock held).
    static func start() {
        let me = getpid()
        guard ownerPID != me, refusedPID != me else { return }
        let savedErrno = currentErrno()  // opening a context must not show the socket's errno
        defer { setErrno(savedErrno) }
        if ownerPID != 0 {
            // A fork child: the listening fd is the parent's socket; the path stays the parent's.
            if listenFD >= 0 { Glibc.close(listenFD) }
            listenFD = -1
            free(path)
            path = nil
            ownerPID = 0
            connections = 0
        }
        if let problem = open(pid: me) {
            refusedPID = me
            Log.error("control socket: \(problem); stableverbs status/detach/attach cannot reach this process")
            return
        }
        if !exitHandlerInstalled {
            exitHandlerInstalled = true
            atexit { ControlSocket.removeAtExit() }
        }
        if !spawn({ _ in ControlSocket.acceptLoop(); return nil }, nil) {
            Log.error("control socket: cannot start its thread; stableverbs cannot reach this process")
        }
    }

    /// Creates the directory and the listening socket; a description of the problem, or nil.
    private static func open(pid: pid_t) -> String? {
        let dir = RuntimeDirectory.path(environment: Configuration.environment)
        if let problem = RuntimeDirectory.prepare(dir, create: true) { return problem.description }
        let final = RuntimeDirectory.socketPath(dir, pid: pid)
        let temporary = "\(dir)/.\(pid).sock.new"
        guard temporary.utf8.count <= RuntimeDirectory.maxSocketPath else {
            return "\(final): the path is longer than a unix socket allows (\(RuntimeDirectory.maxSocketPath) bytes); "
                + "set STABLEVERBS_RUNTIME_DIR to a shorter directory"
        }
        let fd = UnixSocket.make()
        guard fd >= 0 else { return "socket() failed: \(String(cString: strerror(errno)))" }
        _ = unlink(temporary)
        var step = "bind"
        let ok = UnixSocket.withAddress(temporary) { addr, len in
            guard bind(fd, addr, len) == 0 else { return false }
            step = "chmod"
            guard chmod(temporary, 0o600) == 0 else { return false }
            step = "listen"
            guard listen(fd, 16) == 0 else { return false }
            step = "rename"
            return rename(temporary, final) == 0
        } ?? false
        guard ok else {
            let e = errno
            Glibc.close(fd)
            _ = unlink(temporary)
            return "\(final): \(step) failed: \(String(cString: strerror(e)))"
        }
        listenFD = fd
        path = strdup(final)
        ownerPID = pid
        Log.info("control socket \(final)")
        return nil
    }

    /// The atexit handler: removes the socket of the process that made it, then gives a request
    /// being served (an attach the application saw complete and exited right after, say) up to
    /// 2 s to send its reply, so that the command reports what happened instead of a connection
    /// closed without an answer. (`connections` is read without the lock: the process is exiting,
    /// and the thread that exits might hold it.)
    private static func removeAtExit() {
        guard ownerPID == getpid(), let path else { return }
        _ = unlink(path)
        let deadline = monotonicNS() &+ 2_000_000_000
        while connections > 0 && monotonicNS() < deadline { usleep(1_000) }
    }

    /// The socket path of this process, if it has one (control lock).
    static var currentPath: String? {
        guard ownerPID == getpid(), let path else { return nil }
        return String(cString: path)
    }

    // MARK: - Threads

    /// Starts a detached thread with every signal blocked.
    private static func spawn(_ body: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?,
                              _ argument: UnsafeMutableRawPointer?) -> Bool {
        var all = sigset_t(), saved = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        var thread = pthread_t()
        guard pthread_create(&thread, nil, body, argument) == 0 else { return false }
        pthread_detach(thread)
        return true
    }

    private static func acceptLoop() {
        let fd = withControlLock { listenFD }
        let pid = getpid()
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                let e = errno
                if e == EBADF || e == EINVAL || e == ENOTSOCK { return }  // closed
                if e != EINTR && e != ECONNABORTED { usleep(10_000) }     // EMFILE and the like: back off
                continue
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            guard withControlLock({ ownerPID == pid && listenFD == fd }) else {
                Glibc.close(client)
                return
            }
            guard let peer = UnixSocket.peer(client), UnixSocket.trusted(peer) else {
                let who = UnixSocket.peer(client).map { "pid \($0.pid), uid \($0.uid)" } ?? "unknown peer"
                Log.warn("control socket: refused a connection from \(who) (only uid \(geteuid()) or root may connect)")
                Glibc.close(client)
                continue
            }
            let admitted: Bool = withControlLock {
                guard connections < maxConnections else { return false }
                connections += 1
                return true
            }
            guard admitted else {
                reply(client, [ControlProtocol.Record("error", [("errno", "\(EBUSY)"), ("message", "too many control connections")])])
                Glibc.close(client)
                continue
            }
            let started = spawn({ arg in
                let client = Int32(Int(bitPattern: arg) - 1)
                ControlSocket.serve(client)
                return nil
            }, UnsafeMutableRawPointer(bitPattern: Int(client) + 1))
            if !started {
                withControlLock { connections -= 1 }
                Glibc.close(client)
            }
        }
    }

    /// One connection: one request line, the reply, close.
    private static func serve(_ client: Int32) {
        defer {
            Glibc.close(client)
            withControlLock { connections -= 1 }
        }
        UnixSocket.setTimeouts(client, seconds: clientTimeoutSeconds)
        let peer = UnixSocket.peer(client)
        guard let line = readLine(client) else {
            reply(client, [ControlProtocol.Record("error", [("errno", "\(EPROTO)"), ("message", "no request line")])])
            return
        }
        let rt = Runtime.shared.unsafelyUnwrapped
        Log.info("control socket: '\(line)' from pid \(peer?.pid ?? 0)")
        reply(client, rt.controlReply(to: line))
    }

    private static func readLine(_ fd: Int32) -> String? {
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 512)
        while bytes.count <= ControlProtocol.maxRequest {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return n == 0 && !bytes.isEmpty ? String(decoding: bytes, as: UTF8.self) : nil }
            if let nl = buf[0..<n].firstIndex(of: UInt8(ascii: "\n")) {
                bytes += buf[0..<nl]
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes += buf[0..<n]
        }
        return nil
    }

    private static func reply(_ fd: Int32, _ records: [ControlProtocol.Record]) {
        let text = ([ControlProtocol.versionLine] + records.map(\.line)).joined(separator: "\n") + "\n"
        UnixSocket.send(fd, Array(text.utf8))
    }
}

extension Runtime {
    /// The hook of openContext (control lock held).
    func startControlSocket() { ControlSocket.start() }
}
