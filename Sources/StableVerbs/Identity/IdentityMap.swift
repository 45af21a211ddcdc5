// Identity maps: 32-bit key -> 32-bit value over `struct sv_idmap` (sv_objects.h).
//
// Readers (the data path) are lock-free and wait-free; writers (the control path) are serialised
// by their caller. The layout below is private to this file.
//
// Table (one malloc'd block, 64-byte aligned, never modified in place except slot by slot):
//
//     offset  0  mask      UInt64   capacity - 1 (capacity is a power of two, >= 16)
//     offset  8  shift     UInt64   64 - log2(capacity): home = (key * golden) >> shift
//     offset 16  special   UInt64   the entry for key 0xFFFF_FFFF: bit 32 = present, low 32 = value
//     offset 24  live      UInt64   live regular entries                        (writer only)
//     offset 32  used      UInt64   live regular entries + tombstones           (writer only)
//     offset 40  next      pointer  next retired table (the `retired` chain)    (writer only)
//     offset 64  slots     UInt64 × capacity
//
// A slot is one 64-bit word, written with a single atomic store, so a reader sees an entry whole:
//     high 32 bits = ~key, low 32 bits = value
//     0             = empty (never used since the last trim)
//     1             = tombstone (high half 0: no regular key has ~key == 0)
// The one key whose complement is 0, 0xFFFF_FFFF, lives in the header's `special` word.
//
// Linear probing from home = multiply-shift hash (Fibonacci hashing on the full 64-bit product),
// load factor <= 1/2 counting tombstones, so a probe always ends at an empty slot.
//
// Lock-freedom: an insert writes one slot (into an empty slot or a tombstone on the key's own
// chain), an update rewrites a slot's value, a remove turns a slot into a tombstone. Removal never
// shifts entries (a reader walking the chain could miss the moved one); instead a tombstone that no
// live key's probe chain runs through is turned back into an empty slot (a reader never needs to
// step over it), which keeps insert/remove churn from filling the table with tombstones. When an
// insert would push the load above 1/2 (counting tombstones) the writer first sweeps unneeded
// tombstones in place, and only then builds a fresh table, publishes it with release semantics and
// parks the old one on `retired`: readers still probing the old table stay valid. Retired tables
// are freed with the map (memory held: a geometric series of the growth, plus one table per
// rebuild forced by tombstones that live chains still need — rare).
//
// `moved` counts live entries whose value differs from their key. Slots are always written before
// `moved` is published, so a reader that sees `moved != 0` and probes finds the value at least as
// new as the one that made it non-zero.

import Glibc
import StableVerbsABI

/// 32-bit → 32-bit maps over `struct sv_idmap`: lock-free reads (fast path), writers serialised by
/// the caller. A zero-filled `sv_idmap` is a valid empty map (tables are allocated on first `set`).
public enum IdentityMap {
    @inline(__always) @usableFromInline static var headerBytes: Int { 64 }
    @inline(__always) @usableFromInline static var golden: UInt64 { 0x9E37_79B9_7F4A_7C15 }
    @inline(__always) @usableFromInline static var specialKey: UInt32 { 0xFFFF_FFFF }
    @inline(__always) @usableFromInline static var tombstone: UInt64 { 1 }
    @inline(__always) @usableFromInline static var specialPresent: UInt64 { 1 << 32 }
    static var minimumCapacity: UInt64 { 16 }

    // MARK: - Header accessors (raw offsets; no Swift allocation, no globals)

