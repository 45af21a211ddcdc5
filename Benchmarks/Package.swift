// swift-tools-version: 6.1
// The benchmark package (issue 5): its own package so that the root build stays fast.
//
//   cd Benchmarks && swift package benchmark --target FastPath
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
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
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
