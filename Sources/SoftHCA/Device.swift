import CVerbs
import StableVerbsABI
import Glibc

/// One port of a software device: its identities (LID, GUID, GIDs) and state.
final class Port {
    unowned let device: Device
    let number: UInt8
    var lid: UInt16 = 0
    var guid: UInt64 = 0
    var ipv4: UInt32 = 0
    var ifindex: UInt32 = 0
    var state: ibv_port_state = IBV_PORT_ACTIVE
    var qkeyViolations: UInt32 = 0
    let linkLayer: SoftHCA.Configuration.LinkLayer
    /// Populated GID table entries (index, gid, type); the rest of the table reads as empty.
    var gids: [(index: Int, gid: GID, type: UInt32)] = []

    init(device: Device, number: UInt8, linkLayer: SoftHCA.Configuration.LinkLayer) {
        self.device = device
        self.number = number
        self.linkLayer = linkLayer
    }

    var gidTableLength: Int { linkLayer == .infiniband ? 128 : 1024 }
    var isActive: Bool { state == IBV_PORT_ACTIVE }
    var maxMTU: ibv_mtu { IBV_MTU_4096 }
    /// InfiniBand runs at 4096; Ethernet at 1024 like rxe over a 1500-byte netdev.
    var activeMTU: ibv_mtu { linkLayer == .infiniband ? IBV_MTU_4096 : IBV_MTU_1024 }

    /// New identities, as a freshly plugged port (or a new VF) would have.
    func assignIdentity(nodeGUID: UInt64, fabric: Fabric) {
        guid = nodeGUID &+ UInt64(number - 1)
        let serial = fabric.allocateSerial()
        ipv4 = 0x0A00_0000 | (((serial - 1) / 254) << 8 & 0xFF00) | ((serial - 1) % 254 + 1)
        ifindex = 100 + serial
        switch linkLayer {
        case .infiniband:
            lid = fabric.allocateLID()
            gids = [(0, GID.linkLocal(interfaceID: guid), UInt32(IBV_GID_TYPE_IB.rawValue))]
        case .ethernet:
            lid = 0
            gids = [
                (0, GID.linkLocal(interfaceID: guid), UInt32(IBV_GID_TYPE_ROCE_V2.rawValue)),
                (1, GID.ipv4Mapped(ipv4), UInt32(IBV_GID_TYPE_ROCE_V2.rawValue)),
            ]
        }
    }

    func gid(at index: Int) -> (gid: GID, type: UInt32)? {
        gids.first(where: { $0.index == index }).map { ($0.gid, $0.type) }
    }

    func attributes() -> ibv_port_attr {
        var a = ibv_port_attr()
        a.state = state
        a.max_mtu = maxMTU
        a.active_mtu = activeMTU
        a.gid_tbl_len = Int32(gidTableLength)
        switch linkLayer {
        case .infiniband:
            // IsSM-less CA: CM, device management, SM disabled supported, trap, vendor class
            a.port_cap_flags = UInt32(IBV_PORT_CM_SUP.rawValue | IBV_PORT_DEVICE_MGMT_SUP.rawValue |
                IBV_PORT_VENDOR_CLASS_SUP.rawValue | IBV_PORT_TRAP_SUP.rawValue | IBV_PORT_CAP_MASK2_SUP.rawValue)
            a.lid = lid
            a.sm_lid = 1
            a.link_layer = UInt8(IBV_LINK_LAYER_INFINIBAND)
        case .ethernet:
            a.port_cap_flags = UInt32(IBV_PORT_CM_SUP.rawValue | IBV_PORT_IP_BASED_GIDS.rawValue)
            a.lid = 0
            a.sm_lid = 0
            a.link_layer = UInt8(IBV_LINK_LAYER_ETHERNET)
            a.flags = UInt8(IB_UVERBS_QPF_GRH_REQUIRED.rawValue)
        }
        a.max_msg_sz = 0x8000_0000
        a.bad_pkey_cntr = 0
        a.qkey_viol_cntr = qkeyViolations
        a.pkey_tbl_len = 64
        a.lmc = 0
        a.max_vl_num = 1
        a.sm_sl = 0
        a.subnet_timeout = 18
        a.active_width = 2  // 4X
        a.active_speed = 32  // EDR
        a.phys_state = isActive ? 5 : 3  // LinkUp : Disabled
        return a
    }
}

/// One software device. Its C `ibv_device` is replaced on every return (a new incarnation), like
/// libibverbs allocating a new verbs_device for a device that reappears.
final class Device {
    let slot: Int
    var name: String
    var nodeGUID: UInt64 = 0
    var ports: [Port] = []
    var present = true
    /// rxe-style removal: gone from the list, waiting for every context to be closed.
    var removalPending = false
    var generation = 0
    var index: Int32 = 0
    var cDevice: UnsafeMutablePointer<ibv_device>

