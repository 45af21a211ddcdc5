// The shape of the built libstableverbs.so: self-contained (no Swift runtime or Foundation needed at
// run time), exporting every verb an application or librdmacm can reach, and a fast path free of
// runtime calls (scripts/check-fastpath).

import Foundation
import Testing

/// Every verb the shim must define (unversioned, so it interposes libibverbs' versioned symbols),
/// plus its own API.
let requiredExports: [String] = """
    ibv_get_device_list ibv_free_device_list ibv_get_device_name ibv_get_device_guid ibv_get_device_index \
    ibv_open_device ibv_close_device ibv_query_device ibv_query_port ibv_query_gid _ibv_query_gid_ex \
    ibv_query_pkey ibv_get_pkey_index ibv_alloc_pd ibv_dealloc_pd ibv_reg_mr ibv_reg_mr_iova2 ibv_dereg_mr \
    ibv_create_cq ibv_resize_cq ibv_destroy_cq ibv_create_comp_channel ibv_destroy_comp_channel \
    ibv_get_cq_event ibv_ack_cq_events ibv_get_async_event ibv_ack_async_event ibv_create_qp ibv_modify_qp \
    ibv_query_qp ibv_destroy_qp ibv_qp_to_qp_ex ibv_create_srq ibv_modify_srq ibv_query_srq ibv_destroy_srq \
    ibv_create_ah ibv_destroy_ah ibv_create_ah_from_wc ibv_init_ah_from_wc ibv_attach_mcast ibv_detach_mcast \
    ibv_fork_init ibv_query_ece ibv_set_ece stableverbs_version stableverbs_is_active
    """.split(separator: " ").map(String.init)

/// What the library may need at run time: the C/C++ runtime and rdma-core.
private let allowedDirect = ["libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "libibverbs.so", "librdmacm.so",
                             "linux-vdso.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so"]

private func tool(_ name: String, _ args: [String]) throws -> Harness.Output {
    try Harness.run("/usr/bin/env", [name] + args, environment: Harness.cleanEnvironment, timeout: 120)
}

/// Library names in `ldd` output ("libfoo.so.1 => /path (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)").
private func lddNames(_ out: Harness.Output) -> [String] {
    out.lines.compactMap { line in
        let first = line.trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init)
        return first.map { ($0 as NSString).lastPathComponent }
    }
}

@Suite("libstableverbs.so shape")
struct LibraryShapeTests {
    @Test("ldd shows only libc, libm, libstdc++, libgcc_s, libibverbs, librdmacm (and their own dependencies)")
    func dependencies() throws {
        let lib = try Harness.libraryPath()
        let ldd = try tool("ldd", [lib])
        #expect(ldd.status == 0, "ldd \(lib): \(ldd)")
        #expect(!ldd.stdout.contains("not found"), "unresolved dependency: \(ldd.stdout)")
        for banned in ["libswift", "libFoundation", "libdispatch", "libBlocksRuntime", "libicu", "lib_Foundation"] {
            #expect(!ldd.stdout.contains(banned), "the library needs \(banned) at run time:\n\(ldd.stdout)")
        }
        // What rdma-core itself pulls in (libnl on Debian) is allowed: it is not the shim's doing.
        var allowed = Set<String>()
        for dep in ["libibverbs.so.1", "librdmacm.so.1"] {
            let paths = ldd.lines.filter { $0.contains(dep + " => ") }
            if let path = paths.first?.components(separatedBy: " => ").last?.components(separatedBy: " (").first {
                allowed.formUnion(lddNames(try tool("ldd", [path])))
            }
        }
        for name in lddNames(ldd) where !allowedDirect.contains(where: { name.hasPrefix($0) }) && !allowed.contains(name) {
            Issue.record("unexpected run-time dependency \(name):\n\(ldd.stdout)")
        }
        // The direct (NEEDED) dependencies, strictly.
        let dyn = try tool("readelf", ["-d", lib])
        #expect(dyn.status == 0, "\(dyn)")
        let needed = dyn.lines.filter { $0.contains("(NEEDED)") }.compactMap { line -> String? in
            guard let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        }
        #expect(needed.contains { $0.hasPrefix("libibverbs.so") }, "libibverbs is not NEEDED: \(needed)")
        for name in needed where !allowedDirect.contains(where: { name.hasPrefix($0) }) {
            Issue.record("unexpected NEEDED entry \(name) (all: \(needed))")
        }
    }

    @Test("exports every verb")
    func exports() throws {
        let lib = try Harness.libraryPath()
        let nm = try tool("nm", ["-D", "--defined-only", lib])
        #expect(nm.status == 0, "\(nm)")
        var defined = Set<String>()
        for line in nm.lines {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, "TtWwiD".contains(fields[1]) else { continue }
            defined.insert(String(fields[2].split(separator: "@").first ?? fields[2]))
        }
        let missing = requiredExports.filter { !defined.contains($0) }
        #expect(missing.isEmpty, "not exported by \(lib): \(missing.joined(separator: " "))")
        #expect(requiredExports.count == 47)
    }

    @Test("scripts/check-fastpath passes on the library")
    func fastPath() throws {
        let lib = try Harness.libraryPath()
        let script = Harness.root.appendingPathComponent("scripts/check-fastpath").path
        let out = try Harness.run("/bin/bash", [script, lib], environment: Harness.cleanEnvironment, timeout: 300)
        #expect(out.status == 0, "scripts/check-fastpath \(lib): \(out)")
    }
}
