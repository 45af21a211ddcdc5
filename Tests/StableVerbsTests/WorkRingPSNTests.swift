// The PSNs the work rings hand their send entries (StableVerbsABI/sv_ring.c, Peers/ExecutedWork.swift):
// the peer protocol tells an atomic the responder executed from one it did not by comparing the
// entry's PSN with the PSN the responder's QP expected next, so each entry must carry exactly the
// PSN its first packet had: IBTA 9.7 counts one per packet of a SEND or WRITE (one for 0 bytes),
// one per response packet of a READ, one per atomic, none for a local operation.

import CVerbs
import Glibc
@testable import StableVerbs
import StableVerbsABI
import Testing

@Suite("Work ring PSNs")
struct WorkRingPSNTests {
    /// Packets of `length` bytes on a 1024-byte MTU, written out the long way.
    private func packets(_ op: ibv_wr_opcode, _ length: UInt32) -> UInt32 {
        if op == IBV_WR_LOCAL_INV || op == IBV_WR_BIND_MW { return 0 }
        if op == IBV_WR_ATOMIC_FETCH_AND_ADD || op == IBV_WR_ATOMIC_CMP_AND_SWP { return 1 }
        var n: UInt32 = 0, left = Int(length)
        repeat { n += 1; left -= 1024 } while left > 0
        return n
    }

    private func ring() throws -> UnsafeMutablePointer<sv_wr_ring> {
        let r = try #require(sv_ring_create(64, 4, 256, 1, 0))
        r.pointee.mtu_shift = 10
        r.pointee.next_psn = 0xFF_FFF0  // wraps within the test
        return r
    }

    private func entry(_ r: UnsafeMutablePointer<sv_wr_ring>, _ i: UInt64) -> sv_ring_entry { sv_ring_at(r, i).pointee }

    @Test("single posts, lists, inline data and local operations take the PSNs of their packets; the count wraps at 2^24")
    func legacyPosts() throws {
        let r = try ring()
        defer { sv_ring_destroy(r) }
        var data = [UInt8](repeating: 7, count: 4096)
        let base = UInt64(UInt(bitPattern: data.withUnsafeMutableBytes { $0.baseAddress! }))
        let cases: [(ibv_wr_opcode, UInt32, Bool)] = [
            (IBV_WR_SEND, 0, false), (IBV_WR_SEND, 1, false), (IBV_WR_RDMA_WRITE, 1024, false), (IBV_WR_RDMA_WRITE, 1025, false),
            (IBV_WR_RDMA_READ, 4096, false), (IBV_WR_ATOMIC_FETCH_AND_ADD, 8, false), (IBV_WR_LOCAL_INV, 0, false),
            (IBV_WR_SEND_WITH_IMM, 200, true), (IBV_WR_ATOMIC_CMP_AND_SWP, 8, false), (IBV_WR_RDMA_WRITE_WITH_IMM, 3000, false),
        ]
        r.pointee.next_psn = 0xFF_FFF8  // 15 PSNs in all: they wrap
        var want: UInt32 = 0xFF_FFF8
        for (k, (op, len, inline)) in cases.enumerated() {
            var sg = ibv_sge(addr: base, length: len, lkey: 1)
            var wr = ibv_send_wr()
            wr.opcode = op
            wr.num_sge = len == 0 && op == IBV_WR_LOCAL_INV ? 0 : 1
            wr.send_flags = inline ? UInt32(IBV_SEND_INLINE.rawValue) : 0
            let mark = withUnsafeMutablePointer(to: &sg) { p -> UInt64 in
                wr.sg_list = p
                return sv_ring_record_send(r, &wr)
            }
            #expect(mark == UInt64(k))
            #expect(entry(r, UInt64(k)).psn == want, "entry \(k) (opcode \(op.rawValue), \(len) bytes)")
            want = (want + packets(op, len)) & 0xFF_FFFF
        }
        #expect(r.pointee.next_psn == want)
        #expect(want == 7, "the count wrapped")

        // A list of three with two SGEs each (the general path): 600 + 600 bytes = 2 packets each.
        var sges = [ibv_sge](repeating: ibv_sge(addr: base, length: 600, lkey: 1), count: 6)
        var wrs = [ibv_send_wr](repeating: ibv_send_wr(), count: 3)
        sges.withUnsafeMutableBufferPointer { s in
            wrs.withUnsafeMutableBufferPointer { w in
                for i in 0..<3 {
                    w[i].opcode = IBV_WR_RDMA_WRITE
                    w[i].num_sge = 2
                    w[i].sg_list = s.baseAddress! + 2 * i
                    w[i].next = i < 2 ? w.baseAddress! + i + 1 : nil
                }
                #expect(sv_ring_record_send(r, w.baseAddress!) == UInt64(cases.count))
                // The provider refused the second: it and the third are taken back, PSNs too.
                sv_ring_unrecord_send(r, UInt64(cases.count), w.baseAddress!, w.baseAddress! + 1)
            }
        }
        #expect(entry(r, UInt64(cases.count)).psn == want)
        #expect(r.pointee.next_psn == (want + 2) & 0xFF_FFFF)
    }

