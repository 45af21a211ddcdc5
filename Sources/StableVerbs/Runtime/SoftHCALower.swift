// The software HCA double as the lower interface (Sources/SoftHCA). Selected only when the
// configuration asks for it (STABLEVERBS_LOWER=softhca); its devices come from STABLEVERBS_SOFTHCA.

import SoftHCA
import StableVerbsABI

extension LowerSelection {
    static func softHCA(_ configuration: String) -> Result {
        do {
            let lower = try SoftHCA.lower(configurationString: configuration)
            // The double has none of the rarely used extra entry points: they answer EOPNOTSUPP.
            return Result(lower: lower, extra: sv_lower_extra(), failure: nil)
        } catch {
            return Result(lower: nil, failure: "\(error)")
        }
    }
}
