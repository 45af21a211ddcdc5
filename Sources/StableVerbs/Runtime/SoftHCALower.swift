// The software HCA double as the lower interface (Sources/SoftHCA).

import SoftHCA
import StableVerbsABI

extension LowerSelection {
    static func softHCA(_ configuration: String) -> Result {
        // Adapted to the SoftHCA module's API once it lands.
        return Result(lower: nil, failure: "the software HCA is not available in this build")
    }
}
