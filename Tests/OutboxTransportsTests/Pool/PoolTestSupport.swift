import NIOConcurrencyHelpers
import OutboxTestSupport
import Testing

@testable import OutboxTransports

struct PoolFakeSMTPError: Error, Equatable { var reply: String }
struct PoolFakeDiscard: ConnectionPoolDiscardingError {}
struct PoolFakeRefusal: ConnectionPoolRefusalError { var reply = "421 4.7.0 Too many connections" }

/// An in-memory connection that records calls and fails on request.
final class FakePoolConnection: PoolableConnection, CustomStringConvertible {
    enum Call: Equatable, Sendable { case noop, reset, close }

    let number: Int
    let generation: Int
    let credentialLifetime: Duration?
    private let state = NIOLockedValueBox((calls: [Call](), failNoop: false, failReset: false))

    init(number: Int, generation: Int, credentialLifetime: Duration?) {
        self.number = number
        self.generation = generation
        self.credentialLifetime = credentialLifetime
    }

    var description: String { "fake-\(number)" }
    var calls: [Call] { state.withLockedValue { $0.calls } }
    var isClosed: Bool { calls.contains(.close) }
    var noopCount: Int { calls.count(where: { $0 == .noop }) }
    func failNextChecks() {
        state.withLockedValue {
            $0.failNoop = true; $0.failReset = true
        }
    }

    func noop() async throws {
        let fail = state.withLockedValue { s in
            s.calls.append(.noop); return s.failNoop
        }
        if fail { throw PoolFakeSMTPError(reply: "421 4.4.2 connection dropped") }
    }

    func reset() async throws {
        let fail = state.withLockedValue { s in
            s.calls.append(.reset); return s.failReset
        }
        if fail { throw PoolFakeSMTPError(reply: "421 4.4.2 connection dropped") }
    }

    func close() async {
        state.withLockedValue { $0.calls.append(.close) }
    }
}

/// A factory of fake connections: counts how many are alive (made and not closed) and the
/// maximum ever alive, can fail the next attempts, can hold attempts until released.
final class FakePoolFactory: PoolConnectionFactory {
    private struct State {
        var made: [FakePoolConnection] = []
        var failures: [any Error] = []
        var lifetime: Duration?
        var attempts = 0
        var generations: [Int] = []
    }
    private let state = NIOLockedValueBox(State())

    init(credentialLifetime: Duration? = nil) {
        state.withLockedValue { $0.lifetime = credentialLifetime }
    }

    var made: [FakePoolConnection] { state.withLockedValue { $0.made } }
    var attempts: Int { state.withLockedValue { $0.attempts } }
    var generations: [Int] { state.withLockedValue { $0.generations } }
    var alive: Int { made.count(where: { !$0.isClosed }) }
    func failNextAttempts(with errors: [any Error]) { state.withLockedValue { $0.failures += errors } }
    func setCredentialLifetime(_ lifetime: Duration?) { state.withLockedValue { $0.lifetime = lifetime } }

    func makeConnection(generation: Int) async throws -> FakePoolConnection {
        await Task.yield()
        return try state.withLockedValue { state in
            state.attempts += 1
            state.generations.append(generation)
            if !state.failures.isEmpty { throw state.failures.removeFirst() }
            let connection = FakePoolConnection(number: state.made.count, generation: generation, credentialLifetime: state.lifetime)
            state.made.append(connection)
            return connection
        }
    }
}

/// Waits, yielding (never sleeping), until `condition` holds; fails the test after 10 s of
/// real time.
func poolEventually(
    _ what: String = "condition",
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () -> Bool
) async {
    let deadline = ContinuousClock.now.advanced(by: .seconds(10))
    while !condition() {
        if ContinuousClock.now > deadline {
            Issue.record("timed out waiting for \(what)", sourceLocation: sourceLocation)
            return
        }
        await Task.yield()
    }
}

typealias PoolUnderTest = ConnectionPool<FakePoolFactory, ManualClock>

/// Runs `body` with a pool whose run() is running; shuts it down afterwards.
func withPoolUnderTest(
    _ configuration: PoolConfiguration,
    factory: FakePoolFactory = FakePoolFactory(),
    clock: ManualClock = ManualClock(),
    _ body: (PoolUnderTest, FakePoolFactory, ManualClock) async throws -> Void
) async throws {
    let pool = PoolUnderTest(configuration: configuration, factory: factory, clock: clock)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await pool.run() }
        do {
            try await body(pool, factory, clock)
        } catch {
            pool.beginShutdown()
            throw error
        }
        await pool.shutdown()
        try await group.waitForAll()
    }
}
