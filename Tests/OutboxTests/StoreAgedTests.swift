import Foundation
import Outbox
import OutboxTestSupport
import Testing

@Suite("SQLite store: held messages past their maximum age")
struct StoreAgedTests {
    @Test("claimAged takes waiting messages older than the bound, oldest first, due or not")
    func claimAged() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await checkClaimAged(store)
        try await store.close()
    }
}

@Suite("SQLite store: routes")
struct StoreRouteTests {
    @Test("route and client stored; claims, listings, counts, holds and moves by route")
    func routes() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await checkRoutes(store)
        try await store.close()
    }
}
