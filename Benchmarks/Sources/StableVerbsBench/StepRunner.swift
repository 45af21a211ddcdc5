import Subprocess

/// Runs one step (a script, the library build) with its standard output and error merged and
/// streamed line by line through `Progress`; a non-zero exit is an error naming the step.
struct StepRunner: Sendable {
    let progress: Progress

    func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], what: String) async throws {
        let progress = self.progress
        let result = try await Subprocess.run(
            .name(executable),
            arguments: Arguments(arguments),
            environment: .inherit.updating(Dictionary(uniqueKeysWithValues: environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) })),
            input: .none,
            output: .sequence,
            error: .combinedWithOutput
        ) { execution in
            try await withThrowingTaskGroup { group in
                group.addTask {
                    while true {
                        try await Task.sleep(for: .seconds(5))
                        await progress.tick()
                    }
                }
                for try await line in execution.standardOutput.strings() {
                    await progress.line(line)
                }
                group.cancelAll()
            }
        }
        guard result.terminationStatus.isSuccess else {
            throw BenchError("\(what) failed (\(result.terminationStatus)); its output is above")
        }
    }
}
