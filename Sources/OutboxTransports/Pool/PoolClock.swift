/// The clock of the SMTP transport's pool: `ContinuousClock`, with an instant of fixed size.
///
/// `ContinuousClock.Instant` is a resilient type of the standard library, whose size is not known
/// at compile time. Every pool value holding one (the state machine's connections, its actions,
/// the effects of an event) then had a layout computed at run time: generic metadata looked up
/// and value witnesses called on every lease and release. This instant is a `Duration` (a frozen
/// type) since a fixed origin, read from the same clock.
package struct PoolClock: Clock {
    package struct Instant: InstantProtocol {
        /// The time since `PoolClock.origin`.
        package var offset: Duration

        package func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        package func duration(to other: Instant) -> Duration { other.offset - offset }
        package static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    /// The origin of every instant: the first reading of the clock in the process.
    private static let origin = ContinuousClock.now

    package init() {}

    package var now: Instant { Instant(offset: Self.origin.duration(to: ContinuousClock.now)) }
    package var minimumResolution: Duration { ContinuousClock().minimumResolution }

    package func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        try await ContinuousClock().sleep(until: Self.origin.advanced(by: deadline.offset), tolerance: tolerance)
    }
}
