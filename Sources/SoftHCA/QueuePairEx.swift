import CVerbs
import StableVerbsABI
import Glibc

/// The extended post API of `struct ibv_qp_ex` (ibv_wr_start … ibv_wr_complete): builders add work
/// requests to a batch; wr_complete validates and posts the whole batch or nothing (like rxe/mlx5).

func installBuilders(_ q: UnsafeMutablePointer<ibv_qp_ex>) {
    q.pointee.comp_mask = 0
    q.pointee.wr_start = sh_wr_start
    q.pointee.wr_complete = sh_wr_complete
    q.pointee.wr_abort = sh_wr_abort
    q.pointee.wr_send = sh_wr_send
    q.pointee.wr_send_imm = sh_wr_send_imm
    q.pointee.wr_rdma_write = sh_wr_rdma_write
    q.pointee.wr_rdma_write_imm = sh_wr_rdma_write_imm
    q.pointee.wr_rdma_read = sh_wr_rdma_read
    q.pointee.wr_atomic_cmp_swp = sh_wr_atomic_cmp_swp
    q.pointee.wr_atomic_fetch_add = sh_wr_atomic_fetch_add
    q.pointee.wr_set_sge = sh_wr_set_sge
    q.pointee.wr_set_sge_list = sh_wr_set_sge_list
    q.pointee.wr_set_inline_data = sh_wr_set_inline_data
    q.pointee.wr_set_inline_data_list = sh_wr_set_inline_data_list
    q.pointee.wr_set_ud_addr = sh_wr_set_ud_addr
}

/// Runs `body` on the QP's open batch, under the lock.
private func withBatch(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ body: (QueuePair, inout [SendWork]) -> Void) {
    locked {
        guard let qp = QueuePair.find(p), var batch = qp.batch else { return }
        qp.batch = nil
        body(qp, &batch)
        qp.batch = batch
    }
}

/// A builder opens a new WR with the current wr_id and wr_flags.
private func begin(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ opcode: ibv_wr_opcode, _ fill: (inout SendWork) -> Void) {
    guard let p else { return }
    let wrID = p.pointee.wr_id
    let flags = p.pointee.wr_flags
    withBatch(p) { qp, batch in
        guard qp.batchError == 0 else { return }
        if !opcodeAllowed(opcode, qp.type) {
            qp.batchError = EOPNOTSUPP
            return
        }
        if qp.sendQueueDepth + batch.count >= Int(qp.caps.max_send_wr) {
            qp.batchError = ENOMEM
            return
        }
        var w = SendWork(wrID: wrID, opcode: opcode, flags: flags)
        fill(&w)
        batch.append(w)
    }
}

/// A setter changes the last WR of the batch.
private func amend(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ change: (QueuePair, inout SendWork) -> Int32) {
    withBatch(p) { qp, batch in
        guard qp.batchError == 0 else { return }
        guard !batch.isEmpty else {
            qp.batchError = EINVAL
            return
        }
        let e = change(qp, &batch[batch.count - 1])
        if e != 0 { qp.batchError = e }
    }
}

func sh_wr_start(_ p: UnsafeMutablePointer<ibv_qp_ex>?) {
    locked {
        guard let qp = QueuePair.find(p) else { return }
        qp.batch = []
        qp.batchError = 0
    }
}

func sh_wr_complete(_ p: UnsafeMutablePointer<ibv_qp_ex>?) -> Int32 {
    locked {
        guard let qp = QueuePair.find(p) else { return EINVAL }
        let batch = qp.batch ?? []
        let batchError = qp.batchError
        qp.batch = nil
        qp.batchError = 0
        if let e = fabric.fault("wr_complete", device: qp.context.device) { return e }
        if batchError != 0 { return batchError }
        if let e = qp.sendStateError { return e }
        for w in batch {
            let e = qp.validate(w)
            if e != 0 { return e }
        }
        for w in batch { qp.accept(w) }
        return 0
    }
}

