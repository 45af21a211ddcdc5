import Foundation

/// Streams a step's output to stderr, each line prefixed with the step, its position and the
/// time since the command started: `[recovery 3/3 +1:05] == software HCA: planned, ...`.
/// When a step is quiet for a while (callgrind, a lab guest booting) it says it is still running.
actor Progress {
    private let started = ContinuousClock.now
    private var lastLine = ContinuousClock.now
    private var prefix = ""

    /// How long a step may print nothing before a "still running" line.
    static let quietInterval: Duration = .seconds(30)

    func begin(_ label: String, step: Int, of steps: Int) {
        prefix = "\(label) \(step)/\(steps)"
        lastLine = .now
    }

    func line(_ text: String) {
        lastLine = .now
        guard !text.allSatisfy(\.isWhitespace) else { return }
        FileHandle.standardError.write(Data("[\(prefix) +\(Self.format(started.duration(to: .now)))] \(text)\n".utf8))
    }

    /// Called periodically while a step runs.
    func tick() {
        let quiet = lastLine.duration(to: .now)
        if quiet >= Self.quietInterval {
            line("... still running (no output for \(Self.format(quiet)))")
        }
    }

    var elapsed: String { Self.format(started.duration(to: .now)) }

    /// m:ss
    static func format(_ duration: Duration) -> String {
        let seconds = Int(duration.components.seconds)
        return "\(seconds / 60):" + String(format: "%02d", seconds % 60)
    }
}
