import ArgumentParser
import Foundation
import LabKit

@main
struct StableVerbsLab: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stableverbs-lab",
        abstract: "Boot QEMU (TCG) guests with the kernel's soft-RoCE device (rdma_rxe) and run commands in them.",
        discussion: """
        The guests see the host's file system read-only at the same paths (except /tmp, /var/tmp,
        /root, /run, /dev, /proc, /sys, which are the guest's own). Each guest has one rxe device,
        rxe0, whose GID index 1 is its IPv4-mapped GID. See README.md, "The lab".
        """,
        subcommands: [Run.self, Setup.self, NIC.self],
        defaultSubcommand: Run.self
    )
}

struct Setup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Install the packages the lab needs (apt), fetch the Debian kernel, build the guest image.")
    @Flag(help: "Only check; do not install missing packages.") var noInstall = false
    func run() async throws {
        let paths = try LabPaths.discover()
        do {
            try await LabSetup(paths: paths).ensure(install: !noInstall)
        } catch {
            labLog("\(error)")
            throw ExitCode(LabRun.labFailureStatus)
        }
        labLog("ready: cache \(paths.cache), library \(paths.library)\(FileManager.default.fileExists(atPath: paths.library) ? "" : " (not built yet)")")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot the guest(s), run COMMAND with /bin/sh in each, exit with its status.",
        discussion: """
        Exit status: COMMAND's (with two guests: guest 0's if non-zero, else guest 1's);
        124 when the guests did not finish within --timeout (they are killed); 125 when the lab
        itself failed (setup, boot, init).
        In the guest: STABLEVERBS_LIB (the shim library), STABLEVERBS_LAB_GUEST (0 or 1),
        STABLEVERBS_LAB_GUESTS, STABLEVERBS_LAB_ROLE (server on guest 0, client on guest 1),
        STABLEVERBS_LAB_IP (this guest), STABLEVERBS_LAB_PEER (the other guest; this guest's own
        address when alone), STABLEVERBS_LAB_DEVICE=rxe0, STABLEVERBS_LAB_GID_INDEX=1.
        PATH starts with /run/lab: lab-device (device loss), lab-programs (the program suite) and
        stableverbs (the command, STABLEVERBS_COMMAND: $STABLEVERBS_COMMAND, else `stableverbs` next
        to the library, else the package's release or debug stableverbs-cli).
        """)
    @Option(help: "Number of guests (1 or 2).") var guests = 1
    @Option(help: "Seconds before the guests are killed.") var timeout: Double = 300
    @Option(help: "Command for guest 0 (role server) when --guests 2.") var server: String?
    @Option(help: "Command for guest 1 (role client) when --guests 2.") var client: String?
    @Option(name: .customLong("env"), help: "KEY=VALUE to set in the guests (repeatable).") var env: [String] = []
    @Option(help: "Guest memory in MiB.") var memory = 1024
    @Option(help: "Guest CPUs.") var cpus = 2
    @Option(help: "Shim library passed as STABLEVERBS_LIB (default: $STABLEVERBS_LIB or .build/release/libstableverbs.so).") var lib: String?
    @Flag(help: "Show kernel messages, QEMU's command line, and keep the run folder.") var debug = false
    @Flag(help: "Do not install missing packages during the automatic setup.") var noInstall = false
    @Argument(parsing: .postTerminator, help: "The command (run with /bin/sh -c).") var command: [String] = []

    func validate() throws {
        guard guests == 1 || guests == 2 else { throw ValidationError("--guests must be 1 or 2") }
        if command.isEmpty && (server == nil || client == nil) {
            throw ValidationError("give a command after --, or --server and --client with --guests 2")
        }
        if (server != nil || client != nil) && guests != 2 { throw ValidationError("--server/--client need --guests 2") }
    }

    func run() async throws {
        var paths = try LabPaths.discover()
        if let lib { paths.library = LabPaths.absolute(lib) }
        do {
            try await LabSetup(paths: paths).ensure(install: !noInstall, quiet: false)
        } catch {
            labLog("\(error)")
            throw ExitCode(LabRun.labFailureStatus)
        }
        let joined = command.joined(separator: " ")
        var r = LabRun(paths: paths, commands: guests == 2 ? [server ?? joined, client ?? joined] : [joined])
        r.guests = guests
        r.timeout = timeout
        r.memoryMiB = memory
        r.cpus = cpus
        r.debug = debug
        if debug { r.onStart = { dir in labLog("run folder: \(dir) (stableverbs-lab nic unplug|plug --run \(dir))") } }
        for kv in env {
            guard let eq = kv.firstIndex(of: "=") else { throw ValidationError("--env needs KEY=VALUE: \(kv)") }
            r.environment[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
        }
        if !FileManager.default.fileExists(atPath: paths.library) {
            labLog("note: \(paths.library) does not exist (yet); STABLEVERBS_LIB points at it anyway")
        }
        let out = OutputLock()
        let prefix = guests > 1
        let result: LabRun.Result
        do {
            result = try await r.execute { g, line in out.write(prefix ? "[lab\(g)] \(line)\n" : line + "\n") }
        } catch {
            labLog("\(error)")
            throw ExitCode(LabRun.labFailureStatus)
        }
        if result.timedOut {
            labLog("TIMEOUT: the guest(s) did not finish within \(Int(timeout)) s and were killed (exit \(LabRun.timeoutStatus))")
        }
        if debug { labLog("run folder kept: \(result.runDirectory); \(String(format: "%.1f", result.seconds)) s") }
        throw ExitCode(result.status)
    }
}

struct NIC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nic",
        abstract: "Hot-unplug or hot-plug the NIC of a running guest through QMP (from the host).",
        discussion: """
        RUN is the run folder of a running lab (.build/lab/runs/<pid>-<n>; the guest can print it:
        it is the folder of $0's sv.run in /proc/cmdline). Inside the guest, `lab-device nic-replace`
        does the same through the control port. Afterwards run `lab-device add` in the guest.
        """)
    @Argument(help: "unplug or plug") var action: String
    @Option(help: "The run folder of the running lab.") var run: String
    @Option(help: "Guest index.") var guest = 0
    func run() async throws {
        let sock = LabPaths.absolute(self.run) + "/qmp\(guest).sock"
        do {
            switch action {
            case "unplug": print("unplugged \(try LabNIC.unplug(qmpSocket: sock))")
            case "plug": let (id, mac) = try LabNIC.plug(qmpSocket: sock, guest: guest); print("plugged \(id) \(mac)")
            default: throw ValidationError("action must be unplug or plug")
            }
        } catch let e as LabError {
            labLog("\(e)")
            throw ExitCode(1)
        }
    }
}

final class OutputLock: @unchecked Sendable {
    private let lock = NSLock()
    func write(_ s: String) {
        lock.lock(); defer { lock.unlock() }
        FileHandle.standardOutput.write(Data(s.utf8))
    }
}
