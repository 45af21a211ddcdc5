// Virtual contexts: a complete verbs_context (DESIGN §2) whose ibv_context the application holds.
// The context record owns the records of every object made on it (the handle tables a rebuild
// walks), its ports' LID and GID identities, and the virtual-value namespaces.

import CVerbs
import Glibc
import StableVerbsABI

/// One GID index: the value the application sees and the one the device has now.
struct GIDPair {
    var virtual: ibv_gid
    var real: ibv_gid
}

final class PortRecord {
    let number: UInt8
    var virtualLID: UInt16
    var realLID: UInt16
    var gids: [Int32: GIDPair] = [:]

    init(number: UInt8, lid: UInt16) {
        self.number = number
        self.virtualLID = lid
        self.realLID = lid
    }

    func virtualGIDIndex(of gid: ibv_gid) -> Int32? {
        gids.first { sameGID($0.value.virtual, gid) }?.key
    }
    func realGIDIndex(of gid: ibv_gid) -> Int32? {
        gids.first { sameGID($0.value.real, gid) }?.key
    }
}

final class ContextRecord {
    let ptr: UnsafeMutablePointer<sv_context>
    /// Real destroys of its CQs, QPs and SRQs running outside the control lock (a release waits).
    var destroysInFlight = 0
    let device: DeviceRecord
    let sequence: UInt64
    var ports: [PortRecord] = []
    var nodeGUID: UInt64 = 0
    var sysImageGUID: UInt64 = 0

    // Handle tables, keyed by the virtual object's address.
    var pds: [UInt: PDRecord] = [:]
    var mrs: [UInt: MRRecord] = [:]
    var channels: [UInt: ChannelRecord] = [:]
    var cqs: [UInt: CQRecord] = [:]
    var srqs: [UInt: SRQRecord] = [:]
    var qps: [UInt: QPRecord] = [:]
    var ahs: [UInt: AHRecord] = [:]

    // Virtual values in use (virtual = real at creation unless taken).
    // Recovery (Recovery/Recovery.swift).
    /// The fd the application sees as async_fd: the shim's eventfd, one count per queued event.
    var asyncFD: Int32 = -1
    /// Async events for the application, in virtual terms.
    var asyncQueue: [ibv_async_event] = []
    /// Name of the real device the context lives on now (differs from device.name after a move
    /// to another device).
    var currentDeviceName = ""
    /// Every real object destroyed and the real context closed (RELEASED; `real` is stale).
    var released = false
    /// Ports whose PORT_ERR the application was shown (and no PORT_ACTIVE since): PortEvents.swift.
    var portsShownDown: Set<UInt8> = []
    /// When the last recovery made the context LIVE again (monotonic ns; 0: never moved).
    var movedAt: UInt64 = 0
    /// Released by stableverbs_detach: waits for stableverbs_attach (no automatic rebuild).
    var plannedHold = false
    /// The device did not come back within STABLEVERBS_LOSS_WAIT_MS (Recovery/DeviceGone.swift):
    /// released for good, state FAILED.
    var failed = false
    /// Held by the peer protocol while one of its QPs reconnects to a peer that moved (posts
    /// buffered beyond `holdMarks`, the tails of its work rings when the hold began).
    var peerHold = false
    var holdMarks: [UInt: UInt64] = [:]

    /// Its UD QPs whose real QPN is not their virtual one, real → virtual (UDSenders.swift).
    var senderUp: UnsafeMutablePointer<sv_idmap>?
    var qpns = VirtualNamespace(limit: 0x00FF_FFFF, reserved: [0, 1])
    var lkeys = VirtualNamespace(limit: 0xFFFF_FFFF, reserved: [])
    var rkeys = VirtualNamespace(limit: 0xFFFF_FFFF, reserved: [])

    init(ptr: UnsafeMutablePointer<sv_context>, device: DeviceRecord, sequence: UInt64) {
        self.ptr = ptr
        self.device = device
        self.sequence = sequence
    }

    var publicContext: UnsafeMutablePointer<ibv_context> {
        ptr.pointer(to: \.vctx.context)!
    }
    var real: UnsafeMutablePointer<ibv_context> { ptr.pointee.real! }
    var generation: UInt32 { ptr.pointee.generation }

