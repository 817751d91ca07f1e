import Foundation

/// When to try a message again: exponential back-off with jitter, up to a maximum age; a
/// server's own delay (429 / ServerBusy / a 4xx with a wait) is a floor. Pure: the caller
/// passes the instant (from its ``QueueClock``) and the random draw, so tests need no sleeps.
public struct RetryPolicy: Sendable, Equatable {
    /// The delay after the first transient failure.
    public var initialDelay: Duration
    /// The longest delay between two attempts.
    public var maxDelay: Duration
    /// Each further failure multiplies the delay by this.
    public var multiplier: Double
    /// The delay is spread by ± this fraction (0.2: 80 %-120 %).
    public var jitter: Double
    /// After this long since submission (or a manual retry) a message that still fails
    /// transiently fails for good.
    public var maxAge: Duration
    /// How many times a message whose outcome was unknown (connection lost after the final
    /// dot, or a crash while sending) is sent again; it is then marked `unknown`.
    public var unknownOutcomeRetries: Int

    /// A policy; the defaults are 30 s doubling up to an hour, ± 20 %, for at most a day, and one
    /// more try after an unknown outcome.
    public init(
        initialDelay: Duration = .seconds(30), maxDelay: Duration = .seconds(3600), multiplier: Double = 2, jitter: Double = 0.2,
        maxAge: Duration = .seconds(86_400), unknownOutcomeRetries: Int = 1
    ) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.multiplier = multiplier
        self.jitter = jitter
        self.maxAge = maxAge
        self.unknownOutcomeRetries = unknownOutcomeRetries
    }

    /// What to do after a transient failure.
    public enum Decision: Sendable, Equatable {
        /// Try again at this instant.
        case retry(at: QueueInstant)
        /// Stop: the maximum age would be passed.
        case giveUp(reason: String)
    }

    /// The delay before attempt `failures + 1`, without jitter (failures >= 1).
    public func baseDelay(failures: Int) -> Duration {
        let exponent = Double(max(0, failures - 1))
        let raw = initialDelay.seconds * pow(multiplier, min(exponent, 64))
        return raw.isFinite && raw < maxDelay.seconds ? .seconds(fraction: raw) : maxDelay
    }

    /// What to do after the `failures`-th transient failure at `now`, for a message whose age
    /// counts from `ageBase`. `random` is a draw in 0..<1; `serverDelay` the server's requested wait.
    public func decide(failures: Int, now: QueueInstant, ageBase: QueueInstant, serverDelay: Duration? = nil, random: Double) -> Decision {
        let spread = 1 + jitter * (2 * min(max(random, 0), 1) - 1)
        var delay = baseDelay(failures: failures) * spread
        if let serverDelay, serverDelay > delay { delay = serverDelay }
        let at = now.advanced(by: delay)
        if ageBase.duration(to: at) > maxAge {
            return .giveUp(reason: "still failing after \(Int(ageBase.duration(to: now).seconds)) s; the maximum age is \(Int(maxAge.seconds)) s")
        }
        return .retry(at: at)
    }

    /// What to do after a failure that is the route's fault (``DeliveryError/routeFault``): the
    /// message does not back off on its own, it is due again at once and waits for its route to
    /// resume (the route's probe has the back-off); it fails only past the maximum age.
    public func decideHeld(now: QueueInstant, ageBase: QueueInstant) -> Decision {
        if ageBase.duration(to: now) >= maxAge {
            return .giveUp(reason: "still failing after \(Int(ageBase.duration(to: now).seconds)) s; the maximum age is \(Int(maxAge.seconds)) s")
        }
        return .retry(at: now)
    }

    /// True when a message with `unknownCount` unknown outcomes so far may be sent again.
    public func allowsAnotherTry(unknownCount: Int) -> Bool {
        unknownCount <= unknownOutcomeRetries
    }
}
