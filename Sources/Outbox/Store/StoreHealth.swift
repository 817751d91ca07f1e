import Foundation
import Logging
import NIOConcurrencyHelpers

/// Whether the store answers, as seen by everything that calls it (the dispatcher, the HTTP
/// API, the listener), and the one place that logs an outage: a line when it starts, one every
/// `reminder` while it lasts, one when it ends; a missing schema once. Callers report each
/// call's outcome; nothing is logged per request.
package final class StoreHealth: Sendable {
    /// What the store's last calls showed.
    package enum Condition: Sendable, Equatable {
        case healthy
        /// Calls fail or time out as ``StoreFailure/unavailable``.
        case unavailable
        /// Calls fail as ``StoreFailure/schemaMissing``.
        case schemaMissing
    }

    private struct State {
        var condition: Condition = .healthy
        var since: Double = 0
        var lastLine: Double = 0
        var detail = ""
        var refused = 0
    }

    private let state = NIOLockedValueBox(State())
    private let waitBox: NIOLockedValueBox<Duration>
    private let logger: Logger
    private let kind: String
    private let reminder: Double
    private let boundsCalls: Bool
    private let now: @Sendable () -> Double

    /// `kind` names the store in log lines (`postgres`, `sqlite`); `wait` bounds a client's call
    /// when `boundsCalls` (by default for every store but SQLite: a local file is slow at worst,
    /// never away, and a call cut short there would only be retried).
    package init(
        kind: String, wait: Duration = .seconds(5), logger: Logger, reminder: Duration = .seconds(30), boundsCalls: Bool? = nil,
        now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.kind = kind
        self.boundsCalls = boundsCalls ?? (kind != "sqlite")
        self.waitBox = NIOLockedValueBox(wait)
        self.logger = logger
        self.reminder = Double(reminder.components.seconds)
        self.now = now
    }

    /// `store-unavailable-wait`: how long a call made for a client may take.
    package var wait: Duration {
        get { waitBox.withLockedValue { $0 } }
        set { waitBox.withLockedValue { $0 = newValue } }
    }

    /// The condition now.
    package var condition: Condition { state.withLockedValue { $0.condition } }

    /// Why the store cannot serve, for `/readyz`; nil when it can.
    package var problem: String? {
        let (condition, detail, since) = state.withLockedValue { ($0.condition, $0.detail, $0.since) }
        let seconds = Int(max(0, now() - since))
        switch condition {
        case .healthy: return nil
        case .unavailable: return "the store (\(kind)) has been unavailable for \(seconds) s: \(detail)"
        case .schemaMissing: return "the store's (\(kind)) schema is missing or not Outbox's: \(detail)"
        }
    }

    /// A call answered: an outage ends here.
    package func succeeded() {
        let ended: (Condition, Double, Int)? = state.withLockedValue { s in
            guard s.condition != .healthy else { return nil }
            let was = (s.condition, s.since, s.refused)
            s = State()
            return was
        }
        guard let ended else { return }
        let (condition, since, refused) = ended
        let seconds = Int((now() - since).rounded())
        switch condition {
        case .unavailable:
            logger.notice("the store (\(kind)) answers again after \(seconds) s unavailable; \(refused) calls failed meanwhile")
        case .schemaMissing:
            logger.notice("the store's (\(kind)) schema is back after \(seconds) s")
        case .healthy: break
        }
    }

    /// A call failed with `error`; returns its classification. Unavailable and schema failures
    /// change the condition (and log as the type says); others are the caller's to log.
    @discardableResult
    package func failed(_ error: any Error) -> StoreFailure {
        let failure = StoreFailure.classify(error)
        let condition: Condition
        switch failure {
        case .unavailable: condition = .unavailable
        case .schemaMissing: condition = .schemaMissing
        case .insufficientStorage, .other: return failure
        }
        let detail = StoreFailure.describe(error)
        let t = now()
        enum Line {
            case started
            case reminder(Int)
            case changed(Condition)
        }
        let line: Line? = state.withLockedValue { s in
            s.refused += 1
            if s.condition == .healthy {
                s = State(condition: condition, since: t, lastLine: t, detail: detail, refused: 1)
                return .started
            }
            if s.condition != condition {
                let was = s.condition
                s.condition = condition
                s.detail = detail
                s.lastLine = t
                return .changed(was)
            }
            s.detail = detail
            if condition == .unavailable, t - s.lastLine >= reminder {
                s.lastLine = t
                return .reminder(Int((t - s.since).rounded()))
            }
            return nil
        }
        switch line {
        case .started, .changed:
            if condition == .unavailable {
                logger.warning(
                    "the store (\(kind)) is unavailable: \(detail); requests are refused for now (HTTP 503 store_unavailable, SMTP 451 4.3.0) and the dispatcher waits for it"
                )
            } else {
                logger.error(
                    "the store's (\(kind)) schema is missing or not Outbox's (\(detail)): the database was replaced or emptied under Outbox; requests are refused (HTTP 503 store_schema_missing) until Outbox is restarted (it creates its tables at start) or [outbox] store points at Outbox's database"
                )
            }
        case .reminder(let seconds):
            logger.warning("the store (\(kind)) is still unavailable after \(seconds) s: \(detail)")
        case nil: break
        }
        return failure
    }

    /// Runs a store call made on behalf of a client, bounded by ``wait`` (unless the store is
    /// SQLite): past it the call is cancelled (a connection it waits for is given up, so nothing
    /// is stored) and ``StoreError/Code/unavailable`` is thrown. Reports the outcome.
    package func call<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        do {
            let value = boundsCalls ? try await Self.bounded(wait, kind: kind, operation) : try await operation()
            succeeded()
            return value
        } catch {
            failed(error)
            throw error
        }
    }

    /// `operation` run as its own task; its result, or ``StoreError/Code/unavailable`` once
    /// `wait` has passed (the task is cancelled then and left to end on its own: a caller is
    /// never held past `wait` by a call that does not notice cancellation).
    package static func bounded<T: Sendable>(
        _ wait: Duration, kind: String, _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let race = StoreRace<T>()
        let work = Task {
            do { race.finish(.success(try await operation())) } catch { race.finish(.failure(error)) }
        }
        let timer = Task {
            try? await Task.sleep(for: wait)
            let seconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
            let timedOut = StoreError(
                .unavailable, "the store (\(kind)) did not answer within \(seconds.formatted()) s ([outbox] store-unavailable-wait)")
            race.finish(.failure(timedOut)) { work.cancel() }
        }
        defer { timer.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { race.wait($0) }
        } onCancel: {
            work.cancel()
            race.finish(.failure(CancellationError()))
        }
    }
}

