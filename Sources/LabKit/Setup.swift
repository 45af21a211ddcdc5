import Foundation
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// What the lab needs on the host, and how it gets it: apt packages, the Debian kernel
/// (apt-get download + dpkg -x) and the guest initramfs (Lab/build-image.sh), all cached under
/// `LabPaths.cache` so that a second run starts at once.
public struct LabSetup: Sendable {
    public var paths: LabPaths
    public init(paths: LabPaths) { self.paths = paths }

    /// A file that must exist, and the Debian package that provides it.
    public struct Requirement: Sendable {
        public var path: String
        public var package: String
        public var why: String
    }

    /// Host tools (to build and boot) and the programs the guests run from the host's root.
    public static let requirements: [Requirement] = [
        .init(path: qemuBinary, package: "qemu-system-x86", why: "boots the guests"),
        .init(path: "/bin/busybox", package: "busybox-static", why: "the guest's init and shell"),
        .init(path: "/usr/bin/cpio", package: "cpio", why: "packs the initramfs"),
        .init(path: "/usr/sbin/depmod", package: "kmod", why: "orders the kernel modules"),
        .init(path: "/usr/bin/rdma", package: "iproute2", why: "rdma link add/delete in the guest"),
        .init(path: "/usr/sbin/ip", package: "iproute2", why: "guest networking"),
        .init(path: "/usr/lib/x86_64-linux-gnu/libibverbs.so.1", package: "libibverbs1", why: "verbs in the guest"),
        .init(path: "/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so", package: "ibverbs-providers", why: "the rxe provider"),
        .init(path: "/usr/bin/ibv_rc_pingpong", package: "ibverbs-utils", why: "ibv_*_pingpong, ibv_devices"),
        .init(path: "/usr/bin/rping", package: "rdmacm-utils", why: "rping"),
        .init(path: "/usr/bin/ib_write_lat", package: "perftest", why: "ib_*_lat"),
        .init(path: "/usr/sbin/rdma-ndd", package: "rdma-core", why: "rdma-core user space"),
        .init(path: "/usr/bin/socat", package: "socat", why: "the relay of the peer-protocol lab tests (an address exchange made elsewhere)"),
    ]

    /// QEMU; STABLEVERBS_LAB_QEMU overrides it (pointing it at a missing file shows the skip path).
    public static let qemuBinary: String = {
        let e = ProcessInfo.processInfo.environment["STABLEVERBS_LAB_QEMU"] ?? ""
        return e.isEmpty ? "/usr/bin/qemu-system-x86_64" : e
    }()

    /// Missing requirements (empty when the host has everything).
    public static func missing() -> [Requirement] {
        requirements.filter { !FileManager.default.fileExists(atPath: $0.path) }
    }

    /// Why the lab cannot run here, or nil when the host tools and a cached image are present.
    public func unavailableReason() -> String? {
        let m = LabSetup.missing()
        if !m.isEmpty {
            let pkgs = Array(Set(m.map(\.package))).sorted().joined(separator: " ")
            return "missing \(m.map(\.path).joined(separator: ", ")) (apt-get install \(pkgs))"
        }
        return nil
    }

    /// The kernel image and its version, when unpacked in the cache.
    public func kernel() -> (vmlinuz: String, version: String)? {
        let boot = paths.kernelRoot + "/boot"
        guard let files = try? FileManager.default.contentsOfDirectory(atPath: boot) else { return nil }
        guard let v = files.filter({ $0.hasPrefix("vmlinuz-") }).sorted().last else { return nil }
        let version = String(v.dropFirst("vmlinuz-".count))
        guard FileManager.default.fileExists(atPath: paths.kernelRoot + "/lib/modules/\(version)/kernel") else { return nil }
        return (boot + "/" + v, version)
    }

