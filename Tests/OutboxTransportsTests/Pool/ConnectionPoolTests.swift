import NIOConcurrencyHelpers
import OutboxTestSupport
import Testing

@testable import OutboxTransports

/// Counts concurrent bodies.
final class PoolConcurrencyMeter: Sendable {
    private let state = NIOLockedValueBox((current: 0, maximum: 0, order: [Int]()))
    func enter() {
        state.withLockedValue {
            $0.current += 1; $0.maximum = max($0.maximum, $0.current)
        }
    }
    func leave() { state.withLockedValue { $0.current -= 1 } }
    func record(_ value: Int) { state.withLockedValue { $0.order.append(value) } }
    var maximum: Int { state.withLockedValue { $0.maximum } }
    var order: [Int] { state.withLockedValue { $0.order } }
}

private func config(
    size: Int = 1, checkIdle: Int = 30, maxIdle: Int = 300, margin: Int = 10, coolDown: Int = 60, growAfter: Int = 0
) -> PoolConfiguration {
    PoolConfiguration(
        size: size, checkIdleTime: .seconds(checkIdle), maxIdleTime: .seconds(maxIdle),
        tokenExpiryMargin: .seconds(margin), refusalCoolDown: .seconds(coolDown), growAfterSuccessfulSends: growAfter
    )
}

@Suite("ConnectionPool")
struct ConnectionPoolTests {
    @Test func hundredConcurrentCallersNeverExceedThePoolSize() async throws {
        try await withPoolUnderTest(config(size: 5)) { pool, factory, _ in
            let meter = PoolConcurrencyMeter()
            let results = try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<100 {
                    group.addTask {
                        try await pool.withConnection { connection in
                            meter.enter()
                            #expect(factory.alive <= 5)
                            for _ in 0..<3 { await Task.yield() }
                            meter.leave()
                            return i
                        }
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(results.sorted() == Array(0..<100))
            #expect(meter.maximum <= 5)
            #expect(meter.maximum >= 1)
            #expect(factory.made.count <= 5)
            #expect(factory.attempts <= 5)  // no connection churn, no spinning
            #expect(pool.statistics.total <= 5)
            #expect(pool.statistics.waiting == 0)
        }
    }

    @Test func waitersAreServedInArrivalOrder() async throws {
        try await withPoolUnderTest(config(size: 1)) { pool, _, _ in
            let held = try await pool.lease()
            let meter = PoolConcurrencyMeter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 1...5 {
                    group.addTask {
                        try await pool.withConnection { _ in meter.record(i) }
                    }
                    await poolEventually("waiter \(i) queued") { pool.statistics.waiting == i }
                }
                pool.release(held)
                try await group.waitForAll()
            }
            #expect(meter.order == [1, 2, 3, 4, 5])
        }
    }

    @Test func cancelledWaiterLeavesTheQueueWithCancellationError() async throws {
        try await withPoolUnderTest(config(size: 1)) { pool, factory, _ in
            let held = try await pool.lease()
            let waiter = Task { try await pool.withConnection { _ in 1 } }
            await poolEventually("waiter queued") { pool.statistics.waiting == 1 }
            waiter.cancel()
            await #expect(throws: CancellationError.self) { try await waiter.value }
            #expect(pool.statistics.waiting == 0)
            pool.release(held)
            // The pool is still usable and did not open more connections.
            #expect(try await pool.withConnection { $0 === held.connection })
            #expect(factory.attempts == 1)
        }
    }

    @Test func alreadyCancelledCallerIsNotQueued() async throws {
        try await withPoolUnderTest(config(size: 1)) { pool, factory, _ in
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await pool.withConnection { _ in 1 }
            }
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(pool.statistics.waiting == 0)
            #expect(factory.attempts == 0)
        }
    }

    @Test func idleConnectionIsHandedOutAtOnceAndReusedInOrderOfLastUse() async throws {
        try await withPoolUnderTest(config(size: 2)) { pool, factory, _ in
            let a = try await pool.lease()
            let b = try await pool.lease()
            #expect(factory.made.count == 2)
            pool.release(a)
            pool.release(b)
            // Both idle: the most recently used one (b) comes first, straight from lease().
            let again = try await pool.lease()
            #expect(again.connection === b.connection)
            #expect(pool.statistics.waiting == 0)
            pool.release(again)
            #expect(factory.made.count == 2)
        }
    }

    @Test func leasesRacingWithCancellationLoseNoConnection() async throws {
        try await withPoolUnderTest(config(size: 3)) { pool, factory, _ in
            await withTaskGroup(of: Void.self) { group in
                for i in 0..<300 {
                    let task = Task {
                        try await pool.withConnection { _ in
                            for _ in 0..<(i % 4) { await Task.yield() }
                        }
                    }
                    group.addTask {
                        if i % 3 == 0 { task.cancel() }
                        _ = await task.result
                    }
                }
            }
            // Every lease was given back or never handed out: nothing leased, nothing waiting,
            // and no connection beyond the pool's size was ever opened.
            await poolEventually("pool settled") { pool.statistics.leased == 0 && pool.statistics.waiting == 0 }
            #expect(factory.made.count <= 3)
            let usable = try await pool.withConnection { _ in true }
            #expect(usable)
        }
    }

