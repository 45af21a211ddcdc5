// Recovery within one process (issue 4, phase A): Tests/Programs/recovery.c, a verifying workload
// (sequence-numbered, checksummed SENDs, RDMA WRITEs, FETCH_AND_ADDs that must each return their
// own sequence number, a pong per burst), run through the shim on the software HCA while the
// shim detaches/attaches (planned) or the device vanishes and returns (unplanned). The program
// fails on any error completion, any lost, duplicated or corrupted message, any atomic executed
// twice, and any change of a virtual identity (QPN, keys, async fd).

import Foundation
import Testing

private func expectRecovered(_ out: Harness.Output, mode: String, devices: Int, recoveries: Int = 3) {
    #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
    #expect(out.line(startingWith: "recovery: \(mode), 48 messages, \(recoveries) recoveries, \(devices) devices, 0 errors") != nil,
            "\(mode): \(out)")
    // The phases of the last recovery, for the record.
    if let phases = out.line(startingWith: "recovery: phases ") { print("\(mode) (\(devices) device(s)): \(phases)") }
}

private let recoveryEnvironment = ["STABLEVERBS_LOG": "info", "STABLEVERBS_QUIESCE_MS": "200"]

/// The per-recovery lines ("recovery: #K planned=… quiesce_ms=… blackout_ms=…"): field → value.
private func recoveryLines(_ out: Harness.Output) -> [[String: Double]] {
    out.lines.filter { $0.hasPrefix("recovery: #") }.map { line in
        var f: [String: Double] = [:]
        for kv in line.split(separator: " ") {
            let p = kv.split(separator: "=", maxSplits: 1)
            if p.count == 2, let v = Double(p[1]) { f[String(p[0])] = v }
        }
        return f
    }
}

@Suite("Recovery within one process")
struct RecoveryTests {
    /// Planned: stableverbs_detach with work in flight; posts buffered and completions served while
    /// released; stableverbs_attach rebuilds, reconnects and replays.
    @Test("planned detach/attach during a verifying ping-pong", arguments: Setup.all)
    func planned(setup: Setup) throws {
        let out = try Harness.runProgram("recovery", ["-m", "planned"], setup: setup, extraEnvironment: recoveryEnvironment)
        expectRecovered(out, mode: "planned", devices: setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1)
        #expect(out.stderr.contains("recovery #3 (planned"), "no recovery log line: \(out)")
        #expect(out.stderr.contains("quiesce") && out.stderr.contains("device wait") && out.stderr.contains("replay"), "\(out)")
        // 2 SENDs wait for receives B has not posted: they cannot progress, so the quiesce ends at
        // once instead of at STABLEVERBS_QUIESCE_MS (200 here); each recovery reports its blackout.
        let r = recoveryLines(out)
        #expect(r.count == 3 && r.allSatisfy { ($0["quiesce_ms"] ?? 999) < 150 && $0["blackout_ms"] != nil }, "\(out)")
    }

    /// Unplanned, mlx5-like: DEVICE_FATAL, QPs flushed (the flush errors never reach the
    /// application), the device returns; in-flight work is replayed.
    @Test("device lost (fatal) and back: the application carries on", arguments: Setup.all)
    func fatal(setup: Setup) throws {
        let out = try Harness.runProgram("recovery", ["-m", "fatal"], setup: setup, extraEnvironment: recoveryEnvironment)
        expectRecovered(out, mode: "fatal", devices: setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1)
        #expect(out.stderr.contains("IBV_EVENT_DEVICE_FATAL: unplanned recovery (not shown to the application)"), "\(out)")
    }

    /// Unplanned, rxe-like: the device leaves the list and waits for the process to close it; the
    /// shim's release lets the removal complete (checked by the program), then it returns.
    @Test("device removed rxe-style (removal waits for the release) and back", arguments: [Setup.ibOneDevice, .ethTwoDevices])
    func rxe(setup: Setup) throws {
        let out = try Harness.runProgram("recovery", ["-m", "rxe"], setup: setup, extraEnvironment: recoveryEnvironment)
        expectRecovered(out, mode: "rxe", devices: setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1)
        #expect(out.stderr.contains("IBV_EVENT_PORT_ERR and the device left the device list"), "\(out)")
    }

