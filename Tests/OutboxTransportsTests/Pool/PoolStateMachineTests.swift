import OutboxTestSupport
import Testing

@testable import OutboxTransports

private typealias SM = PoolStateMachine<Int, ManualClock.Instant>

/// Literal instant: `t(30)` is 30 s after the manual clock's origin.
private func t(_ seconds: Int) -> ManualClock.Instant { .init(offset: .seconds(seconds)) }
private let c0 = PoolConnectionID(0)
private let c1 = PoolConnectionID(1)
private let c2 = PoolConnectionID(2)
private let c3 = PoolConnectionID(3)

private func config(
    size: Int = 1, checkIdle: Int = 30, maxIdle: Int = 300, margin: Int = 10, coolDown: Int = 60, growAfter: Int = 0
) -> PoolConfiguration {
    PoolConfiguration(
        size: size, checkIdleTime: .seconds(checkIdle), maxIdleTime: .seconds(maxIdle),
        tokenExpiryMargin: .seconds(margin), refusalCoolDown: .seconds(coolDown), growAfterSuccessfulSends: growAfter
    )
}

/// Leases `request` on a new connection `id` at `now` (the pool must have room and no idle one).
private func leaseNew(_ sm: inout SM, _ request: Int, _ id: PoolConnectionID, at now: ManualClock.Instant, lifetime: Duration? = nil) {
    #expect(sm.leaseRequested(request, now: now) == [.makeConnection(id, generation: sm.generation)])
    #expect(sm.connectionEstablished(id, credentialLifetime: lifetime, now: now) == [.lease(id, to: request)])
}

@Suite("PoolStateMachine")
struct PoolStateMachineTests {
    @Test func sizeIsNeverExceededAndWaitersAreServedInOrder() {
        var sm = SM(configuration: config(size: 2))
        #expect(sm.leaseRequested(1, now: t(0)) == [.makeConnection(c0, generation: 0)])
        #expect(sm.leaseRequested(2, now: t(0)) == [.makeConnection(c1, generation: 0)])
        #expect(sm.leaseRequested(3, now: t(0)) == [])
        #expect(sm.leaseRequested(4, now: t(0)) == [])
        #expect(sm.statistics.total == 2)
        #expect(sm.statistics.waiting == 4)
        #expect(sm.connectionEstablished(c1, credentialLifetime: nil, now: t(1)) == [.lease(c1, to: 1)])
        #expect(sm.connectionEstablished(c0, credentialLifetime: nil, now: t(1)) == [.lease(c0, to: 2)])
        #expect(sm.released(c0, .clean, now: t(2)) == [.lease(c0, to: 3)])
        #expect(sm.released(c1, .clean, now: t(2)) == [.lease(c1, to: 4)])
        #expect(sm.released(c1, .clean, now: t(3)) == [.scheduleTimer(.idle(c1), at: t(303))])
        #expect(sm.statistics.total == 2)
        #expect(sm.statistics.created == 2)
    }