    /// Makes sure everything is there: installs missing packages (when root and `install`),
    /// downloads and unpacks the kernel, builds the initramfs. Prints progress.
    public func ensure(install: Bool = true, quiet: Bool = false) async throws {
        let say: (String) -> Void = { if !quiet { labLog($0) } }
        let missing = LabSetup.missing()
        if !missing.isEmpty {
            let pkgs = Array(Set(missing.map(\.package))).sorted()
            for m in missing { say("missing \(m.path) (\(m.package): \(m.why))") }
            guard install else {
                throw LabError.setup("missing packages: \(pkgs.joined(separator: " ")); install them with: apt-get install \(pkgs.joined(separator: " "))")
            }
            guard getuid() == 0 else {
                throw LabError.setup("missing packages and not root: sudo apt-get install \(pkgs.joined(separator: " "))")
            }
            say("installing \(pkgs.joined(separator: " ")) with apt-get")
            var ok = try await sh(["apt-get", "install", "-y", "--no-install-recommends"] + pkgs, env: ["DEBIAN_FRONTEND": "noninteractive"])
            if !ok {
                say("apt-get install failed; running apt-get update and trying again")
                _ = try await sh(["apt-get", "update"])
                ok = try await sh(["apt-get", "install", "-y", "--no-install-recommends"] + pkgs, env: ["DEBIAN_FRONTEND": "noninteractive"])
            }
            let still = LabSetup.missing()
            if !ok || !still.isEmpty {
                throw LabError.setup("could not install \(still.map(\.package).joined(separator: " ")) (apt-get install failed)")
            }
        }
        try FileManager.default.createDirectory(atPath: paths.cache, withIntermediateDirectories: true)
        if kernel() == nil { try await fetchKernel(say: say) }
        guard let k = kernel() else { throw LabError.setup("the kernel did not unpack into \(paths.kernelRoot)") }
        let stamp = try imageStamp(kernelVersion: k.version)
        let current = try? String(contentsOfFile: paths.imageStamp, encoding: .utf8)
        if current != stamp || !FileManager.default.fileExists(atPath: paths.initramfs) {
            say("building the guest image (kernel \(k.version))")
            guard try await sh(["/bin/sh", paths.labScripts + "/build-image.sh", paths.kernelRoot, k.version, paths.initramfs]) else {
                throw LabError.setup("Lab/build-image.sh failed (see above)")
            }
            try stamp.write(toFile: paths.imageStamp, atomically: true, encoding: .utf8)
        }
    }

    /// apt-get download of the Debian kernel package that linux-image-amd64 depends on, then dpkg -x.
    func fetchKernel(say: (String) -> Void) async throws {
        let dl = paths.cache + "/dl"
        try FileManager.default.createDirectory(atPath: dl, withIntermediateDirectories: true)
        var pkg = try await kernelPackageName()
        if pkg == nil {
            say("apt-get update (no kernel package known to apt yet)")
            _ = try await sh(["apt-get", "update"])
            pkg = try await kernelPackageName()
        }
        guard let pkg else {
            throw LabError.setup("apt knows no linux-image-amd64 kernel; check /etc/apt/sources.list and run apt-get update")
        }
        let debs = (try? FileManager.default.contentsOfDirectory(atPath: dl))?.filter { $0.hasPrefix(pkg + "_") && $0.hasSuffix(".deb") } ?? []
        var deb = debs.sorted().last
        if deb == nil {
            say("downloading \(pkg) with apt-get download")
            guard try await sh(["/bin/sh", "-c", "cd \"$0\" && apt-get download \"$1\"", dl, pkg]) else {
                throw LabError.setup("apt-get download \(pkg) failed (is a Debian mirror reachable? try apt-get update)")
            }
            deb = (try FileManager.default.contentsOfDirectory(atPath: dl)).filter { $0.hasPrefix(pkg + "_") && $0.hasSuffix(".deb") }.sorted().last
        }
        guard let deb else { throw LabError.setup("apt-get download \(pkg) produced no .deb in \(dl)") }
        say("unpacking \(deb)")
        try? FileManager.default.removeItem(atPath: paths.kernelRoot)
        guard try await sh(["dpkg", "-x", dl + "/" + deb, paths.kernelRoot]) else {
            throw LabError.setup("dpkg -x \(deb) failed")
        }
    }

    func kernelPackageName() async throws -> String? {
        let r = try await run(.name("apt-cache"), arguments: ["depends", "linux-image-amd64"], output: .string(limit: 1 << 20), error: .discarded)
        for line in r.standardOutput.split(separator: "\n") {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.hasPrefix("Depends: linux-image-") { return String(t.dropFirst("Depends: ".count)) }
        }
        return nil
    }

    /// Changes whenever the kernel or a guest-side script changes, so the image is rebuilt.
    func imageStamp(kernelVersion: String) throws -> String {
        var h: UInt64 = 0xcbf29ce484222325
        for f in ["init", "lab-device", "lab-programs", "lab-recovery", "build-image.sh"] {
            let d = try Data(contentsOf: URL(fileURLWithPath: paths.labScripts + "/" + f))
            for b in d { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        }
        return "kernel \(kernelVersion) scripts \(String(h, radix: 16))\n"
    }

    /// Runs a command with its output passed through to ours; true when it exits 0.
    func sh(_ argv: [String], env: [String: String] = [:]) async throws -> Bool {
        var e: [Environment.Key: String?] = [:]
        for (k, v) in env { e[Environment.Key(stringLiteral: k)] = v }
        let r = try await run(
            argv[0].hasPrefix("/") ? .path(FilePath(argv[0])) : .name(argv[0]), arguments: Arguments(Array(argv.dropFirst())),
            environment: .inherit.updating(e),
            input: .none, output: .currentStandardError, error: .currentStandardError)
        if case .exited(0) = r.terminationStatus { return true }
        return false
    }
}
