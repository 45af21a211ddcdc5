import Foundation

/// Where the lab finds the package, its guest-side scripts (Lab/), its cache and the shim library.
public struct LabPaths: Sendable {
    /// The package root (the folder with Package.swift and Lab/).
    public var root: String
    /// The cache: kernel, initramfs, run folders. `<root>/.build/lab` unless STABLEVERBS_LAB_CACHE is set.
    public var cache: String
    /// The shim library handed to guests as STABLEVERBS_LIB.
    public var library: String
    public var labScripts: String { root + "/Lab" }
    public var kernelRoot: String { cache + "/kernel" }
    public var initramfs: String { cache + "/initramfs.cpio.gz" }
    public var imageStamp: String { cache + "/initramfs.stamp" }
    public var runs: String { cache + "/runs" }

    public init(root: String, cache: String? = nil, library: String? = nil) {
        let env = ProcessInfo.processInfo.environment
        self.root = root
        self.cache = cache ?? env["STABLEVERBS_LAB_CACHE"].flatMap { $0.isEmpty ? nil : $0 } ?? root + "/.build/lab"
        self.library = library ?? env["STABLEVERBS_LIB"].flatMap { $0.isEmpty ? nil : $0 }
            ?? root + "/.build/release/libstableverbs.so"
        self.library = LabPaths.absolute(self.library)
        self.cache = LabPaths.absolute(self.cache)
    }

    /// Finds the package root: STABLEVERBS_LAB_ROOT, else the first folder holding Lab/init and
    /// Package.swift walking up from `start` (the current directory), then from the executable.
    public static func discover(start: String? = nil) throws -> LabPaths {
        let env = ProcessInfo.processInfo.environment
        if let r = env["STABLEVERBS_LAB_ROOT"], !r.isEmpty { return LabPaths(root: absolute(r)) }
        var candidates = [start ?? FileManager.default.currentDirectoryPath]
        candidates.append((CommandLine.arguments.first.map { absolute($0) } ?? "") as String)
        candidates.append(#filePath)
        for c in candidates {
            var dir = c
            while dir != "/" && !dir.isEmpty {
                if FileManager.default.fileExists(atPath: dir + "/Lab/init"),
                   FileManager.default.fileExists(atPath: dir + "/Package.swift") {
                    return LabPaths(root: dir)
                }
                dir = (dir as NSString).deletingLastPathComponent
            }
        }
        throw LabError.setup("cannot find the StableVerbs package (a folder with Package.swift and Lab/init); run from inside it or set STABLEVERBS_LAB_ROOT")
    }

    /// The `stableverbs` command for the guests: $STABLEVERBS_COMMAND, else the first that exists of
    /// `stableverbs` next to the library (scripts/build puts it there), the release and the debug
    /// stableverbs-cli of the package; nil when none is built.
    public var command: String? {
        if let c = ProcessInfo.processInfo.environment["STABLEVERBS_COMMAND"], !c.isEmpty {
            return LabPaths.absolute(c)
        }
        let candidates = [(library as NSString).deletingLastPathComponent + "/stableverbs",
                          root + "/.build/release/stableverbs-cli", root + "/.build/debug/stableverbs-cli"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    public static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return (p as NSString).standardizingPath }
        return ((FileManager.default.currentDirectoryPath + "/" + p) as NSString).standardizingPath
    }
}

public enum LabError: Error, CustomStringConvertible {
    case setup(String)
    case guest(String)
    case qmp(String)
    public var description: String {
        switch self {
        case .setup(let s): return "setup: " + s
        case .guest(let s): return "guest: " + s
        case .qmp(let s): return "qmp: " + s
        }
    }
}

/// Writes to standard error without buffering.
public func labLog(_ s: String) {
    FileHandle.standardError.write(Data(("stableverbs-lab: " + s + "\n").utf8))
}
