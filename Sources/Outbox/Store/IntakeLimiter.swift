import Foundation
import NIOConcurrencyHelpers
import OutboxConfig

/// `[client-NAME] intake-limit-per-minute`: each client's submissions over a sliding minute, in
/// this process; the listener answers `452 4.7.0` and the HTTP API 429 beyond the limit.
package final class IntakeLimiter: Sendable {
    private let windows = NIOLockedValueBox<[String: PacingWindow]>([:])

    /// The process's limiter, shared by the listener and the HTTP API: a client's submissions
    /// count together whichever door they take.
    package static let shared = IntakeLimiter()

    package init() {}

    /// How long `client` must wait before submitting again under `limit` messages a minute
    /// (nil: it may submit now, or there is no limit).
    package func wait(client: String, limit: Int?, now: Double) -> Double? {
        guard let limit else { return nil }
        let limits = RouteLimits(ratePerMinute: limit)
        let wait = windows.withLockedValue { $0[client]?.wait(recipients: 1, limits: limits, now: now) ?? 0 }
        return wait > 0 ? wait : nil
    }

    /// Counts a submission of `client` (one accepted message).
    package func record(client: String, limit: Int?, now: Double) {
        guard let limit else { return }
        windows.withLockedValue { $0[client, default: PacingWindow()].record(recipients: 1, at: now, limits: RouteLimits(ratePerMinute: limit)) }
    }
}
