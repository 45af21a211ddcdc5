// End-to-end tests: the C programs of Tests/Programs, ordinary verbs code compiled against the
// system headers, run under LD_PRELOAD=libstableverbs.so over the software HCA double, in every
// fabric setup (IB/Ethernet link, one device loopback/two devices), and again in pass-through mode
// (the double called directly) to show the shim changes nothing an application can see.

import Foundation
import Testing

/// The data-path programs; each prints a deterministic summary line ending in ", 0 errors".
let dataPathCases: [ProgramCase] = [
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "300"], summary: "rc_pingpong: 300 iterations"),
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "200", "-s", "3000", "-g", "3"], summary: "rc_pingpong: 200 iterations"),
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "300", "-i"], summary: "rc_pingpong: 300 iterations"),
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "300", "-x"], summary: "rc_pingpong: 300 iterations"),
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "300", "-x", "-i"], summary: "rc_pingpong: 300 iterations"),
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "200", "-x", "-i", "-g", "2", "-s", "48"], summary: "rc_pingpong: 200 iterations"),
    ProgramCase(program: "rc_pingpong", arguments: ["-n", "200", "-x", "-g", "4", "-s", "4096"], summary: "rc_pingpong: 200 iterations"),
    ProgramCase(program: "rdma", arguments: ["-n", "100"], summary: "rdma: 100 iterations x 2 APIs"),
    ProgramCase(program: "atomics", arguments: ["-n", "100"], summary: "atomics: 100 iterations x 2 APIs"),
    ProgramCase(program: "imm", arguments: ["-n", "100"], summary: "imm: 100 iterations x 2 APIs"),
    ProgramCase(program: "ud", arguments: ["-n", "100"], summary: "ud: 100 iterations x 2 APIs"),
    ProgramCase(program: "srq", arguments: ["-q", "16", "-m", "50"], summary: "srq: 16 QPs x 50 messages = 800 received"),
    ProgramCase(program: "srq", arguments: ["-q", "16", "-m", "30", "-x"], summary: "srq: 16 QPs x 30 messages = 480 received"),
    ProgramCase(program: "events", arguments: ["-n", "50", "-p", "10"], summary: "events: 50 messages via a blocked thread, 10 via poll()"),
    ProgramCase(program: "threads_fork", arguments: ["-t", "4", "-n", "200", "-f", "4"],
                summary: "threads_fork: 4 threads x 200 iterations, 4 forks (4 children exited 0)"),
]

private func expectPassed(_ out: Harness.Output, _ c: ProgramCase, _ what: String) {
    #expect(out.status == 0 && !out.timedOut, "\(c.testDescription) \(what): \(out)")
    let summary = out.line(startingWith: c.summary)
    #expect(summary != nil, "\(c.testDescription) \(what): no summary line '\(c.summary)…': \(out)")
    if let summary {
        #expect(summary.hasSuffix(", 0 errors"), "\(c.testDescription) \(what): \(summary)")
    }
}