    @Test("an ibv_wr_* batch takes its PSNs when it is committed, and gives them back when the provider refuses it")
    func wrBatches() throws {
        let r = try ring()
        defer { sv_ring_destroy(r) }
        var bytes = [UInt8](repeating: 1, count: 64)
        sv_ring_wr_start(r)
        sv_ring_wr_op(r, 1, 0, IBV_WR_RDMA_WRITE, 5, 0x1000, 0, 0, 0)
        sv_ring_wr_sge(r, 1, 0x2000, 2500)                    // 3 packets
        sv_ring_wr_op(r, 2, 0, IBV_WR_SEND, 0, 0, 0, 0, 0)
        bytes.withUnsafeMutableBytes { sv_ring_wr_inline(r, $0.baseAddress, 64) }  // 1
        sv_ring_wr_op(r, 3, 0, IBV_WR_ATOMIC_FETCH_AND_ADD, 5, 0x1000, 1, 0, 0)
        sv_ring_wr_sge(r, 1, 0x3000, 8)                       // 1
        #expect(r.pointee.next_psn == 0xFF_FFF0, "nothing taken before the commit")
        let old = sv_ring_wr_commit(r)
        #expect(old == 0)
        #expect([entry(r, 0).psn, entry(r, 1).psn, entry(r, 2).psn] == [0xFF_FFF0, 0xFF_FFF3, 0xFF_FFF4])
        #expect(r.pointee.next_psn == 0xFF_FFF5)
        sv_ring_wr_uncommit(r, old)
        #expect(r.pointee.next_psn == 0xFF_FFF0)
    }

    @Test("PSN order across the wrap")
    func psnOrder() {
        #expect(psnBefore(0xFF_FFFE, 0x000002))
        #expect(!psnBefore(0x000002, 0xFF_FFFE))
        #expect(!psnBefore(5, 5))
        #expect(psnBefore(5, 6))
        #expect(sv_wr_psns(IBV_WR_SEND, 0, 8) == 1)
        #expect(sv_wr_psns(IBV_WR_SEND, 256, 8) == 1)
        #expect(sv_wr_psns(IBV_WR_SEND, 257, 8) == 2)
        #expect(sv_wr_psns(IBV_WR_RDMA_READ, 1 << 20, 12) == 256)
        #expect(sv_wr_psns(IBV_WR_BIND_MW, 100, 12) == 0)
    }

    /// Atomics the responder executed whose responses died: their results are worked out backwards
    /// from the words' values now, and only those before the PSN the responder expected count.
    @Test("results of executed atomics worked out from the words they target; executed only before the expected PSN")
    func lostAtomicResults() throws {
        let r = try ring()
        defer { sv_ring_destroy(r) }
        var results = [UInt64](repeating: 0xA5A5, count: 5)
        try results.withUnsafeMutableBufferPointer { res in
            func post(_ op: ibv_wr_opcode, rkey: UInt32, addr: UInt64, compareAdd: UInt64, swap: UInt64, slot: Int) {
                var sg = ibv_sge(addr: UInt64(UInt(bitPattern: res.baseAddress! + slot)), length: 8, lkey: 1)
                var wr = ibv_send_wr()
                wr.opcode = op
                wr.num_sge = 1
                wr.wr.atomic.rkey = rkey
                wr.wr.atomic.remote_addr = addr
                wr.wr.atomic.compare_add = compareAdd
                wr.wr.atomic.swap = swap
                withUnsafeMutablePointer(to: &sg) { p in
                    wr.sg_list = p
                    _ = sv_ring_record_send(r, &wr)
                }
            }
            post(IBV_WR_ATOMIC_FETCH_AND_ADD, rkey: 5, addr: 0x1000, compareAdd: 1, swap: 0, slot: 0)
            post(IBV_WR_ATOMIC_CMP_AND_SWP, rkey: 5, addr: 0x2000, compareAdd: 0, swap: 7, slot: 1)
            post(IBV_WR_ATOMIC_FETCH_AND_ADD, rkey: 5, addr: 0x1000, compareAdd: 3, swap: 0, slot: 2)
            post(IBV_WR_ATOMIC_CMP_AND_SWP, rkey: 6, addr: 0x3000, compareAdd: 1, swap: 2, slot: 3)
            post(IBV_WR_ATOMIC_FETCH_AND_ADD, rkey: 5, addr: 0x1000, compareAdd: 1, swap: 0, slot: 4)
            // PSNs 0xFFFFF0...0xFFFFF4: the responder expected 0xFFFFF4, so the last did not run.
            let expected: UInt32 = 0xFF_FFF4
            let ran = (0..<5).map { Runtime.executed(sv_ring_at(r, UInt64($0)), in: r, before: expected) }
            #expect(ran == [true, true, true, true, false])
            #expect(Runtime.atomicsAhead(r, from: 0, to: 5) == 5)
            let lost = try (0..<4).map { try #require(sv_ring_at(r, UInt64($0))) }
            // The words now: 0x1000 holds 14 (10 + 1 + 3), 0x2000 the swap value, 0x3000 another.
            let n = Runtime.restoreAtomicResults(lost, [(5, 0x1000, 14), (5, 0x2000, 7), (6, 0x3000, 9)])
            #expect(n == 4)
            #expect(Array(res) == [10, 0, 11, 9, 0xA5A5])
        }
    }
}
