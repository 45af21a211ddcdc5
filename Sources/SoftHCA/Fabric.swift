import CVerbs
import StableVerbsABI
import Glibc

/// The whole in-process fabric: every device, every object reached from a C pointer, routing by
/// LID and GID, and the identity counters (QPNs, keys, LIDs, GUIDs are never reused within the
/// process). One instance, guarded by one lock; every entry point takes it.
final class Fabric: @unchecked Sendable {
    let lock = GlobalLock()
    var configuration = SoftHCA.Configuration()
    var configured = false
    var faults = Faults()

    var devices: [Device] = []
    /// Every incarnation of every device ever handed out: ibv_device* → (device, generation).
    var incarnations: [RawKey: (device: Device, generation: Int)] = [:]
    /// Objects, keyed by the C pointer the application holds.
    var contexts: [RawKey: Context] = [:]
    var pds: [RawKey: ProtectionDomain] = [:]
    var mrs: [RawKey: MemoryRegion] = [:]
    var mrByLKey: [UInt32: MemoryRegion] = [:]
    var mrByRKey: [UInt32: MemoryRegion] = [:]
    var channels: [RawKey: CompletionChannel] = [:]
    var cqs: [RawKey: CompletionQueue] = [:]
    var qps: [RawKey: QueuePair] = [:]
    var qpByNumber: [UInt32: QueuePair] = [:]
    var srqs: [RawKey: SharedReceiveQueue] = [:]
    var ahs: [RawKey: AddressHandle] = [:]
    /// Multicast attachments: group → attached QP numbers.
    var multicast: [MulticastGroup: [UInt32]] = [:]

    // Identity counters: never reset, so no identity is reused within the process.
    var nextQPN: UInt32 = 0x11
    var nextKey: UInt32 = 0x1234
    var nextHandle: UInt32 = 1
    var nextLID: UInt16 = 1
    var nextSerial: UInt32 = 1
    var nextDeviceIndex: Int32 = 1

    func allocateHandle() -> UInt32 {
        defer { nextHandle &+= 1 }
        return nextHandle
    }

    func allocateQPN() -> UInt32 {
        let n = nextQPN
        nextQPN += 1
        if nextQPN > 0xFF_FFFF { nextQPN = 0x11 }  // 24 bits; wrapping needs 16M QPs
        return n
    }

    /// A fresh memory key: never 0, never reused within the process; the low byte varies like a
    /// hardware key's "key" part.
    func allocateKey() -> UInt32 {
        let index = nextKey
        nextKey += 1
        return (index << 8) | ((index &* 37) & 0xff)
    }

    func allocateLID() -> UInt16 {
        let l = nextLID
        nextLID = nextLID >= 0xBFFF ? 1 : nextLID + 1
        return l
    }

    func allocateSerial() -> UInt32 {
        defer { nextSerial += 1 }
        return nextSerial
    }

    /// Configures from the environment on first use, when nobody configured explicitly.
    func ensureConfigured() {
        if configured { return }
        var config = SoftHCA.Configuration()
        if let env = getenv("STABLEVERBS_SOFTHCA"), let parsed = try? SoftHCA.Configuration(parsing: String(cString: env)) {
            config = parsed
        }
        reset(to: config)
    }

    /// Drops every device and object (their C memory is freed) and builds the configured devices.
    func reset(to config: SoftHCA.Configuration) {
        for ctx in Array(contexts.values) { ctx.close(force: true) }
        contexts.removeAll(); pds.removeAll(); mrs.removeAll(); mrByLKey.removeAll(); mrByRKey.removeAll()
        channels.removeAll(); cqs.removeAll(); qps.removeAll(); qpByNumber.removeAll(); srqs.removeAll()
        ahs.removeAll(); multicast.removeAll()
        devices.removeAll()
        configuration = config
        faults = Faults()
        for f in config.faults { faults.add(f) }
        for slot in 0..<config.devices {
            devices.append(Device(slot: slot, name: "\(config.namePrefix)\(slot)", fabric: self))
        }
        configured = true
        lock.broadcast()
    }

    func fault(_ entry: String, device: Device?) -> Int32? {
        guard let rule = faults.take(entry, device: device?.name) else { return nil }
        if rule.removesDevice, let device, device.present { remove(device, .fatal) }
        return rule.value
    }

    /// Makes a present device vanish (see `SoftHCA.Removal`).
    func remove(_ d: Device, _ how: SoftHCA.Removal) {
        d.present = false
        let contexts = contexts.values.filter { $0.device === d }
        switch how {
        case .fatal, .fatalLosingCompletions:
            if case .fatalLosingCompletions(let sends) = how {
                for cq in cqs.values where cq.context.device === d { cq.lose(sends: sends) }
            }
            for c in contexts {
                c.dead = true
                c.post(IBV_EVENT_DEVICE_FATAL)
            }
            for qp in qps.values where qp.context.device === d { qp.enterError() }
        case .waitForClose(let portEvent):
            d.removalPending = !contexts.isEmpty
            for p in d.ports where p.isActive {
                p.state = IBV_PORT_DOWN
                if portEvent { for c in contexts { c.postPortEvent(IBV_EVENT_PORT_ERR, port: p.number) } }
            }
            // Requesters elsewhere waiting on this device's QPs no longer get answers.
            for qp in qps.values where qp.context.device === d { qp.failWaitingRequesters() }
        }
        lock.broadcast()
    }

    // MARK: routing

    /// A present device's active port reached by LID (InfiniBand).
    func port(lid: UInt16) -> Port? {
        guard lid != 0 else { return nil }
        for d in devices where d.present {
            for p in d.ports where p.lid == lid && p.linkLayer == .infiniband { return p }
        }
        return nil
    }

    /// A present device's port that owns this GID.
    func port(gid: GID) -> Port? {
        guard !gid.isZero else { return nil }
        for d in devices where d.present {
            for p in d.ports where p.gids.contains(where: { $0.gid == gid }) { return p }
        }
        return nil
    }

    /// The port an address vector leads to (GRH → by GID, else by LID).
    func port(for ah: ibv_ah_attr) -> Port? {
        if ah.is_global != 0 { return port(gid: GID(ah.grh.dgid)) }
        return port(lid: ah.dlid)
    }
}

let fabric = Fabric()

/// Runs `body` under the global lock, configuring first if needed.
@inline(__always) func locked<T>(_ body: () -> T) -> T {
    fabric.lock.lock()
    defer { fabric.lock.unlock() }
    fabric.ensureConfigured()
    return body()
}

struct MulticastGroup: Hashable {
    var gid: GID
    var lid: UInt16
}