    // Pointers to the identity maps inside the C context.
    var lkeyMap: UnsafeMutablePointer<sv_idmap> { ptr.pointer(to: \.lkeys)! }
    var qpnUpMap: UnsafeMutablePointer<sv_idmap> { ptr.pointer(to: \.qpn_up)! }
    var lidUpMap: UnsafeMutablePointer<sv_idmap> { ptr.pointer(to: \.lid_up)! }
    var lidDownMap: UnsafeMutablePointer<sv_idmap> { ptr.pointer(to: \.lid_down)! }
    var rkeyMap: UnsafeMutablePointer<sv_idmap> { ptr.pointer(to: \.ids.rkeys)! }
    var qpnMap: UnsafeMutablePointer<sv_idmap> { ptr.pointer(to: \.ids.qpns)! }
    var peerIDs: UnsafeMutablePointer<sv_peer_ids> { ptr.pointer(to: \.ids)! }

    func port(_ n: UInt8) -> PortRecord? {
        guard n >= 1, Int(n) <= ports.count else { return nil }
        return ports[Int(n) - 1]
    }

    /// The real port attributes through the real verbs_context (len-aware query_port).
    func queryRealPort(_ n: UInt8, _ attr: UnsafeMutablePointer<ibv_port_attr>) -> Int32 {
        queryPortOf(real: real, n, attr, MemoryLayout<ibv_port_attr>.size)
    }

    func nextOrder<R>(_ table: [UInt: R], _ seq: (R) -> UInt64) -> [R] {
        table.values.sorted { seq($0) < seq($1) }
    }
}

/// query_port on a real context: its verbs_context op (every rdma-core 44 context has one).
func queryPortOf(real: UnsafeMutablePointer<ibv_context>, _ n: UInt8, _ attr: UnsafeMutablePointer<ibv_port_attr>?, _ len: Int) -> Int32 {
    guard let vctx = verbs_get_ctx(real), let op = vctx.pointee.query_port else { return EOPNOTSUPP }
    return op(real, n, attr, len)
}

extension Runtime {
    func openContext(_ device: DeviceRecord) -> UnsafeMutablePointer<ibv_context>? {
        guard let open = ops.open_device else {
            setErrno(ENOSYS)
            return nil
        }
        guard let realDevice = device.real else {
            setErrno(ENODEV)
            return nil
        }
        guard let real = open(realDevice) else { return nil }
        guard let c = allocateZeroed(sv_context.self) else {
            _ = ops.close_device?(real)
            setErrno(ENOMEM)
            return nil
        }
        sv_context_init_header(c, real, device.publicDevice)
        c.pointee.device = device.ptr
        for m in [\sv_context.lkeys, \.qpn_up, \.lid_up, \.lid_down, \.ids.rkeys, \.ids.qpns] {
            IdentityMap.initialize(c.pointer(to: m)!)
        }
        installContextOps(c)
        DataPath.install(context: c)
        sv_ctx_set_state(c, SV_CTX_LIVE.rawValue)

        let rec = ContextRecord(ptr: c, device: device, sequence: sequence())
        c.pointee.core = opaque(rec)
        loadIdentities(rec, first: true)
        contexts[key(c)] = rec
        markUDSendersMoved(rec)
        publishUDSenders()
        prepareRecovery(rec)
        startControlSocket()
        publishLIDs()
        Log.info("opened \(device.name): context \(String(UInt(bitPattern: rec.publicContext), radix: 16)), \(rec.ports.count) port(s)")
        return rec.publicContext
    }

