import Foundation
import Outbox
import OutboxTransports
import Testing

@Suite("RouteHealth: alert, pause, probe back-off, resume")
struct RouteHealthTests {
    let t0 = QueueInstant(secondsSince1970: 1_000_000)

    @Test("the first route fault raises the alert and pauses; the probe is due after 5 s")
    func firstFailurePauses() {
        var route = RouteHealth()
        #expect(route.admission(at: t0) == .open)
        let raised = route.failed(.authenticationFailed, message: "535 5.7.8 bad credentials", at: t0)
        #expect(raised)
        #expect(route.isPaused && route.alertsRaised == 1)
        #expect(route.problem?.code == .authenticationFailed)
        #expect(route.problem?.since == t0)
        #expect(route.admission(at: t0.advanced(by: .seconds(4))) == .closed(until: t0.advanced(by: .seconds(5))))
        #expect(route.admission(at: t0.advanced(by: .seconds(5))) == .probe)
        // Attempts that started before the pause and fail later: no new alert, no back-off.
        let again = route.failed(.authenticationFailed, message: "535 again", at: t0.advanced(by: .seconds(1)))
        #expect(!again)
        #expect(route.alertsRaised == 1 && route.failedProbes == 0)
        #expect(route.problem?.message == "535 again")
    }

    @Test("each failed probe doubles the back-off up to 5 minutes; one probe at a time")
    func probeBackoff() {
        var route = RouteHealth()
        route.failed(.connectionFailed, message: "refused", at: t0)
        var now = t0
        var delays: [Int] = []
        for _ in 0..<9 {
            guard case .closed(let until) = route.admission(at: now), let until else {
                Issue.record("not closed until a probe")
                return
            }
            delays.append(Int(now.duration(to: until).seconds.rounded()))
            now = until
            #expect(route.admission(at: now) == .probe)
            let token = route.startProbe()
            #expect(route.admission(at: now) == .closed(until: nil))
            route.failed(.connectionFailed, message: "refused", at: now, probe: token)
        }
        #expect(delays == [5, 10, 20, 40, 80, 160, 300, 300, 300])
        #expect(route.alertsRaised == 1)
    }

    @Test("success resumes; a configuration change makes the probe due at once and a stale probe's failure does not count")
    func resumeAndReload() {
        var route = RouteHealth()
        route.failed(.authenticationFailed, message: "535", at: t0)
        let token = route.startProbe()
        route.configurationChanged(at: t0.advanced(by: .seconds(1)))
        #expect(route.admission(at: t0.advanced(by: .seconds(1))) == .probe)
        // The probe that started under the old configuration fails: it is not the current probe.
        route.failed(.authenticationFailed, message: "535", at: t0.advanced(by: .seconds(2)), probe: token)
        #expect(route.failedProbes == 0)
        #expect(route.admission(at: t0.advanced(by: .seconds(2))) == .probe)
        let next = route.startProbe()
        let resumed = route.succeeded(probe: next)
        #expect(resumed)
        #expect(!route.isPaused && route.admission(at: t0.advanced(by: .seconds(3))) == .open)
        let resumedAgain = route.succeeded()
        #expect(!resumedAgain)
        // A configuration change on a healthy route changes nothing.
        route.configurationChanged(at: t0)
        #expect(route.admission(at: t0) == .open)
        // A later fault raises a second alert.
        let second = route.failed(.tlsFailed, message: "certificate", at: t0.advanced(by: .seconds(10)))
        #expect(second)
        #expect(route.alertsRaised == 2)
    }

    @Test("a probe that found nothing to send lets the next one go")
    func probeFoundNothing() {
        var route = RouteHealth()
        route.failed(.timeout, message: "slow", at: t0)
        let at = t0.advanced(by: .seconds(5))
        let token = route.startProbe()
        route.probeFoundNothing(token: token)
        #expect(route.admission(at: at) == .probe)
    }

    @Test("a held message is due at once and fails only at the maximum age")
    func heldDecision() {
        let policy = RetryPolicy(initialDelay: .seconds(30), maxAge: .seconds(100))
        #expect(policy.decideHeld(now: t0.advanced(by: .seconds(99)), ageBase: t0) == .retry(at: t0.advanced(by: .seconds(99))))
        guard case .giveUp = policy.decideHeld(now: t0.advanced(by: .seconds(100)), ageBase: t0) else {
            Issue.record("a held message past its maximum age was not failed")
            return
        }
    }
}
