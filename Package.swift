// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "StableVerbs",
    products: [
        // libstableverbs.so: LD_PRELOAD it, or link it (-lstableverbs) with include/stableverbs.h.
        // Build it self-contained with: swift build -c release -Xswiftc -static-stdlib --omit-frame-pointers --product stableverbs
        .library(name: "stableverbs", type: .dynamic, targets: ["StableVerbs"]),
        // The Swift module, for Swift programs that link the shim directly.
        .library(name: "StableVerbs", targets: ["StableVerbs"]),
        // The `stableverbs` command (status, planned detach/attach). SwiftPM allows one product per
        // name and "stableverbs" is the library's, so the product is stableverbs-cli; scripts/build
        // puts it next to the library as `stableverbs` (README: "The stableverbs command").
        .executable(name: "stableverbs-cli", targets: ["StableVerbsCommand"]),
        .executable(name: "stableverbs-lab", targets: ["stableverbs-lab"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // rdma-core 44's headers and libraries (Debian: libibverbs-dev, librdmacm-dev).
        .systemLibrary(name: "CVerbs", path: "Sources/CVerbs"),
        // C: virtual object layouts, the lower interface and its dlvsym table, start-up.
        .target(
            name: "StableVerbsABI",
            dependencies: ["CVerbs"],
            path: "Sources/StableVerbsABI"
        ),
        // The public C API header (include/stableverbs.h).
        .target(
            name: "CStableVerbs",
            dependencies: ["CVerbs"],
            path: ".",
            sources: ["Sources/CStableVerbs"],
            publicHeadersPath: "include"
        ),
        // The software HCA test double behind the lower interface.
        .target(
            name: "SoftHCA",
            dependencies: ["CVerbs", "StableVerbsABI"]
        ),
        // The control protocol and the runtime directory, shared by the shim's control socket and
        // the command (plain Glibc: no Foundation in the preload library).
        .target(name: "StableVerbsControl"),
        // The Swift core and the exported verbs.
        .target(
            name: "StableVerbs",
            dependencies: ["CVerbs", "StableVerbsABI", "CStableVerbs", "SoftHCA", "StableVerbsControl"]
        ),
        // The command: talks to every shimmed process's control socket (never links the shim).
        .executableTarget(
            name: "StableVerbsCommand",
            dependencies: [
                "StableVerbsControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The lab: QEMU guests with rdma_rxe (Lab/ holds the guest-side scripts).
        .target(
            name: "LabKit",
            dependencies: [.product(name: "Subprocess", package: "swift-subprocess")]
        ),
        .executableTarget(
            name: "stableverbs-lab",
            dependencies: [
                "LabKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ]
        ),
        .testTarget(name: "SoftHCATests", dependencies: ["SoftHCA", "CVerbs", "StableVerbsABI"]),
        // swift-crypto only here: the reference the shim's own HMAC-SHA256 is checked against.
        .testTarget(name: "StableVerbsTests", dependencies: ["StableVerbs", "CVerbs", "StableVerbsABI", "StableVerbsControl",
                                                             .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "LabTests", dependencies: ["LabKit"], exclude: ["scripts"]),  // guest scripts, read from the tree
    ]
)
