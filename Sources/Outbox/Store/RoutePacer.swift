import Foundation
import NIOConcurrencyHelpers
import OutboxConfig

/// One route's sends over the last day, and what its limits allow now. A value type and pure:
/// the caller passes the instants (seconds since 1970).
package struct PacingWindow: Sendable, Equatable {
    /// One send: when, and to how many recipients.
    package struct Send: Sendable, Equatable {
        package var at: Double
        package var recipients: Int
    }

    /// The sends still inside the longest window in use, oldest first.
    package private(set) var sends: [Send] = []

    package init() {}

    /// The wait before one more message of `recipients` may go under `limits` at `now`: zero
    /// when it may go now.
    package func wait(recipients: Int, limits: RouteLimits, now: Double) -> Double {
        var wait = 0.0
        if let rate = limits.ratePerMinute {
            wait = max(wait, Self.countWait(sends, limit: rate, span: 60, now: now))
        }
        if let daily = limits.messagesPerDay {
            wait = max(wait, Self.countWait(sends, limit: daily, span: 86_400, now: now))
        }
        if let daily = limits.recipientsPerDay {
            wait = max(wait, Self.recipientWait(sends, limit: daily, adding: recipients, now: now))
        }
        return wait
    }

    /// How many messages may go now (at least one recipient each); nil when no count applies.
    package func available(limits: RouteLimits, now: Double) -> Int? {
        var room: Int?
        func take(_ n: Int) { room = min(room ?? n, max(0, n)) }
        if let rate = limits.ratePerMinute { take(rate - sends.filter { $0.at > now - 60 }.count) }
        if let daily = limits.messagesPerDay { take(daily - sends.filter { $0.at > now - 86_400 }.count) }
        if let daily = limits.recipientsPerDay { take(daily - sends.filter { $0.at > now - 86_400 }.reduce(0) { $0 + $1.recipients }) }
        return room
    }

    /// Counts a send, and forgets the sends older than the longest window `limits` use (a day
    /// with a daily limit, else a minute).
    package mutating func record(recipients: Int, at now: Double, limits: RouteLimits) {
        let keep: Double = limits.messagesPerDay != nil || limits.recipientsPerDay != nil ? 86_400 : 60
        if let first = sends.first, first.at <= now - keep {
            sends.removeAll { $0.at <= now - keep }
        }
        sends.append(Send(at: now, recipients: recipients))
    }

    /// With `limit` sends allowed per `span` seconds: how long until one more may go.
    static func countWait(_ sends: [Send], limit: Int, span: Double, now: Double) -> Double {
        let recent = sends.filter { $0.at > now - span }
        guard recent.count >= limit else { return 0 }
        // The oldest send that must leave the window for one more to fit.
        return max(0.001, recent[recent.count - limit].at + span - now)
    }

    /// With `limit` recipients a day: how long until `adding` more fit (a message over the
    /// whole limit goes alone once the day is empty).
    static func recipientWait(_ sends: [Send], limit: Int, adding: Int, now: Double) -> Double {
        let recent = sends.filter { $0.at > now - 86_400 }
        var total = recent.reduce(0) { $0 + $1.recipients }
        let needed = min(adding, limit)
        guard total + needed > limit else { return 0 }
        for send in recent {
            total -= send.recipients
            if total + needed <= limit { return max(0.001, send.at + 86_400 - now) }
        }
        return 0
    }
}

/// Where a route's sends are counted for every instance at once: the PostgreSQL store.
package protocol SharedPacing: Sendable {
    /// Reserves sends for `recipients` (one entry per message, in order) on `route` under
    /// `limits`, atomically for every instance: the first `granted` are counted; `wait`
    /// (seconds) is how long until the next one may go when not all were.
    func reserveSends(route: String, recipients: [Int], limits: RouteLimits, now: Double) async throws -> (granted: Int, wait: Double)

    /// Takes one of the `limit` delivery slots of `route` for `holder`, for every instance at
    /// once, until `until` (seconds since 1970; a holder that dies frees it then); nil when all
    /// are taken.
    func acquireSlot(route: String, limit: Int, holder: String, until: Double, now: Double) async throws -> Int?

    /// Gives back a slot that ``acquireSlot(route:limit:holder:until:now:)`` gave `holder`.
    func releaseSlot(route: String, slot: Int, holder: String) async throws
}

/// Pacing per route: counts each route's sends and says when its limits let the next go.
/// With a ``SharedPacing`` store (PostgreSQL) the count is the store's, shared by every
/// instance; otherwise it is kept here, for this process.
package final class RoutePacer: Sendable {
    private let shared: (any SharedPacing)?
    private let windows = NIOLockedValueBox<[String: PacingWindow]>([:])

    /// A pacer counting in `shared` when given, else in this process.
    package init(shared: (any SharedPacing)?) {
        self.shared = shared
    }

    /// True when the count is shared by every instance (PostgreSQL).
    package var isShared: Bool { shared != nil }

    /// Reserves one send per message (its recipient count) on `route`, in order: the first
    /// `granted` may go now; the others must wait `wait` seconds. A store that fails grants
    /// nothing for a second (the messages go back to the queue).
    package func reserve(route: String, recipients: [Int], limits: RouteLimits, now: Double) async -> (granted: Int, wait: Double) {
        guard limits.counts, !recipients.isEmpty else { return (recipients.count, 0) }
        if let shared {
            do {
                return try await shared.reserveSends(route: route, recipients: recipients, limits: limits, now: now)
            } catch {
                return (0, 1)
            }
        }
        return windows.withLockedValue { windows in
            var window = windows[route] ?? PacingWindow()
            defer { windows[route] = window }
            for (i, count) in recipients.enumerated() {
                let wait = window.wait(recipients: count, limits: limits, now: now)
                if wait > 0 { return (i, wait) }
                window.record(recipients: count, at: now, limits: limits)
            }
            return (recipients.count, 0)
        }
    }

    /// One delivery slot of a route's `max-concurrent` across every instance (PostgreSQL):
    /// nil when all are taken or the store does not answer. Without a shared store the lane's
    /// own bound is the limit, and every call gets a slot.
    package func acquireSlot(route: String, limit: Int, holder: String, until: Double, now: Double) async -> Int? {
        guard let shared else { return 0 }
        return try? await shared.acquireSlot(route: route, limit: limit, holder: holder, until: until, now: now)
    }

    /// Gives a slot back (a failure leaves it to expire at its `until`).
    package func releaseSlot(route: String, slot: Int, holder: String) async {
        guard let shared else { return }
        try? await shared.releaseSlot(route: route, slot: slot, holder: holder)
    }

    /// How many messages the route may send now by this process's own count, and how long to
    /// wait when none: a hint for claiming (the reservation decides). nil: no count applies, or
    /// the count is shared.
    package func available(route: String, limits: RouteLimits, now: Double) -> (count: Int, wait: Double)? {
        guard limits.counts, shared == nil else { return nil }
        return windows.withLockedValue { windows in
            let window = windows[route] ?? PacingWindow()
            let count = window.available(limits: limits, now: now) ?? Int.max
            return (count, count > 0 ? 0 : window.wait(recipients: 1, limits: limits, now: now))
        }
    }
}
