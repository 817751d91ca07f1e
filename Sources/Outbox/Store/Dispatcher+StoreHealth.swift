import Foundation
import Logging

/// The dispatcher's store calls while the store may be unavailable: no tight error loop (a
/// failed claim waits before the next one), outages logged by ``StoreHealth`` (a line when one
/// starts, one every 30 s, one when it ends), and an outcome recorded once the store is back
/// rather than lost (a lost outcome would have the message sent again when its lease ends).
extension Dispatcher {
    /// How long a failed claim waits before the next: short, so deliveries resume within a
    /// second or two of the store's return.
    static let claimBackoff: Duration = .seconds(1)

    /// Claims due messages; after a failure, reports it, waits ``claimBackoff`` and returns none.
    func claimOrWait(limit: Int, route: String, owner: String, at: QueueInstant, lease: Duration) async -> [ClaimedMessage] {
        do {
            let claimed = try await store.claim(limit: limit, owner: owner, now: at.secondsSince1970, lease: lease.seconds, route: route)
            storeHealth.succeeded()
            return claimed
        } catch {
            // Outages and a missing schema are logged by the health, once; anything else here.
            if storeHealth.failed(error) == .other {
                logger.error("claiming messages failed: \(StoreFailure.describe(error))")
            }
            try? await clock.sleep(for: Self.claimBackoff)
            return []
        }
    }

    /// Records an outcome; while the store is unavailable, tries again every second until two
    /// seconds before `until` (the end of the lease, seconds since 1970: past it, a claim could
    /// take the message over and send it again). Returns whether the lease was held, and
    /// whether a try was repeated (then a false may mean that an earlier try committed before
    /// its answer was lost).
    func recordOutcome(id: String, outcome: AttemptOutcome, notification: NewMessage?, until: Double) async throws -> (
        held: Bool, retried: Bool
    ) {
        let deadline = until - 2
        var retried = false
        while true {
            do {
                let held = try await store.record(
                    id: id, owner: instanceID, outcome: outcome, notification: notification, now: clock.now.secondsSince1970)
                storeHealth.succeeded()
                if !held, retried {
                    logger.debug("the outcome of \(id) was recorded by an earlier try, or its lease ended meanwhile")
                }
                return (held, retried)
            } catch {
                guard storeHealth.failed(error) == .unavailable, clock.now.secondsSince1970 < deadline, !Task.isCancelled else { throw error }
                retried = true
                try? await clock.sleep(for: .seconds(1))
            }
        }
    }
}
