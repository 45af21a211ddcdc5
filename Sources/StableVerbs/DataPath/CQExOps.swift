// The extended CQ (ibv_cq_ex) polling ops. The application's ibv_cq_ex is &sv_cq.cq; it reads
// cq->status and cq->wr_id directly after start_poll/next_poll, so those copy both fields from the
// real CQ. read_qp_num / read_src_qp / read_slid translate real -> virtual (qpn_up, lid_up); the
// other readers forward.
//
// Recovery (work rings): every successful completion retires its work request
// (sv_ring_retire_cq_ex: the real CQ is always asked for QP numbers); an error completion goes to
// the cold path, which hides those a device loss caused (the work is replayed). While a context is
// not LIVE, or a recovery kept completions for the CQ (drained from the lost device, or remade by
// the peer protocol), the session serves those first (SV_CQ_SESSION_KEPT): the CQ's read_* ops
// are switched to ones that read sv_cq.kept until the session moves on to the real CQ or ends,
// so the readers themselves never test anything.

import CVerbs
import Glibc
import StableVerbsABI

@inline(__always)
func svRealCQEx(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> UnsafeMutablePointer<ibv_cq_ex> {
    svCQ(cq).pointee.real_ex.unsafelyUnwrapped
}

@_cdecl("sv_op_cq_start_poll")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpCQStartPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
    svCQStartPoll(cq, attr, bySender: false)
}

/// start_poll; `bySender` (a constant: two ops) also tells the completion's src_qp by sender.
@inline(__always)
func svCQStartPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?, bySender: Bool) -> Int32 {
    let c = svCQ(cq)
    if svCtxState(c.pointee.ctx.unsafelyUnwrapped) | svCQPending(c) != 0 { return svColdCQStartPoll(c, attr) }
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let rc = r.pointee.start_poll.unsafelyUnwrapped(r, attr)
    if rc != 0 { return rc }
    c.pointee.session = SV_CQ_SESSION_REAL.rawValue
    return svCQExTook(c, r, bySender: bySender)
}

@_cdecl("sv_op_cq_next_poll")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpCQNextPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> Int32 {
    svCQNextPoll(cq, bySender: false)
}

/// next_poll; `bySender` as for svCQStartPoll.
@inline(__always)
func svCQNextPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?, bySender: Bool) -> Int32 {
    let c = svCQ(cq)
    if c.pointee.session != SV_CQ_SESSION_REAL.rawValue { return svColdCQNextPoll(c) }
    let r = c.pointee.real_ex.unsafelyUnwrapped
    let rc = r.pointee.next_poll.unsafelyUnwrapped(r)
    if rc != 0 { return rc }
    return svCQExTook(c, r, bySender: bySender)
}

@_cdecl("sv_op_cq_end_poll")
@inline(__always)  // the body goes into the @_cdecl entry point: see DataPath.swift
public func svOpCQEndPoll(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) {
    let c = svCQ(cq)
    if c.pointee.session != SV_CQ_SESSION_REAL.rawValue { return svColdCQEndPoll(c) }
    c.pointee.session = SV_CQ_SESSION_NONE.rawValue
    let r = c.pointee.real_ex.unsafelyUnwrapped
    r.pointee.end_poll.unsafelyUnwrapped(r)
}

/// The real CQ is positioned on a completion: the application sees its status and wr_id, and
/// its work request is retired; an error completion takes the cold path (a device loss's is
/// hidden). `bySender`, once a UD identity of the process moved (Identity/UDSenders.swift): the
/// completion's src_qp (and a UD receive's GRH) are told by sender first; read_src_qp answers
/// sv_cq.src_qp.
@inline(__always)
func svCQExTook(_ c: UnsafeMutablePointer<sv_cq>, _ r: UnsafeMutablePointer<ibv_cq_ex>, bySender: Bool = false) -> Int32 {
    c.pointee.cq.status = r.pointee.status
    c.pointee.cq.wr_id = r.pointee.wr_id
    if r.pointee.status != IBV_WC_SUCCESS { return svColdCQExError(c) }
    if bySender { svCQExNoteSender(c, r) }
    sv_ring_retire_cq_ex(c.pointee.ctx.unsafelyUnwrapped, r)
    return 0
}