@Suite("C programs through the shim")
struct ProgramTests {
    /// The preloaded program itself sees the shim, active, over the software HCA: the tests cannot
    /// silently run without it.
    @Test("the shim is active inside the preloaded program", arguments: [Setup.ibTwoDevices, .ethOneDevice])
    func shimIsActive(setup: Setup) throws {
        let out = try Harness.runProgram("shim_info", setup: setup, timeout: 60)
        #expect(out.status == 0, "\(out)")
        let line = out.line(startingWith: "shim_info: ")
        #expect(line?.hasPrefix("shim_info: active=1 lower=softhca ") == true, "\(out)")
        let devices = setup.softHCA.contains("devices=2") ? 2 : 1
        #expect(line?.hasSuffix("devices=\(devices)") == true, "\(out)")
        let link = setup.softHCA.contains("link=eth") ? "link=eth" : "link=ib"
        #expect(out.lines.filter { $0.hasPrefix("shim_info: device ") && $0.contains(link) }.count == devices, "\(out)")

        let inert = try Harness.runProgram("shim_info", setup: setup, passthrough: true, timeout: 60)
        #expect(inert.status == 0, "\(inert)")
        #expect(inert.line(startingWith: "shim_info: ")?.hasPrefix("shim_info: active=0 lower=softhca ") == true,
                "pass-through: \(inert)")
    }

    /// Every setting README documents is read (the C start-up once kept a fixed list of names and
    /// ignored the peer protocol's and STABLEVERBS_CONTROL_WAIT_MS without a word), and a
    /// STABLEVERBS_* variable that is no setting is reported rather than ignored in silence.
    @Test("settings are read; an unknown STABLEVERBS_* variable is reported")
    func settings() throws {
        let out = try Harness.runProgram("shim_info", setup: .ibOneDevice, extraEnvironment: [
            "STABLEVERBS_LOG": "debug", "STABLEVERBS_PEER_PORT": "18950", "STABLEVERBS_PEER_PORTS": "4",
            "STABLEVERBS_PEER_TIMOUT_MS": "5000",
        ], timeout: 60)
        #expect(out.status == 0, "\(out)")
        #expect(out.stderr.contains("peer: service listening on port 1895"), "STABLEVERBS_PEER_PORT not honoured: \(out)")
        #expect(out.stderr.contains("STABLEVERBS_PEER_TIMOUT_MS is not a StableVerbs setting"), "\(out)")
        #expect(!out.stderr.contains("STABLEVERBS_PEER_PORT is not"), "\(out)")
    }

    /// Every data-path program passes through the shim, passes with the double called directly,
    /// and prints exactly the same in both.
    @Test("data path", arguments: dataPathCases, Setup.all)
    func dataPath(c: ProgramCase, setup: Setup) throws {
        let shim = try Harness.runProgram(c.program, c.arguments, setup: setup)
        expectPassed(shim, c, "through the shim (\(setup))")
        let direct = try Harness.runProgram(c.program, c.arguments, setup: setup, passthrough: true)
        expectPassed(direct, c, "in pass-through (\(setup))")
        #expect(shim.stdout == direct.stdout,
                "\(c.testDescription) (\(setup)): output differs between the shim and pass-through:\n--- shim ---\n\(shim.stdout)--- pass-through ---\n\(direct.stdout)")
    }

    /// The errno table: at least 30 bad-input cases, byte-for-byte the same through the shim as
    /// from the software HCA called directly, and each as a kernel provider would answer.
    @Test("errno table: shim == pass-through", arguments: Setup.all)
    func errnoTable(setup: Setup) throws {
        let shim = try Harness.runProgram("errtab", setup: setup)
        let direct = try Harness.runProgram("errtab", setup: setup, passthrough: true)
        #expect(!shim.timedOut && !shim.signaled, "through the shim: \(shim)")
        #expect(!direct.timedOut && !direct.signaled, "pass-through: \(direct)")
        let cases = shim.lines.filter { $0.hasPrefix("case ") }
        #expect(cases.count >= 30, "only \(cases.count) cases: \(shim)")
        if shim.stdout != direct.stdout {
            let a = shim.lines, b = direct.lines
            var diff: [String] = []
            for i in 0..<max(a.count, b.count) where (i < a.count ? a[i] : "") != (i < b.count ? b[i] : "") {
                diff.append("shim:         \(i < a.count ? a[i] : "<none>")\npass-through: \(i < b.count ? b[i] : "<none>")")
            }
            Issue.record("errtab (\(setup)): outputs differ:\n\(diff.joined(separator: "\n"))")
        }
        #expect(direct.status == 0, "the software HCA itself misses expectations (\(setup)): \(direct)")
        #expect(shim.status == 0, "through the shim, cases miss expectations (\(setup)): \(shim)")
    }

    /// stableverbs_rebuild_context: real identities change, virtual ones do not, and everything keeps
    /// working with the old virtual values; completions carry the virtual QPN after the rebuild.
    @Test("rebuild keeps virtual identities", arguments: Setup.all)
    func rebuild(setup: Setup) throws {
        let out = try Harness.runProgram("rebuild", ["-r", "3"], setup: setup)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        let devices = setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1
        #expect(out.line(startingWith: "rebuild: 3 rebuilds, \(devices) devices, 0 errors") != nil, "\(out)")
    }

    @Test("after a rebuild, wc.qp_num is the virtual QPN", arguments: [Setup.ibOneDevice, .ethTwoDevices])
    func virtualQPNAfterRebuild(setup: Setup) throws {
        let out = try Harness.runProgram("rebuild", ["-r", "1"], setup: setup)
        #expect(out.status == 0, "\(out)")
        #expect(out.line(startingWith: "rebuild: after rebuild, wc.qp_num is the virtual QPN (real QPN differs)") != nil,
                "\(out)")
    }

    /// What the shim does not virtualise (memory windows, XRC, device memory, ODP advice, work
    /// queues, mlx5 direct verbs and DC) fails with EOPNOTSUPP and a log line, never a crash.
    @Test("unsupported verbs fail cleanly", arguments: [Setup.ibOneDevice, .ethOneDevice])
    func unsupportedVerbs(setup: Setup) throws {
        let out = try Harness.runProgram("unsupported", setup: setup, timeout: 60)
        #expect(out.status == 0, "\(out)")
        #expect(out.line(startingWith: "unsupported: 14 cases, 0 unexpected") != nil, "\(out)")
        for verb in ["mlx5dv_open_device", "mlx5dv_create_qp", "ibv_create_srq_ex (XRC)"] {
            #expect(out.stderr.contains("\(verb): not supported by StableVerbs (EOPNOTSUPP)"), "no log line for \(verb): \(out)")
        }
    }

    /// dlopen("libibverbs.so.1") + dlsym must land in the shim.
    @Test("dlopen + dlsym of libibverbs reach the shim", arguments: [Setup.ibOneDevice, .ethOneDevice])
    func dlopenDlsym(setup: Setup) throws {
        let out = try Harness.runProgram("dlopen", setup: setup, timeout: 60)
        #expect(out.status == 0, "\(out)")
        #expect(out.line(startingWith: "dlopen: shim active=1 lower=softhca, 16 verbs resolved to the shim, 0 errors") != nil,
                "\(out)")
    }
}
