import CVerbs
import StableVerbsABI
import Glibc

/// An address handle: the address vector it was made from, copied.
final class AddressHandle {
    let ah: UnsafeMutablePointer<ibv_ah>
    let context: Context
    let pd: ProtectionDomain
    let attr: ibv_ah_attr

    init(pd: ProtectionDomain, attr: ibv_ah_attr) {
        self.context = pd.context
        self.pd = pd
        self.attr = attr
        ah = allocateZeroed(ibv_ah.self)
        ah.pointee.context = pd.context.context
        ah.pointee.pd = pd.pd
        ah.pointee.handle = fabric.allocateHandle()
    }

    static func find(_ p: UnsafeMutablePointer<ibv_ah>?) -> AddressHandle? {
        guard let p else { return nil }
        return fabric.ahs[key(p)]
    }

    func destroy() {
        fabric.ahs[key(ah)] = nil
        pd.users -= 1
        freeStructure(ah)
    }
}

// MARK: - lower entry points

func sh_create_ah(_ p: UnsafeMutablePointer<ibv_pd>?, _ attr: UnsafeMutablePointer<ibv_ah_attr>?) -> UnsafeMutablePointer<ibv_ah>? {
    let (a, err): (UnsafeMutablePointer<ibv_ah>?, Int32) = locked {
        guard let pd = ProtectionDomain.find(p), let attr else { return (nil, EINVAL) }
        if let e = fabric.fault("create_ah", device: pd.context.device) ?? pd.context.commandError { return (nil, e) }
        guard let port = pd.context.device.port(attr.pointee.port_num), validAddressVector(attr.pointee, port: port) else { return (nil, EINVAL) }
        if fabric.ahs.count >= Int(Limits.maxAH) { return (nil, ENOMEM) }
        let ah = AddressHandle(pd: pd, attr: attr.pointee)
        pd.users += 1
        fabric.ahs[key(ah.ah)] = ah
        return (ah.ah, 0)
    }
    if a == nil { errno = err }
    return a
}

func sh_destroy_ah(_ p: UnsafeMutablePointer<ibv_ah>?) -> Int32 {
    locked {
        guard let ah = AddressHandle.find(p) else { return EINVAL }
        if let e = fabric.fault("destroy_ah", device: ah.context.device) ?? ah.context.destroyError { return e }
        ah.destroy()
        return 0
    }
}

/// rdma-core's ibv_init_ah_from_wc: dlid from the source LID; with a GRH, the reply goes to the
/// sender's GID from the local GID the packet was sent to.
func sh_init_ah_from_wc(_ context: UnsafeMutablePointer<ibv_context>?, _ portNum: UInt8, _ wc: UnsafeMutablePointer<ibv_wc>?,
                        _ grh: UnsafeMutablePointer<ibv_grh>?, _ attr: UnsafeMutablePointer<ibv_ah_attr>?) -> Int32 {
    let r: Int32 = locked {
        guard let ctx = Context.find(context), let wc, let attr else { return EINVAL }
        if let e = fabric.fault("init_ah_from_wc", device: ctx.device) ?? ctx.commandError { return e }
        guard let port = ctx.device.port(portNum) else { return EINVAL }
        var a = ibv_ah_attr()
        a.dlid = wc.pointee.slid
        a.sl = wc.pointee.sl
        a.src_path_bits = wc.pointee.dlid_path_bits
        a.port_num = portNum
        if wc.pointee.wc_flags & UInt32(IBV_WC_GRH.rawValue) != 0 {
            guard let grh else { return EINVAL }
            let g = grh.pointee
            a.is_global = 1
            a.grh.dgid = g.sgid
            let local = GID(g.dgid)
            guard let index = local.isMulticast ? 0 : port.gids.first(where: { $0.gid == local })?.index else { return ENOENT }
            a.grh.sgid_index = UInt8(index)
            let vtf = UInt32(bigEndian: g.version_tclass_flow)
            a.grh.flow_label = vtf & 0xFFFFF
            a.grh.hop_limit = 0xFF
            a.grh.traffic_class = UInt8(truncatingIfNeeded: vtf >> 20)
        } else if port.linkLayer == .ethernet {
            return EINVAL
        }
        attr.pointee = a
        return 0
    }
    if r != 0 { errno = r; return -1 }
    return 0
}

func sh_attach_mcast(_ p: UnsafeMutablePointer<ibv_qp>?, _ gid: UnsafePointer<ibv_gid>?, _ lid: UInt16) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p), let gid else { return EINVAL }
        if let e = fabric.fault("attach_mcast", device: qp.context.device) ?? qp.context.commandError { return e }
        let g = GID(gid.pointee)
        guard qp.type == IBV_QPT_UD, g.isMulticast else { return EINVAL }
        let group = MulticastGroup(gid: g, lid: lid)
        var members = fabric.multicast[group] ?? []
        if !members.contains(qp.number) {
            if members.count >= 56 { return ENOMEM }
            members.append(qp.number)
        }
        fabric.multicast[group] = members
        return 0
    }
}

func sh_detach_mcast(_ p: UnsafeMutablePointer<ibv_qp>?, _ gid: UnsafePointer<ibv_gid>?, _ lid: UInt16) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p), let gid else { return EINVAL }
        if let e = fabric.fault("detach_mcast", device: qp.context.device) ?? qp.context.commandError { return e }
        let group = MulticastGroup(gid: GID(gid.pointee), lid: lid)
        guard var members = fabric.multicast[group], members.contains(qp.number) else { return EINVAL }
        members.removeAll { $0 == qp.number }
        fabric.multicast[group] = members.isEmpty ? nil : members
        return 0
    }
}
