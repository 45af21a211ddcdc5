import Foundation
import Histogram

/// Every iteration's latency of the lab-latency runs, one HdrHistogram per test and mode (values
/// recorded in nanoseconds, three significant digits), read from lab-latency.samples: a line per
/// perftest run, `SAMPLES test=write mode=native round=1 us=12.3,12.9,...` (perftest -H prints the
/// iterations sorted, less its two largest, as it leaves them out of its own percentiles too).
struct LatencyHistograms {
    private var histograms: [String: Histogram<UInt64>] = [:]
    /// Iterations perftest printed as not a finite number (its clock calibration failed).
    private(set) var unreadable: [String: Int] = [:]

    init() {}

    init(samplesFile text: String) throws {
        for line in text.split(separator: "\n") {
            var fields: [Substring: Substring] = [:]
            for pair in line.split(separator: " ") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { fields[parts[0]] = parts[1] }
            }
            guard let test = fields["test"], let mode = fields["mode"], let values = fields["us"] else {
                throw BenchError("lab-latency.samples: cannot read the line \"\(line.prefix(120))\"")
            }
            let key = Self.key("ib_\(test)_lat", String(mode))
            var histogram = histograms[key] ?? Histogram<UInt64>(numberOfSignificantValueDigits: .three)
            for value in values.split(separator: ",") {
                guard let us = Double(value), us.isFinite, us >= 0 else {
                    unreadable[key, default: 0] += 1
                    continue
                }
                _ = histogram.record(UInt64((us * 1_000).rounded()))
            }
            histograms[key] = histogram
        }
    }

    private static func key(_ test: String, _ mode: String) -> String { "\(test) \(mode)" }

    /// The pooled percentiles of one test (nil without samples of both modes).
    func pooled(_ test: String) -> LabLatencyJSON.Pooled? {
        guard let native = histograms[Self.key(test, "native")], let shim = histograms[Self.key(test, "shim")],
              native.totalCount > 0, shim.totalCount > 0 else { return nil }
        let n = Self.percentiles(native), s = Self.percentiles(shim)
        return LabLatencyJSON.Pooled(
            nativeSamples: native.totalCount, shimSamples: shim.totalCount, native: n, shim: s,
            medianRatio: s.p50Us / n.p50Us, p99Ratio: s.p99Us / n.p99Us)
    }

    private static func percentiles(_ h: Histogram<UInt64>) -> LabLatencyJSON.Percentiles {
        func us(_ ns: UInt64) -> Double { Double(ns) / 1_000 }
        return LabLatencyJSON.Percentiles(
            p50Us: us(h.valueAtPercentile(50)), p90Us: us(h.valueAtPercentile(90)),
            p99Us: us(h.valueAtPercentile(99)), p999Us: us(h.valueAtPercentile(99.9)), maxUs: us(h.max))
    }

    /// lab-latency-hdr.txt: per test, the pooled percentiles of both modes and their ratios.
    func table(_ rows: [LabLatencyJSON.Row], setup: String) -> String {
        func f(_ v: Double) -> String { String(format: "%.2f", v) }
        func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
        var out = "\(setup)\nEvery iteration of every round pooled per test and mode (HdrHistogram, 3 significant digits), µs\n"
        out += ["test        ", pad("mode", 7), pad("samples", 8), pad("p50", 10), pad("p90", 10), pad("p99", 10),
                pad("p99.9", 10), pad("max", 10), pad("p50 ratio", 10), pad("p99 ratio", 10)].joined(separator: " ") + "\n"
        for row in rows {
            guard let p = row.pooled else { continue }
            for (mode, count, q) in [("native", p.nativeSamples, p.native), ("shim", p.shimSamples, p.shim)] {
                let ratios = mode == "shim" ? [pad(String(format: "%.3f", p.medianRatio), 10), pad(String(format: "%.3f", p.p99Ratio), 10)] : []
                out += ([row.test.padding(toLength: 12, withPad: " ", startingAt: 0), pad(mode, 7), pad("\(count)", 8),
                         pad(f(q.p50Us), 10), pad(f(q.p90Us), 10), pad(f(q.p99Us), 10), pad(f(q.p999Us), 10), pad(f(q.maxUs), 10)]
                        + ratios).joined(separator: " ") + "\n"
            }
        }
        let skipped = unreadable.values.reduce(0, +)
        if skipped > 0 { out += "\(skipped) iteration(s) left out: perftest printed them as not a number (its clock calibration failed)\n" }
        return out
    }
}
