// The harness of the end-to-end tests: finds the package and the built library, compiles the C
// programs of Tests/Programs once per test run, and runs them under LD_PRELOAD=libstableverbs.so
// with the software HCA double (STABLEVERBS_LOWER=softhca) and a timeout.

import Foundation
import Testing

enum Harness {
    /// The package root: this file is <root>/Tests/StableVerbsTests/ProgramHarness.swift.
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var programsDirectory: URL { root.appendingPathComponent("Tests/Programs") }

    /// The self-contained shim: $STABLEVERBS_LIB, else <root>/.build/release/libstableverbs.so.
    static let library: Result<String, HarnessError> = {
        let env = ProcessInfo.processInfo.environment["STABLEVERBS_LIB"].flatMap { $0.isEmpty ? nil : $0 }
        var path = env ?? root.appendingPathComponent(".build/release/libstableverbs.so").path
        if !path.hasPrefix("/") {
            path = URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(path).path
        }
        guard FileManager.default.fileExists(atPath: path) else {
            return .failure(HarnessError(
                "no shim library at \(path)\(env == nil ? "" : " (STABLEVERBS_LIB)"): build it first: scripts/test does "
                    + "(swift build -c release -Xswiftc -static-stdlib --omit-frame-pointers --product stableverbs)"))
        }
        return .success(path)
    }()

    /// Every program of Tests/Programs, compiled once: name -> executable path.
    static let programs: Result<[String: String], HarnessError> = compileAll()

    static func libraryPath() throws -> String { try library.get() }

    static func program(_ name: String) throws -> String {
        let all = try programs.get()
        guard let path = all[name] else { throw HarnessError("no program \(name).c in Tests/Programs") }
        return path
    }

    private static func compileAll() -> Result<[String: String], HarnessError> {
        let fm = FileManager.default
        let out = fm.temporaryDirectory.appendingPathComponent("stableverbs-programs-\(getpid())")
        do {
            try fm.createDirectory(at: out, withIntermediateDirectories: true)
            let sources = try fm.contentsOfDirectory(atPath: programsDirectory.path)
                .filter { $0.hasSuffix(".c") }.sorted()
            guard !sources.isEmpty else { return .failure(HarnessError("no C programs in \(programsDirectory.path)")) }
            var built: [String: String] = [:]
            for source in sources {
                let name = String(source.dropLast(2))
                let exe = out.appendingPathComponent(name).path
                let args = [
                    "-O2", "-Wall", "-Werror",
                    "-I\(root.appendingPathComponent("include").path)",
                    "-I\(programsDirectory.path)",
                    "-o", exe, programsDirectory.appendingPathComponent(source).path,
                    "-libverbs", "-lpthread",
                ]
                let r = try run("/usr/bin/env", ["cc"] + args, environment: ProcessInfo.processInfo.environment, timeout: 120)
                guard r.status == 0 else {
                    return .failure(HarnessError("compiling \(source) failed (cc \(args.joined(separator: " "))):\n\(r.stdout)\(r.stderr)"))
                }
                built[name] = exe
            }
            return .success(built)
        } catch {
            return .failure(HarnessError("compiling the C programs: \(error)"))
        }
    }

    // MARK: running

    struct Output: Sendable, CustomStringConvertible {
        var status: Int32          // exit status, or 128 + signal
        var signaled: Bool
        var timedOut: Bool
        var stdout: String
        var stderr: String

        var lines: [String] { stdout.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }

        var description: String {
            var s = timedOut ? "TIMED OUT (killed)" : signaled ? "killed by signal \(status - 128)" : "exit status \(status)"
            s += "\n--- stdout ---\n" + stdout
            if !stderr.isEmpty { s += "--- stderr ---\n" + String(stderr.suffix(6000)) }
            return s
        }
    }

