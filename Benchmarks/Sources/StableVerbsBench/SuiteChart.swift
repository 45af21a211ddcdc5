import Foundation

/// `<suite>.png` from `<suite>.json`.
enum SuiteChart {
    /// Returns the PNG written, or nil when the JSON has nothing to draw.
    static func render(_ suite: Suite, in results: ResultsDirectory, with gnuplot: Gnuplot) async throws -> URL? {
        let json = results.file(suite, "json"), png = results.file(suite, "png")
        let script: GnuplotScript? = switch suite {
        case .fastpath: try FastPathChart.script(ResultsFile.read(json), png: png)
        case .footprint: try FootprintChart.script(ResultsFile.read(json), png: png)
        case .recovery: try RecoveryChart.script(ResultsFile.read(json), png: png)
        case .labLatency: try LabLatencyChart.script(ResultsFile.read(json), png: png)
        }
        guard let script else { return nil }
        try await gnuplot.draw(script)
        return png
    }
}
