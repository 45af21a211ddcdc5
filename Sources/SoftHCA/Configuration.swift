import CVerbs
import StableVerbsABI
import Glibc

extension SoftHCA {
    /// How the software HCA looks: its devices, ports, link layer and initial faults.
    ///
    /// It can be parsed from a string (the shim passes `STABLEVERBS_SOFTHCA` here): a comma-separated
    /// list of `key=value` items, all optional, in any order:
    ///
    /// | item | meaning | default |
    /// | --- | --- | --- |
    /// | `devices=N` | number of devices, named `<name>0`, `<name>1`, … | `2` |
    /// | `ports=N` | ports per device (1…8) | `1` |
    /// | `link=ib` / `link=eth` (also `roce`, `ethernet`, `infiniband`) | link layer: InfiniBand with LIDs, or Ethernet (RoCE v2, LID 0, `is_global` required) | `ib` |
    /// | `name=PREFIX` | device name prefix | `softhca` |
    /// | `vectors=N` | completion vectors per context (`num_comp_vectors`) | `1` |
    /// | `keys=same` / `keys=distinct` | rkey equal to lkey (like hardware), or different | `same` |
    /// | `disassoc_destroy=0/1` | destroying objects of a vanished device succeeds (1) or fails with EIO (0), like `RDMAV_ALLOW_DISASSOC_DESTROY` | that variable's presence |
    /// | `fail=ENTRY:ERRNO[:COUNT[:SKIP[:DEVICE]]]` | repeatable: make COUNT (default 1, `*` = forever) calls of ENTRY fail with ERRNO, after letting SKIP (default 0) calls through, only on DEVICE if given | none |
    ///
    /// ENTRY is an `sv_lower` slot name (`create_qp`, `reg_mr`, `open_device`, …) or an object op
    /// (`post_send`, `post_recv`, `post_srq_recv`, `poll_cq`, `req_notify_cq`, `query_port`,
    /// `create_qp_ex`, `create_cq_ex`, `query_device_ex`, `wr_complete`, `start_poll`). A fault on a
    /// family name also hits its extended form (`create_qp` hits `create_qp_ex`, `create_cq` hits
    /// `create_cq_ex`, `reg_mr` hits `reg_mr_iova2`, `query_device` hits `query_device_ex`,
    /// `post_send` hits `wr_complete`). ERRNO is a number or a name (`ENOMEM`, `EIO`, …).
    /// The special ENTRY `completion_error` makes the next executed send work requests complete in
    /// error: its value is an `ibv_wc_status` (a number or a name such as `RETRY_EXC_ERR`).
    ///
    /// Example: `devices=2,link=eth,fail=create_qp:ENOMEM:1,fail=completion_error:RETRY_EXC_ERR:1:3`.
    public struct Configuration: Sendable, Equatable, CustomStringConvertible {
        public enum LinkLayer: String, Sendable, Equatable {
            case infiniband = "ib"
            case ethernet = "eth"
        }

        public var devices: Int = 2
        public var portsPerDevice: Int = 1
        public var linkLayer: LinkLayer = .infiniband
        public var namePrefix: String = "softhca"
        public var completionVectors: Int = 1
        public var distinctRemoteKeys: Bool = false
        public var allowDisassociatedDestroy: Bool = getenv("RDMAV_ALLOW_DISASSOC_DESTROY") != nil
        public var faults: [Fault] = []

        public init(devices: Int = 2, portsPerDevice: Int = 1, linkLayer: LinkLayer = .infiniband) {
            self.devices = devices
            self.portsPerDevice = portsPerDevice
            self.linkLayer = linkLayer
        }

