import Foundation
import Subprocess

/// Small commands whose output is a value (git's).
enum CommandOutput {
    static func of(_ executable: String, _ arguments: [String]) async throws -> String {
        let result = try await Subprocess.run(.name(executable), arguments: Arguments(arguments), output: .string(limit: 1 << 16))
        guard result.terminationStatus.isSuccess else {
            throw BenchError("\(executable) \(arguments.joined(separator: " ")) failed (\(result.terminationStatus))")
        }
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func succeeds(_ executable: String, _ arguments: [String]) async throws -> Bool {
        try await Subprocess.run(.name(executable), arguments: Arguments(arguments), output: .discarded).terminationStatus.isSuccess
    }
}
