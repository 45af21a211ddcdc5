import Foundation
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif
#if canImport(Glibc)
import Glibc
#endif

/// One `stableverbs-lab run`: boots 1 or 2 guests, runs a command in each with /bin/sh (chrooted
/// into the host's root, mounted read-only over 9p), streams output, returns the exit status.
public struct LabRun: Sendable {
    public static let exitMarker = "STABLEVERBS-LAB-EXIT: "
    /// Exit status when the guests did not finish in time.
    public static let timeoutStatus: Int32 = 124
    /// Exit status when the lab itself failed (boot, init, QEMU).
    public static let labFailureStatus: Int32 = 125

    public var paths: LabPaths
    public var guests = 1
    /// The command per guest (index 0 = role server, 1 = role client).
    public var commands: [String]
    public var timeout: Double = 300
    public var memoryMiB = 1024
    public var cpus = 2
    public var environment: [String: String] = [:]
    /// Working directory in the guest (same path as on the host); default: the current directory.
    public var workingDirectory: String = FileManager.default.currentDirectoryPath
    public var debug = false
    /// Called with the run folder (which holds qmp<N>.sock) once the guests are being started.
    public var onStart: (@Sendable (String) -> Void)?

    public init(paths: LabPaths, commands: [String]) {
        self.paths = paths
        self.commands = commands
    }

    public static func address(guest: Int) -> String { "10.77.0.\(guest + 1)" }
    public static func role(guest: Int) -> String { guest == 0 ? "server" : "client" }

    public struct Result: Sendable {
        public var status: Int32
        public var guestStatus: [Int32?]
        public var timedOut: Bool
        public var seconds: Double
        public var runDirectory: String
    }

