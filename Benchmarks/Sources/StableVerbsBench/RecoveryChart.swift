import Foundation

/// recovery.png: the median of each phase and of the blackout against the number of QP pairs
/// (both axes logarithmic), one panel per setup (software HCA, lab) and kind (planned, unplanned).
/// The MR sweep's rows (one pair, many more MRs) are in the table only.
enum RecoveryChart {
    /// A row of recovery.json: the medians of one case, ms (its outage is not drawn).
    struct Row: Codable, Sendable {
        let setup: String
        let kind: String
        let pairs: Int
        /// Memory regions in all (absent in results written before the MR sweep).
        let mrs: Int?
        let recoveries: Int

        /// A row of the QP sweep: every pair's two MRs and no more.
        var ofPairSweep: Bool { mrs.map { $0 == 2 * pairs } ?? true }
        let quiesceMs: Double
        let releaseMs: Double
        let deviceWaitMs: Double
        let rebuildMs: Double
        let reconnectMs: Double
        let replayMs: Double
        let blackoutMs: Double
    }

    /// The lines of a panel: name, value, colour; the blackout is drawn thicker.
    static let series: [(name: String, value: @Sendable (Row) -> Double, color: String)] = [
        ("blackout", \.blackoutMs, "#000000"),
        ("quiesce / settle", \.quiesceMs, "#9467bd"),
        ("release", \.releaseMs, "#8c564b"),
        ("device wait", \.deviceWaitMs, "#7f7f7f"),
        ("rebuild", \.rebuildMs, "#d62728"),
        ("reconnect", \.reconnectMs, "#2ca02c"),
        ("replay", \.replayMs, "#1f77b4"),
    ]

    static let setupNames = ["softhca": "software HCA", "rxe-lab": "rxe0 in the QEMU lab (TCG)"]

    static func script(_ file: ResultsFile<Row>, png: URL) -> GnuplotScript? {
        let results = file.results.filter(\.ofPairSweep)
        let setups = results.map(\.setup).uniqued(), kinds = results.map(\.kind).uniqued()
        guard !results.isEmpty else { return nil }
        var script = GnuplotScript(png: png, width: 760 * kinds.count, height: 80 + 480 * setups.count)
        script.page(.recovery, meta: file.meta, layout: (setups.count, kinds.count))
        script.add("""
            set logscale xy
            set xlabel "QP pairs (2 RC QPs each)"
            set ylabel "median, ms"
            set xtics (\(results.map(\.pairs).uniqued().sorted().map(String.init).joined(separator: ", ")))
            set offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05
            set key outside right top font ",9"
            set grid xtics ytics
            """)
        for setup in setups {
            for kind in kinds {
                let rows = results.filter { $0.setup == setup && $0.kind == kind }.sorted { $0.pairs < $1.pairs }
                guard !rows.isEmpty else {
                    script.add("set multiplot next")
                    continue
                }
                let block = "\(setup)_\(kind)".filter { $0.isLetter || $0 == "_" }
                script.datablock(block, rows: rows.map { row in [.number(Double(row.pairs))] + series.map { .number($0.value(row)) } })
                let recoveries = rows.map(\.recoveries).uniqued().map(String.init).joined(separator: "/")
                script.add("set title \(GnuplotScript.quoted("\(setupNames[setup] ?? setup), \(kind) (\(recoveries) recoveries per point)"))")
                let plots = series.enumerated().map { index, line in
                    "$\(block) using 1:\(index + 2) with linespoints lw \(index == 0 ? 3 : 1.5) pt 7 ps 0.8 lc rgb \"\(line.color)\" title \"\(line.name)\""
                }
                script.add("plot " + plots.joined(separator: ", \\\n     "))
            }
        }
        script.add("unset multiplot")
        return script
    }
}
