// The `stableverbs` command: status of every shimmed process, and the planned detach/attach an
// orchestrator runs around a VF detach (a VM migration):
//
//   stableverbs detach        every process quiesces and releases its RDMA devices
//   ... detach the VF, migrate the VM, attach the new VF ...
//   stableverbs attach        every process rebuilds on the new device and carries on
//
// It talks to the control socket of each process (`<runtime dir>/<pid>.sock`) and never loads the
// shim. Exit status: 0 every process succeeded, 1 one failed (or the runtime directory is unsafe),
// 3 there is no shimmed process, 64 bad usage.

import ArgumentParser
import Glibc
import StableVerbsControl

@main
struct StableVerbsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stableverbs",
        abstract: "Show and drive the processes running under the StableVerbs shim.",
        discussion: """
            Every process running under libstableverbs.so (LD_PRELOAD or linked) listens on \
            <runtime dir>/<pid>.sock once it has opened an RDMA device. The runtime dir is \
            $STABLEVERBS_RUNTIME_DIR, else $XDG_RUNTIME_DIR/stableverbs, else /tmp/stableverbs-<uid>; \
            only the same user (or root) can reach it.

            Planned migration: `stableverbs detach`, detach the VF / move the VM / attach the new VF, \
            `stableverbs attach`.

            Exit status: 0 every process succeeded, 1 at least one failed (each is named with the \
            reason), 3 no shimmed process was found.
            """,
        subcommands: [Status.self, Detach.self, Attach.self]
    )

    static let noProcessStatus: Int32 = 3

    /// `stableverbs --runtime-dir DIR status` (the subcommands take it after their name too).
    @OptionGroup var options: DirectoryOptions
}

struct DirectoryOptions: ParsableArguments {
    @Option(name: .customLong("runtime-dir"), help: ArgumentHelp(
        "The runtime directory holding the processes' control sockets.",
        discussion: "Default: $STABLEVERBS_RUNTIME_DIR, else $XDG_RUNTIME_DIR/stableverbs, else /tmp/stableverbs-<uid>.",
        valueName: "dir"))
    var runtimeDirectory: String?

    /// This option, else the root command's, else the default.
    func directory(_ root: StableVerbsCommand) -> String {
        runtimeDirectory ?? root.options.runtimeDirectory
            ?? RuntimeDirectory.path { name in getenv(name).map { String(cString: $0) } }
    }
}

extension StableVerbsCommand {
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show every shimmed process: its contexts (virtual and real device, state, objects) and its recoveries.")

        @OptionGroup var options: DirectoryOptions
        @ParentCommand var root: StableVerbsCommand
        @Flag(help: "Print one JSON object.") var json = false
        @Option(help: ArgumentHelp("Seconds to wait for each process's answer.", valueName: "seconds"))
        var timeout: Double = 10

        func run() throws {
            let dir = options.directory(root)
            try Session(directory: dir, request: .status, timeout: timeout, printEmpty: json).run { answers, removed in
                if json {
                    print(Report.statusJSON(answers, directory: dir, removed: removed))
                } else {
                    for a in answers { Report.status(a).forEach { print($0) } }
                }
            }
        }
    }

    struct Detach: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Quiesce every shimmed process and release its RDMA devices (before a VF is detached).",
            discussion: """
                Each process stops handing new work to the device (it is buffered), lets posted \
                sends complete for up to STABLEVERBS_QUIESCE_MS, destroys every hardware object and \
                closes the device; the application keeps running. Returns when every process has \
                released. With --device, only the contexts on that device (and those connected to them).
                """)

        @OptionGroup var options: DirectoryOptions
        @ParentCommand var root: StableVerbsCommand
        @Option(help: ArgumentHelp("Only the contexts on this RDMA device (e.g. mlx5_0).", valueName: "device"))
        var device: String?
        @Option(help: ArgumentHelp("Seconds to wait for each process.", valueName: "seconds"))
        var timeout: Double = 60

        func validate() throws {
            if let device, device.isEmpty || device.contains(where: { $0 == " " || $0 == "\n" }) {
                throw ValidationError("--device takes a device name (no spaces)")
            }
            guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        }

        func run() throws {
            try Session(directory: options.directory(root), request: .detach(device: device), timeout: timeout, printEmpty: false)
                .run { answers, _ in answers.forEach { print(Report.detachOrAttach($0, verb: "detached")) } }
        }
    }

    struct Attach: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rebuild every detached context on the device now present (after the new VF is attached).",
            discussion: """
                Each process waits for a matching device (STABLEVERBS_MATCH; up to \
                STABLEVERBS_DEVICE_WAIT_MS, default 60 s), rebuilds its objects, reconnects its QPs \
                and re-posts the work that was in flight or buffered.
                """)

        @OptionGroup var options: DirectoryOptions
        @ParentCommand var root: StableVerbsCommand
        @Option(help: ArgumentHelp("Seconds to wait for each process.", valueName: "seconds"))
        var timeout: Double = 120

        func validate() throws {
            guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        }

        func run() throws {
            try Session(directory: options.directory(root), request: .attach, timeout: timeout, printEmpty: false)
                .run { answers, _ in answers.forEach { print(Report.detachOrAttach($0, verb: "attached")) } }
        }
    }
}

/// Finds the processes, asks them all, prints, and turns the outcome into the exit status.
struct Session {
    var directory: String
    var request: ControlProtocol.Request
    var timeout: Double
    /// Print even when there is no process (JSON: an empty list).
    var printEmpty: Bool

    func run(_ print: ([Answer], [Int32]) -> Void) throws {
        var removed: [Int32] = []
        let targets: [Target]
        do {
            targets = try Discovery.targets(in: directory, removed: &removed)
        } catch let failure as CommandFailure {
            note(failure.message)
            throw ExitCode(failure.status)
        }
        let all = Exchange.run(request, to: targets, timeout: timeout)
        let answers = all.filter { if case .stale = $0.outcome { return false } else { return true } }
        removed += all.filter { if case .stale = $0.outcome { return true } else { return false } }.map(\.target.pid)
        for pid in removed.sorted() {
            note("removed the stale control socket of pid \(pid) (no such process, or nobody listening)")
        }
        guard !answers.isEmpty else {
            if printEmpty { print([], removed) }
            note("no shimmed process (no live control socket in \(directory))")
            throw ExitCode(StableVerbsCommand.noProcessStatus)
        }
        print(answers, removed)
        let failed = answers.compactMap { a -> String? in
            if case .failed(let why) = a.outcome { return "pid \(a.target.pid) (\(a.program)): \(why)" }
            return nil
        }
        if !failed.isEmpty {
            note("\(request.line.split(separator: " ").first ?? "") failed in \(failed.count) of \(answers.count) process(es): "
                 + failed.joined(separator: "; "))
            throw ExitCode(1)
        }
    }

    private func note(_ message: String) {
        fflush(nil)  // stdout first: the lines printed so far come before the note
        let line = Array("stableverbs: \(message)\n".utf8)
        line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    }
}