func sh_wr_abort(_ p: UnsafeMutablePointer<ibv_qp_ex>?) {
    locked {
        guard let qp = QueuePair.find(p) else { return }
        qp.batch = nil
        qp.batchError = 0
    }
}

func sh_wr_send(_ p: UnsafeMutablePointer<ibv_qp_ex>?) {
    begin(p, IBV_WR_SEND) { _ in }
}

func sh_wr_send_imm(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ imm: UInt32) {
    begin(p, IBV_WR_SEND_WITH_IMM) { $0.imm = imm }
}

func sh_wr_rdma_write(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ addr: UInt64) {
    begin(p, IBV_WR_RDMA_WRITE) { $0.rkey = rkey; $0.remoteAddr = addr }
}

func sh_wr_rdma_write_imm(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ addr: UInt64, _ imm: UInt32) {
    begin(p, IBV_WR_RDMA_WRITE_WITH_IMM) { $0.rkey = rkey; $0.remoteAddr = addr; $0.imm = imm }
}

func sh_wr_rdma_read(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ addr: UInt64) {
    begin(p, IBV_WR_RDMA_READ) { $0.rkey = rkey; $0.remoteAddr = addr }
}

func sh_wr_atomic_cmp_swp(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ addr: UInt64, _ compare: UInt64, _ swap: UInt64) {
    begin(p, IBV_WR_ATOMIC_CMP_AND_SWP) { $0.rkey = rkey; $0.remoteAddr = addr; $0.compareAdd = compare; $0.swap = swap }
}

func sh_wr_atomic_fetch_add(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ rkey: UInt32, _ addr: UInt64, _ add: UInt64) {
    begin(p, IBV_WR_ATOMIC_FETCH_AND_ADD) { $0.rkey = rkey; $0.remoteAddr = addr; $0.compareAdd = add }
}

func sh_wr_set_sge(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ lkey: UInt32, _ addr: UInt64, _ length: UInt32) {
    amend(p) { qp, w in
        if qp.caps.max_send_sge < 1 { return EINVAL }
        w.sges = [ibv_sge(addr: addr, length: length, lkey: lkey)]
        w.inlineData = nil
        return 0
    }
}

func sh_wr_set_sge_list(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ n: Int, _ list: UnsafePointer<ibv_sge>?) {
    amend(p) { qp, w in
        if n > Int(qp.caps.max_send_sge) { return EINVAL }
        w.sges = n > 0 && list != nil ? Array(UnsafeBufferPointer(start: list, count: n)) : []
        w.inlineData = nil
        return 0
    }
}

func sh_wr_set_inline_data(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ addr: UnsafeMutableRawPointer?, _ length: Int) {
    amend(p) { qp, w in
        if length > Int(qp.caps.max_inline_data) { return ENOMEM }
        w.inlineData = length > 0 && addr != nil ? Array(UnsafeRawBufferPointer(start: addr, count: length)) : []
        w.sges = []
        return 0
    }
}

func sh_wr_set_inline_data_list(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ n: Int, _ list: UnsafePointer<ibv_data_buf>?) {
    amend(p) { qp, w in
        var data: [UInt8] = []
        if let list {
            for b in UnsafeBufferPointer(start: list, count: n) where b.length > 0 && b.addr != nil {
                data.append(contentsOf: UnsafeRawBufferPointer(start: b.addr, count: b.length))
            }
        }
        if data.count > Int(qp.caps.max_inline_data) { return ENOMEM }
        w.inlineData = data
        w.sges = []
        return 0
    }
}

func sh_wr_set_ud_addr(_ p: UnsafeMutablePointer<ibv_qp_ex>?, _ ah: UnsafeMutablePointer<ibv_ah>?, _ qpn: UInt32, _ qkey: UInt32) {
    amend(p) { qp, w in
        guard qp.type == IBV_QPT_UD, let a = AddressHandle.find(ah) else { return EINVAL }
        w.ah = a.attr
        w.ahHandle = ah
        w.remoteQPN = qpn & 0xFF_FFFF
        w.remoteQKey = qkey
        return 0
    }
}