    init(slot: Int, name: String, fabric: Fabric) {
        self.slot = slot
        self.name = name
        cDevice = allocateZeroed(ibv_device.self)
        let link = fabric.configuration.linkLayer
        ports = (1...max(1, fabric.configuration.portsPerDevice)).map { Port(device: self, number: UInt8($0), linkLayer: link) }
        assignIdentity(fabric: fabric)
        newIncarnation(fabric: fabric, reuseStructure: true)
    }

    func assignIdentity(fabric: Fabric) {
        let serial = UInt64(fabric.allocateSerial())
        nodeGUID = 0x0200_5EFF_FE00_0000 | (serial << 4 & 0xFF_FFF0)
        for p in ports { p.assignIdentity(nodeGUID: nodeGUID, fabric: fabric) }
    }

    /// Fills (or replaces) the C ibv_device for a new incarnation; the old one stays allocated so
    /// stale pointers held by the application stay readable.
    func newIncarnation(fabric: Fabric, reuseStructure: Bool = false) {
        if !reuseStructure { cDevice = allocateZeroed(ibv_device.self) }
        generation += 1
        index = fabric.nextDeviceIndex
        fabric.nextDeviceIndex += 1
        let d = cDevice
        d.pointee.node_type = IBV_NODE_CA
        d.pointee.transport_type = IBV_TRANSPORT_IB
        setCString(&d.pointee.name, name)
        setCString(&d.pointee.dev_name, "uverbs\(index)")
        setCString(&d.pointee.dev_path, "/sys/class/infiniband_verbs/uverbs\(index)")
        setCString(&d.pointee.ibdev_path, "/sys/class/infiniband/\(name)")
        fabric.incarnations[key(d)] = (self, generation)
    }

    func port(_ number: UInt8) -> Port? {
        guard number >= 1, Int(number) <= ports.count else { return nil }
        return ports[Int(number) - 1]
    }

    func attributes(fabric: Fabric) -> ibv_device_attr {
        var a = ibv_device_attr()
        setCString(&a.fw_ver, "44.0.0")
        a.node_guid = nodeGUID.bigEndian
        a.sys_image_guid = nodeGUID.bigEndian
        a.max_mr_size = UInt64.max
        a.page_size_cap = 0xFFFF_F000
        a.vendor_id = 0xFFFFFF
        a.vendor_part_id = 0
        a.hw_ver = 0
        a.max_qp = Limits.maxQP
        a.max_qp_wr = Limits.maxQPWR
        a.device_cap_flags = UInt32(IBV_DEVICE_BAD_PKEY_CNTR.rawValue | IBV_DEVICE_BAD_QKEY_CNTR.rawValue |
            IBV_DEVICE_SHUTDOWN_PORT.rawValue | IBV_DEVICE_SYS_IMAGE_GUID.rawValue |
            IBV_DEVICE_RC_RNR_NAK_GEN.rawValue | IBV_DEVICE_SRQ_RESIZE.rawValue |
            IBV_DEVICE_PORT_ACTIVE_EVENT.rawValue | IBV_DEVICE_N_NOTIFY_CQ.rawValue)
        a.max_sge = Limits.maxSGE
        a.max_sge_rd = Limits.maxSGE
        a.max_cq = Limits.maxCQ
        a.max_cqe = Limits.maxCQE
        a.max_mr = Limits.maxMR
        a.max_pd = Limits.maxPD
        a.max_qp_rd_atom = Limits.maxQPRdAtom
        a.max_ee_rd_atom = 0
        a.max_res_rd_atom = 0x3F000
        a.max_qp_init_rd_atom = Limits.maxQPRdAtom
        a.max_ee_init_rd_atom = 0
        a.atomic_cap = IBV_ATOMIC_HCA
        a.max_ee = 0
        a.max_rdd = 0
        a.max_mw = 0
        a.max_raw_ipv6_qp = 0
        a.max_raw_ethy_qp = 0
        a.max_mcast_grp = 8192
        a.max_mcast_qp_attach = 56
        a.max_total_mcast_qp_attach = 0x70000
        a.max_ah = Limits.maxAH
        a.max_fmr = 0
        a.max_map_per_fmr = 0
        a.max_srq = Limits.maxSRQ
        a.max_srq_wr = Limits.maxSRQWR
        a.max_srq_sge = Limits.maxSRQSGE
        a.max_pkeys = 64
        a.local_ca_ack_delay = 15
        a.phys_port_cnt = UInt8(ports.count)
        return a
    }
}

