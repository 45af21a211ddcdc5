import Foundation
import Testing
@testable import LabKit

// The lab tests boot QEMU (TCG) guests with the kernel's rdma_rxe and run unmodified rdma-core,
// perftest and librdmacm programs in them, natively and under LD_PRELOAD=$STABLEVERBS_LIB.
//
// Without qemu-system-x86 (or the other packages the lab needs) they are SKIPPED, loudly: the
// `labAvailability` test prints why, and each lab test is reported as skipped with the reason.
// With STABLEVERBS_LAB_REQUIRED=1 (CI) a missing lab or library is a failure instead.
// The shim library: $STABLEVERBS_LIB, else .build/release/libstableverbs.so.

enum Lab {
    static let paths: LabPaths? = {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        return try? LabPaths.discover(start: here)
    }()
    static let required = ProcessInfo.processInfo.environment["STABLEVERBS_LAB_REQUIRED"] == "1"

    /// nil when the lab can run here.
    static let unavailable: String? = {
        guard let paths else { return "cannot find the package root (Lab/init)" }
        return LabSetup(paths: paths).unavailableReason()
    }()
    static var available: Bool { unavailable == nil }

    static var library: String { paths?.library ?? "" }
    static var libraryMissing: String? {
        FileManager.default.fileExists(atPath: library) ? nil
            : "\(library) does not exist: build it with `swift build -c release -Xswiftc -static-stdlib --omit-frame-pointers --product stableverbs`, or set STABLEVERBS_LIB"
    }
    static var shimAvailable: Bool { available && libraryMissing == nil }
    /// The `stableverbs` command the guests get (LabPaths.command).
    static var commandAvailable: Bool { shimAvailable && paths?.command != nil }
    static var commandReason: String {
        shimAvailable ? "no stableverbs command built (scripts/build, or swift build --product stableverbs-cli)" : shimReason
    }
    static var shimReason: String { unavailable.map { "lab unavailable: \($0)" } ?? libraryMissing ?? "" }

    /// Runs a lab command; prints each line (prefixed) as it comes; returns status and lines.
    static func run(_ commands: [String], guests: Int = 1, timeout: Double = 300,
                    onLine: (@Sendable (Int, String, String) -> Void)? = nil) async throws -> (status: Int32, lines: [(guest: Int, text: String)], result: LabRun.Result) {
        let paths = try #require(Lab.paths)
        try await LabSetup(paths: paths).ensure(install: false)
        var r = LabRun(paths: paths, commands: commands)
        r.guests = guests
        r.timeout = timeout
        r.workingDirectory = paths.root
        let sink = LineSink()
        let runDir = LineSink()
        r.onStart = { runDir.add(-1, $0) }
        let result = try await r.execute { g, line in
            sink.add(g, line)
            onLine?(g, line, runDir.lines.first?.text ?? "")
            print("[lab\(g)] \(line)")
        }
        return (result.status, sink.lines, result)
    }
}

final class LineSink: @unchecked Sendable {
    private let lock = NSLock()
    private var _lines: [(guest: Int, text: String)] = []
    func add(_ g: Int, _ s: String) { lock.lock(); _lines.append((g, s)); lock.unlock() }
    var lines: [(guest: Int, text: String)] { lock.lock(); defer { lock.unlock() }; return _lines }
}

/// The `key=value` fields after `tag` in a line (nil when the tag is not there).
func taggedFields(_ line: String, _ tag: String) -> [String: String]? {
    guard let r = line.range(of: tag + " ") else { return nil }
    var f: [String: String] = [:]
    for kv in line[r.upperBound...].split(separator: " ") {
        let p = kv.split(separator: "=", maxSplits: 1)
        if p.count == 2 { f[String(p[0])] = String(p[1]) }
    }
    return f
}