    /// Runs the guests. `output(guest, line)` receives every line each guest prints
    /// (serial console: the command's stdout and stderr), without the exit marker.
    public func execute(output: @escaping @Sendable (Int, String) -> Void) async throws -> Result {
        let setup = LabSetup(paths: paths)
        if let why = setup.unavailableReason() { throw LabError.setup(why) }
        guard let kernel = setup.kernel(), FileManager.default.fileExists(atPath: paths.initramfs) else {
            throw LabError.setup("no kernel or guest image in \(paths.cache): run `stableverbs-lab setup`")
        }
        let start = Date()
        let runDir = try makeRunDirectory()
        defer { if !debug { try? FileManager.default.removeItem(atPath: runDir) } }
        var ports: [Int] = []
        if guests == 2 { ports = try freeUDPPorts(2) }

        var argvs: [[String]] = []
        for g in 0..<guests {
            try writeGuestScript(guest: g, runDir: runDir)
            argvs.append(qemuArguments(guest: g, kernel: kernel.vmlinuz, runDir: runDir, ports: ports))
            if debug { labLog("guest \(g): \(LabSetup.qemuBinary) \(argvs[g].joined(separator: " "))") }
        }
        let state = RunState(guests: guests)
        let deadline = timeout
        onStart?(runDir)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for g in 0..<guests {
                let argv = argvs[g]
                let debug = self.debug
                group.addTask {
                    let control = ControlPort(socket: runDir + "/ctl\(g).sock", qmp: runDir + "/qmp\(g).sock", guest: g)
                    control.start()
                    let r = try await run(
                        .path(FilePath(LabSetup.qemuBinary)), arguments: Arguments(argv),
                        input: .none, output: .sequence, error: .sequence
                    ) { execution in
                        await withTaskGroup(of: Void.self) { inner in
                            inner.addTask {
                                do {
                                    for try await line in execution.standardOutput.strings() {
                                        if let text = state.consume(guest: g, line: line) { output(g, text) }
                                    }
                                } catch {}
                            }
                            inner.addTask {
                                do {
                                    for try await line in execution.standardError.strings() {
                                        if !debug && line.contains("is not connected to host network") { continue }
                                        output(g, "qemu: " + line)
                                    }
                                } catch {}
                            }
                            let timer = Task {
                                try await Task.sleep(for: .seconds(deadline))
                                state.markTimedOut()
                                try? execution.send(signal: .kill)
                            }
                            await inner.waitForAll()
                            timer.cancel()
                        }
                        // If the other guest timed out, this one is killed too.
                    }
                    control.stop()
                    if case .exited(let code) = r.terminationStatus, code != 0, state.status(guest: g) == nil, !state.timedOut {
                        output(g, "qemu exited with status \(code)")
                    }
                    // A guest that finished leaves its peer waiting for nothing: the timeout still applies.
                }
            }
            try await group.waitForAll()
        }
        let statuses = (0..<guests).map { state.status(guest: $0) }
        var status: Int32
        if state.timedOut {
            status = LabRun.timeoutStatus
        } else if let missing = statuses.firstIndex(where: { $0 == nil }) {
            output(missing, "stableverbs-lab: guest \(missing) stopped without reporting an exit status (kernel panic, or its init failed); rerun with --debug")
            status = LabRun.labFailureStatus
        } else {
            status = statuses.compactMap { $0 }.first(where: { $0 != 0 }) ?? 0
        }
        return Result(status: status, guestStatus: statuses, timedOut: state.timedOut,
                      seconds: Date().timeIntervalSince(start), runDirectory: runDir)
    }

    func makeRunDirectory() throws -> String {
        try FileManager.default.createDirectory(atPath: paths.runs, withIntermediateDirectories: true)
        let base = paths.runs + "/\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        guard !base.contains(" ") else { throw LabError.setup("the cache path must not contain spaces: \(base)") }
        // A unix socket path holds at most 107 bytes.
        guard (base + "/qmp0.sock").utf8.count < 100 else {
            throw LabError.setup("the cache path is too long for unix sockets: set STABLEVERBS_LAB_CACHE to a shorter folder")
        }
        return base
    }

    func writeGuestScript(guest g: Int, runDir: String) throws {
        var env: [(String, String)] = [
            ("PATH", "/run/lab:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("HOME", "/root"), ("TERM", "dumb"), ("LANG", "C.UTF-8"),
            ("STABLEVERBS_LIB", paths.library),
            ("STABLEVERBS_LAB", "1"),
            ("STABLEVERBS_LAB_ROOT", paths.root),
            ("STABLEVERBS_LAB_RUN_DIR", runDir),
            ("STABLEVERBS_LAB_GUEST", "\(g)"),
            ("STABLEVERBS_LAB_GUESTS", "\(guests)"),
            ("STABLEVERBS_LAB_ROLE", LabRun.role(guest: g)),
            ("STABLEVERBS_LAB_IP", LabRun.address(guest: g)),
            ("STABLEVERBS_LAB_PEER", LabRun.address(guest: guests == 2 ? 1 - g : g)),
            ("STABLEVERBS_LAB_DEVICE", "rxe0"),
            ("STABLEVERBS_LAB_GID_INDEX", "1"),
        ]
        let command = paths.command
        if let command { env.append(("STABLEVERBS_COMMAND", command)) }
        for (k, v) in environment.sorted(by: { $0.key < $1.key }) { env.append((k, v)) }
        var s = "# generated by stableverbs-lab for guest \(g)\n"
        for (k, v) in env { s += "export \(k)=\(shellQuote(v))\n" }
        // The stableverbs command on the guest's PATH (/run/lab is the guest's own tmpfs).
        if let command { s += "ln -sf \(shellQuote(command)) /run/lab/stableverbs\n" }
        s += "cd \(shellQuote(workingDirectory)) 2>/dev/null || cd /\n"
        s += "exec /bin/sh -c \"$(cat \(shellQuote(runDir + "/cmd\(g)")))\"\n"
        try s.write(toFile: runDir + "/guest\(g).sh", atomically: true, encoding: .utf8)
        try (commands[min(g, commands.count - 1)] + "\n").write(toFile: runDir + "/cmd\(g)", atomically: true, encoding: .utf8)
    }

    func qemuArguments(guest g: Int, kernel: String, runDir: String, ports: [Int]) -> [String] {
        var append = "console=ttyS0 panic=-1 sv.run=\(runDir)/guest\(g).sh sv.ip=\(LabRun.address(guest: g)) sv.guest=\(g)"
        // Host folders the guest must see even where it mounts its own (/tmp, /var/tmp, /root):
        // the project, the run folder, the library's and the command's folders, the working directory.
        let keep = [paths.root, runDir, (paths.library as NSString).deletingLastPathComponent,
                    paths.command.map { ($0 as NSString).deletingLastPathComponent } ?? "", workingDirectory]
            .filter { !$0.isEmpty && !$0.contains(" ") && !$0.contains(",") }
        append += " sv.keep=" + keep.joined(separator: ",")
        append += debug ? " sv.debug=1" : " quiet loglevel=1"
        var a = [
            "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "\(memoryMiB)", "-smp", "\(cpus)",
            "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
            "-name", "stableverbs-lab\(g)",
            "-kernel", kernel, "-initrd", paths.initramfs, "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-qmp", "unix:\(runDir)/qmp\(g).sock,server=on,wait=off",
            "-chardev", "socket,id=ctl,path=\(runDir)/ctl\(g).sock,server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser",
            "-device", "virtserialport,chardev=ctl,name=stableverbs-lab.ctl",
        ]
        if guests == 2 {
            let local = ports[g], remote = ports[1 - g]
            a += ["-netdev", "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=\(local),remote.type=inet,remote.host=127.0.0.1,remote.port=\(remote)"]
        } else {
            a += ["-netdev", "hubport,id=n0,hubid=0"]
        }
        a += ["-device", "virtio-net-pci,id=nic0,netdev=n0,mac=\(LabNIC.mac(guest: g, generation: 0))"]
        return a
    }

    func freeUDPPorts(_ n: Int) throws -> [Int] {
        var fds: [Int32] = [], ports: [Int] = []
        defer { fds.forEach { close($0) } }
        for _ in 0..<n {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard ok else { throw LabError.setup("cannot find a free UDP port on 127.0.0.1") }
            fds.append(fd)
            ports.append(Int(UInt16(bigEndian: addr.sin_port)))
        }
        return ports
    }
}

