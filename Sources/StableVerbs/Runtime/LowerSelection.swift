// Which lower interface the shim drives: the real libibverbs (default) or the software HCA double.
// The double is selected only when asked for (STABLEVERBS_LOWER=softhca, or StableVerbs.configure
// before first use), never as a fallback.

import Glibc
import SoftHCA
import StableVerbsABI

enum LowerSelection {
    struct Result {
        var lower: UnsafePointer<sv_lower>?
        var extra = sv_lower_extra()
        var failure: String?
    }

    static func select(_ configuration: Configuration) -> Result {
        switch configuration.lower.lowercased() {
        case "libibverbs", "ibverbs", "real":
            var why: UnsafePointer<CChar>? = nil
            guard let lower = sv_lower_real(&why) else {
                let reason = why.map { String(cString: $0) } ?? "unknown reason"
                return Result(lower: nil, failure: "cannot use libibverbs.so.1: \(reason)")
            }
            return Result(lower: lower, extra: sv_lower_real_extra().pointee, failure: nil)
        case "softhca":
            return softHCA(configuration.softHCA ?? "")
        default:
            return Result(lower: nil, failure: "unknown STABLEVERBS_LOWER=\(configuration.lower) (expected libibverbs or softhca)")
        }
    }
}