    /// Reads GUIDs, LIDs and GIDs from the real device. First time: virtual = real. Later (after a
    /// rebuild): the virtual values stay, the real ones are refreshed.
    func loadIdentities(_ rec: ContextRecord, first: Bool) {
        var dattr = ibv_device_attr()
        var portCount = 1
        if let q = ops.query_device, q(rec.real, &dattr) == 0 {
            portCount = max(1, Int(dattr.phys_port_cnt))
            if first {
                rec.nodeGUID = dattr.node_guid
                rec.sysImageGUID = dattr.sys_image_guid
            }
        }
        for n in 1...portCount {
            var pattr = ibv_port_attr()
            let rc = rec.queryRealPort(UInt8(n), &pattr)
            let lid = rc == 0 ? pattr.lid : 0
            let port: PortRecord
            if n <= rec.ports.count {
                port = rec.ports[n - 1]
                port.realLID = lid
            } else {
                port = PortRecord(number: UInt8(n), lid: lid)
                rec.ports.append(port)
            }
            loadGIDs(rec, port, tableLength: rc == 0 ? Int(pattr.gid_tbl_len) : 0, first: first)
        }
    }

    private func loadGIDs(_ rec: ContextRecord, _ port: PortRecord, tableLength: Int, first: Bool) {
        var fresh: [Int32: ibv_gid] = [:]
        if let table = ops.query_gid_table, tableLength > 0 {
            let max = Swift.min(tableLength, 4096)
            let entries = UnsafeMutablePointer<ibv_gid_entry>.allocate(capacity: max)
            defer { entries.deallocate() }
            let n = table(rec.real, entries, max, 0, MemoryLayout<ibv_gid_entry>.size)
            if n > 0 {
                for i in 0..<n where entries[i].port_num == UInt32(port.number) {
                    fresh[Int32(entries[i].gid_index)] = entries[i].gid
                }
            }
        }
        if fresh.isEmpty, let q = ops.query_gid {
            for i in 0..<Swift.min(tableLength, 32) {
                var g = ibv_gid()
                if q(rec.real, port.number, Int32(i), &g) == 0, !isZeroGID(g) { fresh[Int32(i)] = g }
            }
        }
        if first {
            for (i, g) in fresh { port.gids[i] = GIDPair(virtual: g, real: g) }
        } else {
            for (i, pair) in port.gids {
                var p = pair
                p.real = fresh[i] ?? ibv_gid()
                port.gids[i] = p
            }
            for (i, g) in fresh where port.gids[i] == nil { port.gids[i] = GIDPair(virtual: g, real: g) }
        }
    }

    /// Every context's lid_up/lid_down learn every local port's LIDs (completions from a local peer
    /// carry that peer's real LID in slid).
    func publishLIDs() {
        let all = contexts.values
        for c in all {
            for p in c.ports where p.virtualLID != 0 {
                for target in all {
                    if p.realLID != 0 { IdentityMap.set(target.lidUpMap, key: UInt32(p.realLID), value: UInt32(p.virtualLID)) }
                }
                IdentityMap.set(c.lidDownMap, key: UInt32(p.virtualLID), value: UInt32(p.realLID))
            }
        }
    }

    func installContextOps(_ c: UnsafeMutablePointer<sv_context>) {
        c.pointee.vctx.query_port = { ctx, port, attr, len in ContextOps.queryPort(ctx, port, attr, len) }
        c.pointee.vctx.create_qp_ex = { ctx, attr in QueuePairOps.createEx(ctx, attr) }
        c.pointee.vctx.create_cq_ex = { ctx, attr in CompletionQueueOps.createEx(ctx, attr) }
        c.pointee.vctx.query_device_ex = { ctx, input, attr, size in ContextOps.queryDeviceEx(ctx, input, attr, size) }
        c.pointee.vctx.create_srq_ex = { ctx, attr in SharedReceiveQueueOps.createEx(ctx, attr) }
    }

