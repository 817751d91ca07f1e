import Foundation
import Logging
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

    /// What the monitor sees of the calls.
    struct Recovery: Sendable {
        /// Calls in flight: token -> start (seconds since 1970).
        var inFlight: [Int: Double] = [:]
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
    func tracked<T: Sendable>(_ body: (PostgresClient) async throws -> T) async throws -> T {
        let (token, client) = recovery.withLockedValue { r -> (Int, PostgresClient) in
            r.nextToken += 1
            r.inFlight[r.nextToken] = Date().timeIntervalSince1970
            return (r.nextToken, pool.withLockedValue { $0.client })
        }
        defer { _ = recovery.withLockedValue { $0.inFlight.removeValue(forKey: token) } }
        do {
            return try await body(client)
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
        let (suspect, down) = recovery.withLockedValue { r -> (Bool, Bool) in
            let stalled = r.inFlight.values.contains { now - $0 >= Self.stallSeconds }
            let suspect = r.failureSeen || stalled
            r.failureSeen = false
            return (suspect, r.down)
        }
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
        logger.debug("PostgreSQL answers again: a new connection pool replaces the one that was backing off")
        old.task.cancel()
    }
}

enum PostgresStoreProbe {
    static let quiet = Logger(label: "outbox.store.postgres.probe", factory: { _ in SwiftLogNoOpLogHandler() })

    static func bounded<T: Sendable>(_ wait: Duration, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        try await StoreHealth.bounded(wait, kind: "postgres", operation)
    }
}
