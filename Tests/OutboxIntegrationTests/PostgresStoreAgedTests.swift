import Foundation
import Outbox
import OutboxTestSupport
import Testing

@Suite("PostgreSQL store: held messages past their maximum age", .serialized)
struct PostgresStoreAgedTests {
    @Test("claimAged takes waiting messages older than the bound, oldest first, due or not")
    func claimAged() async throws {
        let store = try await makePostgresStore()
        try await checkClaimAged(store)
        try await store.close()
    }
}

@Suite("PostgreSQL store: routes", .serialized)
struct PostgresStoreRouteTests {
    @Test("route and client stored; claims, listings, counts, holds and moves by route")
    func routes() async throws {
        let store = try await makePostgresStore()
        try await checkRoutes(store)
        try await store.close()
    }
}