    @Test func connectionIsReusedAndNoopOnlyAfterCheckIdleTime() async throws {
        try await withPoolUnderTest(config(size: 2, checkIdle: 30)) { pool, factory, clock in
            let first = try await pool.withConnection { $0 }
            clock.advance(by: .seconds(29))
            let second = try await pool.withConnection { $0 }
            #expect(first === second)
            #expect(first.noopCount == 0)
            clock.advance(by: .seconds(30))
            // Idle exactly 30 s: not "longer than" cnx-check-idle-time.
            let third = try await pool.withConnection { $0 }
            #expect(third === first)
            #expect(first.noopCount == 0)
            clock.advance(by: .milliseconds(30_001))
            let fourth = try await pool.withConnection { $0 }
            #expect(fourth === first)
            #expect(first.noopCount == 1)
            #expect(factory.made.count == 1)
            #expect(pool.statistics.noopChecks == 1)
        }
    }

    @Test func checkIdleTimeZeroChecksEveryReuse() async throws {
        try await withPoolUnderTest(config(size: 1, checkIdle: 0)) { pool, factory, _ in
            for _ in 0..<4 { _ = try await pool.withConnection { $0 } }
            #expect(factory.made.count == 1)
            #expect(factory.made[0].noopCount == 3)  // not on the first, fresh use
        }
    }

    @Test func failedNoopGivesTheCallerAFreshConnectionInvisibly() async throws {
        try await withPoolUnderTest(config(size: 1, checkIdle: 30)) { pool, factory, clock in
            let first = try await pool.withConnection { $0 }
            clock.advance(by: .seconds(60))
            first.failNextChecks()
            let second = try await pool.withConnection { $0 }
            #expect(second !== first)
            #expect(first.calls == [.noop, .close])
            #expect(second.calls == [])
            #expect(factory.made.count == 2)
            #expect(pool.statistics.noopFailures == 1)
        }
    }

