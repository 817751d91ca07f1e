import Foundation
import Outbox
import OutboxTestSupport
import Testing

/// A migrated, emptied PostgreSQL store on the cluster that scripts/test.sh starts.
func makePostgresStore() async throws -> PostgresOutboxStore {
    let store = try await PostgresOutboxStore.open(url: try TestPeers.fromEnvironment().postgresURL)
    try await store.migrate()
    try await store.deleteAllForTesting()
    return store
}

@Suite("PostgreSQL store", .serialized)
struct PostgresStoreTests {
    @Test("enqueue, idempotency, get, list with cursor, cancel, retry")
    func basics() async throws {
        let store = try await makePostgresStore()
        try await store.migrate()
        let a = try await store.enqueue(sampleNew(1, key: "pk1"), now: 10)
        let b = try await store.enqueue(sampleNew(2, key: "pk1"), now: 11)
        #expect(a.created && !b.created && a.id == b.id && b.requestHash == "h-pk1")
        var ids = [a.id]
        for i in 3..<6 { ids.append(try await store.enqueue(sampleNew(i), now: Double(i)).id) }
        let m = try #require(try await store.get(id: a.id))
        #expect(m.status == .queued && m.recipients.count == 2 && m.createdAt == 10 && m.messageID == "<m1@example.test>")
        let page = try await store.list(status: nil, limit: 2, after: nil)
        #expect(page.map(\.id) == Array(ids[0..<2]))
        #expect(try await store.list(status: nil, limit: 10, after: page.last?.sequence).map(\.id) == Array(ids[2...]))
        guard case .done(let c) = try await store.cancel(id: ids[1], now: 20) else { Issue.record("not cancelled"); return }
        #expect(c.status == .cancelled)
        #expect(try await store.cancel(id: ids[1], now: 20) == .conflict(.cancelled))
        #expect(try await store.retry(id: ids[0], now: 20) == .conflict(.queued))
        #expect(try await store.counts()[.queued] == 3)
        try await store.close()
    }

    @Test("claims take the earliest due across queued, deferred and expired leases, up to the limit")
    func claimOrder() async throws {
        let store = try await makePostgresStore()
        try await checkClaimOrder(store)
        try await store.close()
    }

    @Test("claims are exclusive across concurrent claimers (SKIP LOCKED); leases expire; records need the lease")
    func claims() async throws {
        let store = try await makePostgresStore()
        for i in 0..<200 { _ = try await store.enqueue(sampleNew(i), now: 0) }
        let claimed = try await withThrowingTaskGroup(of: [String].self) { group in
            for w in 0..<4 {
                group.addTask {
                    var mine: [String] = []
                    while true {
                        let batch = try await store.claim(limit: 7, owner: "w\(w)", now: 1, lease: 60)
                        if batch.isEmpty { return mine }
                        mine += batch.map(\.message.id)
                    }
                }
            }
            var all: [String] = []
            for try await ids in group { all += ids }
            return all
        }
        #expect(claimed.count == 200)
        #expect(Set(claimed).count == 200)
        let taken = try await store.claim(limit: 300, owner: "late", now: 100, lease: 60)
        #expect(taken.count == 200)
        #expect(taken.allSatisfy { $0.tookOverExpiredLease && $0.message.possibleDuplicate && $0.message.unknownCount == 1 })
        let id = taken[0].message.id
        let outcome = AttemptOutcome(
            status: .deferred,
            recipients: [
                RecipientState(address: "a@example.test", status: .accepted), RecipientState(address: "b@example.test", status: .deferred, code: 450),
            ],
            attempt: AttemptRecord(
                number: 2, startedAt: 100, durationSeconds: 0.5, transport: "smtp", reply: "250 ok", outcome: "partial",
                recipients: ["a@example.test", "b@example.test"]),
            nextAttemptAt: 130, lastError: "450", unknown: false)
        #expect(try await store.record(id: id, owner: "w0", outcome: outcome, now: 101) == false)
        #expect(try await store.record(id: id, owner: "late", outcome: outcome, now: 101))
        let m = try #require(try await store.get(id: id))
        #expect(m.status == .deferred && m.nextAttemptAt == 130 && m.attempts.count == 2 && m.attempts[1].reply == "250 ok")
        #expect(m.recipients.filter(\.isOpen).map(\.address) == ["b@example.test"])
        try await store.release(id: taken[1].message.id, owner: "late", nextAttemptAt: 500, now: 102)
        #expect(try await store.get(id: taken[1].message.id)?.status == .deferred)
        try await store.close()
    }
}
extension PostgresStoreTests {
    @Test("chunks: all or refused, read in order, orphans removed; record and its notification commit together")
    func chunks() async throws {
        let store = try await makePostgresStore()
        try await ChunkContract.run(store)
        try await store.close()
    }
}
extension PostgresStoreTests {
    @Test("retention: content purged oldest first from finished messages only; records deleted when old")
    func retention() async throws {
        let store = try await makePostgresStore()
        try await store.deleteAllForTesting()
        try await RetentionContract.run(store)
        try await store.close()
    }
}
extension PostgresStoreTests {
    @Test("listing: filtered keyset listing, paged in both orders and in scan windows; counters, rates and the oldest waiting message")
    func listing() async throws {
        let store = try await makePostgresStore()
        try await ListingContract.run(store)
        try await store.close()
    }
}