    @Test func cancelledWaiterLeavesTheQueue() {
        var sm = SM(configuration: config(size: 1))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.leaseRequested(2, now: t(0)) == [])
        #expect(sm.leaseRequested(3, now: t(0)) == [])
        #expect(sm.cancelled(2) == [.failRequest(2, .cancelled)])
        #expect(sm.cancelled(2) == [])
        #expect(sm.cancelled(1) == [])  // leased: too late, nothing happens
        #expect(sm.statistics.waiting == 1)
        #expect(sm.released(c0, .clean, now: t(1)) == [.lease(c0, to: 3)])
    }

    @Test func connectionOpenedForACancelledWaiterBecomesIdle() {
        var sm = SM(configuration: config(size: 1))
        #expect(sm.leaseRequested(1, now: t(0)) == [.makeConnection(c0, generation: 0)])
        #expect(sm.cancelled(1) == [.failRequest(1, .cancelled)])
        #expect(sm.connectionEstablished(c0, credentialLifetime: nil, now: t(1)) == [.scheduleTimer(.idle(c0), at: t(301))])
        // fresh: no NOOP; the idle timer stays armed (it is not cancelled for every message)
        #expect(sm.leaseRequested(2, now: t(2)) == [.lease(c0, to: 2)])
    }

    @Test func cancelledDuringCheckGetsCancellationAndConnectionStays() {
        var sm = SM(configuration: config(size: 1, checkIdle: 0))
        leaseNew(&sm, 1, c0, at: t(0))
        _ = sm.released(c0, .clean, now: t(1))
        #expect(sm.leaseRequested(2, now: t(2)) == [.check(c0, for: 2, reset: false, noop: true)])
        #expect(sm.cancelled(2) == [.failRequest(2, .cancelled)])
        #expect(sm.checkSucceeded(c0, now: t(3)) == [])  // idle again; its timer (t301) is still armed
        #expect(sm.timerFired(.idle(c0), now: t(301)) == [.scheduleTimer(.idle(c0), at: t(303))])
        #expect(sm.statistics.idle == 1)
    }

    @Test func dirtyReleaseIsResetBeforeReuse() {
        var sm = SM(configuration: config(size: 1))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.released(c0, .needsReset, now: t(1)) == [.scheduleTimer(.idle(c0), at: t(301))])
        #expect(sm.leaseRequested(2, now: t(2)) == [.check(c0, for: 2, reset: true, noop: false)])
        #expect(sm.checkSucceeded(c0, now: t(2)) == [.lease(c0, to: 2)])
        #expect(sm.released(c0, .clean, now: t(3)) == [])  // the timer armed at t1 is still pending
        #expect(sm.leaseRequested(3, now: t(4)) == [.lease(c0, to: 3)])
        #expect(sm.statistics.resets == 1)
        // Released dirty straight to a waiter: reset still comes first.
        #expect(sm.leaseRequested(4, now: t(4)) == [])
        #expect(sm.released(c0, .needsReset, now: t(5)) == [.check(c0, for: 4, reset: true, noop: false)])
    }

    @Test func noopOnlyAfterCheckIdleTime() {
        var sm = SM(configuration: config(size: 1, checkIdle: 30))
        leaseNew(&sm, 1, c0, at: t(0))
        _ = sm.released(c0, .clean, now: t(10))
        #expect(sm.leaseRequested(2, now: t(39)) == [.lease(c0, to: 2)])  // idle 29 s
        _ = sm.released(c0, .clean, now: t(40))
        // The reference: "idle for longer than" the setting. Exactly 30 s is not longer.
        #expect(sm.leaseRequested(3, now: t(70)) == [.lease(c0, to: 3)])  // idle 30 s
        _ = sm.released(c0, .clean, now: t(70))
        #expect(sm.leaseRequested(4, now: t(70).advanced(by: .milliseconds(30_001))) == [.check(c0, for: 4, reset: false, noop: true)])  // 30.001 s
        #expect(sm.checkSucceeded(c0, now: t(101)) == [.lease(c0, to: 4)])
        #expect(sm.statistics.noopChecks == 1)
    }

    @Test func checkTimeZeroChecksEveryReuseButNotAFreshConnection() {
        var sm = SM(configuration: config(size: 1, checkIdle: 0))
        leaseNew(&sm, 1, c0, at: t(0))  // fresh: no NOOP
        #expect(sm.leaseRequested(2, now: t(0)) == [])
        #expect(sm.released(c0, .clean, now: t(0)) == [.check(c0, for: 2, reset: false, noop: true)])
        #expect(sm.checkSucceeded(c0, now: t(0)) == [.lease(c0, to: 2)])
        _ = sm.released(c0, .clean, now: t(0))
        #expect(sm.leaseRequested(3, now: t(0)) == [.check(c0, for: 3, reset: false, noop: true)])
        #expect(sm.statistics.noopChecks == 2)
    }

    @Test func failedCheckClosesAndServesTheRequestWithAFreshConnection() {
        var sm = SM(configuration: config(size: 1))
        leaseNew(&sm, 1, c0, at: t(0))
        _ = sm.released(c0, .clean, now: t(0))
        #expect(sm.leaseRequested(2, now: t(60)) == [.check(c0, for: 2, reset: false, noop: true)])
        #expect(sm.checkFailed(c0, now: t(60)) == [.cancelTimer(.idle(c0)), .close(c0, reason: .checkFailed)])
        #expect(sm.statistics.waiting == 1)  // still waiting, not failed
        #expect(sm.connectionClosed(c0, now: t(61)) == [.makeConnection(c1, generation: 0)])  // size 1: after the close
        #expect(sm.connectionEstablished(c1, credentialLifetime: nil, now: t(61)) == [.lease(c1, to: 2)])
        #expect(sm.statistics.noopFailures == 1)
    }

    @Test func failedCheckFallsBackToAnotherIdleConnection() {
        var sm = SM(configuration: config(size: 2))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        _ = sm.released(c0, .clean, now: t(0))
        _ = sm.released(c1, .clean, now: t(1))
        // most recently used first
        #expect(sm.leaseRequested(3, now: t(100)) == [.check(c1, for: 3, reset: false, noop: true)])
        #expect(
            sm.checkFailed(c1, now: t(100)) == [
                .cancelTimer(.idle(c1)), .close(c1, reason: .checkFailed), .check(c0, for: 3, reset: false, noop: true),
            ])
        #expect(sm.checkSucceeded(c0, now: t(100)) == [.lease(c0, to: 3)])
    }

    @Test func aConnectionDyingUnderUseHasTheIdleOnesCheckedBeforeReuse() {
        // Three connections used at once, then the server restarts: the first reuse dies, and
        // the sender's retry must not take another dead one unchecked (checkIdle 30 s, idle 5 s).
        var sm = SM(configuration: config(size: 3, checkIdle: 30))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        leaseNew(&sm, 3, c2, at: t(0))
        _ = sm.released(c0, .clean, now: t(1))
        _ = sm.released(c1, .clean, now: t(2))
        _ = sm.released(c2, .clean, now: t(3))
        #expect(sm.leaseRequested(4, now: t(5)) == [.lease(c2, to: 4)])  // idle 2 s: no check
        #expect(sm.released(c2, .discard, now: t(5)) == [.cancelTimer(.idle(c2)), .close(c2, reason: .discarded)])
        // The retry: the next idle connection is checked first, though idle only 3 s.
        #expect(sm.leaseRequested(5, now: t(5)) == [.check(c1, for: 5, reset: false, noop: true)])
        #expect(
            sm.checkFailed(c1, now: t(5)) == [
                .cancelTimer(.idle(c1)), .close(c1, reason: .checkFailed), .check(c0, for: 5, reset: false, noop: true),
            ])
        #expect(sm.checkSucceeded(c0, now: t(5)) == [.lease(c0, to: 5)])
        // A connection that passed its check is trusted again.
        _ = sm.released(c0, .clean, now: t(6))
        #expect(sm.leaseRequested(6, now: t(7)) == [.lease(c0, to: 6)])
        #expect(sm.statistics.noopChecks == 2)
        #expect(sm.statistics.noopFailures == 1)
    }

    @Test func aConnectionOpenedAfterTheFailureIsNotSuspect() {
        var sm = SM(configuration: config(size: 2, checkIdle: 30))
        leaseNew(&sm, 1, c0, at: t(0))
        _ = sm.released(c0, .discard, now: t(1))
        _ = sm.connectionClosed(c0, now: t(1))
        leaseNew(&sm, 2, c1, at: t(2))
        _ = sm.released(c1, .clean, now: t(3))
        #expect(sm.leaseRequested(3, now: t(4)) == [.lease(c1, to: 3)])
    }

    @Test func idleConnectionIsClosedByTimerAtMaxIdleTime() {
        var sm = SM(configuration: config(size: 1, maxIdle: 300))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.released(c0, .clean, now: t(5)) == [.scheduleTimer(.idle(c0), at: t(305))])
        // A late firing of an old timer does not close early; it re-arms.
        #expect(sm.timerFired(.idle(c0), now: t(100)) == [.scheduleTimer(.idle(c0), at: t(305))])
        #expect(sm.timerFired(.idle(c0), now: t(305)) == [.close(c0, reason: .idleTimeout)])
        #expect(sm.statistics.closing == 1)
        #expect(sm.connectionClosed(c0, now: t(306)) == [])
        #expect(sm.statistics.total == 0)
    }

    @Test func hotReleasePathHandsToTheFirstWaiterExactlyAsReleasedDoes() {
        var sm = SM(configuration: config(size: 2))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        #expect(sm.leaseRequested(3, now: t(1)) == [])
        #expect(sm.leaseRequested(4, now: t(1)) == [])
        #expect(sm.leaseRequested(5, now: t(1)) == [])
        var fast = sm
        var general = sm
        // Each release: the fast path and the general one agree on the request and the state.
        for (step, (id, request)) in [(c0, 3), (c1, 4), (c0, 5)].enumerated() {
            let now = t(2 + step)
            #expect(fast.releasedCleanToWaiter(id, now: now) == request)
            #expect(general.released(id, .clean, now: now) == [.lease(id, to: request)])
            #expect(fast.statistics == general.statistics)
        }
        // Nobody waits any more: the fast path declines and changes nothing.
        let before = fast.statistics
        #expect(fast.releasedCleanToWaiter(c0, now: t(9)) == nil)
        #expect(fast.statistics == before)
        // From here on both behave the same.
        #expect(fast.released(c0, .clean, now: t(10)) == general.released(c0, .clean, now: t(10)))
        #expect(fast.leaseRequested(6, now: t(11)) == general.leaseRequested(6, now: t(11)))
        #expect(fast.statistics == general.statistics)
    }

    @Test func hotReleasePathDeclinesWhenTheGeneralRulesMatter() {
        func waiting(_ configuration: PoolConfiguration, lifetime: Duration? = nil) -> SM {
            var sm = SM(configuration: configuration)
            leaseNew(&sm, 1, c0, at: t(0), lifetime: lifetime)
            _ = sm.leaseRequested(2, now: t(1))
            return sm
        }
        // A NOOP on every reuse (check-idle-time 0).
        var checkEveryTime = waiting(config(size: 1, checkIdle: 0))
        #expect(checkEveryTime.releasedCleanToWaiter(c0, now: t(2)) == nil)
        #expect(checkEveryTime.released(c0, .clean, now: t(2)) == [.check(c0, for: 2, reset: false, noop: true)])
        // A connection being opened for the waiter counts as full: both paths hand c0 over.
        var opening = waiting(config(size: 2))
        #expect(opening.statistics.connecting == 1)
        var openingGeneral = opening
        #expect(opening.releasedCleanToWaiter(c0, now: t(2)) == 2)
        #expect(openingGeneral.released(c0, .clean, now: t(2)) == [.lease(c0, to: 2)])
        #expect(opening.statistics == openingGeneral.statistics)
        // Shrunk after a refusal: successful sends count towards growing back (general path).
        var shrunk = waiting(config(size: 1))
        _ = shrunk.serverRefused(now: t(1))
        #expect(shrunk.releasedCleanToWaiter(c0, now: t(2)) == nil)
        // The token retires: closed, not handed out.
        var retiring = waiting(config(size: 1, margin: 10), lifetime: .seconds(20))
        #expect(retiring.releasedCleanToWaiter(c0, now: t(15)) == nil)
        #expect(retiring.released(c0, .clean, now: t(15)) == [.close(c0, reason: .credentialExpiring)])
        // A newer generation: closed on release.
        var stale = waiting(config(size: 1))
        _ = stale.generationChanged(to: 1, now: t(2))
        #expect(stale.releasedCleanToWaiter(c0, now: t(3)) == nil)
        // Shut down: no hand-out.
        var down = waiting(config(size: 1))
        _ = down.shutdown()
        #expect(down.releasedCleanToWaiter(c0, now: t(3)) == nil)
    }

    @Test func idleTimerFiringWhileLeasedIsDroppedAndReArmedFromTheNextRelease() {
        var sm = SM(configuration: config(size: 1, maxIdle: 300))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.released(c0, .clean, now: t(5)) == [.scheduleTimer(.idle(c0), at: t(305))])
        #expect(sm.leaseRequested(2, now: t(6)) == [.lease(c0, to: 2)])  // the timer stays armed
        // It fires while the connection is in use: nothing is closed, and the timer is gone.
        #expect(sm.timerFired(.idle(c0), now: t(305)) == [])
        #expect(sm.statistics.leased == 1)
        // Idle again: a new timer from the new last use.
        #expect(sm.released(c0, .clean, now: t(400)) == [.scheduleTimer(.idle(c0), at: t(700))])
        #expect(sm.timerFired(.idle(c0), now: t(700)) == [.close(c0, reason: .idleTimeout)])
    }

    @Test func idleTimerArmedEarlierStillClosesAfterTheLastUseNotBefore() {
        var sm = SM(configuration: config(size: 1, maxIdle: 300))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.released(c0, .clean, now: t(5)) == [.scheduleTimer(.idle(c0), at: t(305))])
        #expect(sm.leaseRequested(2, now: t(20)) == [.lease(c0, to: 2)])
        #expect(sm.released(c0, .clean, now: t(200)) == [])  // idle again, the t305 timer still armed
        // It fires at t305: idle only 105 s, so it re-arms for t500 instead of closing.
        #expect(sm.timerFired(.idle(c0), now: t(305)) == [.scheduleTimer(.idle(c0), at: t(500))])
        #expect(sm.timerFired(.idle(c0), now: t(500)) == [.close(c0, reason: .idleTimeout)])
    }

    @Test func idleConnectionPastMaxIdleIsNotHandedOutEvenIfTheTimerIsLate() {
        var sm = SM(configuration: config(size: 2, maxIdle: 300))
        leaseNew(&sm, 1, c0, at: t(0))
        _ = sm.released(c0, .clean, now: t(0))
        #expect(
            sm.leaseRequested(2, now: t(300)) == [
                .cancelTimer(.idle(c0)), .close(c0, reason: .idleTimeout), .makeConnection(c1, generation: 0),
            ])
    }

    @Test func maxIdleZeroClosesOnReleaseUnlessSomeoneWaits() {
        var sm = SM(configuration: config(size: 1, maxIdle: 0))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.leaseRequested(2, now: t(1)) == [])
        #expect(sm.released(c0, .clean, now: t(2)) == [.lease(c0, to: 2)])
        #expect(sm.released(c0, .clean, now: t(3)) == [.close(c0, reason: .idleTimeout)])
    }

    @Test func tokenRetiresAtExpiryMinusMargin() {
        var sm = SM(configuration: config(size: 1, maxIdle: 300, margin: 10))
        leaseNew(&sm, 1, c0, at: t(0), lifetime: .seconds(100))  // expires t100, retire t90
        // Idle timer at the retire instant, not at max idle.
        #expect(sm.released(c0, .clean, now: t(5)) == [.scheduleTimer(.idle(c0), at: t(90))])
        #expect(sm.leaseRequested(2, now: t(20)) == [.lease(c0, to: 2)])
        #expect(sm.released(c0, .clean, now: t(21)) == [])  // the t90 timer is still armed
        #expect(sm.timerFired(.idle(c0), now: t(90)) == [.close(c0, reason: .credentialExpiring)])
        #expect(sm.connectionClosed(c0, now: t(90)) == [])
    }

    @Test func noLeaseWithinTheMarginAndRetiredOnRelease() {
        var sm = SM(configuration: config(size: 1, margin: 10))
        leaseNew(&sm, 1, c0, at: t(0), lifetime: .seconds(100))
        _ = sm.released(c0, .clean, now: t(5))
        // Timer late: at t90 the idle connection is not handed out; a new one is made.
        #expect(sm.leaseRequested(2, now: t(90)) == [.cancelTimer(.idle(c0)), .close(c0, reason: .credentialExpiring)])
        #expect(sm.connectionClosed(c0, now: t(90)) == [.makeConnection(c1, generation: 0)])
        #expect(sm.connectionEstablished(c1, credentialLifetime: .seconds(100), now: t(90)) == [.lease(c1, to: 2)])
        // Leased past its retire instant (t180): closed on release, the waiter gets a new one.
        #expect(sm.leaseRequested(3, now: t(170)) == [])
        #expect(sm.released(c1, .clean, now: t(185)) == [.close(c1, reason: .credentialExpiring)])
        #expect(sm.connectionClosed(c1, now: t(186)) == [.makeConnection(c2, generation: 0)])
    }

    @Test func credentialShorterThanTheMarginFailsOneWaiter() {
        var sm = SM(configuration: config(size: 1, margin: 10))
        #expect(sm.leaseRequested(1, now: t(0)) == [.makeConnection(c0, generation: 0)])
        #expect(
            sm.connectionEstablished(c0, credentialLifetime: .seconds(10), now: t(0)) == [
                .close(c0, reason: .credentialExpiring), .failRequest(1, .credentialExpiresTooSoon),
            ])
    }

    @Test func refusalShrinksToAliveConnectionsAndCoolDownRestores() {
        var sm = SM(configuration: config(size: 4, coolDown: 60))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        #expect(sm.leaseRequested(3, now: t(1)) == [.makeConnection(c2, generation: 0)])
        // 421 4.7.0 too many connections while opening c2: size 2 (alive), waiter keeps waiting.
        #expect(sm.connectionFailed(c2, refused: true, now: t(2)) == [.scheduleTimer(.coolDown, at: t(62))])
        #expect(sm.statistics.effectiveSize == 2)
        #expect(sm.statistics.waiting == 1)
        #expect(sm.leaseRequested(4, now: t(3)) == [])
        #expect(sm.released(c0, .clean, now: t(4)) == [.lease(c0, to: 3)])
        #expect(sm.timerFired(.coolDown, now: t(61)) == [])  // too early: ignored
        #expect(sm.timerFired(.coolDown, now: t(62)) == [.makeConnection(c3, generation: 0)])
        #expect(sm.statistics.effectiveSize == 4)
        #expect(sm.statistics.refusals == 1)
    }

    @Test func refusalWithNoConnectionAliveFailsTheOldestWaiterAndKeepsSizeOne() {
        var sm = SM(configuration: config(size: 3))
        #expect(sm.leaseRequested(1, now: t(0)) == [.makeConnection(c0, generation: 0)])
        #expect(sm.leaseRequested(2, now: t(0)) == [.makeConnection(c1, generation: 0)])
        #expect(
            sm.connectionFailed(c0, refused: true, now: t(1)) == [
                .scheduleTimer(.coolDown, at: t(61)), .failRequest(1, .connectionFailed(c0)),
            ])
        #expect(sm.statistics.effectiveSize == 1)
        #expect(sm.connectionEstablished(c1, credentialLifetime: nil, now: t(1)) == [.lease(c1, to: 2)])
    }

    @Test func refusalOnAConnectionShrinksAndSuccessfulSendsGrowBack() {
        var sm = SM(configuration: config(size: 3, coolDown: 600, growAfter: 2))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        leaseNew(&sm, 3, c2, at: t(0))
        // The body saw "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded".
        #expect(
            sm.released(c2, .serverRefused, now: t(1)) == [
                .close(c2, reason: .serverRefused), .scheduleTimer(.coolDown, at: t(601)),
            ])
        #expect(sm.statistics.effectiveSize == 2)
        #expect(sm.connectionClosed(c2, now: t(1)) == [])
        #expect(sm.leaseRequested(4, now: t(2)) == [])  // pool full at size 2
        #expect(sm.released(c0, .clean, now: t(3)) == [.lease(c0, to: 4)])  // success 1
        #expect(sm.leaseRequested(5, now: t(3)) == [])
        // success 2: size 3 again, so a third connection may be opened
        #expect(sm.released(c0, .clean, now: t(4)) == [.cancelTimer(.coolDown), .lease(c0, to: 5)])
        #expect(sm.statistics.effectiveSize == 3)
        #expect(sm.leaseRequested(6, now: t(5)) == [.makeConnection(c3, generation: 0)])
    }

    @Test func growingBackToFullSizeEndsTheCoolDown() {
        var sm = SM(configuration: config(size: 2, coolDown: 600, growAfter: 1))
        leaseNew(&sm, 1, c0, at: t(0))
        #expect(sm.serverRefused(now: t(1)) == [.scheduleTimer(.coolDown, at: t(601))])
        #expect(sm.statistics.effectiveSize == 1)
        #expect(sm.released(c0, .clean, now: t(2)) == [.cancelTimer(.coolDown), .scheduleTimer(.idle(c0), at: t(302))])
        #expect(sm.statistics.effectiveSize == 2)
    }

    @Test func generationChange() {
        var sm = SM(configuration: config(size: 3))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        #expect(sm.leaseRequested(3, now: t(1)) == [.makeConnection(c2, generation: 0)])
        // c0, c1 leased, c2 (generation 0) being opened for request 3.
        #expect(sm.generationChanged(to: 1, now: t(3)) == [])
        #expect(sm.connectionEstablished(c2, credentialLifetime: nil, now: t(4)) == [.close(c2, reason: .staleGeneration)])
        #expect(sm.released(c0, .clean, now: t(5)) == [.close(c0, reason: .staleGeneration)])
        #expect(sm.connectionClosed(c2, now: t(5)) == [.makeConnection(c3, generation: 1)])
        #expect(sm.connectionEstablished(c3, credentialLifetime: nil, now: t(6)) == [.lease(c3, to: 3)])
        #expect(sm.released(c1, .needsReset, now: t(6)) == [.close(c1, reason: .staleGeneration)])
        #expect(sm.released(c3, .clean, now: t(7)) == [.scheduleTimer(.idle(c3), at: t(307))])
        // An idle connection of an older generation is closed at once.
        #expect(sm.generationChanged(to: 2, now: t(8)) == [.cancelTimer(.idle(c3)), .close(c3, reason: .staleGeneration)])
        #expect(sm.leaseRequested(4, now: t(8)) == [])  // c0, c1, c3 still closing: size 3 reached
        #expect(sm.connectionClosed(c1, now: t(9)) == [.makeConnection(PoolConnectionID(4), generation: 2)])
    }

    @Test func gracefulShutdown() {
        var sm = SM(configuration: config(size: 3, checkIdle: 0))
        leaseNew(&sm, 1, c0, at: t(0))
        leaseNew(&sm, 2, c1, at: t(0))
        leaseNew(&sm, 3, c2, at: t(0))
        _ = sm.released(c1, .clean, now: t(1))
        #expect(sm.leaseRequested(4, now: t(1)) == [.check(c1, for: 4, reset: false, noop: true)])
        #expect(sm.leaseRequested(5, now: t(1)) == [])
        _ = sm.released(c2, .clean, now: t(1))  // c2 handed to 5 under check
        #expect(sm.statistics.checking == 2)
        #expect(sm.checkSucceeded(c2, now: t(1)) == [.lease(c2, to: 5)])
        _ = sm.released(c2, .clean, now: t(2))
        #expect(sm.leaseRequested(6, now: t(2)) == [.check(c2, for: 6, reset: false, noop: true)])
        #expect(sm.checkSucceeded(c2, now: t(2)) == [.lease(c2, to: 6)])
        #expect(sm.leaseRequested(7, now: t(2)) == [])
        // c0 leased (1), c1 checking for 4, c2 leased (6), 7 waiting.
        #expect(sm.shutdown() == [.failRequest(7, .shutdown), .failRequest(4, .shutdown)])
        #expect(sm.shutdown() == [])
        #expect(sm.leaseRequested(8, now: t(3)) == [.failRequest(8, .shutdown)])
        // Closing a connection whose idle timer is still armed cancels it.
        #expect(sm.checkSucceeded(c1, now: t(3)) == [.cancelTimer(.idle(c1)), .close(c1, reason: .shutdown)])
        #expect(sm.released(c0, .clean, now: t(4)) == [.close(c0, reason: .shutdown)])
        #expect(sm.connectionClosed(c0, now: t(4)) == [])
        #expect(sm.connectionClosed(c1, now: t(4)) == [])
        #expect(sm.released(c2, .needsReset, now: t(5)) == [.cancelTimer(.idle(c2)), .close(c2, reason: .shutdown)])
        #expect(sm.connectionClosed(c2, now: t(5)) == [.shutdownComplete])
    }

    @Test func shutdownClosesIdleConnectionsAndCompletesWhenEmpty() {
        var sm = SM(configuration: config(size: 2))
        leaseNew(&sm, 1, c0, at: t(0))
        _ = sm.released(c0, .clean, now: t(1))
        #expect(sm.shutdown() == [.cancelTimer(.idle(c0)), .close(c0, reason: .shutdown)])
        #expect(sm.connectionClosed(c0, now: t(2)) == [.shutdownComplete])
        var empty = SM(configuration: config(size: 2))
        #expect(empty.shutdown() == [.shutdownComplete])
    }

    @Test func plainConnectFailureFailsOneWaiterAndDoesNotSpin() {
        var sm = SM(configuration: config(size: 1))
        #expect(sm.leaseRequested(1, now: t(0)) == [.makeConnection(c0, generation: 0)])
        #expect(sm.leaseRequested(2, now: t(0)) == [])
        #expect(
            sm.connectionFailed(c0, refused: false, now: t(1)) == [
                .failRequest(1, .connectionFailed(c0)), .makeConnection(c1, generation: 0),
            ])
        #expect(sm.connectionFailed(c1, refused: false, now: t(2)) == [.failRequest(2, .connectionFailed(c1))])
        #expect(sm.statistics.total == 0)
        #expect(sm.statistics.connectFailures == 2)
    }
}
