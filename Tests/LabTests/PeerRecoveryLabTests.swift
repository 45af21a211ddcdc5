// The peer protocol in the lab (issue 4): unmodified ibv_rc_pingpong / ibv_srq_pingpong,
// ibv_ud_pingpong and perftest's ib_write_lat (ibv_wr_* posts, inline data, writes polled in
// memory) through the shim on real rxe while one guest's device (or NIC) goes away and comes back, and with both
// ends in one guest (both move at once). Every program must end with exit status 0 and its normal
// output; the shim must have recovered once per loss. The guest side is scripts/peer-recovery.sh.
// CI runs small counts (across guests one loss of each way per program, 2 in one guest);
// `PEER_LOSSES=5 swift test --filter LabTests.peer` runs the full ones (a run per program and way;
// NIC replacements capped at 3; ibv_rc_pingpong -n 200000, ib_write_lat -n 100000).

import Foundation
import Testing

/// One `PEER-RESULT side=… rc=… iters=… recoveries=… seconds=…` line.
struct PeerResult: CustomStringConvertible {
    var side: String, rc: String, iters: Int, recoveries: Int
    /// How long the program ran (to when it was killed, if it was: rc=killed).
    var seconds: Int?
    init?(_ line: String) {
        guard let f = taggedFields(line, "PEER-RESULT"), let s = f["side"], let rc = f["rc"], let i = f["iters"].flatMap({ Int($0) }),
              let k = f["recoveries"].flatMap({ Int($0) }) else { return nil }
        side = s; self.rc = rc; iters = i; recoveries = k; seconds = f["seconds"].flatMap { Int($0) }
    }
    var description: String {
        "\(side): rc=\(rc) iters=\(iters) recoveries=\(recoveries)" + (seconds.map { " after \($0) s" } ?? "")
    }
}

private let script = "sh Tests/LabTests/scripts/peer-recovery.sh"
private let losses = ProcessInfo.processInfo.environment["PEER_LOSSES"].flatMap { Int($0) }

extension LabTests {
    private func expectSurvived(_ lines: [(guest: Int, text: String)], status: Int32, iterations: Int,
                                movers: [String: Int]) {
        let results = lines.compactMap { PeerResult($0.text) }
        #expect(status == 0)
        for side in ["server", "client"] {
            let r = results.filter { $0.side == side }
            #expect(r.count == 1, "\(side): \(results)")
            guard let one = r.first else { continue }
            #expect(one.rc == "0" && one.iters == iterations, "\(side) did not finish normally: \(one)")
            #expect(one.recoveries == movers[side, default: 0], "\(side): \(one.recoveries) recoveries, expected \(movers[side, default: 0])")
        }
    }

    /// `program` across two guests; the client guest's device goes `k` times (`how`). `seconds`:
    /// how long the programs may take (the guest script kills them after that).
    private func twoGuest(_ program: String = "ibv_rc_pingpong", iterations n: Int, losses k: Int,
                          how: String, seconds: Int = 480, environment: String = "") async throws -> [(guest: Int, text: String)] {
        let (status, lines, _) = try await Lab.run([
            "\(environment) WAITFOR=\(seconds * 10) \(script) server \(program) \(n) 0",
            "\(environment) WAITFOR=\(seconds * 10) \(script) client \(program) \(n) \(k) \(how)",
        ], guests: 2, timeout: Double(seconds + 90 * k))
        expectSurvived(lines, status: status, iterations: n, movers: ["client": k])
        return lines
    }

