import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Outbox
import OutboxConfig
import OutboxServer
import OutboxTestSupport
import Testing

/// `queue-min-free` with the disk's free space stood in for (the real disk is filled by the
/// tmpfs test in Tests/RelayClients): purges delivered content first, refuses intake only when
/// that is not enough, resumes when space comes back; the API answers 507 with Retry-After and
/// `/readyz` 503 while refused.
@Suite("Storage guard", .serialized)
struct StorageGuardTests {
    static func settings(_ minFree: QueueMinFree) -> StorageGuard.Settings {
        var s = OutboxSettings()
        s.queueMinFree = minFree
        return StorageGuard.Settings(s)
    }

    /// `count` messages enqueued and delivered at 100, 101...
    static func delivered(_ store: any OutboxStore, count: Int) async throws -> [String] {
        var ids: [String] = []
        for n in 0..<count {
            let id = try await store.enqueue(sampleNew(n), now: Double(100 + n)).id
            let claimed = try await store.claim(limit: 1, owner: "t", now: Double(100 + n), lease: 60)
            #expect(claimed.map(\.message.id) == [id])
            let outcome = AttemptOutcome(
                status: .delivered, recipients: [RecipientState(address: "a@example.test", status: .accepted, code: 250)],
                attempt: AttemptRecord(
                    number: 1, startedAt: Double(100 + n), durationSeconds: 0, transport: "smtp", outcome: "delivered", recipients: []),
                nextAttemptAt: nil, lastError: nil, unknown: false)
            #expect(try await store.record(id: id, owner: "t", outcome: outcome, now: Double(100 + n)))
            ids.append(id)
        }
        return ids
    }

    @Test("below queue-min-free: delivered content purged first, then intake refused; it resumes when space is back")
    func purgesThenRefusesThenResumes() async throws {
        let fixture = try await APIFixture.make()
        let ids = try await Self.delivered(fixture.store, count: 3)
        let free = NIOLockedValueBox<Int64>(50 << 20)
        let guardian = StorageGuard(
            store: fixture.store, directory: fixture.dir, settings: Self.settings(.bytes(10 << 20)), logger: Logger(label: "test"),
            space: { _ in (free: free.withLockedValue { $0 }, capacity: 1 << 30) })
        fixture.api.attach(storage: guardian)
        #expect(await guardian.check() == .open(room: 40 << 20))
        for id in ids { #expect(try await fixture.store.get(id: id)?.contentPurged == false) }

        free.withLockedValue { $0 = 9 << 20 }
        let decision = await guardian.check()
        #expect(decision == .refused(free: 9 << 20, minimum: 10 << 20))
        for id in ids { #expect(try await fixture.store.get(id: id)?.contentPurged == true, "delivered content purged first") }

        try await fixture.test { client in
            let r = try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage))
            #expect(r.status.code == 507)
            #expect(errorCode(r) == "insufficient_storage")
            #expect(r.headers[.retryAfter] == "60")
            let ready = try await client.execute(uri: "/readyz", method: .get)
            #expect(ready.status == .serviceUnavailable)
            #expect(String(buffer: ready.body).contains("queue-min-free"))
            #expect(try await fixture.count() == 3, "nothing was queued")

            // Just above the threshold is not enough to resume (no flapping); well above is.
            free.withLockedValue { $0 = (10 << 20) + 1 }
            #expect(await guardian.check().isOpen == false)
            free.withLockedValue { $0 = 20 << 20 }
            #expect(await guardian.check() == .open(room: 10 << 20))
            let ok = try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage))
            #expect(ok.status == .accepted)
            // A message larger than the room left is refused on its own.
            free.withLockedValue { $0 = (10 << 20) + 1000 }
            _ = await guardian.check()
            let big = try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage))
            #expect(big.status.code == 507)
            #expect((json(big)["error"] as? [String: Any])?["message"] as? String ?? "" != "")
        }
    }

    @Test("retention purges content, then records, by age; open messages are kept")
    func retention() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ids = try await Self.delivered(store, count: 2)
        let open = try await store.enqueue(sampleNew(9), now: 50).id
        var s = OutboxSettings()
        s.retentionContent = .seconds(100)
        s.retentionRecords = .seconds(1000)
        let guardian = StorageGuard(store: store, directory: nil, settings: StorageGuard.Settings(s), logger: Logger(label: "test"))
        await guardian.applyRetention(now: 150)
        #expect(try await store.get(id: ids[0])?.contentPurged == false, "finished at 100: not older than 100 s at 150")
        await guardian.applyRetention(now: 201)
        #expect(try await store.get(id: ids[0])?.contentPurged == true)
        #expect(try await store.get(id: ids[1])?.contentPurged == false)
        await guardian.applyRetention(now: 1102)
        #expect(try await store.get(id: ids[0]) == nil)
        #expect(try await store.get(id: ids[1]) == nil)
        #expect(try await store.get(id: open)?.status == .queued)
        try await store.close()
    }
}
