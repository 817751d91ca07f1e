import Foundation
import NIOCore
import Outbox
import OutboxMIME
import Testing

/// A fresh SQLite store in a temporary directory.
package func makeTempStore() async throws -> (SQLiteOutboxStore, String) {
    let dir = NSTemporaryDirectory() + "outbox-store-\(UUID().uuidString)"
    let store = try await SQLiteOutboxStore.open(path: dir + "/outbox.sqlite")
    try await store.migrate()
    return (store, dir)
}

package func sampleNew(_ n: Int = 0, key: String? = nil, recipients: [String] = ["a@example.test", "b@example.test"]) -> NewMessage {
    NewMessage(
        from: "sender@example.test", recipients: recipients,
        content: Array("From: sender@example.test\r\nTo: a@example.test\r\nSubject: m\(n)\r\n\r\nbody\r\n".utf8),
        messageID: "<m\(n)@example.test>", idempotencyKey: key, requestHash: key.map { "h-\($0)" })
}

/// Claims take the earliest due messages across queued, deferred and expired leases, in due
/// order, up to the limit, and nothing that is not due (both stores run it).
package func checkClaimOrder(_ store: any OutboxStore) async throws {
    func deferred(_ id: String, until next: Double, owner: String, now: Double) async throws {
        let outcome = AttemptOutcome(
            status: .deferred, recipients: [RecipientState(address: "a@example.test", status: .deferred, code: 450)],
            attempt: AttemptRecord(number: 1, startedAt: now, durationSeconds: 0, transport: "smtp", outcome: "deferred", recipients: []),
            nextAttemptAt: next, lastError: "450", unknown: false)
        #expect(try await store.record(id: id, owner: owner, outcome: outcome, now: now))
    }
    // Expired lease: due since 5 (enqueued then), claimed at 5 for 10 s and never recorded.
    let expired = try await store.enqueue(sampleNew(0), now: 5).id
    #expect(try await store.claim(limit: 1, owner: "crashed", now: 5, lease: 10).map(\.message.id) == [expired])
    // Deferred to 25 and to 500 (not due at 100).
    let deferredEarly = try await store.enqueue(sampleNew(1), now: 6).id
    let deferredLate = try await store.enqueue(sampleNew(2), now: 7).id
    let both = try await store.claim(limit: 2, owner: "w", now: 8, lease: 60).map(\.message.id)
    #expect(Set(both) == [deferredEarly, deferredLate])
    try await deferred(deferredEarly, until: 25, owner: "w", now: 9)
    try await deferred(deferredLate, until: 500, owner: "w", now: 9)
    // Queued, due since 20, 30, 40.
    let q20 = try await store.enqueue(sampleNew(3), now: 20).id
    let q30 = try await store.enqueue(sampleNew(4), now: 30).id
    let q40 = try await store.enqueue(sampleNew(5), now: 40).id
    // Due order at 100: expired (5), q20, deferredEarly (25), q30, q40.
    let first = try await store.claim(limit: 3, owner: "w2", now: 100, lease: 60)
    #expect(Set(first.map(\.message.id)) == [expired, q20, deferredEarly])
    #expect(first.first { $0.message.id == expired }?.tookOverExpiredLease == true)
    let rest = try await store.claim(limit: 10, owner: "w2", now: 100, lease: 60).map(\.message.id)
    #expect(Set(rest) == [q30, q40])
    #expect(try await store.claim(limit: 10, owner: "w3", now: 101, lease: 60).isEmpty)
}

