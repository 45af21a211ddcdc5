import CVerbs
import StableVerbsABI
import Glibc

/// A protection domain; `users` counts the MRs, QPs, SRQs and AHs made in it (dealloc → EBUSY).
final class ProtectionDomain {
    let pd: UnsafeMutablePointer<ibv_pd>
    let context: Context
    var users = 0

    init(context: Context) {
        self.context = context
        pd = allocateZeroed(ibv_pd.self)
        pd.pointee.context = context.context
        pd.pointee.handle = fabric.allocateHandle()
    }

    static func find(_ p: UnsafeMutablePointer<ibv_pd>?) -> ProtectionDomain? {
        guard let p else { return nil }
        return fabric.pds[key(p)]
    }

    func destroy() {
        fabric.pds[key(pd)] = nil
        freeStructure(pd)
    }
}

/// A registered memory region: host memory [addr, addr+length) seen at iova by the HCA.
final class MemoryRegion {
    let mr: UnsafeMutablePointer<ibv_mr>
    let context: Context
    let pd: ProtectionDomain
    let address: UnsafeMutableRawPointer?
    let length: Int
    let iova: UInt64
    let access: UInt32
    let lkey: UInt32
    let rkey: UInt32

    init(pd: ProtectionDomain, address: UnsafeMutableRawPointer?, length: Int, iova: UInt64, access: UInt32) {
        self.context = pd.context
        self.pd = pd
        self.address = address
        self.length = length
        self.iova = iova
        self.access = access
        lkey = fabric.allocateKey()
        rkey = fabric.configuration.distinctRemoteKeys ? fabric.allocateKey() : lkey
        mr = allocateZeroed(ibv_mr.self)
        mr.pointee.context = pd.context.context
        mr.pointee.pd = pd.pd
        mr.pointee.addr = address
        mr.pointee.length = length
        mr.pointee.handle = fabric.allocateHandle()
        mr.pointee.lkey = lkey
        mr.pointee.rkey = rkey
    }

    static func find(_ p: UnsafeMutablePointer<ibv_mr>?) -> MemoryRegion? {
        guard let p else { return nil }
        return fabric.mrs[key(p)]
    }

    /// Host address of [iova, iova+count) if it lies inside the region.
    func host(_ at: UInt64, _ count: Int) -> UnsafeMutableRawPointer? {
        guard at >= iova, count >= 0 else { return nil }
        let offset = at - iova
        guard offset <= UInt64(length), UInt64(count) <= UInt64(length) - offset else { return nil }
        guard let address else { return count == 0 ? UnsafeMutableRawPointer(bitPattern: 1) : nil }
        return address + Int(offset)
    }

    func destroy() {
        fabric.mrs[key(mr)] = nil
        fabric.mrByLKey[lkey] = nil
        fabric.mrByRKey[rkey] = nil
        pd.users -= 1
        freeStructure(mr)
    }
}

let accessLocalWrite = UInt32(IBV_ACCESS_LOCAL_WRITE.rawValue)
let accessRemoteWrite = UInt32(IBV_ACCESS_REMOTE_WRITE.rawValue)
let accessRemoteRead = UInt32(IBV_ACCESS_REMOTE_READ.rawValue)
let accessRemoteAtomic = UInt32(IBV_ACCESS_REMOTE_ATOMIC.rawValue)

// MARK: - lower entry points

func sh_alloc_pd(_ context: UnsafeMutablePointer<ibv_context>?) -> UnsafeMutablePointer<ibv_pd>? {
    let (p, err): (UnsafeMutablePointer<ibv_pd>?, Int32) = locked {
        guard let ctx = Context.find(context) else { return (nil, EINVAL) }
        if let e = fabric.fault("alloc_pd", device: ctx.device) ?? ctx.commandError { return (nil, e) }
        let pd = ProtectionDomain(context: ctx)
        fabric.pds[key(pd.pd)] = pd
        return (pd.pd, 0)
    }
    if p == nil { errno = err }
    return p
}