/// COLD: the real CQ's current completion's src_qp in the application's terms, kept in sv_cq.src_qp.
@inline(never)
func svCQExNoteSender(_ c: UnsafeMutablePointer<sv_cq>, _ r: UnsafeMutablePointer<ibv_cq_ex>) {
    let ctx = c.pointee.ctx.unsafelyUnwrapped
    guard let readSrc = r.pointee.read_src_qp else { return }
    var w = ibv_wc()
    w.wr_id = r.pointee.wr_id
    w.status = IBV_WC_SUCCESS
    w.opcode = r.pointee.read_opcode.unsafelyUnwrapped(r)
    w.qp_num = r.pointee.read_qp_num.unsafelyUnwrapped(r)
    w.wc_flags = r.pointee.read_wc_flags.map { $0(r) } ?? 0
    let src = readSrc(r)
    w.src_qp = src
    svColdUDSenders(ctx, &w, 1)
    c.pointee.src_qp = w.wc_flags & UInt32(IBV_WC_GRH.rawValue) != 0 ? w.src_qp : svTranslate(svQpnUp(ctx), src)
}

/// Whether a UD identity of the process moved (the CQ's polls tell src_qp by sender).
@inline(__always) func svCQBySender(_ c: UnsafeMutablePointer<sv_cq>) -> Bool {
    svUDBySender(c.pointee.ctx.unsafelyUnwrapped)
}

/// COLD (`svCold*`: scripts/check-fastpath stops here): the context is not LIVE or completions
/// were kept for this CQ (Recovery/ExtendedCQs.swift).
@inline(never)
func svColdCQStartPoll(_ c: UnsafeMutablePointer<sv_cq>, _ attr: UnsafeMutablePointer<ibv_poll_cq_attr>?) -> Int32 {
    Runtime.current.startPollSlow(c, attr)
}

/// COLD: the session serves kept completions (or none was started).
@inline(never)
func svColdCQNextPoll(_ c: UnsafeMutablePointer<sv_cq>) -> Int32 {
    Runtime.current.nextPollSlow(c)
}

/// COLD: the session served kept completions (or none was started).
@inline(never)
func svColdCQEndPoll(_ c: UnsafeMutablePointer<sv_cq>) {
    Runtime.current.endPollSlow(c)
}

/// COLD: the real CQ is positioned on an error completion.
@inline(never)
func svColdCQExError(_ c: UnsafeMutablePointer<sv_cq>) -> Int32 {
    Runtime.current.extendedErrorCompletion(c)
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
    if svCQBySender(cq), real.read_src_qp != nil, real.start_poll != nil, real.next_poll != nil {
        cq.pointee.cq.start_poll = { svCQStartPoll($0, $1, bySender: true) }
        cq.pointee.cq.next_poll = { svCQNextPoll($0, bySender: true) }
        cq.pointee.cq.read_src_qp = { svCQ($0).pointee.src_qp }
    }
}

// MARK: - Kept completions (a recovery's, served through the extended API)

@inline(__always) private func svKept(_ cq: UnsafeMutablePointer<ibv_cq_ex>?) -> ibv_wc { svCQ(cq).pointee.kept }

/// Switches `cq`'s read_* ops to ones that answer from sv_cq.kept (fields an ibv_wc does not hold:
/// 0), where the real CQ has the reader. Undone by svInstallCQExOps.
func svInstallCQExKeptReaders(_ cq: UnsafeMutablePointer<sv_cq>) {
    guard let r = cq.pointee.real_ex else { return }
    let real = r.pointee
    if real.read_opcode != nil { cq.pointee.cq.read_opcode = { svKept($0).opcode } }
    if real.read_vendor_err != nil { cq.pointee.cq.read_vendor_err = { svKept($0).vendor_err } }
    if real.read_byte_len != nil { cq.pointee.cq.read_byte_len = { svKept($0).byte_len } }
    if real.read_imm_data != nil { cq.pointee.cq.read_imm_data = { svKept($0).imm_data } }
    if real.read_qp_num != nil { cq.pointee.cq.read_qp_num = { svKept($0).qp_num } }
    if real.read_src_qp != nil { cq.pointee.cq.read_src_qp = { svKept($0).src_qp } }
    if real.read_wc_flags != nil { cq.pointee.cq.read_wc_flags = { svKept($0).wc_flags } }
    if real.read_slid != nil { cq.pointee.cq.read_slid = { UInt32(svKept($0).slid) } }
    if real.read_sl != nil { cq.pointee.cq.read_sl = { svKept($0).sl } }
    if real.read_dlid_path_bits != nil { cq.pointee.cq.read_dlid_path_bits = { svKept($0).dlid_path_bits } }
    if real.read_completion_ts != nil { cq.pointee.cq.read_completion_ts = { _ in 0 } }
    if real.read_cvlan != nil { cq.pointee.cq.read_cvlan = { _ in 0 } }
    if real.read_flow_tag != nil { cq.pointee.cq.read_flow_tag = { _ in 0 } }
    if real.read_tm_info != nil { cq.pointee.cq.read_tm_info = { _, info in info?.pointee = ibv_wc_tm_info() } }
    if real.read_completion_wallclock_ns != nil { cq.pointee.cq.read_completion_wallclock_ns = { _ in 0 } }
}
