import Foundation
import OutboxTransports

/// A point in wall-clock time as the queue records it (when a message was queued, when it is
/// due): a duration since 1970-01-01 00:00 UTC. The store keeps it as seconds (`Double`).
public struct QueueInstant: InstantProtocol, Sendable, Hashable, CustomStringConvertible {
    /// The time since 1970-01-01 00:00 UTC.
    public var sinceEpoch: Duration

    /// An instant `sinceEpoch` after 1970-01-01 00:00 UTC.
    public init(sinceEpoch: Duration) {
        self.sinceEpoch = sinceEpoch
    }

    /// From the store's seconds since 1970.
    public init(secondsSince1970 seconds: Double) {
        self.sinceEpoch = .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    /// The store's seconds since 1970.
    public var secondsSince1970: Double { sinceEpoch.seconds }

    /// The instant `duration` later.
    public func advanced(by duration: Duration) -> QueueInstant { QueueInstant(sinceEpoch: sinceEpoch + duration) }
    /// The time from this instant to `other` (negative when `other` is earlier).
    public func duration(to other: QueueInstant) -> Duration { other.sinceEpoch - sinceEpoch }
    /// Earlier instants come first.
    public static func < (lhs: QueueInstant, rhs: QueueInstant) -> Bool { lhs.sinceEpoch < rhs.sinceEpoch }

    /// `SECONDS s since 1970`.
    public var description: String { "\(secondsSince1970) s since 1970" }
}

/// The clock the dispatcher and the retry policy run on: wall-clock instants (recorded with each
/// message, shared by every instance of a PostgreSQL queue) that can be slept until. Real time
/// is ``SystemQueueClock``; a test injects one it advances by hand.
public protocol QueueClock: Clock, Sendable where Instant == QueueInstant, Duration == Swift.Duration {}

/// Real time: `Date()` for the instant, `Task.sleep` for the waits.
public struct SystemQueueClock: QueueClock {
    /// The system's clock.
    public init() {}

    /// The current wall-clock time.
    public var now: QueueInstant { QueueInstant(secondsSince1970: Date().timeIntervalSince1970) }
    /// One microsecond.
    public var minimumResolution: Duration { .microseconds(1) }

    /// Sleeps until `deadline` (returns at once when it has passed); throws when the task is
    /// cancelled.
    public func sleep(until deadline: QueueInstant, tolerance: Duration?) async throws {
        let wait = now.duration(to: deadline)
        if wait > .zero { try await Task.sleep(for: wait, tolerance: tolerance) }
    }
}

extension Duration {
    /// A duration of `seconds` (fractional).
    static func seconds(fraction seconds: Double) -> Duration {
        .nanoseconds(Int64((seconds * 1e9).rounded()))
    }
}