/// Device limits, modelled on rxe's.
enum Limits {
    static let maxQP: Int32 = 0x10000
    static let maxQPWR: Int32 = 0x4000
    static let maxSGE: Int32 = 32
    static let maxInline: UInt32 = 512
    static let maxCQ: Int32 = 0x4000
    static let maxCQE: Int32 = 0x7FFF
    static let maxMR: Int32 = 0x40000
    static let maxPD: Int32 = 0x10000
    static let maxQPRdAtom: Int32 = 128
    static let maxAH: Int32 = 0x10000
    static let maxSRQ: Int32 = 0x10000
    static let maxSRQWR: Int32 = 0x4000
    static let maxSRQSGE: Int32 = 27
    static let maxPKeys = 64
}

// MARK: - lower entry points: devices and queries

func sh_get_device_list(_ num: UnsafeMutablePointer<Int32>?) -> UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>? {
    let (list, err): ([UnsafeMutablePointer<ibv_device>], Int32?) = locked {
        if let e = fabric.fault("get_device_list", device: nil) { return ([], e) }
        return (fabric.devices.filter { $0.present }.map { $0.cDevice }, nil)
    }
    if let err {
        num?.pointee = 0
        return failNull(err)
    }
    let array = UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>.allocate(capacity: list.count + 1)
    for (i, d) in list.enumerated() { array[i] = d }
    array[list.count] = nil
    num?.pointee = Int32(list.count)
    return array
}

func sh_free_device_list(_ list: UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>?) {
    list?.deallocate()
}

func sh_get_device_name(_ device: UnsafeMutablePointer<ibv_device>?) -> UnsafePointer<CChar>? {
    guard let device else { return failNull(EINVAL) }
    return UnsafeRawPointer(device).advanced(by: MemoryLayout<ibv_device>.offset(of: \ibv_device.name)!)
        .assumingMemoryBound(to: CChar.self)
}

func sh_get_device_guid(_ device: UnsafeMutablePointer<ibv_device>?) -> UInt64 {
    guard let device else { return 0 }
    return locked {
        guard let (d, gen) = fabric.incarnations[key(device)] else { return 0 }
        _ = gen
        return d.nodeGUID.bigEndian
    }
}

func sh_get_device_index(_ device: UnsafeMutablePointer<ibv_device>?) -> Int32 {
    guard let device else { return -1 }
    return locked {
        guard let (d, gen) = fabric.incarnations[key(device)] else { return -1 }
        return gen == d.generation ? d.index : -1
    }
}

func sh_query_device(_ context: UnsafeMutablePointer<ibv_context>?, _ attr: UnsafeMutablePointer<ibv_device_attr>?) -> Int32 {
    locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("query_device", device: ctx.device) { return e }
        if ctx.dead { return EIO }
        guard let attr else { return EINVAL }
        attr.pointee = ctx.device.attributes(fabric: fabric)
        return 0
    }
}

func sh_query_device_ex(_ context: UnsafeMutablePointer<ibv_context>?, _ input: UnsafePointer<ibv_query_device_ex_input>?,
                        _ attr: UnsafeMutablePointer<ibv_device_attr_ex>?, _ size: Int) -> Int32 {
    locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("query_device_ex", device: ctx.device) { return e }
        if ctx.dead { return EIO }
        if let input, input.pointee.comp_mask != 0 { return EINVAL }
        guard let attr, size >= MemoryLayout<ibv_device_attr>.size + 8 else { return EINVAL }
        var ex = ibv_device_attr_ex()
        ex.orig_attr = ctx.device.attributes(fabric: fabric)
        ex.comp_mask = 0
        ex.device_cap_flags_ex = UInt64(ex.orig_attr.device_cap_flags)
        ex.phys_port_cnt_ex = UInt32(ctx.device.ports.count)
        let n = min(size, MemoryLayout<ibv_device_attr_ex>.size)
        UnsafeMutableRawPointer(attr).initializeMemory(as: UInt8.self, repeating: 0, count: size)
        withUnsafeBytes(of: &ex) { src in
            UnsafeMutableRawPointer(attr).copyMemory(from: src.baseAddress!, byteCount: n)
        }
        return 0
    }
}

func sh_query_port(_ context: UnsafeMutablePointer<ibv_context>?, _ portNum: UInt8, _ attr: UnsafeMutablePointer<ibv_port_attr>?, _ len: Int) -> Int32 {
    locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("query_port", device: ctx.device) { return e }
        if ctx.dead { return EIO }
        guard let attr, let port = ctx.device.port(portNum) else { return EINVAL }
        var a = port.attributes()
        let n = min(len, MemoryLayout<ibv_port_attr>.size)
        withUnsafeBytes(of: &a) { src in
            UnsafeMutableRawPointer(attr).copyMemory(from: src.baseAddress!, byteCount: n)
        }
        return 0
    }
}

