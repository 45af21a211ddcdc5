// The extended CQ (ibv_cq_ex) polling ops. The application's ibv_cq_ex is &sv_cq.cq; it reads
// cq->status and cq->wr_id directly after start_poll/next_poll, so those copy both fields from the
// real CQ. read_qp_num / read_src_qp / read_slid translate real -> virtual (qpn_up, lid_up); the
// other readers forward.

import CVerbs
import Glibc
import StableVerbsABI

@inline(__always)
func svRealCQEx(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UnsafeMutablePointer<ibv_cq_ex> {
    svCQ(cq).pointee.real_ex.unsafelyUnwrapped
}

@_cdecl("sv_op_cq_start_poll")
public func svOpCQStartPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
    let c = svCQ(cq)
    // Not LIVE (a recovery is moving the context): nothing to poll until it is rebuilt.
    if svCtxState(c.pointee.ctx.unsafelyUnwrapped) != SV_CTX_LIVE.rawValue { return svCQStartPollNotLive(c, attr) }
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let rc = r.pointee.start_poll.unsafelyUnwrapped(r, attr)
    if rc == 0 {
        c.pointee.cq.status = r.pointee.status
        c.pointee.cq.wr_id = r.pointee.wr_id
    }
    return rc
}

@_cdecl("sv_op_cq_next_poll")
public func svOpCQNextPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> Int32 {
    let c = svCQ(cq)
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let rc = r.pointee.next_poll.unsafelyUnwrapped(r)
    if rc == 0 {
        c.pointee.cq.status = r.pointee.status
        c.pointee.cq.wr_id = r.pointee.wr_id
    }
    return rc
}

@_cdecl("sv_op_cq_end_poll")
public func svOpCQEndPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) {
    let r = svRealCQEx(cq)
    r.pointee.end_poll.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_qp_num")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpCQReadQPNum(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let c = svCQ(cq)
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let qpn = r.pointee.read_qp_num.unsafelyUnwrapped(r)
    return svTranslate(svQpnUp(c.pointee.ctx.unsafelyUnwrapped), qpn)
}

@_cdecl("sv_op_cq_read_src_qp")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpCQReadSrcQP(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let c = svCQ(cq)
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let qpn = r.pointee.read_src_qp.unsafelyUnwrapped(r)
    return svTranslate(svQpnUp(c.pointee.ctx.unsafelyUnwrapped), qpn)
}

@_cdecl("sv_op_cq_read_slid")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpCQReadSlid(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let c = svCQ(cq)
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let lid = r.pointee.read_slid.unsafelyUnwrapped(r)
    return svTranslate(svLidUp(c.pointee.ctx.unsafelyUnwrapped), lid)
}

