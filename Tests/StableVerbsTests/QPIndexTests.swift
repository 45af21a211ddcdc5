// The real-QPN index of a context (StableVerbsABI/sv_ring.c): the poll path finds the QP of every
// completion through it to retire its work ring entries, so a QP missing from it has its
// completed work replayed after a recovery (a duplicate) — at any number of QPs.

import Glibc
import StableVerbsABI
import Testing

@Suite("Real-QPN index")
struct QPIndexTests {
    /// A zero-filled context with an index, and fake QP pointers (never dereferenced).
    private func withIndex(_ body: (UnsafeMutablePointer<sv_context>) throws -> Void) throws {
        let ctx = try #require(calloc(1, MemoryLayout<sv_context>.size)?.assumingMemoryBound(to: sv_context.self))
        defer { sv_qp_index_destroy(ctx); free(ctx) }
        #expect(sv_qp_index_create(ctx) == 0)
        try body(ctx)
    }

    private func fakeQP(_ n: UInt32) -> UnsafeMutablePointer<sv_qp> {
        UnsafeMutablePointer(bitPattern: UInt(n) << 6)!
    }

    /// QPNs as rxe and mlx5 hand them out (consecutive from a base) and scattered ones.
    private func qpns(_ count: Int) -> [UInt32] {
        (0..<UInt32(count)).map { i in i % 3 == 0 ? 0x11 + i : (0x9E37_79B9 &* (i + 1)) >> 8 | 1 }
    }

    @Test("20 000 QPs: every one found, the index grew, a replaced table stays readable until it is old")
    func growsPastAnyFixedSize() throws {
        try withIndex { ctx in
            let first = sv_qp_index_slots(ctx)
            let all = Array(Set(qpns(20_000)))
            for q in all { #expect(sv_qp_index_insert(ctx, q, fakeQP(q)) == 0) }
            for q in all { #expect(sv_qp_index_find(ctx, q) == fakeQP(q)) }
            #expect(sv_qp_index_find(ctx, 0x7FFF_FFF0) == nil)
            let slots = sv_qp_index_slots(ctx)
            #expect(slots >= UInt32(all.count) * 2 && slots > first, "at most half full: \(slots) slots for \(all.count)")
            // Grown several times within a few ms: the replaced tables are all still there.
            #expect(sv_qp_index_tables(ctx) > 1)
        }
    }

    @Test("removal, reinsertion under a new real QPN (a rebuild), churn: no stale entry, no lost one")
    func removalAndChurn() throws {
        try withIndex { ctx in
            let all = Array(Set(qpns(3_000)))
            for q in all { #expect(sv_qp_index_insert(ctx, q, fakeQP(q)) == 0) }
            // A rebuild: every QP leaves under its old real QPN and comes back under a new one.
            for q in all { sv_qp_index_remove(ctx, q) }
            for q in all { #expect(sv_qp_index_find(ctx, q) == nil) }
            let renamed = all.map { $0 ^ 0x40_0000 }
            for (q, r) in zip(all, renamed) { #expect(sv_qp_index_insert(ctx, r, fakeQP(q)) == 0) }
            for (q, r) in zip(all, renamed) { #expect(sv_qp_index_find(ctx, r) == fakeQP(q)) }
            // Create/destroy churn of a few QPs beside them: the removed slots are reused or
            // dropped at a rehash, and the table does not keep growing.
            let slots = sv_qp_index_slots(ctx)
            for i in UInt32(0)..<50_000 {
                let q = 0x100_0000 + i  // above the 24-bit QPNs of the set
                #expect(sv_qp_index_insert(ctx, q, fakeQP(q)) == 0)
                if i % 1000 == 0 { #expect(sv_qp_index_find(ctx, q) == fakeQP(q)) }
                sv_qp_index_remove(ctx, q)
            }
            #expect(sv_qp_index_slots(ctx) == slots, "churn grew the table: \(slots) -> \(sv_qp_index_slots(ctx))")
            for (q, r) in zip(all, renamed) { #expect(sv_qp_index_find(ctx, r) == fakeQP(q)) }
            #expect(sv_qp_index_find(ctx, 0x100_0000 + 49_999) == nil)
        }
    }

    @Test("bad QPNs are refused with EINVAL; a context without an index finds nothing")
    func refusals() throws {
        try withIndex { ctx in
            #expect(sv_qp_index_insert(ctx, 0, fakeQP(1)) == EINVAL)
            #expect(sv_qp_index_insert(ctx, 0xFFFF_FFFF, fakeQP(1)) == EINVAL)
        }
        let bare = try #require(calloc(1, MemoryLayout<sv_context>.size)?.assumingMemoryBound(to: sv_context.self))
        defer { free(bare) }
        #expect(sv_qp_index_insert(bare, 5, fakeQP(5)) == EINVAL)
        #expect(sv_qp_index_find(bare, 5) == nil)
    }
}
