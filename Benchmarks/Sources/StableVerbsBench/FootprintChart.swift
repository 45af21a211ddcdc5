import Foundation

/// footprint.png: heap bytes per object through the shim and with it inert, and start-up time
/// (median wall time of a whole process) with and without the shim preloaded.
enum FootprintChart {
    /// A row of footprint.json: `suite` "footprint" (per object kind) or "startup" (per program).
    /// The footprint driver's own lines (with `label`, no `addedBytesPerObject`) are left out.
    struct Row: Codable, Sendable {
        let suite: String
        let kind: String?
        let objects: Int?
        let shimBytesPerObject: Double?
        let passthroughBytesPerObject: Double?
        let addedBytesPerObject: Double?
        let program: String?
        let medianMs: Double?
    }

    static func script(_ file: ResultsFile<Row>, png: URL) -> GnuplotScript? {
        let objects = file.results.filter { $0.suite == "footprint" && $0.addedBytesPerObject != nil }
        let startup = file.results.filter { $0.suite == "startup" }
        guard !objects.isEmpty || !startup.isEmpty else { return nil }
        var script = GnuplotScript(png: png, width: 1300, height: 620)
        script.page(.footprint, meta: file.meta, layout: (1, 2))
        script.add("""
            set style data histogram
            set style histogram clustered gap 1.5
            set xtics scale 0
            set yrange [0:*]
            set key top right
            """)
        if objects.isEmpty {
            script.add("set multiplot next")
        } else {
            script.datablock("objects", rows: objects.map { row in
                [.label(row.kind ?? "?"), .number(row.shimBytesPerObject), .number(row.passthroughBytesPerObject)]
            })
            let count = objects.compactMap(\.objects).uniqued().map(String.init).joined(separator: "/")
            script.add("""
                set title "Heap per object (\(count) objects of a kind, software HCA)"
                set ylabel "bytes per object"
                plot $objects using 2:xtic(1) title "through the shim" lc rgb "#4878b0", \\
                     '' using 3 title "shim inert (passthrough)" lc rgb "#7f7f7f", \\
                     \(GnuplotScript.barLabels("objects", column: 2, series: 0, of: 2, gap: 1.5, format: "%.0f")), \\
                     \(GnuplotScript.barLabels("objects", column: 3, series: 1, of: 2, gap: 1.5, format: "%.0f"))
                """)
        }
        if !startup.isEmpty {
            script.datablock("startup", rows: startup.map { [.label($0.program ?? "?"), .number($0.medianMs)] })
            script.add("""
                set title "Start-up: median wall time of the whole process"
                set ylabel "ms"
                set xtics rotate by -30 left font ",9"
                set bmargin 9
                set key off
                plot $startup using 2:xtic(1) lc rgb "#4878b0", \\
                     \(GnuplotScript.barLabels("startup", column: 2, series: 0, of: 1, gap: 1.5, format: "%.2f"))
                """)
        }
        script.add("unset multiplot")
        return script
    }
}
