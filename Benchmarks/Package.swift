// swift-tools-version: 6.1
// The benchmark package (issue 5): its own package so that the root build stays fast.
//
//   cd Benchmarks && swift package benchmark --target FastPath
//   cd Benchmarks && swift run stableverbs-bench all     (the suites, tables, JSON and charts)
//
// ordo-one/benchmark reports wall-clock percentiles, mallocs and ARC traffic per op; the
// single-nanosecond comparison (shim vs the same provider called directly) is the C driver's job
// (fastpath/fastpath.c, run by ./run).
import PackageDescription

// A path dependency's identity is its folder's name (a clone need not be called "main").
let root = Context.packageDirectory.split(separator: "/").dropLast().last.map { String($0).lowercased() } ?? "main"

let package = Package(
    name: "StableVerbsBenchmarks",
    platforms: [.macOS(.v13)],
    products: [
        // Runs the suites (the scripts beside this file) and writes tables, JSON and PNG charts.
        // It orchestrates; it does not link StableVerbs, so that it builds in seconds.
        .executable(name: "stableverbs-bench", targets: ["StableVerbsBench"]),
    ],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .executableTarget(
            name: "StableVerbsBench",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/StableVerbsBench"
        ),
        .executableTarget(
            name: "FastPath",
            dependencies: [
                .product(name: "StableVerbs", package: root),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/FastPath",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
    ]
)
