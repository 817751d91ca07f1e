import Testing

@testable import OutboxTransports

/// The SMTP pool's clock reads `ContinuousClock` as a duration since an origin: its instants
/// must keep the same order and distances as the clock's own, and its sleep must end at the
/// instant asked for, not before.
@Suite("PoolClock")
struct PoolClockTests {
    @Test("instants follow ContinuousClock: ordered, and as far apart")
    func instantsFollowTheContinuousClock() {
        let clock = PoolClock()
        let outerStart = ContinuousClock.now
        let first = clock.now
        let innerStart = ContinuousClock.now
        var spin = 0
        while ContinuousClock.now - innerStart < .milliseconds(5) { spin += 1 }
        let innerEnd = ContinuousClock.now
        let second = clock.now
        let outerEnd = ContinuousClock.now
        #expect(first < second)
        #expect(first.duration(to: second) >= innerStart.duration(to: innerEnd))
        #expect(first.duration(to: second) <= outerStart.duration(to: outerEnd))
        #expect(first.advanced(by: first.duration(to: second)) == second)
    }

    @Test("sleep(until:) returns at or after its deadline")
    func sleepEndsAtTheDeadline() async throws {
        let clock = PoolClock()
        let deadline = clock.now.advanced(by: .milliseconds(30))
        try await clock.sleep(until: deadline, tolerance: nil)
        #expect(clock.now >= deadline)
    }
}
