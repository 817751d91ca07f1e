import Foundation
import NIOCore
import Outbox
import OutboxMIME
import OutboxTestSupport
import Testing

@Suite("Store chunks (SQLite)")
struct SQLiteChunkTests {
    @Test("chunks: all or refused, read in order, orphans removed; record and its notification commit together")
    func chunks() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ChunkContract.run(store)
        try await store.close()
    }
}

@Suite("Store retention (SQLite)")
struct SQLiteRetentionTests {
    @Test("content purged oldest first from finished messages only; records deleted when old; space given back")
    func retention() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await RetentionContract.run(store)
        // Incremental vacuum gives pages back: 200 delivered 20 KB messages, purged.
        for n in 0..<200 {
            var m = sampleNew(n)
            m.content += Array(repeating: UInt8(ascii: "x"), count: 20_000)
            let id = try await store.enqueue(m, now: 1).id
            _ = id
        }
        let claimed = try await store.claim(limit: 500, owner: "v", now: 2, lease: 60)
        for c in claimed {
            let outcome = AttemptOutcome(
                status: .delivered, recipients: [RecipientState(address: "a@example.test", status: .accepted, code: 250)],
                attempt: AttemptRecord(number: 1, startedAt: 2, durationSeconds: 0, transport: "smtp", outcome: "delivered", recipients: []),
                nextAttemptAt: nil, lastError: nil, unknown: false)
            _ = try await store.record(id: c.message.id, owner: "v", outcome: outcome, now: 3)
        }
        #expect(try await store.purgeContent(statuses: [.delivered], finishedBefore: 10, limit: 1000, now: 4) == 200)
        let given = try await store.reclaimSpace()
        #expect(given > 3_000_000, "incremental vacuum gave back \(given) bytes")
        try await store.close()
    }
}

@Suite("Store listing and counters (SQLite)")
struct SQLiteListingTests {
    @Test("filtered keyset listing, paged in both orders and in scan windows; counters, rates and the oldest waiting message")
    func listing() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ListingContract.run(store)
        try await store.close()
    }
}
