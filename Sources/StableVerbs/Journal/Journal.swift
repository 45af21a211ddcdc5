// The journal: for every virtual object, how it was made (its record keeps the creation attributes,
// in virtual terms) and every state change since, each stamped with the context generation it was
// made in. A rebuild replays it onto fresh real objects.
//
// QP transitions are kept from the last reset on: a transition to RESET empties the QP's journal
// (a fresh real QP starts in RESET), so the replay of a long-lived QP stays a handful of modifies.

import CVerbs
import StableVerbsABI

enum JournalChange {
    /// ibv_modify_qp, attributes as the application passed them (virtual destination).
    case modifyQP(attr: ibv_qp_attr, mask: Int32)
    /// ibv_modify_srq.
    case modifySRQ(attr: ibv_srq_attr, mask: Int32)
    /// ibv_resize_cq (the requested size).
    case resizeCQ(cqe: Int32)
    /// ibv_set_ece before the connection was made.
    case setECE(ibv_ece)
}

struct JournalEntry {
    let generation: UInt32
    let change: JournalChange
}

struct Journal {
    private(set) var entries: [JournalEntry] = []

    mutating func record(_ change: JournalChange, generation: UInt32) {
        if case .modifyQP(let attr, let mask) = change, mask & bits(IBV_QP_STATE) != 0,
           attr.qp_state == IBV_QPS_RESET {
            entries.removeAll()
            return
        }
        entries.append(JournalEntry(generation: generation, change: change))
    }

    /// The QP transitions to replay, in order.
    var qpTransitions: [(attr: ibv_qp_attr, mask: Int32)] {
        entries.compactMap {
            if case .modifyQP(let a, let m) = $0.change { return (a, m) }
            return nil
        }
    }

    var srqChanges: [(attr: ibv_srq_attr, mask: Int32)] {
        entries.compactMap {
            if case .modifySRQ(let a, let m) = $0.change { return (a, m) }
            return nil
        }
    }

    var lastECE: ibv_ece? {
        for e in entries.reversed() { if case .setECE(let v) = e.change { return v } }
        return nil
    }

    /// The QP state the journal leads to (RESET when empty).
    var qpState: ibv_qp_state {
        var s = IBV_QPS_RESET
        for t in qpTransitions where t.mask & bits(IBV_QP_STATE) != 0 { s = t.attr.qp_state }
        return s
    }

    var count: Int { entries.count }
}
