import Foundation
import Subprocess

/// The gnuplot program on PATH (Debian: gnuplot-nox), fed a script on its standard input.
struct Gnuplot: Sendable {
    /// Fails, naming the package to install, when there is no gnuplot.
    static func locate() throws -> Gnuplot {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
        guard directories.contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/gnuplot") }) else {
            throw BenchError("gnuplot not found: no PNG charts (install the Debian package gnuplot-nox: apt-get install --no-install-recommends gnuplot-nox)")
        }
        return Gnuplot()
    }

    func draw(_ script: GnuplotScript) async throws {
        let result = try await Subprocess.run(
            .name("gnuplot"),
            input: .string(script.text),
            output: .discarded,
            error: .string(limit: 1 << 16)
        )
        guard result.terminationStatus.isSuccess else {
            throw BenchError("gnuplot failed drawing \(script.png.path): \(result.standardError)")
        }
    }
}

/// A gnuplot program that draws one PNG, its data inline (datablocks), text not "enhanced" (so
/// that op names like post_send are not read as subscripts).
struct GnuplotScript {
    let png: URL
    private(set) var text: String

    init(png: URL, width: Int, height: Int) {
        self.png = png
        text = """
            set terminal pngcairo noenhanced size \(width),\(height) font "DejaVu Sans,11"
            set output \(Self.quoted(png.path))
            set key opaque box lc rgb "#c0c0c0"
            set grid ytics lc rgb "#d8d8d8"
            set border 3
            set tics nomirror
            set style fill solid 0.85 border -1

            """
    }

    mutating func add(_ lines: String) {
        text += lines + "\n"
    }

    /// `$name << EOD`, one row per line; strings are quoted, nil numbers are NaN (not drawn).
    mutating func datablock(_ name: String, rows: [[GnuplotValue]]) {
        add("$\(name) << EOD")
        for row in rows {
            add(row.map(\.text).joined(separator: " "))
        }
        add("EOD")
    }

    /// A multiplot page titled with the suite and the run's meta (commit, date, host).
    mutating func page(_ suite: Suite, meta: ResultsMeta, layout: (rows: Int, columns: Int)) {
        let title = "\(suite.title) — commit \(meta.commit), \(meta.date)\n\(meta.host)"
        add("set multiplot layout \(layout.rows),\(layout.columns) title \(Self.quoted(title)) font \",13\"")
    }

    /// A plot clause writing each bar's value above it, for the bars of series `series`
    /// (0-based) of `count` in a clustered histogram with `gap` (its `set style histogram`).
    static func barLabels(_ block: String, column: Int, series: Int, of count: Int, gap: Double, format: String) -> String {
        let offset = (Double(series) - Double(count - 1) / 2) / (Double(count) + gap)
        return "$\(block) using ($0 + \(offset)):\(column):(sprintf(\"\(format)\", $\(column))) with labels offset 0,0.7 font \",9\" notitle"
    }

    static func quoted(_ string: String) -> String {
        let escaped = string.replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
        return "\"\(escaped)\""
    }
}

/// A cell of a datablock.
enum GnuplotValue {
    case label(String)
    case number(Double?)

    var text: String {
        switch self {
        case .label(let string): GnuplotScript.quoted(string)
        case .number(let value?): String(format: "%.4g", value)
        case .number(nil): "NaN"
        }
    }
}
