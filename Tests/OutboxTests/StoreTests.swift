import Foundation
import Outbox
import OutboxTestSupport
import Testing

@Suite("SQLite store")
struct StoreTests {
    @Test("enqueue then get returns the message with pending recipients; migrate twice is harmless")
    func enqueueGet() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await store.migrate()
        let r = try await store.enqueue(sampleNew(1), now: 1000)
        #expect(r.created && r.status == .queued)
        let m = try #require(try await store.get(id: r.id))
        #expect(m.status == .queued)
        #expect(m.recipients.map(\.address) == ["a@example.test", "b@example.test"])
        #expect(m.recipients.allSatisfy { $0.status == .pending })
        #expect(m.messageID == "<m1@example.test>")
        #expect(m.createdAt == 1000 && m.ageBase == 1000)
        #expect(try await store.get(id: "nope") == nil)
        try await store.close()
    }

    @Test("an idempotency key returns the same message; data survives reopening")
    func idempotencyAndDurability() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try await store.enqueue(sampleNew(1, key: "k1"), now: 1)
        let b = try await store.enqueue(sampleNew(2, key: "k1"), now: 2)
        let c = try await store.enqueue(sampleNew(3, key: "k2"), now: 3)
        #expect(a.id == b.id && !b.created && b.requestHash == "h-k1")
        #expect(c.id != a.id)
        try await store.close()
        let again = try await SQLiteOutboxStore.open(path: dir + "/outbox.sqlite")
        try await again.migrate()
        #expect(try await again.list(status: nil, limit: 10, after: nil).count == 2)
        try await again.close()
    }

    @Test("claim takes due messages once, under a lease; an expired lease is taken over as an unknown outcome")
    func claimLease() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for i in 0..<5 { _ = try await store.enqueue(sampleNew(i), now: 100) }
        let first = try await store.claim(limit: 3, owner: "w1", now: 100, lease: 60)
        #expect(first.count == 3)
        #expect(first.allSatisfy { $0.message.status == .sending && $0.message.leaseOwner == "w1" && !$0.tookOverExpiredLease })
        #expect(first.allSatisfy { !$0.content.isEmpty })
        let second = try await store.claim(limit: 10, owner: "w2", now: 101, lease: 60)
        #expect(second.count == 2)
        #expect(Set(first.map(\.message.id)).isDisjoint(with: second.map(\.message.id)))
        #expect(try await store.claim(limit: 10, owner: "w3", now: 150, lease: 60).isEmpty)
        // After the lease, w3 takes over and the take-over counts as an unknown outcome.
        let taken = try await store.claim(limit: 10, owner: "w3", now: 170, lease: 60)
        #expect(taken.count == 5)
        #expect(taken.allSatisfy { $0.tookOverExpiredLease && $0.message.unknownCount == 1 && $0.message.possibleDuplicate })
        #expect(taken.allSatisfy { $0.message.attempts.last?.outcome == "unknown" })
        // w1 lost its lease: its record is refused.
        let stale = AttemptOutcome(
            status: .delivered, recipients: [],
            attempt: AttemptRecord(number: 1, startedAt: 0, durationSeconds: 0, transport: "smtp", outcome: "delivered", recipients: []),
            nextAttemptAt: nil, lastError: nil, unknown: false)
        #expect(try await store.record(id: first[0].message.id, owner: "w1", outcome: stale, now: 171) == false)
        #expect(try await store.record(id: first[0].message.id, owner: "w3", outcome: stale, now: 171) == true)
        #expect(try await store.get(id: first[0].message.id)?.status == .delivered)
        try await store.close()
    }

    @Test("record keeps per-recipient state; a deferred message is due again only at its next attempt time")
    func recordPerRecipient() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let id = try await store.enqueue(sampleNew(1), now: 0).id
        let claimed = try await store.claim(limit: 1, owner: "w", now: 0, lease: 60)
        #expect(claimed.count == 1)
        let recipients = [
            RecipientState(address: "a@example.test", status: .accepted, code: 250),
            RecipientState(address: "b@example.test", status: .deferred, code: 450, text: "try later"),
        ]
        let outcome = AttemptOutcome(
            status: .deferred, recipients: recipients,
            attempt: AttemptRecord(
                number: 1, startedAt: 0, durationSeconds: 0.1, transport: "smtp", reply: "250 ok", outcome: "partial",
                recipients: ["a@example.test", "b@example.test"]),
            nextAttemptAt: 30, lastError: "450 try later", unknown: false)
        #expect(try await store.record(id: id, owner: "w", outcome: outcome, now: 1))
        let m = try #require(try await store.get(id: id))
        #expect(m.status == .deferred && m.attemptCount == 1 && m.nextAttemptAt == 30)
        #expect(m.recipients.filter(\.isOpen).map(\.address) == ["b@example.test"])
        #expect(m.attempts.count == 1 && m.attempts[0].reply == "250 ok")
        #expect(m.leaseOwner == nil)
        #expect(try await store.claim(limit: 1, owner: "w", now: 29, lease: 60).isEmpty)
        #expect(try await store.claim(limit: 1, owner: "w", now: 30, lease: 60).count == 1)
        try await store.close()
    }

    @Test("list pages with a cursor and filters by status; counts")
    func listing() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var ids: [String] = []
        for i in 0..<7 { ids.append(try await store.enqueue(sampleNew(i), now: Double(i)).id) }
        _ = try await store.cancel(id: ids[2], now: 10)
        let page1 = try await store.list(status: nil, limit: 3, after: nil)
        #expect(page1.map(\.id) == Array(ids[0..<3]))
        let page2 = try await store.list(status: nil, limit: 3, after: page1.last?.sequence)
        #expect(page2.map(\.id) == Array(ids[3..<6]))
        let queued = try await store.list(status: .queued, limit: 100, after: nil)
        #expect(queued.count == 6 && !queued.contains { $0.id == ids[2] })
        let counts = try await store.counts()
        #expect(counts[.queued] == 6 && counts[.cancelled] == 1)
        try await store.close()
    }

    @Test("cancel only before sending; retry puts failed messages back with rejected recipients pending")
    func cancelRetry() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try await store.enqueue(sampleNew(1), now: 0).id
        let b = try await store.enqueue(sampleNew(2), now: 0).id
        guard case .done(let cancelled) = try await store.cancel(id: a, now: 1) else { Issue.record("not cancelled"); return }
        #expect(cancelled.status == .cancelled)
        #expect(try await store.cancel(id: a, now: 1) == .conflict(.cancelled))
        #expect(try await store.cancel(id: "missing", now: 1) == .notFound)
        #expect(try await store.claim(limit: 5, owner: "w", now: 2, lease: 60).map(\.message.id) == [b])
        #expect(try await store.cancel(id: b, now: 2) == .conflict(.sending))
        let failed = AttemptOutcome(
            status: .failed,
            recipients: [
                RecipientState(address: "a@example.test", status: .accepted), RecipientState(address: "b@example.test", status: .rejected, code: 550),
            ],
            attempt: AttemptRecord(number: 1, startedAt: 2, durationSeconds: 0, transport: "smtp", outcome: "failed", recipients: []),
            nextAttemptAt: nil, lastError: "550", unknown: false)
        try await store.record(id: b, owner: "w", outcome: failed, now: 3)
        guard case .done(let retried) = try await store.retry(id: b, now: 50) else { Issue.record("not retried"); return }
        #expect(retried.status == .queued && retried.ageBase == 50)
        #expect(retried.recipients.map(\.status) == [.accepted, .pending])
        #expect(try await store.retry(id: b, now: 51) == .conflict(.queued))
        #expect(try await store.retry(id: "missing", now: 51) == .notFound)
        try await store.close()
    }

    @Test("recoverAbandoned releases claims left by a dead process and marks them possible duplicates")
    func recover() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for i in 0..<3 { _ = try await store.enqueue(sampleNew(i), now: 0) }
        _ = try await store.claim(limit: 2, owner: "dead", now: 0, lease: 600)
        #expect(try await store.recoverAbandoned(now: 5) == 2)
        let due = try await store.claim(limit: 5, owner: "new", now: 5, lease: 600)
        #expect(due.count == 3)
        #expect(due.filter { $0.message.possibleDuplicate }.count == 2)
        #expect(due.filter { $0.message.unknownCount == 1 }.count == 2)
        try await store.close()
    }

    @Test("expireLease at the shutdown deadline: the next claim takes the message over as an unknown outcome; its owner can still record")
    func expireLease() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for i in 0..<2 { _ = try await store.enqueue(sampleNew(i), now: 0) }
        let claimed = try await store.claim(limit: 2, owner: "stopping", now: 0, lease: 600)
        #expect(claimed.count == 2)
        try await store.expireLease(id: claimed[0].message.id, owner: "stopping", now: 10)
        try await store.expireLease(id: claimed[1].message.id, owner: "stopping", now: 10)
        // The second delivery finished after the deadline but before anyone took it over.
        let done = AttemptOutcome(
            status: .delivered,
            recipients: claimed[1].message.recipients.map { r in
                var r = r; r.status = .accepted; return r
            },
            attempt: AttemptRecord(number: 1, startedAt: 0, durationSeconds: 1, transport: "smtp", outcome: "delivered", recipients: []),
            nextAttemptAt: nil, lastError: nil, unknown: false)
        #expect(try await store.record(id: claimed[1].message.id, owner: "stopping", outcome: done, now: 11))
        let taken = try await store.claim(limit: 5, owner: "next", now: 12, lease: 600)
        #expect(taken.map(\.message.id) == [claimed[0].message.id])
        #expect(taken.first?.tookOverExpiredLease == true)
        #expect(taken.first?.message.possibleDuplicate == true)
        #expect(taken.first?.message.unknownCount == 1)
        // Another instance's expireLease does nothing to a lease it does not hold.
        try await store.expireLease(id: claimed[0].message.id, owner: "stopping", now: 13)
        #expect(try await store.claim(limit: 5, owner: "third", now: 14, lease: 600).isEmpty)
        try await store.close()
    }
}