/// The chunk contract every store keeps: a large message's content is written in chunks ahead
/// of its row, the row is inserted only when all of them are there, chunks are read one by one,
/// and chunks without a message are removed. And `record` with a notification commits both or
/// neither.
package enum ChunkContract {
    package static func run(_ store: any OutboxStore) async throws {
        let id = "chunked-\(UUID().uuidString.lowercased())"
        let pieces: [[UInt8]] = (0..<3).map { i in Array(repeating: UInt8(ascii: "a") + UInt8(i), count: 1000 + i) }
        let head = Array("From: a@example.test\r\nSubject: chunked\r\n\r\n".utf8)

        // Two of three chunks written: the message is refused, and nothing is queued.
        for i in 0..<2 { try await store.writeChunk(messageID: id, index: i, bytes: ByteBuffer(bytes: pieces[i]), now: 100) }
        var message = NewMessage(from: "a@example.test", recipients: ["b@example.test"], content: head)
        message.id = id
        message.chunkCount = 3
        message.chunkedSize = pieces.reduce(0) { $0 + $1.count }
        await #expect(throws: StoreError.self) { _ = try await store.enqueue(message, now: 100) }
        #expect(try await store.get(id: id) == nil)

        // All three: queued, with its size and chunk count; claimed with the head only.
        try await store.writeChunk(messageID: id, index: 2, bytes: ByteBuffer(bytes: pieces[2]), now: 100)
        let queued = try await store.enqueue(message, now: 100)
        #expect(queued.id == id && queued.created)
        let stored = try #require(try await store.get(id: id))
        #expect(stored.chunkCount == 3)
        #expect(stored.size == head.count + message.chunkedSize)
        let claimed = try await store.claim(limit: 100, owner: "chunks", now: 1_000_000_000, lease: 60)
        let mine = try #require(claimed.first { $0.message.id == id })
        #expect(mine.content == head)

        // The stream of the relayed message reads them in order: head + pieces, byte for byte.
        let relayed = RelayedMessage(
            head: mine.content, pieceCount: mine.message.chunkCount, byteCount: mine.message.size,
            envelope: Envelope(from: "a@example.test", recipients: ["b@example.test"])
        ) { index in
            try await store.readChunk(messageID: id, index: index)
        }
        let all = try await relayed.byteStream(options: MIMEEncodingOptions()).collect()
        #expect(all == head + pieces.flatMap { $0 })
        #expect(relayed.knownByteCount == all.count)
        #expect(try await store.readChunk(messageID: id, index: 3) == nil)

        // A queued message's chunks stay; an orphan's go (discard, or purge by age).
        try await store.discardChunks(messageID: id)
        #expect(try await store.readChunk(messageID: id, index: 0) != nil)
        let orphan = "orphan-\(UUID().uuidString.lowercased())"
        try await store.writeChunk(messageID: orphan, index: 0, bytes: ByteBuffer(bytes: [1, 2, 3]), now: 200)
        try await store.discardChunks(messageID: orphan)
        #expect(try await store.readChunk(messageID: orphan, index: 0) == nil)
        let old = "old-\(UUID().uuidString.lowercased())"
        try await store.writeChunk(messageID: old, index: 0, bytes: ByteBuffer(bytes: [1]), now: 300)
        try await store.writeChunk(messageID: old, index: 1, bytes: ByteBuffer(bytes: [2]), now: 300)
        #expect(try await store.purgeOrphanChunks(before: 250) == 0)
        #expect(try await store.purgeOrphanChunks(before: 301) >= 2)
        #expect(try await store.readChunk(messageID: old, index: 1) == nil)
        #expect(try await store.readChunk(messageID: id, index: 2) != nil)

        // record + notification: both, or (lease lost) neither.
        var notification = NewMessage(from: "", recipients: ["a@example.test"], content: Array("Subject: dsn\r\n\r\nx\r\n".utf8))
        notification.id = "dsn-\(id)"
        notification.idempotencyKey = "dsn-\(id)"
        let outcome = AttemptOutcome(
            status: .failed, recipients: [RecipientState(address: "b@example.test", status: .rejected, code: 550)],
            attempt: AttemptRecord(number: 1, startedAt: 1, durationSeconds: 0, transport: "t", outcome: "failed", recipients: ["b@example.test"]),
            nextAttemptAt: nil, lastError: "refused", unknown: false)
        let lost = try await store.record(id: id, owner: "someone-else", outcome: outcome, notification: notification, now: 2)
        #expect(!lost)
        #expect(try await store.get(id: "dsn-\(id)") == nil)
        let held = try await store.record(id: id, owner: "chunks", outcome: outcome, notification: notification, now: 2)
        #expect(held)
        #expect(try await store.get(id: id)?.status == .failed)
        let dsn = try #require(try await store.get(id: "dsn-\(id)"))
        #expect(dsn.status == .queued && dsn.from.isEmpty)
    }
}