    /// Runs an executable with exactly `environment`, stdout/stderr into files (no pipe deadlocks),
    /// in a process group of its own, killing the group after `timeout` seconds. Whatever the program
    /// left running in its group when it ended (a fork child) is killed too: nothing it started
    /// outlives the test or holds it up.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String],
                    timeout: Double) throws -> Output {
        let fm = FileManager.default
        let base = fm.temporaryDirectory.appendingPathComponent("sv-run-\(getpid())-\(UUID().uuidString)")
        let outPath = base.appendingPathExtension("out").path, errPath = base.appendingPathExtension("err").path
        defer {
            try? fm.removeItem(atPath: outPath)
            try? fm.removeItem(atPath: errPath)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setpgroup(&attributes, 0)
        var mask = sigset_t(), defaults = sigset_t()
        sigemptyset(&mask)
        sigfillset(&defaults)
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw HarnessError("cannot run \(executable): \(String(cString: strerror(rc)))") }
        // Until the program ended (not reaped yet: its group id stays its own), or the deadline.
        func ended() -> Bool {
            var info = siginfo_t()
            return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid
        }
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while !ended() {
            if Date() > deadline {
                timedOut = true
                kill(-pid, SIGTERM)
                let grace = Date().addingTimeInterval(2)
                while !ended() && Date() < grace { usleep(20_000) }
                break
            }
            usleep(5_000)
        }
        kill(-pid, SIGKILL)  // a program past its time, and what any program left in its group
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        let signaled = status & 0x7f != 0 && status & 0x7f != 0x7f
        let code = signaled ? 128 + (status & 0x7f) : (status >> 8) & 0xff
        return Output(status: code, signaled: signaled, timedOut: timedOut, stdout: out, stderr: err)
    }

    /// Where the programs' control sockets go unless a test says otherwise (made 0700 by the shim).
    static let runtimeDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("sv-control-\(getpid())").path

    /// The environment of this process without anything that would change how a program runs.
    static var cleanEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.filter { key, _ in
            !(key == "LD_PRELOAD" || key.hasPrefix("STABLEVERBS_") || key.hasPrefix("SVTEST_")
                || key.hasPrefix("RDMAV_"))
        }
    }

    /// Runs a compiled program under the shim in `setup`, `passthrough` selecting the inert shim.
    static func runProgram(_ name: String, _ arguments: [String] = [], setup: Setup, passthrough: Bool = false,
                           extraEnvironment: [String: String] = [:], timeout: Double = 150) throws -> Output {
        let exe = try program(name)
        var env = cleanEnvironment
        env["LD_PRELOAD"] = try libraryPath()
        env["STABLEVERBS_LOWER"] = "softhca"
        env["STABLEVERBS_SOFTHCA"] = setup.softHCA
        if passthrough { env["STABLEVERBS_PASSTHROUGH"] = "1" }
        env["STABLEVERBS_RUNTIME_DIR"] = runtimeDirectory  // control sockets: not in the user's own directory
        for (k, v) in setup.environment { env[k] = v }
        for (k, v) in extraEnvironment { env[k] = v }
        return try run(exe, arguments, environment: env, timeout: timeout)
    }
}

struct HarnessError: Error, CustomStringConvertible, Sendable {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A software-HCA fabric and how the programs use it.
struct Setup: Sendable, CustomTestStringConvertible, CustomStringConvertible {
    var name: String
    var softHCA: String
    var environment: [String: String]

    var description: String { name }
    var testDescription: String { name }

    /// Both ends of every connection on one device (loopback), InfiniBand link.
    static let ibOneDevice = Setup(name: "ib, 1 device", softHCA: "devices=1,link=ib", environment: [:])
    /// One end on each of two devices, InfiniBand link.
    static let ibTwoDevices = Setup(name: "ib, 2 devices", softHCA: "devices=2,link=ib",
                                    environment: ["SVTEST_TWO_DEVICES": "1"])
    /// RoCE-like: Ethernet link, LID 0, GRH required, one device (what rxe loopback looks like).
    static let ethOneDevice = Setup(name: "eth, 1 device", softHCA: "devices=1,link=eth", environment: [:])
    static let ethTwoDevices = Setup(name: "eth, 2 devices", softHCA: "devices=2,link=eth",
                                     environment: ["SVTEST_TWO_DEVICES": "1"])

    static let all: [Setup] = [.ibOneDevice, .ibTwoDevices, .ethOneDevice, .ethTwoDevices]
}

/// One invocation of a C program and the summary line that says it passed.
struct ProgramCase: Sendable, CustomTestStringConvertible {
    var program: String
    var arguments: [String]
    var summary: String   // prefix of the summary line; the line must also end in ", 0 errors"

    var testDescription: String { ([program] + arguments).joined(separator: " ") }
}

extension Harness.Output {
    /// The line starting with `prefix`, if any.
    func line(startingWith prefix: String) -> String? { lines.first { $0.hasPrefix(prefix) } }
}
