import ArgumentParser

/// `stableverbs-bench`: runs the benchmark suites of issue 5 (the scripts in Benchmarks/) and
/// leaves, per suite, a perftest-style table (`<suite>.txt`), its JSON and a PNG chart.
@main
struct StableVerbsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stableverbs-bench",
        abstract: "Run the StableVerbs benchmark suites; write text tables, JSON and PNG charts.",
        discussion: """
            Each suite writes <suite>.txt, <suite>.json and <suite>.png into the results directory \
            (Benchmarks/results unless --out). fastpath and footprint come from one script \
            (Benchmarks/run): `footprint` is another name of `fastpath`. Charts need gnuplot \
            (Debian: gnuplot-nox).
            """,
        subcommands: [
            AllCommand.self,
            FastPathCommand.self,
            RecoveryCommand.self,
            LabLatencyCommand.self,
            ChartsCommand.self,
        ]
    )
}
