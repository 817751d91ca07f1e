import Logging
import Outbox

/// The API's side of store outages: every store call is bounded by `store-unavailable-wait`,
/// and a store error becomes an answer with a stable code and a message of Outbox's own (never
/// a library's text). The outage itself is logged once by ``StoreHealth``, not per request.
extension OutboxAPI {
    /// Shares the daemon's ``StoreHealth`` (the dispatcher's), so an outage is logged once.
    package func attach(health: StoreHealth) {
        healthBox.withLockedValue { $0 = health }
    }

    /// The health this API reports to.
    package var storeHealth: StoreHealth { healthBox.withLockedValue { $0 } }

    /// Runs a store call bounded by `store-unavailable-wait`.
    func storeCall<T: Sendable>(_ operation: @escaping @Sendable (any OutboxStore) async throws -> T) async throws -> T {
        let store = self.store
        return try await storeHealth.call { try await operation(store) }
    }

    /// The answer for an error that is not an ``APIError``: a store failure's, or 500.
    func storeRefusal(_ error: any Error) -> APIError {
        let failure = StoreFailure.classify(error)
        if failure == .other {
            logger.error("request failed: \(StoreFailure.describe(error))")
        }
        return APIError.store(failure, wait: storeHealth.wait)
    }

    /// Why the store cannot serve `/readyz` now, or nil: a bounded ping (which checks the
    /// schema's version too).
    func storeProblem() async -> String? {
        do {
            try await storeCall { try await $0.ping() }
            return nil
        } catch {
            switch StoreFailure.classify(error) {
            case .schemaMissing:
                return
                    "the store's schema is missing or not Outbox's (\(StoreFailure.describe(error))): restart Outbox to create it, or point [outbox] store at Outbox's database"
            case .unavailable:
                return storeHealth.problem ?? "the store does not answer: \(StoreFailure.describe(error))"
            case .insufficientStorage, .other:
                return "the store does not answer: \(StoreFailure.describe(error))"
            }
        }
    }
}
