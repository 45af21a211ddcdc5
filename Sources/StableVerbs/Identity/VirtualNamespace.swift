// Allocation of virtual identities (QPNs, lkeys, rkeys) within one context: the virtual value of a
// new object is its real value, unless that value is already in use as a virtual value (possible
// once real values have moved), in which case a free value is taken from the top of the range down.

struct VirtualNamespace {
    private(set) var inUse: Set<UInt32> = []
    let limit: UInt32
    private let reserved: Set<UInt32>
    private var cursor: UInt32

    init(limit: UInt32, reserved: Set<UInt32>) {
        self.limit = limit
        self.reserved = reserved
        self.cursor = limit
    }

    /// Claims `preferred` if free, else another free value.
    mutating func claim(preferred: UInt32) -> UInt32 {
        if !inUse.contains(preferred) {
            inUse.insert(preferred)
            return preferred
        }
        while true {
            let v = cursor
            cursor = cursor <= 2 ? limit : cursor - 1
            if !inUse.contains(v) && !reserved.contains(v) {
                inUse.insert(v)
                return v
            }
        }
    }

    mutating func release(_ v: UInt32) {
        inUse.remove(v)
    }

    func contains(_ v: UInt32) -> Bool { inUse.contains(v) }
}
