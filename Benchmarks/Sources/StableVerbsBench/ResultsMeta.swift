import Foundation

/// The `meta` object of every `<suite>.json`: when, from which commit, on which host.
struct ResultsMeta: Codable, Sendable {
    let date: String
    let commit: String
    let host: String

    /// The same figures the scripts record, for JSON made here (lab-latency's).
    static func current(date: Date) async throws -> ResultsMeta {
        let root = Workspace.root.path
        let head = try await CommandOutput.of("git", ["-C", root, "rev-parse", "--short", "HEAD"])
        let changed = try await !CommandOutput.succeeds("git", ["-C", root, "diff", "--quiet", "HEAD", "--", "Sources", "include"])
        return ResultsMeta(
            date: date.formatted(.iso8601),
            commit: head + (changed ? "+changes" : ""),
            host: hostDescription()
        )
    }

    /// "2 CPUs, AMD EPYC ..., 6.1.0-...", as the scripts write it.
    private static func hostDescription() -> String {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        let release = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown kernel"
        return "\(ProcessInfo.processInfo.activeProcessorCount) CPUs, \(model), \(release)"
    }
}

/// A results file: `{"meta": {...}, "results": [rows]}`.
struct ResultsFile<Row: Codable & Sendable>: Codable, Sendable {
    let meta: ResultsMeta
    let results: [Row]

    static func read(_ file: URL) throws -> ResultsFile {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(ResultsFile.self, from: Data(contentsOf: file))
        } catch let error as DecodingError {
            throw BenchError("\(file.path) is not the JSON this command expects (\(error)); run its suite again")
        }
    }
}
