import Foundation
import Outbox
import Testing

/// `claimAged` takes waiting messages (queued or deferred, due or not) whose age base is before
/// the bound, oldest first, up to the limit; never one being sent or finished (both stores run it).
package func checkClaimAged(_ store: any OutboxStore) async throws {
    let old = try await store.enqueue(sampleNew(1), now: 100).id
    let older = try await store.enqueue(sampleNew(2), now: 50).id
    let young = try await store.enqueue(sampleNew(3), now: 900).id
    let sending = try await store.enqueue(sampleNew(4), now: 10).id
    // One old message deferred far into the future: still aged.
    let deferred = try await store.enqueue(sampleNew(5), now: 60).id
    let claimed = try await store.claim(limit: 10, owner: "o", now: 1000, lease: 60)
    #expect(claimed.count == 5)
    for message in claimed where message.message.id != sending {
        let outcome = AttemptOutcome(
            status: .deferred, recipients: message.message.recipients,
            attempt: AttemptRecord(number: 1, startedAt: 1000, durationSeconds: 0, transport: "smtp", outcome: "deferred", recipients: []),
            nextAttemptAt: message.message.id == deferred ? 1_000_000 : 1000, lastError: "x", unknown: false)
        #expect(try await store.record(id: message.message.id, owner: "o", outcome: outcome, now: 1000))
    }
    let first = try await store.claimAged(before: 500, limit: 2, owner: "sweep", now: 1001, lease: 60)
    #expect(first.map(\.message.id) == [older, deferred])
    #expect(first.allSatisfy { $0.message.status == .sending && $0.message.leaseOwner == "sweep" && !$0.tookOverExpiredLease })
    #expect(first.allSatisfy { !$0.content.isEmpty })
    let rest = try await store.claimAged(before: 500, limit: 10, owner: "sweep", now: 1001, lease: 60)
    #expect(rest.map(\.message.id) == [old])
    #expect(try await store.claimAged(before: 500, limit: 10, owner: "sweep", now: 1001, lease: 60).isEmpty)
    #expect(try await store.get(id: young)?.status == .deferred)
    #expect(try await store.get(id: sending)?.leaseOwner == "o")
}
