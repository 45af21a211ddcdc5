import Glibc
import StableVerbsABI
import Testing

@testable import StableVerbs

/// A fresh, zero-filled `sv_idmap` on the heap (as the control path embeds them in calloc'd objects).
private func makeMap() -> UnsafeMutablePointer<sv_idmap> {
    let raw = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sv_idmap>.size, alignment: 16)
    memset(raw, 0, MemoryLayout<sv_idmap>.size)
    let map = raw.bindMemory(to: sv_idmap.self, capacity: 1)
    IdentityMap.initialize(map)
    return map
}

private func dispose(_ map: UnsafeMutablePointer<sv_idmap>) {
    IdentityMap.destroy(map)
    UnsafeMutableRawPointer(map).deallocate()
}

/// Deterministic 64-bit generator (splitmix64).
private struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func next32() -> UInt32 { UInt32(truncatingIfNeeded: next() >> 16) }
}

@Suite("IdentityMap")
struct IdentityMapTests {
    @Test func zeroFilledMapIsEmptyIdentity() {
        var map = sv_idmap()
        withUnsafeMutablePointer(to: &map) { m in
            #expect(IdentityMap.lookup(m, 0) == nil)
            #expect(IdentityMap.lookup(m, 0xFFFF_FFFF) == nil)
            #expect(IdentityMap.translate(m, 1234) == 1234)
            #expect(IdentityMap.translateMoved(m, 1234) == 1234)
            #expect(sv_idmap_moved(m) == 0)
            IdentityMap.remove(m, key: 7)  // no table: nothing to do
            IdentityMap.destroy(m)
        }
    }

    @Test func insertUpdateRemoveLookup() {
        let m = makeMap()
        defer { dispose(m) }
        IdentityMap.set(m, key: 10, value: 20)
        IdentityMap.set(m, key: 11, value: 11)
        #expect(IdentityMap.lookup(m, 10) == 20)
        #expect(IdentityMap.lookup(m, 11) == 11)
        #expect(IdentityMap.lookup(m, 12) == nil)
        IdentityMap.set(m, key: 10, value: 30)
        #expect(IdentityMap.lookup(m, 10) == 30)
        #expect(IdentityMap.stats(m).count == 2)
        IdentityMap.remove(m, key: 10)
        #expect(IdentityMap.lookup(m, 10) == nil)
        #expect(IdentityMap.lookup(m, 11) == 11)
        IdentityMap.remove(m, key: 10)  // absent: no effect
        #expect(IdentityMap.stats(m).count == 1)
        IdentityMap.set(m, key: 10, value: 40)
        #expect(IdentityMap.lookup(m, 10) == 40)
    }

    @Test(arguments: [UInt32(0), 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF])
    func edgeKeysAndValues(key: UInt32) {
        let m = makeMap()
        defer { dispose(m) }
        for value: UInt32 in [0, 1, 0xFFFF_FFFF, key, ~key] {
            IdentityMap.set(m, key: key, value: value)
            #expect(IdentityMap.lookup(m, key) == value)
            #expect(IdentityMap.translate(m, key) == value)
            #expect(sv_idmap_moved(m) == (value != key ? 1 : 0))
        }
        // Neighbours stay absent.
        #expect(IdentityMap.lookup(m, key &+ 1) == nil)
        #expect(IdentityMap.lookup(m, key &- 1) == nil)
        IdentityMap.remove(m, key: key)
        #expect(IdentityMap.lookup(m, key) == nil)
        #expect(sv_idmap_moved(m) == 0)
        #expect(IdentityMap.stats(m).count == 0)
    }

    @Test func movedCounting() {
        let m = makeMap()
        defer { dispose(m) }
        IdentityMap.set(m, key: 1, value: 1)
        IdentityMap.set(m, key: 2, value: 2)
        #expect(sv_idmap_moved(m) == 0)
        IdentityMap.set(m, key: 1, value: 100)
        #expect(sv_idmap_moved(m) == 1)
        IdentityMap.set(m, key: 1, value: 101)  // moved -> moved
        #expect(sv_idmap_moved(m) == 1)
        IdentityMap.set(m, key: 2, value: 200)
        #expect(sv_idmap_moved(m) == 2)
        IdentityMap.set(m, key: 0xFFFF_FFFF, value: 5)  // the out-of-band key counts too
        #expect(sv_idmap_moved(m) == 3)
        IdentityMap.set(m, key: 1, value: 1)  // back to identity
        #expect(sv_idmap_moved(m) == 2)
        IdentityMap.remove(m, key: 2)  // a moved entry leaves
        #expect(sv_idmap_moved(m) == 1)
        IdentityMap.remove(m, key: 1)  // an identity entry leaves
        #expect(sv_idmap_moved(m) == 1)
        IdentityMap.remove(m, key: 0xFFFF_FFFF)
        #expect(sv_idmap_moved(m) == 0)
        IdentityMap.set(m, key: 3, value: 4)
        IdentityMap.destroy(m)
        #expect(sv_idmap_moved(m) == 0)
        #expect(IdentityMap.lookup(m, 3) == nil)
    }

