import Foundation

/// One invocation of a suite subcommand: builds the library (unless --no-build), runs the scripts
/// that produce the suites, checks their tables and JSON, and renders the charts.
struct BenchSession {
    let options: RunOptions
    var lab = false
    var skipCallgrind = false

    func run(_ suites: [Suite]) async throws {
        let results = ResultsDirectory(path: options.out)
        try results.create()
        let runs = ScriptRun.runs(for: suites, quick: options.quick, lab: lab, skipCallgrind: skipCallgrind)
        let steps = runs.count + (options.noBuild ? 0 : 1)
        let progress = Progress()
        let runner = StepRunner(progress: progress)
        var environment = ["STABLEVERBS_RESULTS": results.url.path]
        var step = 0

        if !options.noBuild {
            step += 1
            await progress.begin("build", step: step, of: steps)
            try await LibraryBuild(jobs: options.jobs).run(with: runner)
            environment["STABLEVERBS_LIB"] = Workspace.library.path
        }
        var produced: [Suite] = []
        for scriptRun in runs {
            step += 1
            await progress.begin(scriptRun.label, step: step, of: steps)
            await progress.line(scriptRun.commandLine)
            try await runner.run(
                "bash", [Workspace.script(scriptRun.script).path] + scriptRun.arguments,
                environment: environment, what: scriptRun.commandLine)
            for suite in scriptRun.suites {
                _ = try await results.prepareJSON(for: suite)
                try results.checkOutputs(of: suite)
                produced.append(suite)
            }
        }
        try await renderCharts(produced, in: results)
        FileHandle.standardError.write(Data("done in \(await progress.elapsed); results in \(results.url.path):\n".utf8))
        for suite in produced {
            for ext in ["txt", "json", "png"] where results.exists(results.file(suite, ext)) {
                print(results.file(suite, ext).path)
            }
        }
    }

    /// Charts are a bonus here: without gnuplot the tables and JSON stand, with a warning.
    private func renderCharts(_ suites: [Suite], in results: ResultsDirectory) async throws {
        let gnuplot: Gnuplot
        do {
            gnuplot = try Gnuplot.locate()
        } catch {
            FileHandle.standardError.write(Data("warning: \(error); wrote the tables and JSON only\n".utf8))
            return
        }
        for suite in suites {
            _ = try await SuiteChart.render(suite, in: results, with: gnuplot)
        }
    }
}
