import Foundation

/// The directory a run writes: `<suite>.txt`, `<suite>.json`, `<suite>.png` (and the scripts' extras).
struct ResultsDirectory: Sendable {
    let url: URL

    /// `path` relative to the current directory; nil: Benchmarks/results.
    init(path: String?) {
        if let path {
            url = URL(filePath: path, directoryHint: .isDirectory, relativeTo: .currentDirectory()).standardizedFileURL
        } else {
            url = Workspace.benchmarks.appending(path: "results", directoryHint: .isDirectory)
        }
    }

    func file(_ suite: Suite, _ ext: String) -> URL { url.appending(path: "\(suite.rawValue).\(ext)") }

    func exists(_ file: URL) -> Bool { FileManager.default.fileExists(atPath: file.path) }

    func create() throws {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    /// Makes `<suite>.json` where a script writes only other files (lab-latency: from its .raw),
    /// if it is missing or older. Returns whether the suite has JSON to chart.
    func prepareJSON(for suite: Suite) async throws -> Bool {
        let json = file(suite, "json")
        if suite == .labLatency {
            let raw = file(suite, "raw")
            if exists(raw), try !exists(json) || modified(json) < modified(raw) {
                try await LabLatencyJSON.write(from: raw, to: json, table: file(suite, "txt"))
            }
        }
        return exists(json)
    }

    /// Checks that a suite's script left its table and JSON.
    func checkOutputs(of suite: Suite) throws {
        for ext in ["txt", "json"] where !exists(file(suite, ext)) {
            throw BenchError("\(suite.rawValue): no \(file(suite, ext).path) after the run")
        }
    }

    func modified(_ file: URL) throws -> Date {
        try FileManager.default.attributesOfItem(atPath: file.path)[.modificationDate] as? Date ?? .distantPast
    }
}
