import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

/// Coming back after an outage. postgres-nio's pool retries a refused connection with an
/// exponential backoff (100 ms x 1.25 per attempt, up to a minute): after a 30-second outage
/// its next attempt can be 10 s or more away, and calls wait for it. So a monitor watches the
/// calls; when they fail as unavailable or hang, it tries a connection of its own every second,
/// outside the pool, and once PostgreSQL answers again after a refused try, it puts a fresh
/// pool in place. Calls waiting in the old pool fail then (their callers try again: the
/// dispatcher within a second) and new calls go to the new pool.
extension PostgresOutboxStore {
    /// A pool and the task that runs it.
    struct Pool: Sendable {
        var client: PostgresClient
        var task: Task<Void, Never>
        var generation = 0

        static func start(_ configuration: PostgresClient.Configuration, logger: Logger, generation: Int = 0) -> Pool {
            let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
            return Pool(client: client, task: Task { await client.run() }, generation: generation)
        }
    }

    /// A call in flight: when it started (seconds since 1970), which method made it, and
    /// whether the monitor has reported it as stalled.
    struct Call: Sendable {
        var started: Double
        var function: String
        /// The pool it runs in.
        var generation: Int
        /// Gives the call up (its caller gets an unavailable error at once).
        var abandon: @Sendable () -> Void
        var reported = false
    }

    /// What the monitor sees of the calls.
    struct Recovery: Sendable {
        /// Calls in flight by token.
        var inFlight: [Int: Call] = [:]
        var nextToken = 0
        /// A call failed as unavailable since the last look.
        var failureSeen = false
        /// The monitor's own connection was refused: PostgreSQL was down.
        var down = false
        var monitor: Task<Void, Never>?
    }

    /// A call hanging this long makes the monitor look.
    static let stallSeconds = 2.0

    /// Runs `body` with the pool in use, tracked for the monitor. Errors come out as
    /// ``StoreError`` (``StoreError/Code/unavailable``, ``StoreError/Code/schemaMissing``,
    /// ``StoreError/Code/insufficientStorage`` or ``StoreError/Code/failed``) with a message of
    /// Outbox's own, so that no caller prints postgres-nio's generic description.
    /// A call still waiting in a pool that is replaced is given up (it fails as unavailable):
    /// a pool shut down while its server was away does not always fail what waits in it.
    func tracked<T: Sendable>(
        _ function: String = #function, _ body: @escaping @Sendable (PostgresClient) async throws -> T
    ) async throws -> T {
        let race = StoreRace<T>()
        let work = NIOLockedValueBox<Task<Void, Never>?>(nil)
        let abandon: @Sendable () -> Void = {
            let given = StoreError(.unavailable, "PostgreSQL went away while the call waited; the call was given up")
            race.finish(.failure(given)) { work.withLockedValue { $0 }?.cancel() }
        }
        let (token, client) = recovery.withLockedValue { r -> (Int, PostgresClient) in
            r.nextToken += 1
            let (client, generation) = pool.withLockedValue { ($0.client, $0.generation) }
            r.inFlight[r.nextToken] = Call(started: Date().timeIntervalSince1970, function: function, generation: generation, abandon: abandon)
            return (r.nextToken, client)
        }
        defer { _ = recovery.withLockedValue { $0.inFlight.removeValue(forKey: token) } }
        work.withLockedValue {
            $0 = Task {
                do { race.finish(.success(try await body(client))) } catch { race.finish(.failure(error)) }
            }
        }
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { race.wait($0) }
            } onCancel: {
                work.withLockedValue { $0 }?.cancel()
                race.finish(.failure(CancellationError()))
            }
        } catch {
            let failure = StoreFailure.classify(error)
            if failure == .unavailable { recovery.withLockedValue { $0.failureSeen = true } }
            throw StoreError(failure: failure, StoreFailure.describe(error))
        }
    }

    func startMonitor() {
        let task = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                guard let self, !Task.isCancelled else { return }
                await self.look()
            }
        }
        recovery.withLockedValue { $0.monitor = task }
    }

    /// One look: nothing to do while calls answer; otherwise a connection of its own, and a new
    /// pool when PostgreSQL answers again after it was down.
    private func look() async {
        let now = Date().timeIntervalSince1970
        let (suspect, down, stuck) = recovery.withLockedValue { r -> (Bool, Bool, [String]) in
            let stalled = r.inFlight.values.contains { now - $0.started >= Self.stallSeconds }
            let suspect = r.failureSeen || stalled
            r.failureSeen = false
            var stuck: [String] = []
            for (token, call) in r.inFlight where !call.reported && now - call.started >= 10 {
                r.inFlight[token]?.reported = true
                stuck.append(call.function)
            }
            return (suspect, r.down, stuck)
        }
        for function in stuck { logger.debug("a PostgreSQL call (\(function)) has been waiting for over 10 s") }
        guard suspect || down else { return }
        if await answers() {
            guard down else { return }
            recovery.withLockedValue { $0.down = false }
            replacePool()
        } else {
            recovery.withLockedValue { $0.down = true }
        }
    }

    /// Whether a new connection (outside the pool) is accepted within 2 s.
    private func answers() async -> Bool {
        var configuration = PostgresConnection.Configuration(
            host: self.configuration.host ?? "localhost", port: self.configuration.port ?? 5432,
            username: self.configuration.username, password: self.configuration.password,
            database: self.configuration.database, tls: .disable)
        configuration.options.connectTimeout = .seconds(2)
        let probe = configuration
        do {
            let connection = try await PostgresStoreProbe.bounded(.seconds(3)) {
                try await PostgresConnection.connect(configuration: probe, id: 0, logger: PostgresStoreProbe.quiet)
            }
            try? await connection.close()
            return true
        } catch {
            return false
        }
    }

    /// Puts a fresh pool in place; the old one shuts down (calls waiting in it fail).
    private func replacePool() {
        let old = pool.withLockedValue { current -> Pool in
            let old = current
            current = Pool.start(configuration, logger: poolLogger, generation: old.generation + 1)
            return old
        }
        let waiting = recovery.withLockedValue { r in r.inFlight.values.filter { $0.generation <= old.generation }.map(\.abandon) }
        logger.debug(
            "PostgreSQL answers again: a new connection pool replaces the one that was backing off (\(waiting.count) calls waiting in it are given up)"
        )
        for abandon in waiting { abandon() }
        old.task.cancel()
    }
}

enum PostgresStoreProbe {
    static let quiet = Logger(label: "outbox.store.postgres.probe", factory: { _ in SwiftLogNoOpLogHandler() })

    static func bounded<T: Sendable>(_ wait: Duration, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        try await StoreHealth.bounded(wait, kind: "postgres", operation)
    }
}
