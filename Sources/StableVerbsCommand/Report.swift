// What the command prints: one line per process (and per context for `status`), or JSON.

import StableVerbsControl

enum Report {
    // MARK: - Text

    static func detachOrAttach(_ a: Answer, verb: String) -> String {
        let head = "pid \(a.target.pid) (\(a.program))"
        switch a.outcome {
        case .ok:
            let n = Int(a.result?["contexts"] ?? "") ?? 0
            let ms = a.result?["ms"] ?? String(a.seconds * 1000)
            return "\(head): \(verb) \(n) context\(n == 1 ? "" : "s") in \(ms) ms"
        case .failed(let why):
            return "\(head): FAILED after \(String(format1: a.seconds)) s: \(why)"
        case .stale:
            return "\(head): gone (stale socket removed)"
        }
    }

    static func status(_ a: Answer) -> [String] {
        let head = "pid \(a.target.pid) (\(a.program))"
        guard case .ok = a.outcome else {
            if case .failed(let why) = a.outcome { return ["\(head): FAILED: \(why)"] }
            return ["\(head): gone (stale socket removed)"]
        }
        let contexts = a.records.filter { $0.kind == "context" }
        var first = "\(head), lower \(a.process?["lower"] ?? "?"): \(contexts.count) context\(contexts.count == 1 ? "" : "s")"
        if let r = a.records.first(where: { $0.kind == "recovery" }) {
            let count = Int(r["count"] ?? "") ?? 0
            first += ", \(count) recover\(count == 1 ? "y" : "ies")"
            if count > 0 {
                let phases = ["quiesce", "release", "device_wait", "rebuild", "reconnect", "replay"].map {
                    "\($0.replacingUnderscores) \(r["\($0)_ms"] ?? "?") ms"
                }
                first += " (last \(r["last"] ?? "?"), \(r["contexts"] ?? "?") context(s): \(phases.joined(separator: ", "))"
                    + "; \(r["replayed"] ?? "?") work request(s) replayed)"
            }
        }
        var lines = [first]
        for c in contexts {
            let where_ = c["device"].map { $0 == "-" ? "" : " on \($0)" } ?? ""
            let detached = c["detached"] == "1" ? " (detached: waiting for attach)" : ""
            lines.append("    \(c["virtual"] ?? "?")\(where_): \(c["state"] ?? "?")\(detached), generation \(c["generation"] ?? "?"), "
                         + "\(c["qps"] ?? "?") QPs, \(c["cqs"] ?? "?") CQs, \(c["mrs"] ?? "?") MRs, "
                         + "\(c["srqs"] ?? "?") SRQs, \(c["ahs"] ?? "?") AHs")
        }
        return lines
    }

    // MARK: - JSON

    static func statusJSON(_ answers: [Answer], directory: String, removed: [Int32]) -> String {
        var processes: [JSON] = []
        var failed: [JSON] = []
        for a in answers {
            switch a.outcome {
            case .stale:
                continue
            case .failed(let why):
                failed.append(.object([("pid", .int(Int(a.target.pid))), ("program", .string(a.program)), ("error", .string(why))]))
            case .ok:
                let contexts: [JSON] = a.records.filter { $0.kind == "context" }.map { c in
                    .object([
                        ("virtual_device", .string(c["virtual"] ?? "")),
                        ("device", c["device"].flatMap { $0 == "-" ? nil : JSON.string($0) } ?? .null),
                        ("state", .string(c["state"] ?? "")),
                        ("detached", .bool(c["detached"] == "1")),
                        ("generation", number(c["generation"])),
                        ("qps", number(c["qps"])), ("cqs", number(c["cqs"])), ("mrs", number(c["mrs"])),
                        ("srqs", number(c["srqs"])), ("ahs", number(c["ahs"])),
                    ])
                }
                var fields: [(String, JSON)] = [
                    ("pid", .int(Int(a.target.pid))), ("program", .string(a.program)),
                    ("lower", .string(a.process?["lower"] ?? "")), ("contexts", .array(contexts)),
                ]
                if let r = a.records.first(where: { $0.kind == "recovery" }) {
                    let phases: [(String, JSON)] = ["quiesce", "release", "device_wait", "rebuild", "reconnect", "replay"].map {
                        ($0, number(r["\($0)_ms"]))
                    }
                    fields.append(("recovery", .object([
                        ("count", number(r["count"])),
                        ("last", r["last"].flatMap { $0 == "none" ? nil : JSON.string($0) } ?? .null),
                        ("contexts", number(r["contexts"])),
                        ("phases_ms", .object(phases)),
                        ("replayed", number(r["replayed"])),
                        ("error", number(r["error"])),
                    ])))
                }
                processes.append(.object(fields))
            }
        }
        return JSON.object([
            ("runtime_dir", .string(directory)),
            ("processes", .array(processes)),
            ("failed", .array(failed)),
            ("removed_stale", .array(removed.map { .int(Int($0)) })),
        ]).text
    }

    private static func number(_ s: String?) -> JSON {
        guard let s else { return .null }
        if let i = Int(s) { return .int(i) }
        if let d = Double(s) { return .double(d) }
        return .string(s)
    }
}

/// Just enough JSON to print (keys keep their order).
indirect enum JSON {
    case null, bool(Bool), int(Int), double(Double), string(String), array([JSON]), object([(String, JSON)])

    var text: String {
        switch self {
        case .null: "null"
        case .bool(let b): b ? "true" : "false"
        case .int(let i): String(i)
        case .double(let d): d.isFinite ? String(d) : "null"
        case .string(let s): JSON.quote(s)
        case .array(let a): "[" + a.map(\.text).joined(separator: ",") + "]"
        case .object(let o): "{" + o.map { JSON.quote($0.0) + ":" + $0.1.text }.joined(separator: ",") + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}

extension String {
    /// "12.3" (one decimal).
    init(format1 v: Double) {
        let tenths = Int((v * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }

    var replacingUnderscores: String { String(map { $0 == "_" ? " " : $0 }) }
}
