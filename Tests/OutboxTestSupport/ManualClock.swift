import NIOConcurrencyHelpers

/// A clock that only moves when the test says so. `sleep(until:)` suspends until `advance`
/// reaches the deadline, or throws `CancellationError` when the sleeping task is cancelled.
/// `seconds` reads the same time as a `Double`, for code that takes a `now: () -> Double`.
package final class ManualClock: Clock, Sendable {
    package struct Instant: InstantProtocol, CustomStringConvertible {
        package var offset: Duration
        package init(offset: Duration) { self.offset = offset }
        package func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        package func duration(to other: Instant) -> Duration { other.offset - offset }
        package static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
        package var description: String { "t+\(offset)" }
    }

    private struct Sleeper {
        var deadline: Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: Instant
        var sleepers: [Int: Sleeper] = [:]
        var nextID = 0
    }

    private let state: NIOLockedValueBox<State>

    /// A clock at `start` (its instants are offsets from an arbitrary origin).
    package init(start: Duration = .zero) {
        state = NIOLockedValueBox(State(now: Instant(offset: start)))
    }

    package var now: Instant { state.withLockedValue { $0.now } }
    package var minimumResolution: Duration { .zero }
    /// How many tasks sleep on this clock now.
    package var sleeperCount: Int { state.withLockedValue { $0.sleepers.count } }

    /// `now` in seconds from the origin.
    package var seconds: Double {
        let (whole, attoseconds) = now.offset.components
        return Double(whole) + Double(attoseconds) / 1e18
    }

    package func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let id = state.withLockedValue { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Outcome { case wait, wake, cancel }
                let outcome = state.withLockedValue { state -> Outcome in
                    if Task.isCancelled { return .cancel }
                    if deadline <= state.now { return .wake }
                    state.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return .wait
                }
                switch outcome {
                case .wait: break
                case .wake: continuation.resume()
                case .cancel: continuation.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            state.withLockedValue { $0.sleepers.removeValue(forKey: id) }?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves the time forward and wakes, in deadline order, every sleeper now due.
    package func advance(by duration: Duration) {
        let due = state.withLockedValue { state -> [Sleeper] in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for id in due.keys { state.sleepers[id] = nil }
            return due.values.sorted { $0.deadline < $1.deadline }
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// `advance(by:)` in seconds.
    package func advance(seconds: Double) { advance(by: .seconds(seconds)) }
}
