import OutboxTestSupport
import Testing

@testable import OutboxTransports

private func config(size: Int = 1) -> PoolConfiguration {
    PoolConfiguration(
        size: size, checkIdleTime: .seconds(30), maxIdleTime: .seconds(300),
        tokenExpiryMargin: .seconds(10), refusalCoolDown: .seconds(60), growAfterSuccessfulSends: 0)
}

/// What a `lease(immediate:handBack:)` caller got in these tests.
private enum Got: Sendable, Equatable {
    case immediate(PoolConnectionID)
    /// Handed off; `duringRelease` says whether it happened inside the `release` call.
    case handedOff(PoolConnectionID, duringRelease: Bool)
}

/// Set around a `release` call, to see where a hand-back runs: a task-local value, so only code
/// running inside that call (in the releasing task) sees it, not the pool's own tasks meanwhile.
private final class ReleaseMarker: Sendable {
    @TaskLocal static var releasing = false
    var inRelease: Bool { Self.releasing }
    func around(_ body: () -> Void) {
        Self.$releasing.withValue(true) { body() }
    }
}

/// `ConnectionPool.lease(immediate:handBack:)`: a waiting caller's connection is handed to its
/// hand-back where the connection is released (for SMTP: on the event loop, at the previous
/// message's dot), with the same order, limits and cancellation as `lease()`.
@Suite("ConnectionPool: hand-back leases")
struct ConnectionPoolHandBackTests {
    private func leaseWithHandBack(
        _ pool: PoolUnderTest, marker: ReleaseMarker,
        order: PoolConcurrencyMeter? = nil, tag: Int = 0
    ) async throws -> (Got, ConnectionPoolLease<FakePoolConnection>) {
        try await pool.lease(
            immediate: { lease in (Got.immediate(lease.connectionID), lease) },
            handBack: { lease, continuation in
                order?.record(tag)
                continuation.resume(returning: (.handedOff(lease.connectionID, duringRelease: marker.inRelease), lease))
            })
    }

    /// Holds the pool's one connection, queues a hand-back caller, releases the connection and
    /// returns what the caller got.
    private func handBackOfTheOnlyConnection(_ pool: PoolUnderTest) async throws
        -> (held: ConnectionPoolLease<FakePoolConnection>, got: Got, lease: ConnectionPoolLease<FakePoolConnection>)
    {
        let held = try await pool.lease()
        let marker = ReleaseMarker()
        let waiter = Task { try await leaseWithHandBack(pool, marker: marker) }
        // Parked, not only queued: a release while the request is still registering answers it
        // there, and the caller runs the hand-back itself (right, but not what is tested here).
        await poolEventually("waiter parked") { pool.parkedRequests == 1 }
        marker.around { pool.release(held) }
        let (got, lease) = try await waiter.value
        return (held, got, lease)
    }

    @Test func anIdleConnectionComesAtOnceWithoutTheHandBack() async throws {
        try await withPoolUnderTest(config()) { pool, _, _ in
            let first = try await pool.lease()
            pool.release(first)
            let (got, lease) = try await leaseWithHandBack(pool, marker: ReleaseMarker())
            #expect(got == .immediate(first.connectionID))
            pool.release(lease)
        }
    }

    @Test func aWaitingCallersHandBackRunsInsideTheRelease() async throws {
        try await withPoolUnderTest(config()) { pool, factory, _ in
            let (held, got, lease) = try await handBackOfTheOnlyConnection(pool)
            #expect(got == .handedOff(held.connectionID, duringRelease: true))
            #expect(pool.statistics.leased == 1 && pool.statistics.waiting == 0)
            pool.release(lease)
            #expect(factory.made.count == 1)
        }
    }

    @Test func handBackAndTaskWaitersAreServedInArrivalOrder() async throws {
        try await withPoolUnderTest(config()) { pool, _, _ in
            let held = try await pool.lease()
            let meter = PoolConcurrencyMeter()
            let marker = ReleaseMarker()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 1...6 {
                    group.addTask {
                        if i % 2 == 0 {
                            let (_, lease) = try await leaseWithHandBack(pool, marker: marker, order: meter, tag: i)
                            pool.release(lease)
                        } else {
                            try await pool.withConnection { _ in meter.record(i) }
                        }
                    }
                    await poolEventually("waiter \(i) queued") { pool.statistics.waiting == i }
                }
                pool.release(held)
                try await group.waitForAll()
            }
            #expect(meter.order == [1, 2, 3, 4, 5, 6])
        }
    }

    @Test func aCancelledHandBackWaiterThrowsAndItsHandBackNeverRuns() async throws {
        try await withPoolUnderTest(config()) { pool, factory, _ in
            let held = try await pool.lease()
            let calls = PoolConcurrencyMeter()
            let waiter = Task {
                try await pool.lease(
                    immediate: { _ in 0 },
                    handBack: { lease, continuation in
                        calls.record(1)
                        pool.release(lease)
                        continuation.resume(returning: 1)
                    })
            }
            await poolEventually("waiter queued") { pool.statistics.waiting == 1 }
            waiter.cancel()
            await #expect(throws: CancellationError.self) { try await waiter.value }
            #expect(pool.statistics.waiting == 0)
            pool.release(held)
            #expect(calls.order.isEmpty)
            #expect(try await pool.withConnection { $0 === held.connection })
            #expect(factory.attempts == 1)
        }
    }

    @Test func shutdownFailsAWaitingHandBackCallerWithoutCallingIt() async throws {
        let pool = PoolUnderTest(configuration: config(), factory: FakePoolFactory(), clock: ManualClock())
        let runner = Task { await pool.run() }
        let held = try await pool.lease()
        let calls = PoolConcurrencyMeter()
        let waiter = Task {
            try await pool.lease(
                immediate: { _ in 0 },
                handBack: { _, continuation in
                    calls.record(1)
                    continuation.resume(returning: 1)
                })
        }
        await poolEventually("waiter queued") { pool.statistics.waiting == 1 }
        let shutdown = Task { await pool.shutdown() }
        await #expect(throws: ConnectionPoolError.shutdown) { try await waiter.value }
        #expect(calls.order.isEmpty)
        pool.release(held)
        await shutdown.value
        await runner.value
    }

    @Test func aHandBackAfterANoopCheckRunsOffTheReleasingCall() async throws {
        // The connection needs a NOOP first (check-idle-time 0): the hand-back comes from the
        // pool's own task after the check, not from inside release.
        let configuration = PoolConfiguration(
            size: 1, checkIdleTime: .zero, maxIdleTime: .seconds(300),
            tokenExpiryMargin: .seconds(10), refusalCoolDown: .seconds(60), growAfterSuccessfulSends: 0)
        try await withPoolUnderTest(configuration) { pool, _, _ in
            let (held, got, lease) = try await handBackOfTheOnlyConnection(pool)
            #expect(got == .handedOff(held.connectionID, duringRelease: false))
            #expect(held.connection.calls.contains(.noop))
            pool.release(lease)
        }
    }
}
