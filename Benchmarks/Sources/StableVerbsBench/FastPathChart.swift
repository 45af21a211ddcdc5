import Foundation

/// fastpath.png: what the shim adds per op, nothing moved vs after a rebuild — nanoseconds (bars:
/// median of the repetitions, whiskers: their min..max) and, when callgrind ran, instructions.
enum FastPathChart {
    /// A row of fastpath.json: `suite` "fastpath" (timing) or "callgrind" (instructions).
    struct Row: Codable, Sendable {
        let suite: String
        let mode: String
        let op: String
        let addedNs: Double?
        let addedNsMin: Double?
        let addedNsMax: Double?
        let addedIrPerOp: Double?
    }

    /// The driver's op keys, as the text table names them.
    static let opNames: KeyValuePairs = [
        "poll_empty": "poll_cq\nempty", "poll_one": "poll_cq\n1 completion",
        "post_send_inline": "post_send\ninline", "post_send_sge": "post_send\nSGE",
        "wr_inline": "ibv_wr_*\ninline", "wr_sge": "ibv_wr_*\nSGE",
        "post_recv": "post_recv", "post_srq_recv": "post_srq_recv",
        "poll_ex_empty": "start_poll\nempty", "poll_ex_one": "start_poll..end\n1 completion",
    ]

    static func script(_ file: ResultsFile<Row>, png: URL) -> GnuplotScript? {
        let timing = file.results.filter { $0.suite == "fastpath" }
        let instructions = file.results.filter { $0.suite == "callgrind" }
        guard !timing.isEmpty else { return nil }
        var script = GnuplotScript(png: png, width: 1200, height: instructions.isEmpty ? 600 : 1100)
        script.page(.fastpath, meta: file.meta, layout: (instructions.isEmpty ? 1 : 2, 1))
        script.add("set xzeroaxis lt -1\nset xtics scale 0\nset key top left\nset bmargin 4\nset offsets 0, 0, graph 0.08, 0")

        script.datablock("ns", rows: timing.map(\.op).uniqued().map { op in
            let moved = timing.first { $0.op == op && $0.mode == "static" }, rebuilt = timing.first { $0.op == op && $0.mode == "moved" }
            return [.label(name(op)),
                    .number(moved?.addedNs), .number(moved?.addedNsMin), .number(moved?.addedNsMax),
                    .number(rebuilt?.addedNs), .number(rebuilt?.addedNsMin), .number(rebuilt?.addedNsMax)]
        })
        script.add("""
            set title "Time added per op (shim - direct on the same queues; bars: median of the repetitions, whiskers: min..max)"
            set ylabel "ns added per op"
            set style data histogram
            set style histogram errorbars gap 1.5 lw 1
            plot $ns using 2:3:4:xtic(1) title "nothing moved" lc rgb "#4878b0", \\
                 '' using 5:6:7 title "after a rebuild" lc rgb "#e08a30", \\
                 3 with lines dt 2 lc rgb "#4878b0" title "target, nothing moved (3 ns)", \\
                 10 with lines dt 2 lc rgb "#e08a30" title "target after a move (10 ns)"
            """)
        if !instructions.isEmpty {
            script.datablock("ir", rows: instructions.map(\.op).uniqued().map { op in
                [.label(name(op)),
                 .number(instructions.first { $0.op == op && $0.mode == "static" }?.addedIrPerOp),
                 .number(instructions.first { $0.op == op && $0.mode == "moved" }?.addedIrPerOp)]
            })
            script.add("""
                set title "Instructions added per op (valgrind --tool=callgrind, exact; ibv_wr_* = a sequence of 4 calls)"
                set ylabel "instructions added per op"
                set style histogram clustered gap 1.5
                plot $ir using 2:xtic(1) title "nothing moved" lc rgb "#4878b0", \\
                     '' using 3 title "after a rebuild" lc rgb "#e08a30", \\
                     10 with lines dt 2 lc rgb "#4878b0" title "target, nothing moved (10)", \\
                     \(GnuplotScript.barLabels("ir", column: 2, series: 0, of: 2, gap: 1.5, format: "%.0f")), \\
                     \(GnuplotScript.barLabels("ir", column: 3, series: 1, of: 2, gap: 1.5, format: "%.0f"))
                """)
        }
        script.add("unset multiplot")
        return script
    }

    private static func name(_ op: String) -> String {
        opNames.first { $0.key == op }?.value ?? op
    }
}
