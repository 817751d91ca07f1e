import NIOConcurrencyHelpers
import Outbox

/// The dispatcher's clock in tests: `now` moves only when the test advances it; a sleep waits
/// its duration in real time, so the dispatcher's polling goes on.
package final class ManualQueueClock: QueueClock {
    private let value: NIOLockedValueBox<Double>

    /// A clock at `secondsSince1970`.
    package init(secondsSince1970: Double = 1_000_000) {
        value = NIOLockedValueBox(secondsSince1970)
    }

    package var now: QueueInstant { QueueInstant(secondsSince1970: seconds) }
    /// `now` as the store's seconds since 1970.
    package var seconds: Double { value.withLockedValue { $0 } }
    package var minimumResolution: Duration { .nanoseconds(1) }

    /// Moves `now` on by `seconds`.
    package func advance(seconds: Double) { value.withLockedValue { $0 += seconds } }

    package func sleep(until deadline: QueueInstant, tolerance: Duration?) async throws {
        let wait = now.duration(to: deadline)
        if wait > .zero { try await Task.sleep(for: wait) }
    }
}