    /// The device comes back under another name with a new GUID/LIDs/GIDs (a new VF): with
    /// STABLEVERBS_MATCH=any the context moves to it, virtual identities unchanged.
    @Test("device returns under a different name (STABLEVERBS_MATCH=any)", arguments: [Setup.ibOneDevice, .ethOneDevice])
    func renamed(setup: Setup) throws {
        var env = recoveryEnvironment
        env["STABLEVERBS_MATCH"] = "any"
        let out = try Harness.runProgram("recovery", ["-m", "rename"], setup: setup, extraEnvironment: env)
        expectRecovered(out, mode: "rename", devices: 1)
        #expect(out.line(startingWith: "recovery: device softhca0 -> moved2") != nil, "\(out)")
    }

    /// The same workload posted with the ibv_wr_* API (as perftest posts), SENDs inline: each batch
    /// is recorded as the WR it stands for and replayed after the loss; posts while released are
    /// buffered batches.
    @Test("work posted with ibv_wr_* is replayed exactly", arguments: ["planned", "fatal", "rxe"])
    func wrAPI(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-w"], setup: .ethOneDevice, extraEnvironment: recoveryEnvironment)
        #expect(out.line(startingWith: "recovery: ready, \(mode) (ibv_wr_*)") != nil, "\(out)")
        expectRecovered(out, mode: mode, devices: 1)
        #expect(!out.stderr.contains("not recorded"), "\(out)")
    }

    /// Every CQ made by ibv_create_cq_ex and polled through ibv_start_poll/next_poll/end_poll: the
    /// QPs on them are recorded and replayed, the completions a recovery kept (lostrecvs: receive
    /// completions remade) are served through the poll session. Before, such QPs were not
    /// recorded: every mode stalled or timed out.
    @Test("QPs on extended CQs are replayed; kept completions come through ibv_start_poll",
          arguments: ["planned", "fatal", "rxe", "lostrecvs", "fatal -w"])
    func extendedCQs(how: String) throws {
        let words = how.split(separator: " ").map(String.init)
        let mode = words[0]
        let out = try Harness.runProgram("recovery", ["-m", mode, "-e"] + words.dropFirst(), setup: .ethOneDevice,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.line(startingWith: "recovery: ready, \(mode)\(words.count > 1 ? " (ibv_wr_*)" : "") (extended CQs)") != nil, "\(out)")
        expectRecovered(out, mode: mode, devices: 1)
        #expect(!out.stderr.contains("not recorded") && !out.stderr.contains("did not end within"), "\(out)")
    }

    /// Inline SENDs through ibv_post_send, their buffers scribbled on as soon as posted: a SEND
    /// replayed after a recovery carries the bytes the shim kept when it was posted.
    @Test("inline SENDs are replayed from the bytes kept at the post", arguments: ["planned", "fatal", "rxe"])
    func inlineSends(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-i"], setup: .ethOneDevice, extraEnvironment: recoveryEnvironment)
        #expect(out.line(startingWith: "recovery: ready, \(mode) (inline)") != nil, "\(out)")
        expectRecovered(out, mode: mode, devices: 1)
    }

