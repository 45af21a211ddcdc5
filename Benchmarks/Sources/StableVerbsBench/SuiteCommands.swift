import ArgumentParser

/// Options every suite-running subcommand takes.
struct RunOptions: ParsableArguments {
    @Flag(help: "Fewer repetitions, fewer QP counts: a smoke run whose figures are noisier.")
    var quick = false

    @Flag(name: .customLong("no-build"), help: "Use the library as it is ($STABLEVERBS_LIB, default .build/release/libstableverbs.so).")
    var noBuild = false

    @Option(name: [.customShort("j"), .long], help: ArgumentHelp("Parallel jobs for building the library (swift build -j).", valueName: "n"))
    var jobs: Int?

    @Option(help: ArgumentHelp("Results directory (default: Benchmarks/results).", valueName: "dir"))
    var out: String?
}

struct AllCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "fastpath, footprint and recovery on the software HCA; with --lab also the lab suites."
    )
    @OptionGroup var options: RunOptions
    @Flag(help: "Also run the QEMU lab: recovery on rxe0 and lab-latency (minutes to an hour).")
    var lab = false
    @Flag(name: .customLong("skip-callgrind"), help: "No instruction counts in fastpath (valgrind).")
    var skipCallgrind = false

    func run() async throws {
        let suites: [Suite] = lab ? Suite.allCases : Suite.allCases.filter { !$0.needsLab }
        try await BenchSession(options: options, lab: lab, skipCallgrind: skipCallgrind).run(suites)
    }
}

/// Suites 1 and 4 come from one script, Benchmarks/run: `fastpath` and `footprint` are one command.
struct FastPathCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fastpath",
        abstract: "Suites 1 and 4: ns and instructions the shim adds per fast-path op, bytes per object, start-up (Benchmarks/run).",
        aliases: ["footprint"]
    )
    @OptionGroup var options: RunOptions
    @Flag(name: .customLong("skip-callgrind"), help: "No instruction counts (valgrind).")
    var skipCallgrind = false

    func run() async throws {
        try await BenchSession(options: options, skipCallgrind: skipCallgrind).run([.fastpath, .footprint])
    }
}

struct RecoveryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recovery",
        abstract: "Suite 3: recovery phases and blackout vs QP pairs and MRs on the software HCA; with --lab also on rxe0 in the lab."
    )
    @OptionGroup var options: RunOptions
    @Flag(help: "Also recover rxe0 in a QEMU guest (minutes).")
    var lab = false

    func run() async throws {
        try await BenchSession(options: options, lab: lab).run([.recovery])
    }
}

struct LabLatencyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab-latency",
        abstract: "Suite 2: perftest latency native vs shim across two QEMU guests (runs the lab)."
    )
    @OptionGroup var options: RunOptions

    func run() async throws {
        try await BenchSession(options: options, lab: true).run([.labLatency])
    }
}

struct ChartsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "charts",
        abstract: "(Re)render the PNG charts from the JSON in the results directory."
    )
    @Option(help: ArgumentHelp("Results directory (default: Benchmarks/results).", valueName: "dir"))
    var out: String?

    func run() async throws {
        let results = ResultsDirectory(path: out)
        let gnuplot = try Gnuplot.locate()
        var present: [Suite] = []
        for suite in Suite.allCases where try await results.prepareJSON(for: suite) {
            present.append(suite)
        }
        guard !present.isEmpty else {
            throw BenchError("no results in \(results.url.path): run a suite first (e.g. stableverbs-bench all --quick)")
        }
        for suite in present {
            if let png = try await SuiteChart.render(suite, in: results, with: gnuplot) {
                print(png.path)
            }
        }
    }
}
