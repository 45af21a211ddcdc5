import Foundation
import Histogram

/// Benchmarks/lab-latency writes its table and one line per perftest run
/// (`LAT test=write mode=native round=1 typical=464.23 p99=4263.22`, µs); this makes
/// lab-latency.json of them: a row per test as in the table (medians over the rounds) and the runs.
/// Where the script also left every iteration's latency (lab-latency.samples, perftest -H), each
/// row gains `pooled`: the percentiles of all rounds' iterations together, from an HdrHistogram per
/// test and mode; lab-latency-hdr.txt has them as a table.
enum LabLatencyJSON {
    struct Run: Codable, Sendable {
        let test: String
        let mode: String
        let round: Int
        let typicalUs: Double
        let p99Us: Double
    }

    struct Row: Codable, Sendable {
        let test: String
        let rounds: Int
        let nativeMedianUs: Double
        let shimMedianUs: Double
        let medianRatio: Double
        let nativeP99Us: Double
        let shimP99Us: Double
        let p99Ratio: Double
        let pooled: Pooled?
    }

    /// Percentiles of every iteration of every round of one test, per mode (µs).
    struct Pooled: Codable, Sendable {
        let nativeSamples: UInt64
        let shimSamples: UInt64
        let native: Percentiles
        let shim: Percentiles
        let medianRatio: Double
        let p99Ratio: Double
    }

    struct Percentiles: Codable, Sendable {
        let p50Us: Double
        let p90Us: Double
        let p99Us: Double
        let p999Us: Double
        let maxUs: Double
    }

    struct File: Codable, Sendable {
        let meta: ResultsMeta
        /// The heading of lab-latency.txt (rounds, iterations, message size).
        let setup: String
        let results: [Row]
        let runs: [Run]
    }

    /// The run's date is the raw file's; the commit is the checkout's at the time of this call.
    static func write(from raw: URL, to json: URL, table: URL) async throws {
        let runs = try String(contentsOf: raw, encoding: .utf8).split(separator: "\n").map(parse)
        guard !runs.isEmpty else { throw BenchError("\(raw.path) has no runs") }
        let setup = (try? String(contentsOf: table, encoding: .utf8))?.split(separator: "\n").first.map(String.init) ?? ""
        let date = try FileManager.default.attributesOfItem(atPath: raw.path)[.modificationDate] as? Date ?? .now
        let samplesFile = raw.deletingPathExtension().appendingPathExtension("samples")
        let samples = try? String(contentsOf: samplesFile, encoding: .utf8)
        let histograms = try samples.map { try LatencyHistograms(samplesFile: $0) } ?? LatencyHistograms()
        let results = rows(of: runs, histograms: histograms)
        let file = File(meta: try await ResultsMeta.current(date: date), setup: setup, results: results, runs: runs)
        if samples != nil {
            let table = raw.deletingLastPathComponent().appending(path: "lab-latency-hdr.txt")
            try histograms.table(results, setup: setup).write(to: table, atomically: true, encoding: .utf8)
        }
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(file).write(to: json)
    }

    private static func parse(_ line: Substring) throws -> Run {
        var fields: [String: String] = [:]
        for pair in line.split(separator: " ") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        guard let test = fields["test"], let mode = fields["mode"], let round = fields["round"].flatMap({ Int($0) }),
              let typical = fields["typical"].flatMap({ Double($0) }), let p99 = fields["p99"].flatMap({ Double($0) })
        else { throw BenchError("lab-latency.raw: cannot read the line \"\(line)\"") }
        return Run(test: "ib_\(test)_lat", mode: mode, round: round, typicalUs: typical, p99Us: p99)
    }

    /// Per test, in the order of the runs: medians over the rounds, as the script's table has them.
    private static func rows(of runs: [Run], histograms: LatencyHistograms) -> [Row] {
        runs.map(\.test).uniqued().compactMap { test in
            let native = runs.filter { $0.test == test && $0.mode == "native" }
            let shim = runs.filter { $0.test == test && $0.mode == "shim" }
            guard !native.isEmpty, !shim.isEmpty else { return nil }
            let nativeMedian = median(native.map(\.typicalUs)), shimMedian = median(shim.map(\.typicalUs))
            let nativeP99 = median(native.map(\.p99Us)), shimP99 = median(shim.map(\.p99Us))
            return Row(
                test: test, rounds: min(native.count, shim.count),
                nativeMedianUs: nativeMedian, shimMedianUs: shimMedian, medianRatio: shimMedian / nativeMedian,
                nativeP99Us: nativeP99, shimP99Us: shimP99, p99Ratio: shimP99 / nativeP99,
                pooled: histograms.pooled(test))
        }
    }

    private static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