    /// How many iterations keep `program` running through `k` losses across two guests (the
    /// program is stalled while its shim recovers; these count the time between losses). Three
    /// losses are over about 50 s into a run; on 2026-12-02 the programs then ran (iterations,
    /// seconds in all) ibv_rc_pingpong 6 000 in 110 s, ib_write_lat 10 000 in 134 s,
    /// ibv_ud_pingpong 9 000 in 79 s and ibv_srq_pingpong 50 000 in 158 s, and a CI machine took
    /// up to 1.8 times as long (ib_write_lat with 16 000 was killed there after 300 s).
    private func iterations(_ program: String, losses k: Int) -> Int {
        switch program {
        case "ib_write_lat": return 4_000 + 2_000 * k
        case "ibv_ud_pingpong": return 3_000 + 2_000 * k
        case "ibv_srq_pingpong": return 20_000 + 7_000 * k  // an iteration per message over its 16 QPs
        default: return 1_500 + 1_200 * k                   // ibv_rc_pingpong
        }
    }

    /// Every program of the issue across two guests through every way of losing the client guest's
    /// device: rdma link delete/add, a NIC hot-unplugged and a new one (new MAC) plugged in, and the
    /// planned path (`stableverbs detach` … `stableverbs attach`). CI: one run per program, its
    /// three losses one of each way in turn. `PEER_LOSSES=K`: the issue's full counts, a run per way
    /// (K deletions, min(K, 3) NIC swaps, K planned moves; ibv_rc_pingpong -n 200000, ib_write_lat
    /// -n 100000; about 5 hours in all on this kind of machine).
    /// ib_write_lat (perftest: ibv_wr_* posts, inline data) RDMA-writes into the other side's buffer
    /// and spins on its own memory for the peer's write: a write lost with the device hangs both.
    /// ibv_srq_pingpong runs 16 connections on one SRQ. Under ibv_ud_pingpong the moved shim must
    /// have the peer host's shims hold their UD sends to it while it moves and tell them where its UD
    /// QPs are now before it replays its sends.
    @Test("peer protocol: every program across two guests through a device deletion, a NIC swap and the planned path",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)),
          arguments: ["ibv_rc_pingpong", "ib_write_lat", "ibv_ud_pingpong", "ibv_srq_pingpong"])
    func peerEveryWay(program: String) async throws {
        let runs: [(how: String, losses: Int)] = losses.map { k in [("delete", k), ("nic", min(k, 3)), ("planned", k)] }
            ?? [("delete,nic,planned", 3)]
        // The issue's counts when the full run is asked for: ibv_rc_pingpong -n 200000 (2 928 s
        // through 5 deletions by hand on 2026-11-30), ib_write_lat -n 100000 (1 298 s through 5
        // deletions).
        let full: [String: (iterations: Int, seconds: Int)] = ["ibv_rc_pingpong": (200_000, 4_500), "ib_write_lat": (100_000, 2_400)]
        for (how, k) in runs {
            let n = losses != nil ? full[program]?.iterations ?? iterations(program, losses: k) : iterations(program, losses: k)
            let lines = try await twoGuest(program, iterations: n, losses: k, how: how,
                                           seconds: losses != nil ? full[program]?.seconds ?? 480 : 480)
            if how.contains("planned") && program != "ibv_ud_pingpong" {  // UD has no connection to announce it on
                #expect(lines.contains { $0.text.contains("the peer announced a planned detach") },
                        "\(program), \(how): the server was not told of the planned detach")
            }
            let ways = lines.filter { $0.text.hasPrefix("peer-recovery: loss ") }.map(\.text)
            if program != "ibv_ud_pingpong" {
                // A loss the client's shim noticed while its port still worked (a deletion; a NIC
                // swap deletes the device first) is announced to the server's shim, which then
                // waits STABLEVERBS_PEER_MOVE_TIMEOUT_MS for it rather than the silent-peer bound.
                let moving = lines.filter { $0.text.contains("the peer announced that it is moving") }
                let unplanned = ways.filter { !$0.hasSuffix("(planned)") }.count
                #expect(moving.count >= unplanned, "\(program), \(how): \(moving.count) announced move(s) seen by the server, expected at least \(unplanned)")
            }
            if program == "ibv_ud_pingpong" {
                // Every move ends with the server's shim told where the client's UD QP went; a move
                // announced while the client's device still worked (a deletion, the planned path:
                // rxe runs until its contexts are closed) first had the server's UD sends held, so
                // that no pong went to a device about to vanish (ibv_ud_pingpong never resends).
                let server = lines.filter { $0.text.hasPrefix("server: ") }.map(\.text)
                let moved = server.filter { $0.contains("UD QPs on ") && $0.contains(" moved: ") }
                let held = server.filter { $0.contains("UD QPs on ") && $0.contains(" are moving: UD sends to ") }
                let announced = ways.filter { !$0.hasSuffix("(nic)") }.count
                #expect(moved.count == k, "\(program), \(how): the server's shim was told of \(moved.count) move(s), expected \(k)")
                #expect(held.count >= announced, "\(program), \(how): the server's shim held its UD sends \(held.count) time(s), expected at least \(announced)")
            }
            #expect(ways.count == k, "\(program), \(how): \(ways)")
        }
    }

    /// perftest's bandwidth programs across two guests through a loss of the client guest's device
    /// (a deletion, a NIC swap, a NIC swap): 128 requests outstanding (their TX depth), a completion
    /// asked for every 100th (--cq-mod: the others unsignaled, retired with the next signaled
    /// one), ib_send_bw's server replenishing its receives as they complete, ib_read_bw's 128 RDMA
    /// reads in flight. 4 KB messages. On 2026-12-03 (this kind of machine) 60 000 iterations
    /// took 39–47 s through a NIC swap, ib_write_bw's 100 000 55 s through a deletion.
    /// `-F`: perftest calibrates its clock against the guest's before its report, and under TCG
    /// that sometimes fails ("Correlation coefficient r^2: 0.886 < 0.9", natively too); without
    /// -F a bandwidth program then exits 1 ("Can't produce a report") whatever its transfers did.
    /// ib_read_bw through the planned path passed 57 runs in 59 on 2026-12-03. In the two others,
    /// after all 60 000 reads and the client's report, perftest's closing exchange over its own TCP
    /// socket failed ("ethernet_read_keys: Couldn't read remote address"). An interposer on read,
    /// write, close and dup2 caught the second: the server's read() of the client's 108-byte message
    /// returned 36 bytes (a minimum-MSS segment's payload), perftest reads a message with one read()
    /// and gives up on a short one, and the client then got ECONNRESET. Neither shim closed,
    /// duplicated onto or used that socket. Why the kernel cut that message is not known, so CI
    /// takes ib_read_bw through a NIC swap; the planned path is proven with every program above.
    @Test("peer protocol: perftest's bandwidth programs (ib_write_bw, ib_send_bw, ib_read_bw) across two guests through a deletion and NIC swaps",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)),
          arguments: zip(["ib_write_bw", "ib_send_bw", "ib_read_bw"], ["delete", "nic", "nic"]))
    func peerBandwidth(program: String, how: String) async throws {
        let k = losses.map { min($0, 3) } ?? 1
        let lines = try await twoGuest(program, iterations: 40_000 + 20_000 * k, losses: k, how: how,
                                       environment: "PROG_ARGS='-s 4096 -F'")
        #expect(lines.filter { $0.text.hasPrefix("peer-recovery: loss ") }.count == k, "\(program), \(how)")
    }

    /// ibv_ud_pingpong across two guests while the client guest's NIC is replaced by one with
    /// another IP address, and later by one with its own address again: every GID of its device
    /// changes with each move. The server's shim must send its pongs to the new GID (the real
    /// address handle made again behind the application's) and believe the claim only with the
    /// client shim's proof (its commitment came with the `ud-pausing` sent from the old address).
    /// With the previous library the server's shim refused the claim (it came from the new address)
    /// and held its pongs until the client came back to its old address; after the third move it
    /// sent them to the old GID, and both programs hung until killed (2026-12-02, 300 s).
    @Test("peer protocol: ibv_ud_pingpong while the client's NIC is replaced by one with another IP address",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func peerUDRenumbered() async throws {
        // An odd count ends with the client away from its own address (with an even one, the
        // previous library's held pongs went out once the client was back at its old address).
        let k = losses.map { min($0, 3) } ?? 3
        let lines = try await twoGuest("ibv_ud_pingpong", iterations: iterations("ibv_ud_pingpong", losses: k), losses: k, how: "renumber")
        let server = lines.filter { $0.text.hasPrefix("server: ") }.map(\.text)
        let remade = server.filter { $0.contains("GID(s) of a peer moved: 1 address handle(s) made towards the new address") }
        #expect(remade.count == k, "the server's shim made its address handle towards the client's new GID \(remade.count) time(s), expected \(k)")
        let refused = lines.filter { $0.text.contains("was refused") }
        #expect(refused.isEmpty, "\(refused)")
    }

    /// A connection whose address names no host (InfiniBand by LID only, as ibv_rc_pingpong and
    /// perftest connect by default, or towards a link-local GID): the introducer looks for the peer's
    /// shim on the hosts of the program's own TCP connections, then on those of its network
    /// namespace, and the other end learns the introducer's host from its `hello`. rxe needs GIDs,
    /// so the lab takes that path with STABLEVERBS_PEER_FIND=connections (the GIDs are not used to
    /// find hosts): ibv_rc_pingpong across two guests through losses of the client guest's device.
    /// `direct`: the program's own exchange socket leads to the client (a deletion and a NIC swap;
    /// with the 7ae8c21 library a LID-only connection had no peer shim: its first move ended it).
    /// `relay`: the server's program exchanges its address as an MPI rank does through its
    /// launcher's daemon (peer-recovery.sh RELAY=1): it holds a connection to a local daemon for
    /// its whole run and the client reaches it through a relay, so none of its own connections
    /// leads to the client's host; the relay's (another process's, same namespace) does (a
    /// deletion; with the 3ab38a2 library the server's shim asked only 127.0.0.1, its own
    /// connections, and the connection was unmanaged).
    @Test("peer protocol: ibv_rc_pingpong whose peer shim is found through TCP connections: the program's own, or its namespace's (the exchange went through a relay)",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)), arguments: ["direct", "relay"])
    func peerFoundByConnections(exchange: String) async throws {
        let relay = exchange == "relay"
        let k = losses.map { min($0, 3) } ?? (relay ? 1 : 2)
        let lines = try await twoGuest(iterations: iterations("ibv_rc_pingpong", losses: k), losses: k, how: relay ? "delete" : "delete,nic",
                                       environment: "STABLEVERBS_PEER_FIND=connections" + (relay ? " RELAY=1" : ""))
        let text = lines.map(\.text)
        #expect(!relay || text.contains { $0.contains("peer-recovery: the server's exchange goes through a relay") })
        let found = text.filter { $0.hasPrefix("server: ") && $0.contains("↔10.77.0.2/") && $0.contains("of 10.77.0.2, found among the") }
        #expect(found.count == 1, "the server's shim did not find the client's shim among the connections: \(text.filter { $0.contains("peer:") })")
        #expect(text.contains { $0.hasPrefix("client: ") && $0.contains("introduced by the peer") }, "\(text.filter { $0.contains("peer:") })")
        #expect(!text.contains { $0.contains("GID(s) of a peer moved") })
    }

    /// ibv_rc_pingpong across two guests: the client guest's NIC is replaced by one with another IP
    /// address, then the server guest's device is deleted and re-added. The server's shim must tell
    /// the client's shim at its new address (its `moved` claim reconnected the link from there).
    /// With the previous library the server's shim asked the old address, got no answer, and the
    /// connection failed after STABLEVERBS_PEER_TIMEOUT_MS (server exit status 1, the client killed
    /// after 300 s; 2026-12-02).
    @Test("peer protocol: ibv_rc_pingpong: the client moves to another IP address, then the server moves",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func peerRCRenumberedThenServerMoves() async throws {
        let n = 6_000
        let (status, lines, _) = try await Lab.run([
            "SERVER_LOSSES=1 SERVER_AFTER_PEER_MOVES=1 WAITFOR=3000 \(script) server ibv_rc_pingpong \(n) 0",
            "WAITFOR=3000 \(script) client ibv_rc_pingpong \(n) 1 renumber",
        ], guests: 2, timeout: 480)
        expectSurvived(lines, status: status, iterations: n, movers: ["client": 1, "server": 1])
        // (The client's renumbering comes a second after the connection is up; the server's loss a
        // second after its shim followed the client to the new address. A fixed 35 s once came too
        // late: a CI machine ran all 6 000 iterations in 36 s, and the server's device never went.)
        let losses = Set(lines.filter { $0.text.hasPrefix("peer-recovery: loss ") }.map { "\($0.guest): \($0.text)" })
        #expect(losses == ["1: peer-recovery: loss 1 (renumber)", "0: peer-recovery: loss 1 (delete)"], "\(losses)")
        let followed = lines.filter { $0.guest == 0 && $0.text.contains("GID(s) of a peer moved") }
        #expect(followed.count == 1, "the server's shim did not follow the client to its new address: \(followed)")
    }

    /// Atomics across two guests (Tests/Programs/peer_atomics.c: FETCH_AND_ADD on a counter in the
    /// server's memory, 8 in flight, a SEND after every 4th) while the client guest's NIC is pulled
    /// from under rxe0 twice, then (once the server's shim has followed both) the server guest's
    /// twice: work in flight dies with the link. The server guest's NIC delays what it sends by 50 ms, so that
    /// a pull on either side finds atomics the server executed whose responses never arrive. Each
    /// atomic must run once and return its own old value:
    /// - client pulled (the requester moves): the server's shim reports the PSN its QP expected
    ///   next, so the client's shim does not post again what was executed, and the words they
    ///   target, from which their results are worked out. With the previous library the atomics
    ///   after the last SEND the server received were posted again (executed twice: the counter
    ///   ran ahead and every later result was wrong), and the error completions held back before
    ///   the loss was seen reached the program 10 s after the recovery (its status 1, "local QP
    ///   operation error").
    /// - server pulled (the responder moves; its responses die in its own NIC's queue): the
    ///   server's shim reports the PSN its old QP expected next, and the client's shim, which did
    ///   not move, asks it for the words (`words`) and works the results out. With the previous
    ///   library (2 server pulls, 2026-12-02) 8 results were lost ("atomic 1903 completed without
    ///   its result" … 1910; the shim: "8 atomic(s) executed by the peer lost their results with
    ///   the device") and the client exited with status 1.
    @Test("peer protocol: atomics across two guests through NIC pulls on either side run exactly once and return their results",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func peerAtomicsPulled() async throws {
        let k = losses.map { min($0, 5) } ?? 2, n = 15_000 * k  // 24 000 once ended 11 s after the server's last pull
        let (status, lines, _) = try await Lab.run([
            "NET_DELAY_MS=50 SERVER_LOSSES=\(k) SERVER_HOW=pull SERVER_AFTER_PEER_MOVES=\(k) WAITFOR=5000 \(script) server peer_atomics \(n) 0",
            "WAITFOR=5000 \(script) client peer_atomics \(n) \(k) pull",
        ], guests: 2, timeout: Double(500 + 180 * k))
        expectSurvived(lines, status: status, iterations: n, movers: ["client": k, "server": k])
        let text = lines.map(\.text)
        #expect(text.contains("client: peer_atomics: client: \(n) atomics, 0 results lost, 0 wrong results, counter \(n), 0 errors"),
                "\(text.filter { $0.contains("peer_atomics") })")
        #expect(text.contains { $0.hasPrefix("server: peer_atomics: server: ") && $0.hasSuffix(" messages in order, counter \(n), 0 errors") },
                "\(text.filter { $0.contains("peer_atomics") })")
        // The losses left executed atomics without their responses (else this proves nothing) on
        // both sides' pulls, and none was posted again or left without its result. (Not every
        // pull does: the link may die after the last responses landed — 2 of 3 client pulls once.)
        let worked = text.filter { $0.hasPrefix("client: ") && $0.contains("atomic(s) executed by the peer whose responses died: results worked out") }
        let told = text.filter { $0.hasPrefix("server: ") && $0.contains("told the peer the") }
        print("peer_atomics: results worked out \(worked.count) times in \(2 * k) pulls, \(told.count) from words the moved server told")
        #expect(told.count >= 1, "no server pull left an executed atomic without its response")
        #expect(worked.count >= told.count + 1, "no client pull left an executed atomic without its response")
        #expect(!text.contains { $0.contains("posted again (executed twice") || $0.contains("lost their results") || $0.contains("results are lost") },
                "\(text.suffix(60))")
    }

    @Test("peer protocol: both ends in one guest move at once (ibv_rc_pingpong, ibv_srq_pingpong)",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)),
          arguments: ["ibv_rc_pingpong", "ibv_srq_pingpong"])
    func peerBothMove(program: String) async throws {
        let k = losses ?? 2
        // Enough iterations to outlast every loss (each waits for the recoveries of the one before):
        // one guest runs ibv_rc_pingpong at ~0.3 ms an iteration (20 000 once ended before the
        // second of two losses); ibv_srq_pingpong counts an iteration per message over its 16 QPs.
        let n = program == "ibv_srq_pingpong" ? 40_000 + 20_000 * k : 30_000 * (k + 1)
        let (status, lines, _) = try await Lab.run(["\(script) both \(program) \(n) \(k) delete"], timeout: Double(420 + 90 * k))
        expectSurvived(lines, status: status, iterations: n, movers: ["server": k, "client": k])
    }

    /// The peer vanishing: the server's program is killed (-9) while the client's device is away
    /// (as soon as the server's shim hears the move announced; the client's device returns only once
    /// the server's shim is gone, however slowly its guest kills it). The client's shim rebuilds, cannot
    /// reach the peer's shim, and after STABLEVERBS_PEER_TIMEOUT_MS fails the connection as native
    /// verbs would: ibv_rc_pingpong gets the error completions and exits with its error (status 1)
    /// rather than waiting for ever.
    @Test("peer protocol: the peer vanishes while the client moves: the client ends in native errors, no hang",
          .enabled(if: Lab.shimAvailable, Comment(rawValue: Lab.shimReason)))
    func peerVanishes() async throws {
        let (status, lines, _) = try await Lab.run([
            "SERVER_DIES=1 WAITFOR=1800 \(script) server ibv_rc_pingpong 100000 0",
            "PEER_DIES=1 WAITFOR=1800 \(script) client ibv_rc_pingpong 100000 1 delete",
        ], guests: 2, timeout: 400)
        #expect(status == 0)
        let text = lines.map(\.text)
        let results = lines.compactMap { PeerResult($0.text) }
        let server = results.first { $0.side == "server" }, client = results.first { $0.side == "client" }
        #expect(text.contains { $0.hasSuffix("peer-recovery: the server was killed while its peer moves") }, "\(text.suffix(40))")
        #expect(text.contains { $0.hasPrefix("peer-recovery: the peer's shim is gone") }, "\(text.suffix(40))")
        #expect(server?.rc == "137", "server: \(server.map(String.init(describing:)) ?? "no result")")
        // Ended by the errors, within its bound (WAITFOR would have killed it: rc 137).
        #expect(client?.rc == "1" && client?.recoveries == 1, "client: \(client.map(String.init(describing:)) ?? "no result")")
        #expect(text.contains { $0.contains("the peer shim did not answer within") && $0.contains("the connection fails as it would natively") },
                "\(text.suffix(40))")
        #expect(text.contains { $0.hasPrefix("client: Failed status ") }, "\(text.suffix(40))")
    }
}
