import Foundation
import Outbox
import OutboxConfig
import OutboxTransports
import Testing

@testable import Outbox

@Suite("Pacing window, pacer and throttling pause (pure)")
struct PacingWindowTests {
    @Test("a sliding minute: the limit now, the next when the oldest send leaves the window")
    func slidingMinute() {
        let limits = RouteLimits(ratePerMinute: 3)
        var w = PacingWindow()
        for t in [0.0, 10, 20] {
            #expect(w.wait(recipients: 1, limits: limits, now: t) == 0)
            w.record(recipients: 1, at: t, limits: limits)
        }
        #expect(w.wait(recipients: 1, limits: limits, now: 30) == 30)
        #expect(w.available(limits: limits, now: 30) == 0)
        #expect(w.wait(recipients: 1, limits: limits, now: 60.5) == 0)
        #expect(w.available(limits: limits, now: 65) == 1)
    }

    @Test("a rolling day of messages and of recipients")
    func rollingDay() {
        let limits = RouteLimits(messagesPerDay: 2, recipientsPerDay: 10)
        var w = PacingWindow()
        w.record(recipients: 6, at: 0, limits: limits)
        #expect(w.wait(recipients: 5, limits: limits, now: 100) == 86_300)
        #expect(w.wait(recipients: 4, limits: limits, now: 100) == 0)
        w.record(recipients: 4, at: 100, limits: limits)
        #expect(w.wait(recipients: 1, limits: limits, now: 200) == 86_200)
        #expect(w.wait(recipients: 1, limits: limits, now: 86_401) == 0)
    }

    @Test("the in-process pacer grants in order and says how long the rest wait")
    func pacer() async {
        let pacer = RoutePacer(shared: nil)
        let limits = RouteLimits(ratePerMinute: 5)
        let first = await pacer.reserve(route: "a", recipients: [1, 1, 1], limits: limits, now: 0)
        #expect(first.granted == 3 && first.wait == 0)
        let second = await pacer.reserve(route: "a", recipients: [1, 1, 1], limits: limits, now: 1)
        #expect(second.granted == 2 && second.wait == 59)
        // Routes are counted apart.
        #expect(await pacer.reserve(route: "b", recipients: [1, 1], limits: limits, now: 1).granted == 2)
        #expect(pacer.available(route: "a", limits: limits, now: 2)?.count == 0)
        #expect(pacer.available(route: "a", limits: limits, now: 60.5)?.count == 3)
        // No limit: everything goes, nothing is counted.
        #expect(await pacer.reserve(route: "c", recipients: [1, 1], limits: RouteLimits(), now: 0).granted == 2)
    }

    @Test("a throttled route pauses for the time the provider asked, not its back-off, and never shorter")
    func throttledPause() {
        let t0 = QueueInstant(secondsSince1970: 1_000_000)
        var route = RouteHealth()
        route.failed(.throttled, message: "429", at: t0, retryAfter: .seconds(30))
        #expect(route.admission(at: t0.advanced(by: .seconds(29))) == .closed(until: t0.advanced(by: .seconds(30))))
        // A later answer asking for less does not shorten it; one asking for more extends it.
        route.failed(.throttled, message: "429", at: t0.advanced(by: .seconds(1)), retryAfter: .seconds(2))
        #expect(route.nextProbeAt == t0.advanced(by: .seconds(30)))
        route.failed(.throttled, message: "429", at: t0.advanced(by: .seconds(2)), retryAfter: .seconds(60))
        #expect(route.nextProbeAt == t0.advanced(by: .seconds(62)))
        #expect(route.admission(at: t0.advanced(by: .seconds(62))) == .probe)
    }
}