        /// Parses the `STABLEVERBS_SOFTHCA` syntax described above. An empty string is the default.
        public init(parsing text: String) throws(ConfigurationError) {
            self.init()
            for item in text.split(separator: ",", omittingEmptySubsequences: true) {
                let trimmed = item.trimmingSpaces
                if trimmed.isEmpty { continue }
                guard let eq = trimmed.firstIndex(of: "=") else {
                    throw ConfigurationError("'\(trimmed)': expected key=value")
                }
                let k = String(trimmed[..<eq]).lowercased()
                let v = String(trimmed[trimmed.index(after: eq)...])
                switch k {
                case "devices":
                    guard let n = Int(v), n >= 0, n <= 64 else { throw ConfigurationError("devices=\(v): expected 0…64") }
                    devices = n
                case "ports":
                    guard let n = Int(v), n >= 1, n <= 8 else { throw ConfigurationError("ports=\(v): expected 1…8") }
                    portsPerDevice = n
                case "link":
                    switch v.lowercased() {
                    case "ib", "infiniband": linkLayer = .infiniband
                    case "eth", "ethernet", "roce", "rocev2": linkLayer = .ethernet
                    default: throw ConfigurationError("link=\(v): expected ib or eth")
                    }
                case "name":
                    guard !v.isEmpty, v.utf8.count < 60 else { throw ConfigurationError("name=\(v): expected a short prefix") }
                    namePrefix = v
                case "vectors":
                    guard let n = Int(v), n >= 1, n <= 1024 else { throw ConfigurationError("vectors=\(v): expected 1…1024") }
                    completionVectors = n
                case "keys":
                    switch v.lowercased() {
                    case "same": distinctRemoteKeys = false
                    case "distinct": distinctRemoteKeys = true
                    default: throw ConfigurationError("keys=\(v): expected same or distinct")
                    }
                case "disassoc_destroy":
                    guard let b = parseBool(v) else { throw ConfigurationError("disassoc_destroy=\(v): expected 0 or 1") }
                    allowDisassociatedDestroy = b
                case "fail":
                    faults.append(try Fault(parsing: v))
                default:
                    throw ConfigurationError("unknown key '\(k)'")
                }
            }
        }

        public var description: String {
            var items = [
                "devices=\(devices)", "ports=\(portsPerDevice)", "link=\(linkLayer.rawValue)",
                "name=\(namePrefix)", "vectors=\(completionVectors)",
                "keys=\(distinctRemoteKeys ? "distinct" : "same")",
                "disassoc_destroy=\(allowDisassociatedDestroy ? 1 : 0)",
            ]
            items += faults.map { "fail=\($0)" }
            return items.joined(separator: ",")
        }
    }

    /// A planned failure: `count` calls of `entry` (after `skip` successful ones) fail with `value`
    /// (an errno, or an `ibv_wc_status` for `completion_error`). `count == nil` means forever.
    public struct Fault: Sendable, Equatable, CustomStringConvertible {
        public var entry: String
        public var value: Int32
        public var count: Int?
        public var skip: Int
        public var device: String?
        /// The call that takes the fault also makes its device vanish (`.fatal`) before it fails
        /// with `value` (EIO): a device lost again in the middle of a rebuild.
        public var removesDevice: Bool

        public init(entry: String, value: Int32, count: Int? = 1, skip: Int = 0, device: String? = nil, removesDevice: Bool = false) {
            self.entry = entry
            self.value = value
            self.count = count
            self.skip = skip
            self.device = device
            self.removesDevice = removesDevice
        }