    @Test func failedTransactionIsResetBeforeReuse() async throws {
        try await withPoolUnderTest(config(size: 1)) { pool, factory, _ in
            await #expect(throws: PoolFakeSMTPError.self) {
                try await pool.withConnection { _ in throw PoolFakeSMTPError(reply: "550 5.1.1 no such user") }
            }
            let connection = try await pool.withConnection { $0 }
            #expect(connection === factory.made[0])
            #expect(connection.calls == [.reset])
            _ = try await pool.withConnection { $0 }
            #expect(connection.calls == [.reset])  // clean since
        }
    }

    @Test func discardingErrorClosesTheConnection() async throws {
        try await withPoolUnderTest(config(size: 1)) { pool, factory, _ in
            await #expect(throws: PoolFakeDiscard.self) { try await pool.withConnection { _ in throw PoolFakeDiscard() } }
            await poolEventually("closed") { factory.made[0].isClosed }
            let next = try await pool.withConnection { $0 }
            #expect(next !== factory.made[0])
        }
    }

    @Test func idleConnectionIsClosedByTimer() async throws {
        try await withPoolUnderTest(config(size: 1, maxIdle: 300)) { pool, factory, clock in
            let connection = try await pool.withConnection { $0 }
            await poolEventually("idle timer armed") { clock.sleeperCount == 1 }
            clock.advance(by: .seconds(299))
            for _ in 0..<100 { await Task.yield() }
            #expect(!connection.isClosed)
            clock.advance(by: .seconds(1))
            await poolEventually("closed by the idle timer") { connection.isClosed }
            await poolEventually("slot freed") { pool.statistics.total == 0 }
            #expect(connection.calls == [.close])
            #expect(factory.made.count == 1)
        }
    }

    @Test func maxIdleZeroClosesOnRelease() async throws {
        try await withPoolUnderTest(config(size: 1, maxIdle: 0)) { pool, _, _ in
            let connection = try await pool.withConnection { $0 }
            await poolEventually("closed on release") { connection.isClosed }
        }
    }

    @Test func tokenIsRetiredAtExpiryMinusMargin() async throws {
        let factory = FakePoolFactory(credentialLifetime: .seconds(100))
        try await withPoolUnderTest(config(size: 1, maxIdle: 300, margin: 10), factory: factory) { pool, factory, clock in
            let first = try await pool.withConnection { $0 }
            await poolEventually("retire timer armed") { clock.sleeperCount == 1 }
            clock.advance(by: .seconds(89))
            let again = try await pool.withConnection { $0 }
            #expect(again === first)
            clock.advance(by: .seconds(1))  // t90 = expiry - margin
            await poolEventually("retired by the timer") { first.isClosed }
            let second = try await pool.withConnection { $0 }
            #expect(second !== first)
            // Leased across its retire instant (t180): closed when released.
            let lease = try await pool.lease()
            #expect(lease.connection === second)
            clock.advance(by: .seconds(95))
            pool.release(lease)
            await poolEventually("retired on release") { second.isClosed }
            #expect(factory.made.count == 2)
        }
    }

    @Test func refusalShrinksThePoolAndTheCoolDownRestoresIt() async throws {
        try await withPoolUnderTest(config(size: 3, coolDown: 60)) { pool, factory, clock in
            let held = try await pool.lease()
            factory.failNextAttempts(with: [PoolFakeRefusal()])
            let waiter = Task { try await pool.withConnection { $0 } }
            await poolEventually("refused") { pool.statistics.refusals == 1 }
            #expect(pool.statistics.effectiveSize == 1)
            #expect(pool.statistics.waiting == 1)  // still waiting for the one alive
            pool.release(held)
            #expect(try await waiter.value === held.connection)
            #expect(factory.attempts == 2)
            clock.advance(by: .seconds(60))
            await poolEventually("size restored") { pool.statistics.effectiveSize == 3 }
        }
    }

    @Test func refusalFromTheBodyShrinksAndSuccessfulSendsGrowBack() async throws {
        try await withPoolUnderTest(config(size: 3, coolDown: 3600, growAfter: 2)) { pool, factory, _ in
            let a = try await pool.lease()
            let b = try await pool.lease()
            await #expect(throws: PoolFakeRefusal.self) { try await pool.withConnection { _ in throw PoolFakeRefusal() } }
            #expect(pool.statistics.effectiveSize == 2)
            await poolEventually("refused connection closed") { factory.made[2].isClosed }
            pool.release(a)
            pool.release(b)  // two clean sends: grow to 3
            #expect(pool.statistics.effectiveSize == 3)
        }
    }

    @Test func refusalWithNothingAliveFailsTheCaller() async throws {
        try await withPoolUnderTest(config(size: 3)) { pool, factory, _ in
            factory.failNextAttempts(with: [PoolFakeRefusal()])
            await #expect(throws: PoolFakeRefusal.self) { try await pool.withConnection { $0 } }
            #expect(pool.statistics.effectiveSize == 1)
            _ = try await pool.withConnection { $0 }  // the next caller gets a connection
        }
    }

    @Test func generationChangeClosesIdleNowAndLeasedOnRelease() async throws {
        try await withPoolUnderTest(config(size: 3)) { pool, factory, _ in
            let idle = try await pool.withConnection { $0 }
            let leased = try await pool.lease()
            #expect(leased.connection === idle)
            let other = try await pool.lease()
            pool.release(leased)
            pool.updateGeneration(1)
            await poolEventually("idle one closed") { idle.isClosed }
            #expect(!other.connection.isClosed)
            let fresh = try await pool.withConnection { $0 }
            #expect(fresh.generation == 1)
            pool.release(other)
            await poolEventually("leased one closed on release") { other.connection.isClosed }
            #expect(factory.generations == [0, 0, 1])
        }
    }

    @Test func gracefulShutdown() async throws {
        let clock = ManualClock()
        let factory = FakePoolFactory()
        let pool = PoolUnderTest(configuration: config(size: 2), factory: factory, clock: clock)
        let runner = Task { await pool.run() }
        let idle = try await pool.withConnection { $0 }
        let a = try await pool.lease()
        let b = try await pool.lease()
        #expect(a.connection === idle)
        let waiter = Task { try await pool.withConnection { $0 } }
        await poolEventually("waiter queued") { pool.statistics.waiting == 1 }
        let shutdown = Task { await pool.shutdown() }
        await #expect(throws: ConnectionPoolError.shutdown) { try await waiter.value }
        await #expect(throws: ConnectionPoolError.shutdown) { try await pool.withConnection { $0 } }
        // Leased connections finish their work.
        #expect(!a.connection.isClosed && !b.connection.isClosed)
        pool.release(a)
        await poolEventually("first closed") { a.connection.isClosed }
        pool.release(b, .needsReset)
        await shutdown.value
        await runner.value
        #expect(factory.made.allSatisfy { $0.calls.last == .close })
        #expect(pool.statistics.total == 0)
        await pool.shutdown()  // again: returns at once
    }

    @Test func cancellingRunShutsDownGracefully() async throws {
        let pool = PoolUnderTest(configuration: config(size: 2), factory: FakePoolFactory(), clock: ManualClock())
        let runner = Task { await pool.run() }
        let connection = try await pool.withConnection { $0 }
        runner.cancel()
        await runner.value
        #expect(connection.isClosed)
        await #expect(throws: ConnectionPoolError.shutdown) { try await pool.withConnection { $0 } }
    }

    @Test func connectFailureReachesTheCaller() async throws {
        try await withPoolUnderTest(config(size: 1)) { pool, factory, _ in
            factory.failNextAttempts(with: [PoolFakeSMTPError(reply: "554 5.7.1 go away")])
            await #expect(throws: PoolFakeSMTPError(reply: "554 5.7.1 go away")) { try await pool.withConnection { $0 } }
            _ = try await pool.withConnection { $0 }
            #expect(factory.attempts == 2)
        }
    }
}
