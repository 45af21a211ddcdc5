/// The fault switch: planned failures of entry points, consumed as calls arrive (global lock held).
struct Faults {
    private(set) var rules: [SoftHCA.Fault] = []

    /// The extended or internal forms a family name also covers.
    private static let families: [String: [String]] = [
        "create_qp_ex": ["create_qp"],
        "create_cq_ex": ["create_cq"],
        "reg_mr_iova2": ["reg_mr"],
        "query_device_ex": ["query_device"],
        "wr_complete": ["post_send"],
        "start_poll": ["poll_cq"],
    ]

    mutating func add(_ fault: SoftHCA.Fault) { rules.append(fault) }
    mutating func removeAll() { rules.removeAll() }

    /// The rule this call of `entry` takes, if one says it fails.
    mutating func take(_ entry: String, device: String?) -> SoftHCA.Fault? {
        let names = [entry] + (Faults.families[entry] ?? [])
        guard let i = rules.firstIndex(where: { rule in
            names.contains(rule.entry) && (rule.device == nil || rule.device == device)
        }) else { return nil }
        if rules[i].skip > 0 {
            rules[i].skip -= 1
            return nil
        }
        let rule = rules[i]
        if let c = rule.count {
            if c <= 1 { rules.remove(at: i) } else { rules[i].count = c - 1 }
        }
        return rule
    }
}
