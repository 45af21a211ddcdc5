// The control socket and the `stableverbs` command (issue 4 part 2): shimmed programs on the
// software HCA run their verifying workload (Tests/Programs/recovery.c -m external) while the real
// command, run as a separate process, shows their status and detaches/attaches them; the programs
// must end with nothing lost, duplicated or in error. Also: the socket's life cycle and
// permissions (Tests/Programs/control.c, fork children included), refused runtime directories,
// exit statuses 0/1/3, stale sockets of dead processes.

import Foundation
import StableVerbsControl
import Testing

/// The `stableverbs` command: $STABLEVERBS_COMMAND, else the stableverbs-cli that `swift test`
/// built next to this test binary, reached through a link named `stableverbs`.
private let command: Result<String, HarnessError> = {
    let fm = FileManager.default
    if let c = ProcessInfo.processInfo.environment["STABLEVERBS_COMMAND"], !c.isEmpty {
        return fm.isExecutableFile(atPath: c) ? .success(c) : .failure(HarnessError("STABLEVERBS_COMMAND=\(c) is not executable"))
    }
    let exe = (try? fm.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var candidates = [URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("stableverbs-cli").path]
    candidates.append(Harness.root.appendingPathComponent(".build/debug/stableverbs-cli").path)
    guard let built = candidates.first(where: { fm.isExecutableFile(atPath: $0) }) else {
        return .failure(HarnessError("no stableverbs-cli in \(candidates): swift build --product stableverbs-cli"))
    }
    let dir = fm.temporaryDirectory.appendingPathComponent("sv-command-\(getpid())")
    let link = dir.appendingPathComponent("stableverbs").path
    try? fm.createDirectory(at: dir, withIntermediateDirectories: true)
    try? fm.removeItem(atPath: link)
    do { try fm.createSymbolicLink(atPath: link, withDestinationPath: built) } catch { return .success(built) }
    return .success(link)
}()

/// Runs `stableverbs ARGS` (never under the shim: the clean environment has no LD_PRELOAD).
private func stableverbs(_ args: [String], timeout: Double = 60) throws -> Harness.Output {
    try Harness.run(try command.get(), args, environment: Harness.cleanEnvironment, timeout: timeout)
}

/// A fresh runtime directory for one test (its parent exists; the shim creates it 0700).
private func freshDirectory(_ tag: String) -> String {
    let parent = FileManager.default.temporaryDirectory.appendingPathComponent("sv-ctl-\(getpid())-\(UUID().uuidString.prefix(8))")
    try? FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
    return parent.appendingPathComponent(tag).path
}

private func mode(_ path: String) -> Int? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    return Int(st.st_mode & 0o7777)
}

private func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

/// A shimmed program running in the background, its output in files.
private final class Background {
    let process = Process()
    let out: URL, err: URL

    init(_ name: String, _ args: [String], setup: Setup, runtimeDirectory: String, environment: [String: String] = [:]) throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("sv-bg-\(getpid())-\(UUID().uuidString)")
        out = base.appendingPathExtension("out")
        err = base.appendingPathExtension("err")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        FileManager.default.createFile(atPath: err.path, contents: nil)
        var env = Harness.cleanEnvironment
        env["LD_PRELOAD"] = try Harness.libraryPath()
        env["STABLEVERBS_LOWER"] = "softhca"
        env["STABLEVERBS_SOFTHCA"] = setup.softHCA
        env["STABLEVERBS_RUNTIME_DIR"] = runtimeDirectory
        env["STABLEVERBS_LOG"] = "info"
        env["STABLEVERBS_QUIESCE_MS"] = "200"
        env["SVTEST_TIMEOUT"] = "120"
        env["SVTEST_POLL_SECONDS"] = "60"
        for (k, v) in setup.environment { env[k] = v }
        for (k, v) in environment { env[k] = v }
        process.executableURL = URL(fileURLWithPath: try Harness.program(name))
        process.arguments = args
        process.environment = env
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var stdout: String { (try? String(contentsOf: out, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: err, encoding: .utf8)) ?? "" }
    var description: String { "pid \(pid), running \(process.isRunning)\n--- stdout ---\n\(stdout)--- stderr ---\n\(String(stderr.suffix(4000)))" }

