/// A failure reported to the user as one sentence; the command then exits with status 1.
struct BenchError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}
