import Logging
import NIOConcurrencyHelpers

/// Records every log event of the loggers it makes, with their metadata, so that tests can
/// read a transcript or check that no secret reached a log line.
package final class LogRecorder: Sendable {
    package struct Entry: Sendable, CustomStringConvertible {
        package var level: Logger.Level
        package var message: String
        /// The handler's metadata merged with the call's.
        package var metadata: Logger.Metadata
        /// `level message metadata`, everything a secret could hide in.
        package var description: String { "\(level) \(message) \(metadata)" }
    }

    private let entries = NIOLockedValueBox<[Entry]>([])

    package init() {}

    /// A logger that records into this recorder, at `level` (trace: everything).
    package func logger(label: String = "test", level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: label) { _ in RecordingLogHandler(recorder: self) }
        logger.logLevel = level
        return logger
    }

    package var recorded: [Entry] { entries.withLockedValue { $0 } }
    /// The messages alone, in order (a transcript: `C: NOOP`, `S: 250 ...`).
    package var messages: [String] { recorded.map(\.message) }
    /// Each entry as `level message metadata`.
    package var lines: [String] { recorded.map(\.description) }

    fileprivate func append(_ entry: Entry) { entries.withLockedValue { $0.append(entry) } }
}

/// The handler behind `LogRecorder.logger()`.
package struct RecordingLogHandler: LogHandler {
    private let recorder: LogRecorder
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .trace

    package init(recorder: LogRecorder) { self.recorder = recorder }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        recorder.append(.init(level: event.level, message: "\(event.message)", metadata: all))
    }
}