    func closeContext(_ rec: ContextRecord) -> Int32 {
        guard let close = ops.close_device else { return ENOSYS }
        if !rec.released {
            let rc = close(rec.real)
            if rc != 0 { return rc }
        }
        contexts[key(rec.ptr)] = nil
        forgetUDSenders(of: rec)
        // Peers of other contexts that pointed here forget it (identity from now on).
        detachPeers(of: rec)
        for r in rec.mrs.values { free(r.ptr) }
        for r in rec.ahs.values { free(r.ptr) }
        for r in rec.qps.values { detachRings(r.ptr); destroyQPStruct(r.ptr) }
        for r in rec.srqs.values { sv_ring_destroy(r.ptr.pointee.recv_ring); free(r.ptr) }
        finishRecovery(rec)
        for r in rec.cqs.values { free(r.ptr) }
        for r in rec.channels.values { free(r.ptr) }
        for r in rec.pds.values { free(r.ptr) }
        for m in [\sv_context.lkeys, \.qpn_up, \.lid_up, \.lid_down, \.ids.rkeys, \.ids.qpns] {
            IdentityMap.destroy(rec.ptr.pointer(to: m)!)
        }
        pthread_mutex_destroy(rec.ptr.pointer(to: \.vctx.context.mutex)!)
        free(rec.ptr)
        Log.info("closed \(rec.device.name)")
        return 0
    }

    func detachPeers(of rec: ContextRecord) {
        for other in contexts.values {
            for q in other.qps.values where q.peerContext === rec {
                q.peerContext = nil
                storePeer(q.ptr.pointer(to: \.peer)!, nil)
            }
            for a in other.ahs.values where a.peerContext === rec {
                a.peerContext = nil
                storePeer(a.ptr.pointer(to: \.peer)!, nil)
            }
        }
    }
}

/// The verbs_context ops of a virtual context that are not data path.
enum ContextOps {
    static func queryPort(_ ctx: UnsafeMutablePointer<ibv_context>?, _ port: UInt8,
                          _ attr: UnsafeMutablePointer<ibv_port_attr>?, _ len: Int) -> Int32 {
        guard let ctx else { return EINVAL }
        guard isVirtual(ctx) else { return queryPortOf(real: ctx, port, attr, len) }
        let rt = Runtime.current
        return rt.withHardware(of: { rt.contextRecord(ctx) }, gone: EIO) { rec in
            let rc = queryPortOf(real: rec.real, port, attr, len)
            if rc == 0, let attr, let v = rec.port(port)?.virtualLID,
               len >= MemoryLayout<ibv_port_attr>.offset(of: \ibv_port_attr.lid)! + 2 {
                attr.pointee.lid = v
            }
            return rc
        }
    }

    static func queryDeviceEx(_ ctx: UnsafeMutablePointer<ibv_context>?,
                              _ input: UnsafePointer<ibv_query_device_ex_input>?,
                              _ attr: UnsafeMutablePointer<ibv_device_attr_ex>?, _ size: Int) -> Int32 {
        guard let ctx else { return EINVAL }
        func query(_ real: UnsafeMutablePointer<ibv_context>) -> Int32 {
            guard let vctx = verbs_get_ctx(real), let op = vctx.pointee.query_device_ex else { return EOPNOTSUPP }
            return op(real, input, attr, size)
        }
        guard isVirtual(ctx) else { return query(ctx) }
        let rt = Runtime.current
        return rt.withHardware(of: { rt.contextRecord(ctx) }, gone: EIO) { rec in
            let rc = query(rec.real)
            if rc == 0, let attr {
                attr.pointee.orig_attr.node_guid = rec.nodeGUID
                attr.pointee.orig_attr.sys_image_guid = rec.sysImageGUID
            }
            return rc
        }
    }
}

extension Runtime {
    /// The GID the application sees at (port, index), given the real one the device reports now:
    /// the recorded virtual GID if the index was seen before, else the real one (recorded now).
    func virtualGID(_ rec: ContextRecord, port: UInt8, index: Int32, real: ibv_gid) -> ibv_gid {
        guard let p = rec.port(port) else { return real }
        if let pair = p.gids[index] {
            if sameGID(pair.real, real) || isZeroGID(pair.real) {
                if isZeroGID(pair.real) { p.gids[index] = GIDPair(virtual: pair.virtual, real: real) }
                return pair.virtual
            }
            // The device changed this entry without a rebuild: follow it (nothing has moved).
            if rec.generation == 0 {
                p.gids[index] = GIDPair(virtual: real, real: real)
                return real
            }
            p.gids[index] = GIDPair(virtual: pair.virtual, real: real)
            return pair.virtual
        }
        if !isZeroGID(real) { p.gids[index] = GIDPair(virtual: real, real: real) }
        return real
    }
}
