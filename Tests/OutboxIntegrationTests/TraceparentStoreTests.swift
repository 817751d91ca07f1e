import Foundation
import Outbox
import OutboxTestSupport
import Testing

/// Migration 6: the submitting request's `traceparent` is stored with a message and comes back
/// with `get`, in PostgreSQL (the SQLite store is covered by
/// OutboxServerTests' TraceparentTests).
@Suite("PostgreSQL store: traceparent", .serialized)
struct TraceparentStoreTests {
    @Test("stored and read back; nil when not given")
    func roundTrip() async throws {
        let store = try await PostgresOutboxStore.open(url: try TestPeers.fromEnvironment().postgresURL)
        try await store.migrate()
        let header = "00-\(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased())-00f067aa0ba902b7-01"
        var traced = sampleNew(1)
        traced.traceparent = header
        let a = try await store.enqueue(traced, now: 10)
        let b = try await store.enqueue(sampleNew(2), now: 10)
        #expect(try await store.get(id: a.id)?.traceparent == header)
        #expect(try await store.get(id: b.id)?.traceparent == nil)
        // (No claim here: the cluster is shared, and a claim would take other tests' messages; the
        // claim reads the same columns, `PostgresOutboxStore.columns`, as `get`.)
        try await store.close()
    }
}