func sh_query_gid(_ context: UnsafeMutablePointer<ibv_context>?, _ portNum: UInt8, _ index: Int32, _ gid: UnsafeMutablePointer<ibv_gid>?) -> Int32 {
    let err: Int32 = locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("query_gid", device: ctx.device) { return e }
        if ctx.dead { return EIO }
        guard let gid, let port = ctx.device.port(portNum), index >= 0, Int(index) < port.gidTableLength else { return EINVAL }
        // Like libibverbs: an empty entry reads as the zero GID.
        gid.pointee = (port.gid(at: Int(index))?.gid ?? .zero).cValue
        return 0
    }
    if err != 0 { errno = err; return -1 }
    return 0
}

private func fillGidEntry(_ out: UnsafeMutableRawPointer, port: Port, index: Int, gid: GID, type: UInt32) {
    var e = ibv_gid_entry()
    e.gid = gid.cValue
    e.gid_index = UInt32(index)
    e.port_num = UInt32(port.number)
    e.gid_type = type
    e.ndev_ifindex = port.linkLayer == .ethernet ? port.ifindex : 0
    withUnsafeBytes(of: &e) { out.copyMemory(from: $0.baseAddress!, byteCount: MemoryLayout<ibv_gid_entry>.size) }
}

func sh_query_gid_ex(_ context: UnsafeMutablePointer<ibv_context>?, _ portNum: UInt32, _ index: UInt32,
                     _ entry: UnsafeMutablePointer<ibv_gid_entry>?, _ flags: UInt32, _ entrySize: Int) -> Int32 {
    locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("query_gid_ex", device: ctx.device) { return e }
        if ctx.dead { return EIO }
        guard let entry, flags == 0, entrySize >= MemoryLayout<ibv_gid_entry>.size,
              portNum <= 255, let port = ctx.device.port(UInt8(portNum)), Int(index) < port.gidTableLength
        else { return EINVAL }
        guard let g = port.gid(at: Int(index)) else { return ENODATA }
        fillGidEntry(UnsafeMutableRawPointer(entry), port: port, index: Int(index), gid: g.gid, type: g.type)
        return 0
    }
}

func sh_query_gid_table(_ context: UnsafeMutablePointer<ibv_context>?, _ entries: UnsafeMutablePointer<ibv_gid_entry>?,
                        _ maxEntries: Int, _ flags: UInt32, _ entrySize: Int) -> Int {
    locked {
        guard let ctx = Context.find(context) else { return -Int(EINVAL) }
        if let e = fabric.fault("query_gid_table", device: ctx.device) { return -Int(e) }
        if ctx.dead { return -Int(EIO) }
        guard flags == 0, entrySize >= MemoryLayout<ibv_gid_entry>.size else { return -Int(EINVAL) }
        let all = ctx.device.ports.flatMap { p in p.gids.map { (p, $0) } }
        guard all.count <= maxEntries, let entries else { return -Int(EINVAL) }
        for (i, (port, g)) in all.enumerated() {
            fillGidEntry(UnsafeMutableRawPointer(entries) + i * entrySize, port: port, index: g.index, gid: g.gid, type: g.type)
        }
        return all.count
    }
}

func sh_query_pkey(_ context: UnsafeMutablePointer<ibv_context>?, _ portNum: UInt8, _ index: Int32, _ pkey: UnsafeMutablePointer<UInt16>?) -> Int32 {
    let err: Int32 = locked {
        guard let ctx = Context.find(context) else { return EINVAL }
        if let e = fabric.fault("query_pkey", device: ctx.device) { return e }
        if ctx.dead { return EIO }
        guard let pkey, ctx.device.port(portNum) != nil, index >= 0, Int(index) < Limits.maxPKeys else { return EINVAL }
        pkey.pointee = index == 0 ? UInt16(0xFFFF).bigEndian : 0
        return 0
    }
    if err != 0 { errno = err; return -1 }
    return 0
}

func sh_get_pkey_index(_ context: UnsafeMutablePointer<ibv_context>?, _ portNum: UInt8, _ pkey: UInt16) -> Int32 {
    let r: Int32 = locked {
        guard let ctx = Context.find(context) else { return -EINVAL }
        if let e = fabric.fault("get_pkey_index", device: ctx.device) { return -e }
        if ctx.dead { return -EIO }
        guard ctx.device.port(portNum) != nil else { return -EINVAL }
        // Full and limited membership of the default partition both live at index 0.
        return UInt16(bigEndian: pkey) & 0x7FFF == 0x7FFF ? 0 : -ENOENT
    }
    if r < 0 { errno = -r; return -1 }
    return r
}