@Suite("Retry policy")
struct RetryPolicyTests {
    let policy = RetryPolicy(
        initialDelay: .seconds(10), maxDelay: .seconds(100), multiplier: 2, jitter: 0.2, maxAge: .seconds(1000),
        unknownOutcomeRetries: 1)

    func at(_ s: Double) -> QueueInstant { QueueInstant(secondsSince1970: s) }

    @Test("back-off doubles up to the maximum delay")
    func backoff() {
        #expect((1...6).map { policy.baseDelay(failures: $0) } == [10, 20, 40, 80, 100, 100].map { Duration.seconds($0) })
    }

    @Test("jitter spreads the delay by the configured fraction, from the injected draw")
    func jitter() {
        #expect(policy.decide(failures: 1, now: at(0), ageBase: at(0), random: 0) == .retry(at: at(8)))
        #expect(policy.decide(failures: 1, now: at(0), ageBase: at(0), random: 0.5) == .retry(at: at(10)))
        #expect(policy.decide(failures: 1, now: at(0), ageBase: at(0), random: 1) == .retry(at: at(12)))
        #expect(policy.decide(failures: 3, now: at(100), ageBase: at(0), random: 0.5) == .retry(at: at(140)))
    }

    @Test("the server's delay is a floor")
    func serverDelay() {
        #expect(policy.decide(failures: 1, now: at(0), ageBase: at(0), serverDelay: .seconds(60), random: 0.5) == .retry(at: at(60)))
        #expect(policy.decide(failures: 1, now: at(0), ageBase: at(0), serverDelay: .seconds(5), random: 0.5) == .retry(at: at(10)))
    }

    @Test("past the maximum age it gives up")
    func maxAge() {
        #expect(policy.decide(failures: 9, now: at(890), ageBase: at(0), random: 0.5) == .retry(at: at(990)))
        guard case .giveUp = policy.decide(failures: 9, now: at(950), ageBase: at(0), random: 0.5) else {
            Issue.record("expected give-up"); return
        }
        #expect(policy.decide(failures: 9, now: at(1850), ageBase: at(1000), random: 0.5) == .retry(at: at(1950)))
    }

    @Test("unknown outcomes are retried once by default")
    func unknownAllowance() {
        #expect(RetryPolicy().unknownOutcomeRetries == 1)
        #expect(policy.allowsAnotherTry(unknownCount: 1))
        #expect(!policy.allowsAnotherTry(unknownCount: 2))
    }
}

@Suite("SQLite store: claim order")
struct StoreClaimOrderTests {
    @Test("claims take the earliest due across queued, deferred and expired leases, up to the limit")
    func claimOrder() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await checkClaimOrder(store)
        try await store.close()
    }
}