        /// `ENTRY:VALUE[:COUNT[:SKIP[:DEVICE]]]`; VALUE `gone`: the device vanishes in that call (EIO).
        public init(parsing text: String) throws(ConfigurationError) {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false).map { String($0) }
            guard parts.count >= 2, parts.count <= 5, !parts[0].isEmpty else {
                throw ConfigurationError("fail=\(text): expected ENTRY:ERRNO[:COUNT[:SKIP[:DEVICE]]]")
            }
            entry = parts[0]
            let statusEntry = entry == "completion_error"
            removesDevice = !statusEntry && parts[1] == "gone"
            guard let v = removesDevice ? EIO : statusEntry ? parseStatus(parts[1]) : parseErrno(parts[1]) else {
                throw ConfigurationError("fail=\(text): unknown \(statusEntry ? "completion status" : "errno") '\(parts[1])'")
            }
            value = v
            count = 1
            skip = 0
            device = nil
            if parts.count >= 3 {
                if parts[2] == "*" || parts[2] == "-1" {
                    count = nil
                } else if let n = Int(parts[2]), n >= 1 {
                    count = n
                } else {
                    throw ConfigurationError("fail=\(text): count '\(parts[2])' must be a positive number or *")
                }
            }
            if parts.count >= 4 {
                guard let n = Int(parts[3]), n >= 0 else { throw ConfigurationError("fail=\(text): skip '\(parts[3])' must be >= 0") }
                skip = n
            }
            if parts.count == 5, !parts[4].isEmpty { device = parts[4] }
        }

        public var description: String {
            var s = "\(entry):\(removesDevice ? "gone" : String(value)):\(count.map(String.init) ?? "*")"
            if skip != 0 || device != nil { s += ":\(skip)" }
            if let device { s += ":\(device)" }
            return s
        }
    }

    public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
        public var description: String
        init(_ message: String) { description = "STABLEVERBS_SOFTHCA: " + message }
    }
}

private func parseBool(_ s: String) -> Bool? {
    switch s.lowercased() {
    case "1", "yes", "true", "on": return true
    case "0", "no", "false", "off": return false
    default: return nil
    }
}

private let errnoNames: [String: Int32] = [
    "EPERM": EPERM, "ENOENT": ENOENT, "EINTR": EINTR, "EIO": EIO, "ENXIO": ENXIO, "EAGAIN": EAGAIN,
    "ENOMEM": ENOMEM, "EACCES": EACCES, "EFAULT": EFAULT, "EBUSY": EBUSY, "EEXIST": EEXIST,
    "ENODEV": ENODEV, "EINVAL": EINVAL, "ENFILE": ENFILE, "EMFILE": EMFILE, "ENOSPC": ENOSPC,
    "ENOSYS": ENOSYS, "ENODATA": ENODATA, "EPROTO": EPROTO, "EOPNOTSUPP": EOPNOTSUPP,
    "ECONNRESET": ECONNRESET, "ENOBUFS": ENOBUFS, "ETIMEDOUT": ETIMEDOUT, "ECONNREFUSED": ECONNREFUSED,
    "EHOSTUNREACH": EHOSTUNREACH, "ESTALE": ESTALE, "ECANCELED": ECANCELED,
]

func parseErrno(_ s: String) -> Int32? {
    if let n = Int32(s), n > 0 { return n }
    return errnoNames[s.uppercased()]
}

private let statusNames: [String] = [
    "SUCCESS", "LOC_LEN_ERR", "LOC_QP_OP_ERR", "LOC_EEC_OP_ERR", "LOC_PROT_ERR", "WR_FLUSH_ERR",
    "MW_BIND_ERR", "BAD_RESP_ERR", "LOC_ACCESS_ERR", "REM_INV_REQ_ERR", "REM_ACCESS_ERR", "REM_OP_ERR",
    "RETRY_EXC_ERR", "RNR_RETRY_EXC_ERR", "LOC_RDD_VIOL_ERR", "REM_INV_RD_REQ_ERR", "REM_ABORT_ERR",
    "INV_EECN_ERR", "INV_EEC_STATE_ERR", "FATAL_ERR", "RESP_TIMEOUT_ERR", "GENERAL_ERR", "TM_ERR",
    "TM_RNDV_INCOMPLETE",
]

func parseStatus(_ s: String) -> Int32? {
    if let n = Int32(s), n > 0, n < Int32(statusNames.count) { return n }
    var name = s.uppercased()
    if name.hasPrefix("IBV_WC_") { name.removeFirst(7) }
    if let i = statusNames.firstIndex(of: name), i > 0 { return Int32(i) }
    return nil
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return s
    }
}