func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// Exit markers and timeouts across the guests of one run.
final class RunState: @unchecked Sendable {
    private let lock = NSLock()
    private var statuses: [Int32?]
    private var done: [Bool]
    private var _timedOut = false
    init(guests: Int) { statuses = Array(repeating: nil, count: guests); done = Array(repeating: false, count: guests) }

    /// The text to show for a console line, or nil to hide it (after the exit marker).
    func consume(guest: Int, line: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        if done[guest] { return nil }
        if let r = line.range(of: LabRun.exitMarker) {
            let rest = line[r.upperBound...].prefix { $0.isNumber || $0 == "-" }
            statuses[guest] = Int32(rest) ?? LabRun.labFailureStatus
            done[guest] = true
            let before = String(line[..<r.lowerBound])
            return before.isEmpty ? nil : before
        }
        return line
    }
    func status(guest: Int) -> Int32? { lock.lock(); defer { lock.unlock() }; return statuses[guest] }
    func markTimedOut() { lock.lock(); _timedOut = true; lock.unlock() }
    var timedOut: Bool { lock.lock(); defer { lock.unlock() }; return _timedOut }
}

/// Serves the guest's control port (virtio-serial "stableverbs-lab.ctl"): `lab-device nic-unplug`
/// and `nic-plug` in the guest ask the host to hot-unplug / hot-plug the NIC through QMP.
final class ControlPort: @unchecked Sendable {
    let socket: String, qmp: String, guest: Int
    private var thread: Thread?
    private let lock = NSLock()
    private var stopped = false
    init(socket: String, qmp: String, guest: Int) { self.socket = socket; self.qmp = qmp; self.guest = guest }

    func start() {
        let t = Thread { [self] in serve() }
        t.name = "stableverbs-lab control \(guest)"
        thread = t
        t.start()
    }
    func stop() { lock.lock(); stopped = true; lock.unlock() }
    var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func serve() {
        var fd: Int32 = -1
        while fd < 0 {
            if isStopped { return }
            fd = (try? UnixSocket.connect(path: socket, timeout: 0.2)) ?? -1
        }
        defer { close(fd) }
        var buf = [UInt8]()
        while !isStopped {
            let line: String
            do {
                guard let l = try UnixSocket.readLine(fd, buffer: &buf, timeout: 0.5) else { continue }
                line = l
            } catch { return }
            let answer: String
            do {
                switch line.trimmingCharacters(in: .whitespaces) {
                case "unplug": answer = "ok unplugged \(try LabNIC.unplug(qmpSocket: qmp))"
                case "plug": let (id, mac) = try LabNIC.plug(qmpSocket: qmp, guest: guest); answer = "ok plugged \(id) \(mac)"
                case "ping": answer = "ok"
                default: answer = "error unknown request \(line)"
                }
            } catch {
                answer = "error \(error)"
            }
            try? UnixSocket.writeAll(fd, Data((answer + "\n").utf8))
        }
    }
}