/// One `LAB-RESULT case=… mode=… side=… rc=… count=… secs=…` line of Lab/lab-programs.
struct ProgramResult: Hashable, CustomStringConvertible {
    var name: String, mode: String, side: String, rc: Int, count: Int, secs: Double?
    init?(_ line: String) {
        guard let f = taggedFields(line, "LAB-RESULT"), let n = f["case"], let m = f["mode"], let s = f["side"], let rc = f["rc"].flatMap({ Int($0) }),
              let c = f["count"].flatMap({ Int($0) }) else { return nil }
        name = n; mode = m; side = s; self.rc = rc; count = c; secs = f["secs"].flatMap { Double($0) }
    }
    var description: String { "\(name)/\(side) [\(mode)] rc=\(rc) count=\(count)\(secs.map { " \($0) s" } ?? "")" }
}

/// What every program gives natively here (exit 0, and its own message count); the shim must give
/// the same. ib_read_lat's server prints no table (count 0), natively too.
let programCases = ["rc", "rc-e", "rc-N", "ud", "srq", "write_lat", "send_lat", "read_lat", "read_lat-old", "rping"]
func expectedCount(_ name: String, _ side: String) -> Int {
    (name.hasPrefix("read_lat") && side == "server") ? 0 : 1000
}

func checkPrograms(_ lines: [(guest: Int, text: String)], mode: String, status: Int32) {
    let results = lines.compactMap { ProgramResult($0.text) }.filter { $0.mode == mode }
    for c in programCases {
        for side in ["server", "client"] {
            let r = results.filter { $0.name == c && $0.side == side }
            #expect(r.count == 1, "\(c)/\(side) [\(mode)]: expected one result, got \(r)")
            guard let one = r.first else { continue }
            #expect(one.rc == 0, "\(c)/\(side) [\(mode)] exited \(one.rc)")
            #expect(one.count == expectedCount(c, side), "\(c)/\(side) [\(mode)] message count \(one.count), native gives \(expectedCount(c, side))")
        }
    }
    #expect(status == 0, "lab-programs --mode \(mode) exited \(status)")
    if mode == "shim" {
        // A program that ends its connections itself (rping's rdma_disconnect, the teardowns) gets
        // its flush completions at once, as natively: none is held back for a peer that might be
        // moving, and none waits out the peer timeout.
        let held = lines.filter { $0.text.contains("no word from the peer shim") }
        #expect(held.isEmpty, "error completions of a connection the program ended were held back for the peer timeout: \(held.map(\.text))")
    }
    print("lab-programs --mode \(mode): " + results.map(\.description).joined(separator: "; "))
}

@Test("lab availability (prints loudly when the lab tests are skipped)")
func labAvailability() {
    if let why = Lab.unavailable {
        let banner = """

        ************************************************************************
        * LAB TESTS SKIPPED: \(why)
        * They boot QEMU guests with rdma_rxe; install the lab with
        *   apt-get install qemu-system-x86 busybox-static cpio kmod iproute2 rdma-core
        *     ibverbs-utils ibverbs-providers rdmacm-utils perftest
        ************************************************************************

        """
        FileHandle.standardError.write(Data(banner.utf8))
        print(banner)
        if Lab.required { Issue.record("STABLEVERBS_LAB_REQUIRED=1 but the lab is unavailable: \(why)") }
    } else if let why = Lab.libraryMissing {
        let banner = "\n*** LAB SHIM TESTS SKIPPED: \(why)\n"
        FileHandle.standardError.write(Data(banner.utf8))
        print(banner)
        if Lab.required { Issue.record("STABLEVERBS_LAB_REQUIRED=1 but the shim library is missing: \(why)") }
    }
}

