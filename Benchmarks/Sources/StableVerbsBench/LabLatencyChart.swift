import Foundation

/// lab-latency.png: perftest's median and 99th percentile per test, native vs under the shim.
enum LabLatencyChart {
    static func script(_ file: ResultsFile<LabLatencyJSON.Row>, png: URL) -> GnuplotScript? {
        guard !file.results.isEmpty else { return nil }
        var script = GnuplotScript(png: png, width: 1200, height: 560)
        script.page(.labLatency, meta: file.meta, layout: (1, 2))
        script.datablock("latency", rows: file.results.map { row in
            [.label(row.test), .number(row.nativeMedianUs), .number(row.shimMedianUs), .number(row.nativeP99Us), .number(row.shimP99Us)]
        })
        let rounds = file.results.map(\.rounds).uniqued().map(String.init).joined(separator: "/")
        script.add("""
            set style data histogram
            set style histogram clustered gap 1.5
            set xtics scale 0
            set ylabel "latency, µs"
            set yrange [0:*]
            set offsets 0, 0, graph 0.1, 0
            set key below horizontal
            set title "Median (perftest t_typical; median over \(rounds) rounds); labels: shim / native"
            plot $latency using 2:xtic(1) title "native" lc rgb "#7f7f7f", '' using 3 title "shim (LD_PRELOAD)" lc rgb "#4878b0", \\
                 '' using 0:($2 > $3 ? $2 : $3):(sprintf("%.3f", $3 / $2)) with labels offset 0,1 notitle
            set title "99th percentile (median over \(rounds) rounds); labels: shim / native"
            plot $latency using 4:xtic(1) title "native" lc rgb "#7f7f7f", '' using 5 title "shim (LD_PRELOAD)" lc rgb "#4878b0", \\
                 '' using 0:($4 > $5 ? $4 : $5):(sprintf("%.3f", $5 / $4)) with labels offset 0,1 notitle
            unset multiplot
            """)
        return script
    }
}
