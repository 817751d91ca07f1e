import Foundation
import Logging
import OutboxConfig

/// Pacing per route (``RoutePacer``): a route at its limits claims nothing until its window
/// frees, and each claimed message is counted (reserved) before its attempt; other routes go on.
extension Dispatcher {
    /// Claims up to `limit` due messages of `route` within its pacing: as many as its windows
    /// allow, each reserved in the pacer (across instances with PostgreSQL). Messages the
    /// reservation refuses go back to the queue, due when the window frees, and the route claims
    /// nothing until then.
    func claimPaced(
        route: String, limit: Int, owner: String, at: QueueInstant, lease: Duration, settings: DispatcherSettings
    ) async -> [ClaimedMessage] {
        guard let limits = settings.routeLimits[route], limits.counts else {
            return await claimOrWait(limit: limit, route: route, owner: owner, at: at, lease: lease)
        }
        var asked = limit
        if let (count, wait) = pacer.available(route: route, limits: limits, now: at.secondsSince1970) {
            guard count > 0 else {
                paced(route, wait: wait, at: at, limits: limits)
                return []
            }
            asked = min(asked, count)
        }
        let claimed = await claimOrWait(limit: asked, route: route, owner: owner, at: at, lease: lease)
        guard !claimed.isEmpty else { return [] }
        let now = clock.now
        let (granted, wait) = await pacer.reserve(
            route: route, recipients: claimed.map { max(1, $0.message.recipients.filter(\.isOpen).count) }, limits: limits,
            now: now.secondsSince1970)
        guard granted < claimed.count else { return claimed }
        paced(route, wait: wait, at: now, limits: limits)
        let due = now.advanced(by: .seconds(wait)).secondsSince1970
        for message in claimed[granted...] {
            try? await store.release(id: message.message.id, owner: instanceID, nextAttemptAt: due, now: now.secondsSince1970)
        }
        return Array(claimed[..<granted])
    }

    /// What `takeSharedSlot` got.
    enum SharedSlot {
        /// No shared slot applies: no limit, or a store of one process, where the lane's bound
        /// is the limit.
        case notNeeded
        /// This slot is held: give it back after the delivery.
        case held(Int)
        /// None freed before half the claim's lease had gone.
        case unavailable
    }

    /// A delivery slot of the route's `max-concurrent` shared by every instance (PostgreSQL):
    /// waits for one while the message's claim is young.
    func takeSharedSlot(route: String, settings: DispatcherSettings, claimedAt: QueueInstant, lease: Duration) async -> SharedSlot {
        guard pacer.isShared, let limit = settings.routeLimits[route]?.maxConcurrent else { return .notNeeded }
        while true {
            // Held until the claim's lease would run out: an instance that dies holding it frees it then.
            let until = claimedAt.advanced(by: lease).secondsSince1970
            if let slot = await pacer.acquireSlot(route: route, limit: limit, holder: instanceID, until: until, now: clock.now.secondsSince1970) {
                return .held(slot)
            }
            if claimedAt.duration(to: clock.now) > lease / 2 || Task.isCancelled { return .unavailable }
            try? await clock.sleep(for: .milliseconds(200))
        }
    }

    /// The route is at its limits: no claims for `wait` seconds.
    private func paced(_ route: String, wait: Double, at now: QueueInstant, limits: RouteLimits) {
        let until = now.advanced(by: .seconds(max(wait, 0.01)))
        let was = pacedUntil(route)
        setPaced(route, until: until)
        if was.map({ $0 <= now }) ?? true, wait >= 1 {
            logger.debug(
                "route at its pacing limit: no claims until its window frees",
                metadata: ["outbox.route": "\(route)", "outbox.wait": "\(Int(wait.rounded(.up))) s"])
        }
    }
}