@_cdecl("sv_op_cq_read_opcode")
public func svOpCQReadOpcode(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> ibv_wc_opcode {
    let r = svRealCQEx(cq)
    return r.pointee.read_opcode.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_vendor_err")
public func svOpCQReadVendorErr(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let r = svRealCQEx(cq)
    return r.pointee.read_vendor_err.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_byte_len")
public func svOpCQReadByteLen(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let r = svRealCQEx(cq)
    return r.pointee.read_byte_len.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_imm_data")
public func svOpCQReadImmData(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let r = svRealCQEx(cq)
    return r.pointee.read_imm_data.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_wc_flags")
public func svOpCQReadWcFlags(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let r = svRealCQEx(cq)
    return r.pointee.read_wc_flags.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_sl")
public func svOpCQReadSl(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt8 {
    let r = svRealCQEx(cq)
    return r.pointee.read_sl.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_dlid_path_bits")
public func svOpCQReadDlidPathBits(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt8 {
    let r = svRealCQEx(cq)
    return r.pointee.read_dlid_path_bits.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_completion_ts")
public func svOpCQReadCompletionTS(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt64 {
    let r = svRealCQEx(cq)
    return r.pointee.read_completion_ts.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_cvlan")
public func svOpCQReadCvlan(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt16 {
    let r = svRealCQEx(cq)
    return r.pointee.read_cvlan.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_flow_tag")
public func svOpCQReadFlowTag(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt32 {
    let r = svRealCQEx(cq)
    return r.pointee.read_flow_tag.unsafelyUnwrapped(r)
}

@_cdecl("sv_op_cq_read_tm_info")
public func svOpCQReadTMInfo(_ cq: UnsafeMutablePointer<ibv_cq_ex>?, _ info: UnsafeMutablePointer<ibv_wc_tm_info>?) {
    let r = svRealCQEx(cq)
    r.pointee.read_tm_info.unsafelyUnwrapped(r, info)
}

@_cdecl("sv_op_cq_read_completion_wallclock_ns")
public func svOpCQReadCompletionWallclockNS(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UInt64 {
    let r = svRealCQEx(cq)
    return r.pointee.read_completion_wallclock_ns.unsafelyUnwrapped(r)
}

// MARK: - Installation

func svInstallCQExOps(_ cq: UnsafeMutablePointer<sv_cq>) {
    guard let r = cq.pointee.real_ex else { return }
    let real = r.pointee
    cq.pointee.cq.start_poll = real.start_poll == nil ? nil : svOpCQStartPoll
    cq.pointee.cq.next_poll = real.next_poll == nil ? nil : svOpCQNextPoll
    cq.pointee.cq.end_poll = real.end_poll == nil ? nil : svOpCQEndPoll
    cq.pointee.cq.read_opcode = real.read_opcode == nil ? nil : svOpCQReadOpcode
    cq.pointee.cq.read_vendor_err = real.read_vendor_err == nil ? nil : svOpCQReadVendorErr
    cq.pointee.cq.read_byte_len = real.read_byte_len == nil ? nil : svOpCQReadByteLen
    cq.pointee.cq.read_imm_data = real.read_imm_data == nil ? nil : svOpCQReadImmData
    cq.pointee.cq.read_qp_num = real.read_qp_num == nil ? nil : svOpCQReadQPNum
    cq.pointee.cq.read_src_qp = real.read_src_qp == nil ? nil : svOpCQReadSrcQP
    cq.pointee.cq.read_wc_flags = real.read_wc_flags == nil ? nil : svOpCQReadWcFlags
    cq.pointee.cq.read_slid = real.read_slid == nil ? nil : svOpCQReadSlid
    cq.pointee.cq.read_sl = real.read_sl == nil ? nil : svOpCQReadSl
    cq.pointee.cq.read_dlid_path_bits = real.read_dlid_path_bits == nil ? nil : svOpCQReadDlidPathBits
    cq.pointee.cq.read_completion_ts = real.read_completion_ts == nil ? nil : svOpCQReadCompletionTS
    cq.pointee.cq.read_cvlan = real.read_cvlan == nil ? nil : svOpCQReadCvlan
    cq.pointee.cq.read_flow_tag = real.read_flow_tag == nil ? nil : svOpCQReadFlowTag
    cq.pointee.cq.read_tm_info = real.read_tm_info == nil ? nil : svOpCQReadTMInfo
    cq.pointee.cq.read_completion_wallclock_ns =
        real.read_completion_wallclock_ns == nil ? nil : svOpCQReadCompletionWallclockNS
}

/// COLD: extended CQs are not drained by a recovery (phase A): while the context is quiescing or
/// reconnecting the real CQ is polled, while released/rebuilding the CQ reads as empty.
@inline(never)
func svCQStartPollNotLive(_ c: UnsafeMutablePointer<sv_cq>, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
    let st = svCtxState(c.pointee.ctx.unsafelyUnwrapped)
    if st == SV_CTX_RELEASED.rawValue || st == SV_CTX_REBUILDING.rawValue { return ENOENT }
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let rc = r.pointee.start_poll.unsafelyUnwrapped(r, attr)
    if rc == 0 {
        c.pointee.cq.status = r.pointee.status
        c.pointee.cq.wr_id = r.pointee.wr_id
    }
    return rc
}
