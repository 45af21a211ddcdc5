import Foundation

/// Where the scripts are: this file is Benchmarks/Sources/StableVerbsBench/Workspace.swift of a
/// StableVerbs checkout, and the command runs from that checkout (`swift run` in Benchmarks/).
enum Workspace {
    static let benchmarks = URL(filePath: #filePath)
        .deletingLastPathComponent()  // StableVerbsBench
        .deletingLastPathComponent()  // Sources
        .deletingLastPathComponent()  // Benchmarks

    /// The root package (StableVerbs).
    static var root: URL { benchmarks.deletingLastPathComponent() }

    static func script(_ name: String) -> URL { benchmarks.appending(path: name) }

    /// The library the scripts preload, as the root package's release build places it.
    static var library: URL { root.appending(path: ".build/release/libstableverbs.so") }
}