    /// UD next to the RC pairs (`-u`): every datagram received once, in order, intact, its src_qp
    /// the sender's virtual QPN. With two devices the sender's device is the one lost: before,
    /// the receiving context translated src_qp with its own QPs' map and showed the sender's new
    /// real QPN after the first recovery (32 of 48 datagrams).
    @Test("UD datagrams through recoveries: once each, src_qp the sender's virtual QPN",
          arguments: ["planned", "fatal", "rxe"], [Setup.ibTwoDevices, .ethTwoDevices, .ethOneDevice])
    func udDatagrams(mode: String, setup: Setup) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-u"], setup: setup, extraEnvironment: recoveryEnvironment)
        let devices = setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1
        #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
        #expect(out.line(startingWith: "recovery: ready, \(mode) (UD)") != nil, "\(out)")
        #expect(out.line(startingWith: "recovery: \(mode), 96 messages, 3 recoveries, \(devices) devices, 0 errors") != nil, "\(out)")
    }

    /// UD on extended CQs (`-u -e`: ibv_start_poll, ibv_wc_read_src_qp): the src_qp of the
    /// completion a poll session is on is told by sender too. With the previous library the
    /// two-device runs failed on src_qp (24 errors).
    @Test("UD on extended CQs: ibv_wc_read_src_qp gives the sender's virtual QPN",
          arguments: ["planned", "fatal", "rxe"], [Setup.ibTwoDevices, .ethTwoDevices])
    func udExtendedCQs(mode: String, setup: Setup) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-u", "-e"], setup: setup, extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
        #expect(out.line(startingWith: "recovery: ready, \(mode) (extended CQs) (UD)") != nil, "\(out)")
        #expect(out.line(startingWith: "recovery: \(mode), 96 messages, 3 recoveries, 2 devices, 0 errors") != nil, "\(out)")
    }

    /// UD through a device that returns under another name with new GUID, LIDs and GIDs
    /// (STABLEVERBS_MATCH=any): src_qp, and the GRH's GIDs rewritten to the virtual ones, so that
    /// ibv_init_ah_from_wc / ibv_create_ah_from_wc on each datagram still work and address the
    /// sender's virtual GID.
    @Test("UD through a device that returns with new GIDs: the GRH shows the virtual GIDs",
          arguments: [Setup.ibOneDevice, .ethOneDevice])
    func udRenamed(setup: Setup) throws {
        var env = recoveryEnvironment
        env["STABLEVERBS_MATCH"] = "any"
        let out = try Harness.runProgram("recovery", ["-m", "rename", "-u"], setup: setup, extraEnvironment: env)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "recovery: rename, 96 messages, 3 recoveries, 1 devices, 0 errors") != nil, "\(out)")
    }

    /// A UD sender in another process that moved: the peer protocol's `ud-moved` claim tells this
    /// process's shim the sender's new real QPN, and a receive from it shows the virtual one
    /// (udclaim.c plays both processes: it sends the claim to its own shim over loopback). With the
    /// previous library the claim changed nothing (src_qp stayed the real QPN). Then a peer whose GID
    /// changed with its move: sends through an address handle towards its old GID reach the new
    /// one, receives from the new one show the old one, and the claim needs the secret behind the
    /// commitment its owner gave (the previous library took any such claim from the GID's host and
    /// kept sending to the old GID).
    @Test("a UD peer's ud-moved claim: a receive from it shows its virtual QPN", arguments: Setup.all)
    func udClaim(setup: Setup) throws {
        let port = 19_000 + (Setup.all.firstIndex { $0.name == setup.name } ?? 0)
        let env = ["STABLEVERBS_PEER_HOST": "127.0.0.1", "STABLEVERBS_PEER_PORT": "\(port)", "STABLEVERBS_PEER_PORTS": "1",
                   "STABLEVERBS_LOG": "info"]
        let out = try Harness.runProgram("udclaim", [], setup: setup, extraEnvironment: env)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "udclaim: 0 errors") != nil, "\(out)")
        #expect(out.line(startingWith: "udclaim: a claim naming no GID: denied") != nil, "\(out)")
        // A peer whose GID changed: believed only with the secret behind its commitment.
        for line in ["X moved, no commitment for X: denied", "X moved, a wrong proof: denied", "X moved, its proof: noted",
                     "the receive from UB shows source GID X", "X moved back, the used proof again: denied",
                     "X moved back, the next proof: noted"] {
            #expect(out.line(startingWith: "udclaim: " + line) != nil, "\(line)\n\(out)")
        }
        // With no address handle towards another host, the shim that greeted this one is told of
        // its UD moves (the previous library told nobody: "asked 0"). Only GIDs that name a host
        // (Ethernet: IPv4-mapped) are announced; InfiniBand link-local GIDs have none to tell.
        #expect(out.line(startingWith: "udclaim: a greeting: noted") != nil, "\(out)")
        #expect(out.line(startingWith: "udclaim: after a planned move: src_qp") != nil, "\(out)")
        let told = ["asked 1 shim(s) on 127.0.0.1 to hold their UD sends", "told 1 shim(s) on 127.0.0.1 where this process's UD QPs are now"]
        for t in told {
            #expect(out.stderr.contains(t) == setup.name.hasPrefix("eth"), "\(t)\n\(out)")
        }
    }

    /// 16 QP pairs on shared CQs, per-pair sequence numbers, the bursts spread over all of them.
    @Test("16 QP pairs on shared CQs recover together", arguments: ["planned", "rxe"])
    func sixteenPairs(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-q", "16"], setup: .ethOneDevice, extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
        #expect(out.line(startingWith: "recovery: \(mode), 768 messages, 3 recoveries, 1 devices, 0 errors") != nil, "\(out)")
        #expect(recoveryLines(out).count == 3, "\(out)")
        if let b = out.line(startingWith: "recovery: blackout median") { print("\(mode), 16 pairs: \(b)") }
    }

    /// 1 000 QPs (500 pairs) and 1 000 more memory regions: every WRITE of the first 1 000 per burst
    /// gathers from one of the extra MRs, so their lkeys must work after every rebuild.
    @Test("1 000 QPs and 1 000 more MRs recover together", arguments: ["planned", "fatal", "rxe"])
    func thousandQPs(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-q", "500", "-M", "1000"], setup: .ethOneDevice,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
        #expect(out.line(startingWith: "recovery: ready, \(mode), 500 QP pair(s), 1000 more MR(s)") != nil, "\(out)")
        #expect(out.line(startingWith: "recovery: \(mode), 24000 messages, 3 recoveries, 1 devices, 0 errors") != nil, "\(out)")
        #expect(recoveryLines(out).count == 3, "\(out)")
        if let b = out.line(startingWith: "recovery: blackout median") { print("\(mode), 500 pairs, 1000 more MRs: \(b)") }
    }

    /// 8 180 QPs in one context: its real-QPN index grows from 1 024 slots through several tables
    /// while they are created, and each rebuild takes every QP out and puts it back under its new
    /// real QPN; a QP it lost would have its completed work replayed (duplicates, which B catches).
    @Test("8 180 QPs in one context recover (the real-QPN index grows)")
    func eightThousandQPs() throws {
        let out = try Harness.runProgram("recovery", ["-m", "fatal", "-q", "4090", "-n", "4", "-k", "2"], setup: .ethOneDevice,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "recovery: fatal, 65440 messages, 2 recoveries, 1 devices, 0 errors") != nil, "\(out)")
        #expect(!out.stderr.contains("not tracked"), "\(out)")
        #expect(recoveryLines(out).count == 2, "\(out)")
    }

    /// Both ends in this process, and the device dies before it writes the completions of one side
    /// (not flushed: gone). lostacks: A never saw its delivered SENDs acknowledged — each end's
    /// count from the other's rings retires them (else B gets them twice: 6 here); atomics before
    /// them are executed again (their results died; -t counts them). lostrecvs: B's receive
    /// completions died after A saw the messages acknowledged — remade (else lost: B stalls).
    @Test("completions lost with the device: SENDs once, receive completions remade", arguments: ["lostacks", "lostrecvs"])
    func lostCompletions(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-q", "4", "-t"], setup: .ibOneDevice,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
        #expect(out.line(startingWith: "recovery: \(mode), 192 messages, 3 recoveries, 1 devices, 0 errors") != nil, "\(out)")
        #expect(out.line(startingWith: "recovery: duplicates of work in flight at a loss (-t): 0 SEND(s) received twice") != nil,
                "\(mode): a SEND was delivered twice: \(out)")
        let counted = mode == "lostacks" ? "4 send(s) the peer already had retired" : "2 receive completion(s) remade"
        #expect(out.stderr.components(separatedBy: counted).count - 1 == 12, "\(mode): 4 pairs × 3 losses × \"\(counted)\": \(out)")
    }

    /// Both ends in this process on two devices, and A's device dies before it writes A's send
    /// completions while B's lives on (it is released and rebuilt with A's: the recovery moves both
    /// ends of a connection). B's QPs still answer at the release: the PSN each expected next says
    /// which of A's atomics B executed; those are not posted again (their results are worked out
    /// from the words in B's memory), so every FETCH_AND_ADD runs once without -t. Before (the
    /// software HCA numbered no PSNs and the in-process counts posted them again; the library of
    /// 5aaf31e), "A0: FETCH_AND_ADD of message 12 returned 15 (executed twice or lost?)".
    @Test("completions lost with one of two devices: the atomics the other executed run once")
    func lostCompletionsOneOfTwoDevices() throws {
        let out = try Harness.runProgram("recovery", ["-m", "lostacks", "-q", "4"], setup: .ethTwoDevices,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "recovery: lostacks, 192 messages, 3 recoveries, 2 devices, 0 errors") != nil, "\(out)")
        // Each burst is WRITE, FETCH_AND_ADD, SEND × 4 per pair with 2 receives posted at B: the
        // device executes up to the third SEND, which waits for a receive, when A's device dies —
        // 3 atomics executed, the 4th (behind that SEND) not, and posted once by the replay.
        let worked = out.stderr.components(separatedBy: "(in-process peer): 3 atomic(s) executed by the peer whose responses died: results worked out").count - 1
        #expect(worked == 12, "4 pairs × 3 losses, each with 3 atomics executed by B: \(out)")
    }

    /// B's QPs on one shared receive queue (-s; B finds each message's pair by wc.qp_num, its bytes
    /// in whichever pool buffer the SRQ handed out). Every mode replays the SRQ's receives; with
    /// lostacks the counts of QPs on an SRQ retire what B already had.
    @Test("QPs on a shared receive queue recover", arguments: ["planned", "fatal", "rxe", "lostacks"])
    func sharedReceiveQueue(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-s", "-q", "4", "-t"], setup: .ibOneDevice,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.line(startingWith: "recovery: ready, \(mode) (SRQ), 4 QP pair(s)") != nil, "\(out)")
        #expect(out.status == 0 && !out.timedOut, "\(mode): \(out)")
        #expect(out.line(startingWith: "recovery: \(mode), 192 messages, 3 recoveries, 1 devices, 0 errors") != nil, "\(out)")
        #expect(out.line(startingWith: "recovery: duplicates of work in flight at a loss (-t): 0 SEND(s) received twice") != nil,
                "\(mode): a SEND was delivered twice: \(out)")
    }

    /// lostrecvs with B's QPs on one SRQ: the receive completions died after A saw the messages
    /// acknowledged, and which SRQ receive took which pair's message only the device knew. One QP
    /// losing (-q 1): the SRQ's oldest not-done receives, in posting order. Several (-q 4, -q 16;
    /// -i: A's inline SENDs scribbled on as soon as posted, -w -e: ibv_wr_* and extended CQs): the
    /// order of the messages over those receives that fits the senders' payload hashes. Before,
    /// nothing was remade: "B0: message 14, expected 12 (lost or duplicated)".
    @Test("receive completions an SRQ lost with the device are remade",
          arguments: [(["-q", "1"], 48), (["-q", "4"], 192), (["-q", "4", "-i"], 192), (["-q", "4", "-w", "-e"], 192),
                      (["-q", "16"], 768)])
    func srqLostReceives(options: [String], messages: Int) throws {
        let out = try Harness.runProgram("recovery", ["-m", "lostrecvs", "-s", "-t"] + options, setup: .ethOneDevice,
                                         extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(options): \(out)")
        #expect(out.line(startingWith: "recovery: lostrecvs, \(messages) messages, 3 recoveries, 1 devices, 0 errors") != nil, "\(out)")
        #expect(!out.stderr.contains("not remade"), "\(options): \(out)")
        let remade = out.stderr.components(separatedBy: "receive completion(s) remade from its SRQ").count - 1
        #expect(remade >= 3, "\(options): one QP or more per loss remade its completions: \(out)")
    }

    /// Lists the provider refuses part of (a WR with more SGEs than the QP holds, after one it
    /// took): EINVAL and bad_wr as natively, and the work rings keep what the provider took, so
    /// the queues stay replayable (they were marked incomplete for good, and the WR taken before
    /// the refused one was not recorded).
    @Test("a list the provider refused part of leaves the queue replayable", arguments: ["fatal", "planned"])
    func refusedLists(mode: String) throws {
        let out = try Harness.runProgram("recovery", ["-m", mode, "-r"], setup: .ibOneDevice, extraEnvironment: recoveryEnvironment)
        expectRecovered(out, mode: mode, devices: 1)
        #expect(!out.stderr.contains("posted more than its work ring holds"), "\(mode): a queue was left unreplayable: \(out)")
    }

    /// A real call failing during the rebuild (create_qp → EIO) is rolled back and retried.
    @Test("a real call failing during the rebuild is retried", arguments: [Setup.ibOneDevice, .ethTwoDevices])
    func failingRebuild(setup: Setup) throws {
        let out = try Harness.runProgram("recovery", ["-m", "failrebuild"], setup: setup, extraEnvironment: recoveryEnvironment)
        expectRecovered(out, mode: "failrebuild", devices: setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1)
        #expect(out.stderr.contains("failed making a QP (errno 5); nothing changed"), "\(out)")
        #expect(out.stderr.contains("failed (errno 5); retrying"), "\(out)")
    }

    /// An address handle of the context not made again after the commit (create_ah → ENOMEM, the
    /// device fine): the context is released and rebuilt again before anything is replayed (before,
    /// it went LIVE with that AH still pointing at the destroyed real one of the old device).
    @Test("an address handle not made again: released and rebuilt again", arguments: [Setup.ibOneDevice, .ethTwoDevices])
    func addressHandleNotMadeAgain(setup: Setup) throws {
        var env = recoveryEnvironment
        env["SVTEST_FAIL_IN"] = "create_ah:\(ENOMEM)"
        let out = try Harness.runProgram("recovery", ["-m", "failrebuild", "-q", "2", "-u", "-t"], setup: setup, extraEnvironment: env)
        let devices = setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "recovery: failrebuild, 144 messages, 3 recoveries, \(devices) devices, 0 errors") != nil, "\(out)")
        #expect(out.stderr.contains("1 address handle(s) missing"), "\(out)")
        #expect(out.stderr.contains("released, rebuilding again"), "\(out)")
    }

    /// The device vanishes again while the rebuild runs (the software HCA's `gone` fault: that call
    /// makes its device vanish like mlx5 and fails with EIO), and comes back once more. Before the
    /// commit (PD, MR, CQ, SRQ, QP made again) the rebuild is rolled back and retried when the
    /// device is back; after it, before the replay (a QP's transitions, address handles) the
    /// context is released again and rebuilt when the device is back (before, it went LIVE on the
    /// dead device, an address handle not made again left pointing at a destroyed one); during the
    /// replay (its posts) what the device refused stays recorded and the next recovery replays it.
    /// No async event reaches the application (QPs on an SRQ report their last WQE when the loss
    /// puts them in error: hidden).
    @Test("the device gone again during the rebuild", arguments: [
        ("create_qp", Setup.ibOneDevice), ("alloc_pd:0", .ethTwoDevices), ("reg_mr:1", .ibOneDevice),
        ("create_cq:1", .ethTwoDevices), ("create_srq:0", .ibOneDevice), ("modify_qp:9", .ibOneDevice),
        ("modify_qp:5", .ethTwoDevices), ("create_ah:0", .ibOneDevice), ("post_recv:0", .ethTwoDevices),
        ("post_send:2", .ibOneDevice),
    ])
    func goneAgainDuringRebuild(entry: String, setup: Setup) throws {
        var env = recoveryEnvironment
        env["SVTEST_GONE_IN"] = entry
        let out = try Harness.runProgram("recovery", ["-m", "regone", "-q", "4", "-s", "-u", "-t"], setup: setup, extraEnvironment: env)
        let devices = setup.environment["SVTEST_TWO_DEVICES"] == "1" ? 2 : 1
        #expect(out.status == 0 && !out.timedOut, "\(entry): \(out)")
        #expect(out.line(startingWith: "recovery: regone, 240 messages, 3 recoveries, \(devices) devices, 0 errors") != nil, "\(entry): \(out)")
        if ["create_qp", "alloc_pd", "reg_mr", "create_cq", "create_srq"].contains(where: { entry.hasPrefix($0) }) {
            #expect(out.stderr.contains("failed (errno 5); retrying"), "\(entry): \(out)")
        } else if ["modify_qp", "create_ah"].contains(where: { entry.hasPrefix($0) }) {
            #expect(out.stderr.contains("released, rebuilding again"), "\(entry): \(out)")
            #expect(!out.stderr.contains("they stay recorded for the next recovery"), "\(entry): replayed on a dead device: \(out)")
        } else {
            #expect(out.stderr.contains("the device is gone again; they stay recorded for the next recovery"), "\(entry): \(out)")
        }
        #expect(!out.stderr.contains("those are lost"), "\(entry): \(out)")
    }

    /// A port's own events reach the application (held STABLEVERBS_EVENT_GRACE_MS), those of a loss
    /// do not: a PORT_ERR read while the device was still listed, the device lost 50 ms later
    /// (before, the application was shown it), and after the move PORT_ERR/PORT_ACTIVE again.
    @Test("port events: the port's own shown, the loss's not", arguments: [Setup.ibOneDevice, .ethOneDevice])
    func portEvents(setup: Setup) throws {
        let out = try Harness.runProgram("portevents", setup: setup, extraEnvironment: recoveryEnvironment)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "portevents: 4 events shown, 0 errors") != nil, "\(out)")
    }

    /// The device is lost and stays away past STABLEVERBS_LOSS_WAIT_MS: the application gets what
    /// a dead device gives natively (IBV_EVENT_DEVICE_FATAL, its outstanding work flushed in error,
    /// EIO), its teardown succeeds, and the dead context is not rebuilt when the device returns.
    @Test("a device that does not come back: native errors after STABLEVERBS_LOSS_WAIT_MS, no hang",
          arguments: [Setup.ibOneDevice, .ethOneDevice])
    func deviceGone(setup: Setup) throws {
        var env = recoveryEnvironment
        env["STABLEVERBS_LOSS_WAIT_MS"] = "1500"
        let out = try Harness.runProgram("devicegone", [], setup: setup, extraEnvironment: env)
        #expect(out.status == 0 && !out.timedOut, "\(out)")
        #expect(out.line(startingWith: "devicegone: 5 flushed, 0 errors") != nil, "\(out)")
        #expect(out.stderr.contains("did not come back within"), "\(out)")
        if let t = out.line(startingWith: "devicegone: IBV_EVENT_DEVICE_FATAL after ") { print("\(setup): \(t)") }
    }
}