func sh_dealloc_pd(_ p: UnsafeMutablePointer<ibv_pd>?) -> Int32 {
    locked {
        guard let pd = ProtectionDomain.find(p) else { return EINVAL }
        if let e = fabric.fault("dealloc_pd", device: pd.context.device) ?? pd.context.destroyError { return e }
        if pd.users > 0 { return EBUSY }
        pd.destroy()
        return 0
    }
}

/// Access bits a registration may carry (the optional-range bits are dropped by libibverbs).
private let supportedAccess = UInt32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue |
    IBV_ACCESS_REMOTE_READ.rawValue | IBV_ACCESS_REMOTE_ATOMIC.rawValue | IBV_ACCESS_MW_BIND.rawValue |
    IBV_ACCESS_ZERO_BASED.rawValue | IBV_ACCESS_RELAXED_ORDERING.rawValue)

private func registerMemory(_ entry: String, _ p: UnsafeMutablePointer<ibv_pd>?, _ addr: UnsafeMutableRawPointer?,
                            _ length: Int, _ iova: UInt64, _ access: UInt32) -> UnsafeMutablePointer<ibv_mr>? {
    let (m, err): (UnsafeMutablePointer<ibv_mr>?, Int32) = locked {
        guard let pd = ProtectionDomain.find(p) else { return (nil, EINVAL) }
        if let e = fabric.fault(entry, device: pd.context.device) ?? pd.context.commandError { return (nil, e) }
        var access = access & ~UInt32(IB_UVERBS_ACCESS_OPTIONAL_RANGE.rawValue)
        access &= ~UInt32(IBV_ACCESS_RELAXED_ORDERING.rawValue)
        if access & UInt32(IBV_ACCESS_ON_DEMAND.rawValue) != 0 { return (nil, EOPNOTSUPP) }
        if access & ~supportedAccess != 0 { return (nil, EINVAL) }
        // Remote write or atomic access requires local write (ib_check_mr_access).
        if access & (accessRemoteWrite | accessRemoteAtomic) != 0, access & accessLocalWrite == 0 { return (nil, EINVAL) }
        if length == 0 { return (nil, EINVAL) }
        if addr == nil { return (nil, EFAULT) }
        if fabric.mrs.count >= Int(Limits.maxMR) { return (nil, ENOMEM) }
        let mr = MemoryRegion(pd: pd, address: addr, length: length, iova: iova, access: access)
        pd.users += 1
        fabric.mrs[key(mr.mr)] = mr
        fabric.mrByLKey[mr.lkey] = mr
        fabric.mrByRKey[mr.rkey] = mr
        return (mr.mr, 0)
    }
    if m == nil { errno = err }
    return m
}

func sh_reg_mr(_ pd: UnsafeMutablePointer<ibv_pd>?, _ addr: UnsafeMutableRawPointer?, _ length: Int, _ access: Int32) -> UnsafeMutablePointer<ibv_mr>? {
    registerMemory("reg_mr", pd, addr, length, UInt64(UInt(bitPattern: addr)), UInt32(bitPattern: access))
}

func sh_reg_mr_iova2(_ pd: UnsafeMutablePointer<ibv_pd>?, _ addr: UnsafeMutableRawPointer?, _ length: Int, _ iova: UInt64, _ access: UInt32) -> UnsafeMutablePointer<ibv_mr>? {
    registerMemory("reg_mr_iova2", pd, addr, length, iova, access)
}

func sh_dereg_mr(_ m: UnsafeMutablePointer<ibv_mr>?) -> Int32 {
    locked {
        guard let mr = MemoryRegion.find(m) else { return EINVAL }
        if let e = fabric.fault("dereg_mr", device: mr.context.device) ?? mr.context.destroyError { return e }
        mr.destroy()
        return 0
    }
}