    /// Waits until `condition` holds (or the process ended, or `seconds` passed).
    func wait(for seconds: Double, until condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            if !process.isRunning { return condition() }
            usleep(20_000)
        }
        return condition()
    }

    /// Waits for the exit (killing after `seconds`); the exit status, nil when it had to be killed.
    func finish(within seconds: Double) -> Int32? {
        if !wait(for: seconds, until: { !process.isRunning }) {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(at: out)
        try? FileManager.default.removeItem(at: err)
    }
}

private func json(_ out: Harness.Output) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(out.stdout.utf8))) as? [String: Any]
}

/// A unix socket bound at `path` (listening when asked); the fd, to close later.
private func bindSocket(_ path: String, listening: Bool) -> Int32 {
    let fd = UnixSocket.make()
    let ok = UnixSocket.withAddress(path) { bind(fd, $0, $1) == 0 } ?? false
    #expect(ok, "bind \(path): \(String(cString: strerror(errno)))")
    if listening { #expect(listen(fd, 4) == 0) }
    return fd
}

/// A pid that no process has (a child that already exited and was reaped).
private func deadPid() throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/true")
    try p.run()
    p.waitUntilExit()
    return p.processIdentifier
}

@Suite("Control socket and the stableverbs command", .serialized)
struct ControlTests {
    /// Two shimmed programs (one and two devices) keep verifying their traffic while the command
    /// shows them, detaches them (in parallel) and attaches them, twice; status in between shows
    /// the released contexts and then the recovery statistics.
    @Test("status, detach and attach of running programs; their workloads lose nothing")
    func detachAttachMidWorkload() throws {
        let dir = freshDirectory("run")
        let one = try Background("recovery", ["-m", "external", "-k", "2"], setup: .ibOneDevice, runtimeDirectory: dir)
        let two = try Background("recovery", ["-m", "external", "-k", "2"], setup: .ethTwoDevices, runtimeDirectory: dir)
        let programs = [one, two]
        for p in programs {
            let socket = RuntimeDirectory.socketPath(dir, pid: p.pid)
            #expect(p.wait(for: 30, until: { exists(socket) && p.stdout.contains("recovery: control \(socket)") }),
                    "no control socket \(socket): \(p.description)")
        }
        #expect(mode(dir) == 0o700, "runtime dir mode \(String(mode(dir) ?? -1, radix: 8))")
        for p in programs { #expect(mode(RuntimeDirectory.socketPath(dir, pid: p.pid)) == 0o600) }

        // Status: both processes, their contexts live.
        let status = try stableverbs(["status", "--runtime-dir", dir])
        #expect(status.status == 0, "\(status)")
        #expect(status.stdout.contains("pid \(one.pid) (recovery), lower softhca: 1 context, 0 recoveries"), "\(status)")
        #expect(status.stdout.contains("pid \(two.pid) (recovery), lower softhca: 2 contexts, 0 recoveries"), "\(status)")
        #expect(status.stdout.contains("softhca0 on softhca0: live, generation 0, 2 QPs, 4 CQs, 2 MRs"), "\(status)")
        #expect(status.stdout.contains("softhca1 on softhca1: live, generation 0, 1 QPs, 2 CQs, 1 MRs"), "\(status)")

        for round in 1...2 {
            let detach = try stableverbs(["detach", "--runtime-dir", dir, "--timeout", "30"])
            #expect(detach.status == 0, "round \(round): \(detach)")
            #expect(detach.stdout.contains("pid \(one.pid) (recovery): detached 1 context in "), "\(detach)")
            #expect(detach.stdout.contains("pid \(two.pid) (recovery): detached 2 contexts in "), "\(detach)")

            // Released, waiting for attach, while the programs keep posting (buffered) and polling.
            let held = try stableverbs(["status", "--json", "--runtime-dir", dir])
            #expect(held.status == 0, "\(held)")
            let processes = json(held)?["processes"] as? [[String: Any]] ?? []
            #expect(Set(processes.compactMap { $0["pid"] as? Int }) == [Int(one.pid), Int(two.pid)], "\(held)")
            for p in processes {
                for c in p["contexts"] as? [[String: Any]] ?? [] {
                    #expect(c["state"] as? String == "released" && c["detached"] as? Bool == true && c["device"] is NSNull,
                            "round \(round): \(held)")
                }
                #expect((p["recovery"] as? [String: Any])?["count"] as? Int == round - 1, "\(held)")
            }
            usleep(100_000)  // the programs spin against the released contexts for a while

            let attach = try stableverbs(["attach", "--runtime-dir", dir, "--timeout", "30"])
            #expect(attach.status == 0, "round \(round): \(attach)")
            #expect(attach.stdout.contains("pid \(one.pid) (recovery): attached 1 context in "), "\(attach)")
            #expect(attach.stdout.contains("pid \(two.pid) (recovery): attached 2 contexts in "), "\(attach)")

            if round == 1 {
                let after = try stableverbs(["status", "--json", "--runtime-dir", dir])
                let procs = json(after)?["processes"] as? [[String: Any]] ?? []
                #expect(procs.count == 2, "\(after)")
                for p in procs {
                    let r = p["recovery"] as? [String: Any] ?? [:]
                    #expect(r["count"] as? Int == 1 && r["last"] as? String == "planned", "\(after)")
                    #expect((r["phases_ms"] as? [String: Any])?["quiesce"] is NSNumber, "\(after)")
                    for c in p["contexts"] as? [[String: Any]] ?? [] {
                        #expect(c["state"] as? String == "live" && c["generation"] as? Int == 1 && c["detached"] as? Bool == false,
                                "\(after)")
                    }
                }
                let text = try stableverbs(["status", "--runtime-dir", dir])
                #expect(text.stdout.contains("1 recovery (last planned, 1 context(s): quiesce "), "\(text)")
            }
        }

        for (p, devices) in [(one, 1), (two, 2)] {
            let rc = p.finish(within: 60)
            #expect(rc == 0, "\(p.description)")
            let summary = p.stdout.split(separator: "\n").first { $0.hasPrefix("recovery: external, ") && $0.contains(" messages, ") }
            #expect(summary?.hasSuffix(" 2 recoveries, \(devices) devices, 0 errors") == true, "\(p.description)")
            #expect(p.stdout.contains("planned=1"), "\(p.description)")
            #expect(p.stderr.contains("control socket: 'detach' from pid") && p.stderr.contains("recovery #2 (planned"),
                    "\(p.description)")
            // The socket went with the process (atexit).
            #expect(!exists(RuntimeDirectory.socketPath(dir, pid: p.pid)), "socket left behind by \(p.pid)")
        }
        let none = try stableverbs(["status", "--runtime-dir", dir])
        #expect(none.status == 3 && none.stderr.contains("no shimmed process"), "\(none)")
    }

    /// The socket's life cycle from inside the process: ENOENT before the first context, 0600 in a
    /// 0700 directory after it, fork children with their own socket removed at their exit.
    @Test("socket life cycle and permissions, fork children included")
    func lifecycle() throws {
        let dir = freshDirectory("created")  // missing: the shim creates it
        let out = try Harness.runProgram("control", setup: .ibOneDevice, extraEnvironment: ["STABLEVERBS_RUNTIME_DIR": dir], timeout: 60)
        #expect(out.status == 0 && out.line(startingWith: "control: lifecycle, 0 errors") != nil, "\(out)")
        #expect(mode(dir) == 0o700)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? ["?"]
        #expect(left.isEmpty, "left in the runtime dir: \(left)")
    }

    /// Fork children right after the parent opened its device (its shim threads starting and taking
    /// the control lock), then 20 more: no child may inherit the lock held by a thread it does not
    /// have (its first control-path call would hang). Ten runs: before the fork handler about one
    /// run in three hung.
    @Test("fork children never inherit the control lock held", arguments: 1...10)
    func forkChildrenDoNotHang(run: Int) throws {
        let dir = freshDirectory("fork\(run)")
        let out = try Harness.runProgram("control", ["-f", "20"], setup: .ibOneDevice, extraEnvironment: ["STABLEVERBS_RUNTIME_DIR": dir], timeout: 60)
        #expect(out.status == 0 && out.line(startingWith: "control: 20 fork children, 0 hung") != nil
                    && out.line(startingWith: "control: lifecycle, 0 errors") != nil, "\(out)")
    }

    /// A runtime directory the group or others can reach is refused by the shim (clear message, no
    /// socket, the program carries on) and by the command (exit 1).
    @Test("an accessible runtime directory is refused", arguments: [0o777, 0o750, 0o701])
    func accessibleDirectory(permissions: Int) throws {
        let dir = freshDirectory("open")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        #expect(chmod(dir, mode_t(permissions)) == 0)
        let out = try Harness.runProgram("control", ["-r"], setup: .ibOneDevice,
                                         extraEnvironment: ["STABLEVERBS_RUNTIME_DIR": dir], timeout: 60)
        #expect(out.status == 0 && out.line(startingWith: "control: refused, 0 errors") != nil, "\(out)")
        let octal = String(permissions, radix: 8)
        #expect(out.stderr.contains("error: control socket: runtime directory \(dir) has mode 0\(octal): the group or others can reach it; refusing to use it"),
                "\(out)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).isEmpty)

        let status = try stableverbs(["status", "--runtime-dir", dir])
        #expect(status.status == 1 && status.stderr.contains("has mode 0\(octal)"), "\(status)")
    }

    /// A runtime directory owned by another uid (root can make one) is refused; a symbolic link too.
    @Test("a runtime directory of another owner, or a symbolic link, is refused")
    func foreignDirectory() throws {
        let link = freshDirectory("link")
        let target = freshDirectory("target")
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        #expect(chmod(target, 0o700) == 0)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        let viaLink = try Harness.runProgram("control", ["-r"], setup: .ibOneDevice,
                                             extraEnvironment: ["STABLEVERBS_RUNTIME_DIR": link], timeout: 60)
        #expect(viaLink.status == 0 && viaLink.stderr.contains("runtime directory \(link) is not a directory"), "\(viaLink)")

        guard geteuid() == 0 else {
            print("ControlTests: not root: the other-owner case needs chown (skipped)")
            return
        }
        let dir = freshDirectory("foreign")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        #expect(chmod(dir, 0o700) == 0 && chown(dir, 4242, 4242) == 0)
        let out = try Harness.runProgram("control", ["-r"], setup: .ibOneDevice,
                                         extraEnvironment: ["STABLEVERBS_RUNTIME_DIR": dir], timeout: 60)
        #expect(out.status == 0 && out.line(startingWith: "control: refused, 0 errors") != nil, "\(out)")
        #expect(out.stderr.contains("runtime directory \(dir) is owned by uid 4242, not by uid 0: refusing to use it"), "\(out)")
    }

    /// Exit statuses: 3 without processes, 1 when a process fails (an unknown device: the message
    /// names the process and the reason; a process that does not answer in time), 0 otherwise.
    @Test("exit statuses 0, 1 and 3")
    func exitStatuses() throws {
        let missing = freshDirectory("missing")
        for verb in [["status"], ["status", "--json"], ["detach"], ["attach"]] {
            let out = try stableverbs(verb + ["--runtime-dir", missing])
            #expect(out.status == 3 && out.stderr.contains("no shimmed process (no live control socket in \(missing))"), "\(verb): \(out)")
        }
        let global = try stableverbs(["--runtime-dir", missing, "status"])  // the option before the subcommand
        #expect(global.status == 3 && global.stderr.contains("no live control socket in \(missing))"), "\(global)")
        let emptyJSON = try stableverbs(["status", "--json", "--runtime-dir", missing])
        #expect((json(emptyJSON)?["processes"] as? [Any])?.isEmpty == true, "\(emptyJSON)")

        let dir = freshDirectory("codes")
        let p = try Background("recovery", ["-m", "external", "-k", "1"], setup: .ibOneDevice, runtimeDirectory: dir)
        let socket = RuntimeDirectory.socketPath(dir, pid: p.pid)
        #expect(p.wait(for: 30, until: { exists(socket) }), "\(p.description)")

        let unknown = try stableverbs(["detach", "--device", "nosuch0", "--runtime-dir", dir])
        #expect(unknown.status == 1, "\(unknown)")
        #expect(unknown.stdout.contains("pid \(p.pid) (recovery): FAILED after "), "\(unknown)")
        #expect(unknown.stderr.contains("detach failed in 1 of 1 process(es): pid \(p.pid) (recovery): no device named nosuch0 in this process"),
                "\(unknown)")

        // A socket that accepts but never answers (a hung process): a timeout, named.
        let hung = RuntimeDirectory.socketPath(dir, pid: getpid())
        let fd = bindSocket(hung, listening: true)
        defer { close(fd); unlink(hung) }
        let slow = try stableverbs(["status", "--runtime-dir", dir, "--timeout", "1"])
        #expect(slow.status == 1, "\(slow)")
        #expect(slow.stdout.contains("pid \(p.pid) (recovery), lower softhca: 1 context"), "the other process still answers: \(slow)")
        #expect(slow.stderr.contains("status failed in 1 of 2 process(es): pid \(getpid()) (") && slow.stderr.contains("no answer within 1 s"),
                "\(slow)")
        close(fd)
        unlink(hung)

        // Detach/attach by device name; the workload ends after this one recovery.
        let detach = try stableverbs(["detach", "--device", "softhca0", "--runtime-dir", dir])
        #expect(detach.status == 0 && detach.stdout.contains("detached 1 context"), "\(detach)")
        let attach = try stableverbs(["attach", "--runtime-dir", dir])
        #expect(attach.status == 0 && attach.stdout.contains("attached 1 context"), "\(attach)")
        #expect(p.finish(within: 60) == 0, "\(p.description)")
        #expect(p.stdout.contains(" 1 recoveries, 1 devices, 0 errors"), "\(p.description)")
    }

    /// Sockets nobody serves any more — of a pid that is gone, or of a live pid with nobody
    /// listening — are removed and reported; with nothing else left, the status is 3.
    @Test("stale sockets of dead processes are cleaned")
    func staleSockets() throws {
        let dir = freshDirectory("stale")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        #expect(chmod(dir, 0o700) == 0)
        let dead = try deadPid()
        let deadPath = RuntimeDirectory.socketPath(dir, pid: dead)
        close(bindSocket(deadPath, listening: false))
        let unserved = RuntimeDirectory.socketPath(dir, pid: getpid())  // alive, but nobody listens
        close(bindSocket(unserved, listening: false))
        let other = dir + "/notes.txt"
        FileManager.default.createFile(atPath: other, contents: Data("x".utf8))
        #expect(exists(deadPath) && exists(unserved))

        let out = try stableverbs(["status", "--runtime-dir", dir])
        #expect(out.status == 3, "\(out)")
        #expect(out.stderr.contains("removed the stale control socket of pid \(dead)"), "\(out)")
        #expect(out.stderr.contains("removed the stale control socket of pid \(getpid())"), "\(out)")
        #expect(!exists(deadPath) && !exists(unserved), "stale sockets left")
        #expect(exists(other), "a file that is not a socket of the shim was removed")

        // Next to a live process: cleaned, and the live one answers.
        close(bindSocket(deadPath, listening: false))
        let p = try Background("recovery", ["-m", "external", "-k", "1"], setup: .ibOneDevice, runtimeDirectory: dir)
        #expect(p.wait(for: 30, until: { exists(RuntimeDirectory.socketPath(dir, pid: p.pid)) }), "\(p.description)")
        let json = try stableverbs(["status", "--json", "--runtime-dir", dir])
        #expect(json.status == 0, "\(json)")
        let parsed = (try? JSONSerialization.jsonObject(with: Data(json.stdout.utf8))) as? [String: Any]
        #expect(parsed?["removed_stale"] as? [Int] == [Int(dead)], "\(json)")
        #expect((parsed?["processes"] as? [[String: Any]])?.first?["pid"] as? Int == Int(p.pid), "\(json)")
        #expect(!exists(deadPath))
        _ = try stableverbs(["detach", "--runtime-dir", dir])
        _ = try stableverbs(["attach", "--runtime-dir", dir])
        #expect(p.finish(within: 60) == 0, "\(p.description)")
    }

    /// The command is its own program: it does not link the shim, and its help calls it stableverbs.
    @Test("the command does not link the shim and is called stableverbs")
    func commandShape() throws {
        let path = try command.get()
        let real = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? path
        let needed = try Harness.run("/usr/bin/env", ["readelf", "-d", real], environment: Harness.cleanEnvironment, timeout: 30)
        #expect(needed.status == 0, "\(needed)")
        #expect(!needed.stdout.contains("stableverbs"), "the command links the shim: \(needed)")
        let help = try stableverbs(["--help"])
        #expect(help.status == 0 && help.stdout.contains("USAGE: stableverbs [--runtime-dir <dir>] <subcommand>"), "\(help)")
        for sub in ["status", "detach", "attach"] { #expect(help.stdout.contains(sub), "\(help)") }
        let bad = try stableverbs(["detach", "--timeout", "0"])
        #expect(bad.status == 64, "\(bad)")
    }
}