    @Test func identityFastPathAndMovedTranslation() {
        let m = makeMap()
        defer { dispose(m) }
        for k: UInt32 in 0..<64 { IdentityMap.set(m, key: k, value: k) }
        #expect(sv_idmap_moved(m) == 0)
        for k: UInt32 in 0..<128 { #expect(IdentityMap.translate(m, k) == k) }
        // One entry moves: translation now runs through the map for every key.
        IdentityMap.set(m, key: 5, value: 0xABCD)
        #expect(IdentityMap.translate(m, 5) == 0xABCD)
        #expect(IdentityMap.translate(m, 6) == 6)  // present, identity
        #expect(IdentityMap.translate(m, 1000) == 1000)  // absent: passes through
        // A real value changing underneath again: the translated view follows.
        IdentityMap.set(m, key: 5, value: 0xBEEF)
        #expect(IdentityMap.translate(m, 5) == 0xBEEF)
        IdentityMap.set(m, key: 5, value: 5)
        #expect(sv_idmap_moved(m) == 0)
        #expect(IdentityMap.translate(m, 5) == 5)
    }

    @Test func manyKeysAgainstADictionary() {
        let m = makeMap()
        defer { dispose(m) }
        var model: [UInt32: UInt32] = [:]
        var rng = SplitMix(state: 42)
        // Sequential keys (lkey-like: index << 8 | tag) and random keys.
        for i: UInt32 in 0..<20_000 {
            let k = i << 8 | (i & 0xFF)
            let v = rng.next32()
            IdentityMap.set(m, key: k, value: v)
            model[k] = v
        }
        for _ in 0..<80_000 {
            let k = rng.next32()
            let v = rng.next() & 1 == 0 ? k : rng.next32()
            IdentityMap.set(m, key: k, value: v)
            model[k] = v
        }
        var expectedMoved = model.reduce(0) { $0 + ($1.key != $1.value ? 1 : 0) }
        #expect(IdentityMap.stats(m).count == model.count)
        #expect(Int(sv_idmap_moved(m)) == expectedMoved)
        #expect(IdentityMap.stats(m).retiredTables > 0)  // it grew
        #expect(IdentityMap.stats(m).capacity >= 2 * model.count)  // load factor <= 1/2
        var mismatches = 0
        for (k, v) in model where IdentityMap.lookup(m, k) != v { mismatches += 1 }
        #expect(mismatches == 0)

        // Remove half, check both halves, then put some back with new values.
        let keys = Array(model.keys)
        for k in keys.prefix(keys.count / 2) {
            IdentityMap.remove(m, key: k)
            model[k] = nil
        }
        mismatches = 0
        for k in keys where IdentityMap.lookup(m, k) != model[k] { mismatches += 1 }
        #expect(mismatches == 0)
        for k in keys.prefix(keys.count / 4) {
            let v = k &+ 1
            IdentityMap.set(m, key: k, value: v)
            model[k] = v
        }
        mismatches = 0
        for k in keys where IdentityMap.lookup(m, k) != model[k] { mismatches += 1 }
        for _ in 0..<10_000 {
            let k = rng.next32()
            if IdentityMap.lookup(m, k) != model[k] { mismatches += 1 }
        }
        #expect(mismatches == 0)
        expectedMoved = model.reduce(0) { $0 + ($1.key != $1.value ? 1 : 0) }
        #expect(Int(sv_idmap_moved(m)) == expectedMoved)
        #expect(IdentityMap.stats(m).count == model.count)
    }

    /// Insert/remove churn with few live keys must not grow the table or pile up retired tables
    /// (tombstones are trimmed or reused).
    @Test func churnStaysBounded() {
        let m = makeMap()
        defer { dispose(m) }
        var rng = SplitMix(state: 7)
        var live: [UInt32] = []
        for _ in 0..<300_000 {
            if live.count < 64 {
                let k = rng.next32()
                if IdentityMap.lookup(m, k) == nil {
                    IdentityMap.set(m, key: k, value: ~k)
                    live.append(k)
                }
            } else {
                let i = Int(rng.next() % UInt64(live.count))
                IdentityMap.remove(m, key: live[i])
                live.swapAt(i, live.count - 1)
                live.removeLast()
            }
        }
        let stats = IdentityMap.stats(m)
        #expect(stats.count == live.count)
        #expect(stats.capacity <= 512)
        #expect(stats.retiredTables <= 8)  // growth only: tombstones are emptied in place
        for k in live { #expect(IdentityMap.lookup(m, k) == ~k) }
        #expect(Int(sv_idmap_moved(m)) == live.count)
    }

    /// The data path reads `moved` and the context state with Swift atomics at offsets derived from
    /// their neighbours (the `_Atomic` fields do not import): they must agree with the C helpers.
    @Test func fastPathAccessorsMatchTheCHelpers() {
        let m = makeMap()
        defer { dispose(m) }
        for v: UInt32 in [0, 1, 0xDEAD_BEEF, 0] {
            sv_idmap_set_moved(m, v)
            #expect(svMoved(m) == v)
        }
        let ctx = calloc(1, MemoryLayout<sv_context>.size)!.bindMemory(to: sv_context.self, capacity: 1)
        defer { free(ctx) }
        ctx.pointee.generation = 0xFFFF_FFFF
        for s in [SV_CTX_REBUILDING, SV_CTX_PASSTHROUGH, SV_CTX_LIVE] {
            sv_ctx_set_state(ctx, s.rawValue)
            #expect(svCtxState(ctx) == s.rawValue)
        }
        #expect(ctx.pointee.generation == 0xFFFF_FFFF)
    }

    /// Readers never see a stable key missing or wrong while the writer grows, rebuilds and churns.
    @Test func concurrentReadersDuringWriterResizes() {
        let m = makeMap()
        defer { dispose(m) }
        let stableCount = 2_000
        for i in 0..<stableCount { IdentityMap.set(m, key: stableKey(i), value: stableValue(i)) }

        let readers = 3
        let shared = UnsafeMutablePointer<ReaderShared>.allocate(capacity: 1)
        let counters = UnsafeMutablePointer<UInt64>.allocate(capacity: 1 + 2 * readers)
        counters.initialize(repeating: 0, count: 1 + 2 * readers)
        shared.initialize(to: ReaderShared(map: m, stop: counters, stableCount: stableCount))
        defer {
            shared.deallocate()
            counters.deallocate()
        }

        var threads: [pthread_t] = []
        let args = UnsafeMutablePointer<ReaderArg>.allocate(capacity: readers)
        defer { args.deallocate() }
        for r in 0..<readers {
            (args + r).initialize(
                to: ReaderArg(shared: shared, errors: counters + 1 + 2 * r, lookups: counters + 2 + 2 * r, seed: UInt64(r)))
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { raw in
                readerLoop(raw!.assumingMemoryBound(to: ReaderArg.self))
                return nil
            }, args + r)
            #expect(rc == 0)
            threads.append(tid)
        }

        // Writer: rounds of growing through many resizes, moving values, then removing everything
        // transient again (tombstones, trims, rebuilds).
        var rng = SplitMix(state: 99)
        for round in 0..<6 {
            var transient: [UInt32] = []
            for _ in 0..<(20_000 << (round % 3)) {
                let k = rng.next32() | 0x8000_0000  // disjoint from the stable keys
                IdentityMap.set(m, key: k, value: transientValue(k))
                transient.append(k)
            }
            for i in stride(from: 0, to: stableCount, by: 7) {  // rewrite stable entries in place
                IdentityMap.set(m, key: stableKey(i), value: stableValue(i))
            }
            for k in transient { IdentityMap.remove(m, key: k) }
        }
        sv_store_u64(counters, 1)
        for t in threads { pthread_join(t, nil) }

        var errors: UInt64 = 0
        var lookups: UInt64 = 0
        for r in 0..<readers {
            errors += counters[1 + 2 * r]
            lookups += counters[2 + 2 * r]
        }
        #expect(errors == 0)
        #expect(lookups > 0)
        #expect(IdentityMap.stats(m).count == stableCount)
        #expect(IdentityMap.stats(m).retiredTables > 0)
        for i in 0..<stableCount { #expect(IdentityMap.lookup(m, stableKey(i)) == stableValue(i)) }
    }
}

// MARK: - Concurrent test support

private func stableKey(_ i: Int) -> UInt32 { UInt32(i) &* 2_654_435_761 & 0x7FFF_FFFF }
private func stableValue(_ i: Int) -> UInt32 { stableKey(i) ^ 0x00A5_A5A5 }
private func transientValue(_ k: UInt32) -> UInt32 { k &* 3 &+ 1 }

private struct ReaderShared {
    var map: UnsafeMutablePointer<sv_idmap>
    var stop: UnsafeMutablePointer<UInt64>
    var stableCount: Int
}

private struct ReaderArg {
    var shared: UnsafeMutablePointer<ReaderShared>
    var errors: UnsafeMutablePointer<UInt64>
    var lookups: UnsafeMutablePointer<UInt64>
    var seed: UInt64
}

private func readerLoop(_ arg: UnsafeMutablePointer<ReaderArg>) {
    let shared = arg.pointee.shared.pointee
    let map = UnsafePointer(shared.map)
    var rng = SplitMix(state: arg.pointee.seed)
    var errors: UInt64 = 0
    var lookups: UInt64 = 0
    while sv_load_u64(shared.stop) == 0 {
        for _ in 0..<256 {
            let i = Int(rng.next() % UInt64(shared.stableCount))
            if IdentityMap.lookup(map, stableKey(i)) != stableValue(i) { errors += 1 }
            if IdentityMap.translate(map, stableKey(i)) != stableValue(i) { errors += 1 }
            // A transient key is either absent or carries its value: never anything else.
            let k = rng.next32() | 0x8000_0000
            if let v = IdentityMap.lookup(map, k), v != transientValue(k) { errors += 1 }
            lookups += 3
        }
    }
    arg.pointee.errors.pointee = errors
    arg.pointee.lookups.pointee = lookups
}