    @inline(__always) @usableFromInline
    static func words(_ table: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UInt64> {
        table.assumingMemoryBound(to: UInt64.self)
    }
    @inline(__always) @usableFromInline
    static func slots(_ table: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UInt64> {
        (table + headerBytes).assumingMemoryBound(to: UInt64.self)
    }
    @inline(__always) static func nextRetired(_ table: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> {
        (table + 40).assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    }

    // MARK: - Writers (control path; serialised by the caller)

    /// Makes `map` an empty map with `moved == 0`. Does not allocate (the first `set` does).
    /// Must not be called on a map that holds tables (use `destroy`).
    public static func initialize(_ map: UnsafeMutablePointer<sv_idmap>) {
        sv_idmap_publish(map, nil)
        sv_idmap_set_moved(map, 0)
        map.pointee.reserved = 0
        map.pointee.retired = nil
    }

    /// Inserts or updates `key -> value`, maintaining `moved`. Returns false only when memory for a
    /// larger table could not be allocated (the map is then unchanged).
    @discardableResult
    public static func set(_ map: UnsafeMutablePointer<sv_idmap>, key: UInt32, value: UInt32) -> Bool {
        var table: UnsafeMutableRawPointer
        if let t = sv_idmap_table(map) {
            table = t
        } else {
            guard let t = allocateTable(capacity: minimumCapacity) else { return false }
            sv_idmap_publish(map, t)
            table = t
        }
        let header = words(table)
        if key == specialKey {
            let old = header[2]
            let wasMoved = old & specialPresent != 0 && UInt32(truncatingIfNeeded: old) != key
            sv_store_u64(header + 2, specialPresent | UInt64(value))
            adjustMoved(map, removing: wasMoved, adding: value != key)
            return true
        }
        let tag = UInt64(~key) << 32
        let mask = header[0]
        let slot = slots(table)
        var i = home(key, header[1])
        var firstTomb: UInt64 = .max
        while true {
            let s = slot[Int(truncatingIfNeeded: i)]
            if s & 0xFFFF_FFFF_0000_0000 == tag {
                let old = UInt32(truncatingIfNeeded: s)
                if old != value {
                    sv_store_u64(slot + Int(truncatingIfNeeded: i), tag | UInt64(value))
                    adjustMoved(map, removing: old != key, adding: value != key)
                }
                return true
            }
            if s == 0 { break }
            if s == tombstone && firstTomb == .max { firstTomb = i }
            i = (i &+ 1) & mask
        }
        // Absent. Reuse a tombstone on the key's own chain, or take the empty slot ending it.
        if firstTomb != .max {
            sv_store_u64(slot + Int(truncatingIfNeeded: firstTomb), tag | UInt64(value))
            header[3] &+= 1
        } else if (header[4] &+ 1) * 2 <= mask &+ 1 {
            sv_store_u64(slot + Int(truncatingIfNeeded: i), tag | UInt64(value))
            header[3] &+= 1
            header[4] &+= 1
        } else if sweep(table) {
            // Unneeded tombstones were emptied in place: probe again (the key's chain may have changed).
            return set(map, key: key, value: value)
        } else {
            // Rebuild into a fresh table sized for the live entries, then publish it.
            let live = header[3] &+ 1
            var capacity = minimumCapacity
            while capacity < live * 3 { capacity <<= 1 }
            guard let fresh = allocateTable(capacity: capacity) else { return false }
            words(fresh)[2] = header[2]
            for j in 0..<Int(mask &+ 1) {
                let s = slot[j]
                if s > tombstone { rawInsert(fresh, s) }
            }
            rawInsert(fresh, tag | UInt64(value))
            sv_idmap_publish(map, fresh)
            nextRetired(table).pointee = map.pointee.retired
            map.pointee.retired = table
        }
        adjustMoved(map, removing: false, adding: value != key)
        return true
    }

    /// Removes `key` if present, maintaining `moved`.
    public static func remove(_ map: UnsafeMutablePointer<sv_idmap>, key: UInt32) {
        guard let table = sv_idmap_table(map) else { return }
        let header = words(table)
        if key == specialKey {
            let old = header[2]
            guard old & specialPresent != 0 else { return }
            sv_store_u64(header + 2, 0)
            adjustMoved(map, removing: UInt32(truncatingIfNeeded: old) != key, adding: false)
            return
        }
        let tag = UInt64(~key) << 32
        let mask = header[0]
        let slot = slots(table)
        var i = home(key, header[1])
        while true {
            let s = slot[Int(truncatingIfNeeded: i)]
            if s & 0xFFFF_FFFF_0000_0000 == tag { break }
            if s == 0 { return }
            i = (i &+ 1) & mask
        }
        let old = UInt32(truncatingIfNeeded: slot[Int(truncatingIfNeeded: i)])
        sv_store_u64(slot + Int(truncatingIfNeeded: i), tombstone)
        header[3] &-= 1
        // Empty the tombstones of this cluster that no live chain needs any more, walking back from
        // the new one (emptying a later tombstone can free an earlier one).
        var j = i
        var steps: UInt64 = 0
        while steps <= 64 {
            let s = slot[Int(truncatingIfNeeded: j)]
            if s == 0 { break }
            if s == tombstone && tombstoneRemovable(table, j) {
                sv_store_u64(slot + Int(truncatingIfNeeded: j), 0)
                header[4] &-= 1
            }
            j = (j &- 1) & mask
            steps &+= 1
        }
        adjustMoved(map, removing: old != key, adding: false)
    }

    /// Frees the current and every retired table; leaves an empty map (`moved == 0`).
    /// No reader may use the map any more.
    public static func destroy(_ map: UnsafeMutablePointer<sv_idmap>) {
        let current = sv_idmap_table(map)
        sv_idmap_publish(map, nil)
        sv_idmap_set_moved(map, 0)
        var retired = map.pointee.retired
        map.pointee.retired = nil
        while let t = retired {
            retired = nextRetired(t).pointee
            free(t)
        }
        if let current { free(current) }
    }

    // MARK: - Readers (fast path: lock-free, no allocation, no Swift runtime)

    /// The value mapped to `key`, or nil when absent.
    @inline(__always)
    public static func lookup(_ map: UnsafePointer<sv_idmap>, _ key: UInt32) -> UInt32? {
        guard let table = sv_idmap_table(map) else { return nil }
        return probe(table, key)
    }

    /// The value mapped to `key`; `key` itself when absent, or without looking when the map is the
    /// identity (`moved == 0`).
    @inline(__always)
    public static func translate(_ map: UnsafePointer<sv_idmap>, _ key: UInt32) -> UInt32 {
        if sv_idmap_moved(map) == 0 { return key }
        return translateMoved(map, key)
    }

    /// `translate` for a map known (or likely) to have moved entries: always probes.
    @inline(__always)
    public static func translateMoved(_ map: UnsafePointer<sv_idmap>, _ key: UInt32) -> UInt32 {
        guard let table = sv_idmap_table(map) else { return key }
        return probe(table, key) ?? key
    }

    @inline(__always) @usableFromInline
    static func home(_ key: UInt32, _ shift: UInt64) -> UInt64 {
        (UInt64(key) &* golden) &>> shift
    }

    @inline(__always) @usableFromInline
    static func probe(_ table: UnsafeMutableRawPointer, _ key: UInt32) -> UInt32? {
        let header = words(table)
        if key == specialKey {
            let s = sv_load_u64(header + 2)
            return s & specialPresent != 0 ? UInt32(truncatingIfNeeded: s) : nil
        }
        let tag = UInt64(~key) << 32
        let mask = header[0]
        let slot = slots(table)
        var i = home(key, header[1])
        while true {
            let s = sv_load_u64(slot + Int(truncatingIfNeeded: i))
            if s & 0xFFFF_FFFF_0000_0000 == tag { return UInt32(truncatingIfNeeded: s) }
            if s == 0 { return nil }
            i = (i &+ 1) & mask
        }
    }

    // MARK: - Tombstones

    /// Whether the tombstone at `t` can become an empty slot while readers probe: no live entry
    /// between it and the end of its cluster has a probe chain (home ... position) running through
    /// it. A reader looking for any live key then never needs to step over `t`.
    static func tombstoneRemovable(_ table: UnsafeMutableRawPointer, _ t: UInt64) -> Bool {
        let header = words(table)
        let mask = header[0]
        let shift = header[1]
        let slot = slots(table)
        var p = (t &+ 1) & mask
        while p != t {
            let s = slot[Int(truncatingIfNeeded: p)]
            if s == 0 { return true }
            if s != tombstone {
                let h = home(~UInt32(truncatingIfNeeded: s >> 32), shift)
                if (t &- h) & mask < (p &- h) & mask { return false }
            }
            p = (p &+ 1) & mask
        }
        return false
    }

    /// Empties every removable tombstone of a table in place (writer only). Returns whether the
    /// table now has room for one more entry in an empty slot (load <= 1/2).
    static func sweep(_ table: UnsafeMutableRawPointer) -> Bool {
        let header = words(table)
        let mask = header[0]
        let slot = slots(table)
        guard header[4] > header[3] else { return false }  // no tombstones
        // Backwards, so that emptying a later tombstone of a cluster can free an earlier one.
        for pass in 0..<2 {
            _ = pass
            var j = mask
            while true {
                if slot[Int(truncatingIfNeeded: j)] == tombstone && tombstoneRemovable(table, j) {
                    sv_store_u64(slot + Int(truncatingIfNeeded: j), 0)
                    header[4] &-= 1
                }
                if j == 0 { break }
                j &-= 1
            }
        }
        return (header[4] &+ 1) * 2 <= mask &+ 1
    }

    // MARK: - Internals

    static func allocateTable(capacity: UInt64) -> UnsafeMutableRawPointer? {
        let bytes = headerBytes + Int(capacity) * 8
        var raw: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&raw, 64, bytes) == 0, let table = raw else { return nil }
        memset(table, 0, bytes)
        let header = words(table)
        header[0] = capacity - 1
        header[1] = UInt64(64 - capacity.trailingZeroBitCount)
        return table
    }

    /// Inserts a slot word into a table not yet published (no duplicates, room guaranteed).
    static func rawInsert(_ table: UnsafeMutableRawPointer, _ word: UInt64) {
        let header = words(table)
        let key = ~UInt32(truncatingIfNeeded: word >> 32)
        let mask = header[0]
        let slot = slots(table)
        var i = home(key, header[1])
        while slot[Int(truncatingIfNeeded: i)] != 0 { i = (i &+ 1) & mask }
        slot[Int(truncatingIfNeeded: i)] = word
        header[3] &+= 1
        header[4] &+= 1
    }

    @inline(__always)
    static func adjustMoved(_ map: UnsafeMutablePointer<sv_idmap>, removing: Bool, adding: Bool) {
        guard removing != adding else { return }
        let moved = sv_idmap_moved(map)
        sv_idmap_set_moved(map, adding ? moved &+ 1 : moved &- 1)
    }

    // MARK: - Introspection (tests, status)

    /// Number of entries (including the special key), and the current table's capacity.
    public static func stats(_ map: UnsafePointer<sv_idmap>) -> (count: Int, capacity: Int, retiredTables: Int) {
        guard let table = sv_idmap_table(map) else { return (0, 0, 0) }
        let header = words(table)
        var retired = 0
        var r = map.pointee.retired
        while let t = r { retired += 1; r = nextRetired(t).pointee }
        let special = header[2] & specialPresent != 0 ? 1 : 0
        return (Int(header[3]) + special, Int(header[0] + 1), retired)
    }
}