@Suite("Lab (QEMU + rdma_rxe)", .serialized, .enabled(if: Lab.available, Comment(rawValue: "LAB SKIPPED: \(Lab.unavailable ?? "")")))
struct LabTests {
    @Test("run contract: host paths, environment, rxe0 with GID 1 IPv4-mapped, exit status")
    func runContract() async throws {
        let t0 = Date()
        let (status, lines, _) = try await Lab.run(["""
            echo "cwd=$(pwd)"; echo "lib=$STABLEVERBS_LIB"; echo "peer=$STABLEVERBS_LAB_PEER ip=$STABLEVERBS_LAB_IP role=$STABLEVERBS_LAB_ROLE"
            test -r Package.swift && echo host-fs-visible
            ibv_devices | grep -q rxe0 && echo has-rxe0
            echo "gid1=$(cat /sys/class/infiniband/rxe0/ports/1/gids/1)"
            exit 7
            """])
        let text = lines.map(\.text)
        #expect(status == 7)
        #expect(text.contains("cwd=\(Lab.paths!.root)"))
        #expect(text.contains("lib=\(Lab.library)"))
        #expect(text.contains("peer=10.77.0.1 ip=10.77.0.1 role=server"))
        #expect(text.contains("host-fs-visible"))
        #expect(text.contains("has-rxe0"))
        #expect(text.contains("gid1=0000:0000:0000:0000:0000:ffff:0a4d:0001"))
        print("lab: run contract boot+run took \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
    }

    @Test("a hanging guest is killed after the timeout (exit 124)")
    func timeout() async throws {
        let (status, _, result) = try await Lab.run(["echo started; sleep 1000"], timeout: 25)
        #expect(status == LabRun.timeoutStatus)
        #expect(result.timedOut)
        #expect(result.seconds < 60)
    }

    @Test("programs natively, one guest")
    func programsOneGuestNative() async throws {
        let (status, lines, _) = try await Lab.run(["lab-programs --mode native"])
        checkPrograms(lines, mode: "native", status: status)
    }

    @Test("programs natively, two guests")
    func programsTwoGuestsNative() async throws {
        let (status, lines, _) = try await Lab.run(["lab-programs --mode native"], guests: 2, timeout: 400)
        checkPrograms(lines, mode: "native", status: status)
        // Each side ran in its own guest.
        let sides = Set(lines.compactMap { l in ProgramResult(l.text).map { "\(l.guest)/\($0.side)" } })
        #expect(sides == ["0/server", "1/client"])
    }

    @Test("device loss: rdma link delete/add, and NIC hot-unplug/plug through QMP with a new MAC")
    func deviceLoss() async throws {
        let (status, lines, _) = try await Lab.run(["""
            set -e
            echo "mac-before=$(cat /sys/class/net/eth0/address)"
            lab-device delete
            echo "after-delete=[$(ibv_devices | tail -n +3 | tr -d ' \\t')]"
            lab-device add
            echo "after-add=[$(ibv_devices | tail -n +3 | awk '{print $1}')]"
            lab-device nic-replace
            n=$(ls /sys/class/infiniband/rxe0/device/net 2>/dev/null || rdma link show rxe0/1 | sed 's/.*netdev //;s/ .*//')
            echo "after-replace=[$(ibv_devices | tail -n +3 | awk '{print $1}')] mac=$(cat /sys/class/net/$(rdma link show rxe0/1 | sed 's/.*netdev //;s/ .*//')/address)"
            lab-programs rc
            """])
        let text = lines.map(\.text)
        #expect(status == 0)
        #expect(text.contains("mac-before=52:54:00:77:01:00"))
        #expect(text.contains("after-delete=[]"))
        #expect(text.contains("after-add=[rxe0]"))
        #expect(text.contains { $0.hasPrefix("ok unplugged nic0") })
        #expect(text.contains { $0.hasPrefix("ok plugged nic1 52:54:00:77:01:01") })
        #expect(text.contains("after-replace=[rxe0] mac=52:54:00:77:01:01"))
        let rc = lines.compactMap { ProgramResult($0.text) }
        #expect(rc.count == 2 && rc.allSatisfy { $0.rc == 0 && $0.count == 1000 }, "rc after the NIC replacement: \(rc)")
    }

    @Test("host-side QMP: stableverbs-lab's LabNIC unplugs and plugs a running guest's NIC")
    func hostSideNIC() async throws {
        let hostLog = LineSink()
        let (status, lines, _) = try await Lab.run(["""
            set -e
            lab-device delete
            echo "ready-for-unplug"
            i=0; while [ -e /sys/class/net/eth0 ]; do i=$((i+1)); [ $i -lt 300 ] || exit 3; sleep 0.1; done
            echo "nic-gone"
            i=0; while [ ! -e /sys/class/net/eth0 ]; do i=$((i+1)); [ $i -lt 300 ] || exit 4; sleep 0.1; done
            lab-device add
            echo "mac-now=$(cat /sys/class/net/eth0/address) devices=[$(ibv_devices | tail -n +3 | awk '{print $1}')]"
            """], onLine: { _, line, runDir in
                guard line == "ready-for-unplug" else { return }
                Thread.detachNewThread {
                    do {
                        let id = try LabNIC.unplug(qmpSocket: runDir + "/qmp0.sock")
                        let (nid, mac) = try LabNIC.plug(qmpSocket: runDir + "/qmp0.sock", guest: 0)
                        hostLog.add(0, "unplugged \(id), plugged \(nid) \(mac)")
                    } catch {
                        hostLog.add(0, "host-side QMP failed: \(error)")
                    }
                }
            })
        #expect(hostLog.lines.map(\.text) == ["unplugged nic0, plugged nic1 52:54:00:77:01:01"])
        #expect(status == 0)
        #expect(lines.contains { $0.text == "nic-gone" })
        #expect(lines.contains { $0.text == "mac-now=52:54:00:77:01:01 devices=[rxe0]" })
    }

    @Test("two guests: the client guest loses and regains its NIC, the server guest keeps its device")
    func twoGuestsOneSideLoses() async throws {
        let (status, lines, _) = try await Lab.run([
            "lab-programs rc && ibv_devices | grep -q rxe0 && echo server-kept-rxe0 && lab-programs rc",
            "lab-programs rc && lab-device nic-replace && lab-programs rc",
        ], guests: 2)
        #expect(status == 0)
        #expect(lines.contains { $0.guest == 0 && $0.text == "server-kept-rxe0" })
        #expect(lines.contains { $0.guest == 1 && $0.text.hasPrefix("ok plugged nic1 52:54:00:77:02:01") })
        let rc = lines.compactMap { ProgramResult($0.text) }
        #expect(rc.count == 4 && rc.allSatisfy { $0.rc == 0 && $0.count == 1000 }, "\(rc)")
    }

    @Test("programs under the shim, one guest", .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func programsOneGuestShim() async throws {
        let (status, lines, _) = try await Lab.run(["lab-programs --mode shim"])
        checkPrograms(lines, mode: "shim", status: status)
    }

    @Test("programs under the shim, two guests", .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func programsTwoGuestsShim() async throws {
        let (status, lines, _) = try await Lab.run(["lab-programs --mode shim"], guests: 2, timeout: 400)
        checkPrograms(lines, mode: "shim", status: status)
    }

    /// The orchestrator's flow on the real rxe0, with the `stableverbs` command on the guest's PATH:
    /// a shimmed program keeps verifying its traffic (Tests/Programs/recovery.c -m external, both
    /// ends in the process, loopback on rxe0) while `stableverbs detach` releases the device, the
    /// NIC under rxe0 is hot-unplugged and a new one plugged (what a VF swap does), and
    /// `stableverbs attach` rebuilds on the new rxe0; then a second detach/attach without a
    /// replacement. Nothing lost, duplicated or in error.
    @Test("stableverbs detach, NIC replaced, stableverbs attach: the program carries on",
          .enabled(if: Lab.commandAvailable, Comment(rawValue: Lab.commandReason)))
    func commandDetachReplaceAttach() async throws {
        let (status, lines, _) = try await Lab.run(["""
            echo "command=$(command -v stableverbs)"
            cc -O2 -Iinclude -ITests/Programs -o /tmp/recovery Tests/Programs/recovery.c -libverbs || exit 9
            SVTEST_DEVICE=rxe0 SVTEST_TIMEOUT=250 SVTEST_POLL_SECONDS=150 STABLEVERBS_QUIESCE_MS=200 STABLEVERBS_LOG=info \
                LD_PRELOAD=$STABLEVERBS_LIB /tmp/recovery -m external -k 2 > /tmp/r.out 2>&1 &
            p=$!; i=0
            while [ ! -S /tmp/stableverbs-0/$p.sock ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done
            echo "program-pid=$p"
            stableverbs status; echo "status-rc=$?"
            stableverbs detach; echo "detach-rc=$?"
            stableverbs status
            timeout 120 lab-device nic-replace; echo "replace-rc=$?"
            stableverbs attach; echo "attach-rc=$?"
            stableverbs status
            stableverbs detach && stableverbs attach; echo "again-rc=$?"
            wait $p; echo "program-rc=$?"
            grep '^recovery: ' /tmp/r.out
            stableverbs status; echo "after-rc=$?"
            """], timeout: 300)
        #expect(status == 0)
        let text = lines.map(\.text)
        let pid = text.first { $0.hasPrefix("program-pid=") }.map { String($0.dropFirst("program-pid=".count)) } ?? "?"
        #expect(text.contains("command=/run/lab/stableverbs"), "the command is not on the guest's PATH")
        for step in ["status-rc=0", "detach-rc=0", "replace-rc=0", "attach-rc=0", "again-rc=0", "program-rc=0", "after-rc=3"] {
            #expect(text.contains(step), "missing \(step)")
        }
        #expect(text.contains("pid \(pid) (recovery), lower libibverbs: 1 context, 0 recoveries"))
        #expect(text.contains { $0.hasPrefix("pid \(pid) (recovery): detached 1 context in ") })
        #expect(text.contains { $0.hasPrefix("    rxe0: released (detached: waiting for attach)") })
        #expect(text.contains { $0.hasPrefix("pid \(pid) (recovery): attached 1 context in ") })
        #expect(text.contains { $0.hasPrefix("    rxe0 on rxe0: live, generation 1, 2 QPs") })
        #expect(text.contains { $0.hasPrefix("recovery: external, ") && $0.hasSuffix(" 2 recoveries, 1 devices, 0 errors") })
    }

    /// A shimmed client talks to a native server (which only the real rxe0 can reach), and the QPN it
    /// prints is a QP the kernel lists for the client's pid: the lab cannot silently fall back to
    /// the software double.
    @Test("the shim really uses rxe0", .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func shimUsesRealDevice() async throws {
        let (status, lines, _) = try await Lab.run(["""
            echo "shim-devices=[$(LD_PRELOAD=$STABLEVERBS_LIB ibv_devices | tail -n +3 | awk '{print $1 "/" $2}')]"
            echo "native-devices=[$(ibv_devices | tail -n +3 | awk '{print $1 "/" $2}')]"
            ibv_rc_pingpong -d rxe0 -g 1 -n 3000 -p 18777 > /tmp/server.out 2>&1 &
            sleep 0.5
            LD_PRELOAD=$STABLEVERBS_LIB ibv_rc_pingpong -d rxe0 -g 1 -n 3000 -p 18777 $STABLEVERBS_LAB_IP > /tmp/client.out 2>&1 &
            client=$!
            echo "client-pid=$client"
            while kill -0 $client 2>/dev/null; do rdma res show qp link rxe0 >> /tmp/qps 2>/dev/null; sleep 0.2; done
            wait $client; echo "client-rc=$?"
            wait; cat /tmp/client.out
            sort -u /tmp/qps | grep -v '^$' | sed 's/^/kernel-qp: /'
            """])
        #expect(status == 0)
        let text = lines.map(\.text)
        let shimDevices = text.first { $0.hasPrefix("shim-devices=") }?.dropFirst("shim-devices=".count)
        let nativeDevices = text.first { $0.hasPrefix("native-devices=") }?.dropFirst("native-devices=".count)
        #expect(shimDevices != nil && shimDevices == nativeDevices && shimDevices!.contains("rxe0"), "shim sees \(String(describing: shimDevices)), native \(String(describing: nativeDevices))")
        #expect(text.contains("client-rc=0"))
        let pid = text.first { $0.hasPrefix("client-pid=") }.map { String($0.dropFirst("client-pid=".count)) } ?? "?"
        // "  local address:  LID 0x0000, QPN 0x000011, PSN ..., GID ..."
        let qpnHex = text.first { $0.contains("local address:") }?
            .components(separatedBy: "QPN 0x").dropFirst().first?.prefix { $0.isHexDigit }
        let qpn = qpnHex.flatMap { Int($0, radix: 16) }
        #expect(qpn != nil, "the shimmed client printed no QPN")
        if let qpn {
            let seen = text.contains { $0.hasPrefix("kernel-qp: ") && $0.contains("lqpn \(qpn) ") && $0.contains("pid \(pid) ") }
            #expect(seen, "the kernel lists no QP \(qpn) for the shimmed client (pid \(pid))")
        }
    }
}