/// The first of several outcomes (a call's result, a timeout, a pool replaced), handed to one
/// waiting continuation.
final class StoreRace<T: Sendable>: Sendable {
    private struct State {
        var result: Result<T, any Error>?
        var continuation: CheckedContinuation<T, any Error>?
        var delivered = false
    }
    private let state = NIOLockedValueBox(State())

    /// Records `result` if it is the first; true when it was. `whenFirst` runs before the waiter
    /// is resumed (so a loser cancelled there is cancelled by the time the waiter goes on).
    @discardableResult
    func finish(_ result: Result<T, any Error>, whenFirst: () -> Void = {}) -> Bool {
        let (first, continuation) = state.withLockedValue { s -> (Bool, CheckedContinuation<T, any Error>?) in
            guard s.result == nil, !s.delivered else { return (false, nil) }
            if let c = s.continuation {
                s.continuation = nil
                s.delivered = true
                return (true, c)
            }
            s.result = result
            return (true, nil)
        }
        if first { whenFirst() }
        continuation?.resume(with: result)
        return first
    }

    func wait(_ continuation: CheckedContinuation<T, any Error>) {
        let ready = state.withLockedValue { s -> Result<T, any Error>? in
            if let r = s.result {
                s.result = nil
                s.delivered = true
                return r
            }
            s.continuation = continuation
            return nil
        }
        if let ready { continuation.resume(with: ready) }
    }
}
