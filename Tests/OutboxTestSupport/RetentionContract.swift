import Foundation
import NIOCore
import Outbox
import Testing

/// The retention contract every store keeps: content is purged from finished messages only,
/// oldest first, in the statuses asked for, up to the limit; a purged message keeps its record
/// and cannot be retried; records are deleted only when finished and old enough, chunks with them.
package enum RetentionContract {
    static func finish(_ store: any OutboxStore, _ id: String, _ status: MessageStatus, at now: Double) async throws {
        let claimed = try await store.claim(limit: 100, owner: "r", now: now, lease: 60)
        #expect(claimed.contains { $0.message.id == id }, "\(id) was claimed")
        let outcome = AttemptOutcome(
            status: status,
            recipients: [RecipientState(address: "a@example.test", status: status == .delivered ? .accepted : .rejected, code: 250)],
            attempt: AttemptRecord(number: 1, startedAt: now, durationSeconds: 0, transport: "smtp", outcome: status.rawValue, recipients: []),
            nextAttemptAt: nil, lastError: status == .failed ? "550 no" : nil, unknown: false)
        #expect(try await store.record(id: id, owner: "r", outcome: outcome, now: now))
    }

    package static func run(_ store: any OutboxStore) async throws {
        let tag = UUID().uuidString.prefix(6)
        // Three delivered (finished at 10, 20, 30), one failed (40), one still queued.
        var delivered: [String] = []
        for (n, at) in [10.0, 20, 30].enumerated() {
            let id = try await store.enqueue(sampleNew(n, key: "ret-\(tag)-d\(n)"), now: at - 1).id
            try await finish(store, id, .delivered, at: at)
            delivered.append(id)
        }
        let failed = try await store.enqueue(sampleNew(7, key: "ret-\(tag)-f"), now: 39).id
        try await finish(store, failed, .failed, at: 40)
        let queued = try await store.enqueue(sampleNew(8, key: "ret-\(tag)-q"), now: 41).id
        // A chunked message, delivered at 35.
        let chunkedID = "ret-\(tag)-chunked"
        for i in 0..<2 { try await store.writeChunk(messageID: chunkedID, index: i, bytes: ByteBuffer(string: "chunk \(i)\r\n"), now: 34) }
        var big = sampleNew(9, key: "ret-\(tag)-c")
        big.id = chunkedID
        big.chunkCount = 2
        big.chunkedSize = 18
        _ = try await store.enqueue(big, now: 34)
        try await finish(store, chunkedID, .delivered, at: 35)

        // Delivered content only, the two oldest.
        #expect(try await store.purgeContent(statuses: [.delivered], finishedBefore: 1000, limit: 2, now: 50) == 2)
        #expect(try await store.get(id: delivered[0])?.contentPurged == true)
        #expect(try await store.get(id: delivered[1])?.contentPurged == true)
        #expect(try await store.get(id: delivered[2])?.contentPurged == false)
        #expect(try await store.get(id: failed)?.contentPurged == false)
        // Queued is never purged, whatever is asked.
        #expect(try await store.purgeContent(statuses: [.queued, .failed], finishedBefore: 35, limit: 10, now: 51) == 0)
        #expect(try await store.purgeContent(statuses: [.queued, .delivered, .failed], finishedBefore: 1000, limit: 10, now: 52) == 3)
        #expect(try await store.get(id: queued)?.contentPurged == false)
        #expect(try await store.readChunk(messageID: chunkedID, index: 0) == nil, "the chunks went with the content")
        // A purged failed message cannot be retried; its record and attempts stay.
        let kept = try #require(try await store.get(id: failed))
        #expect(kept.attempts.count == 1 && kept.status == .failed)
        #expect(try await store.retry(id: failed, now: 60) == .conflict(.failed))
        // One message at a time: refused while open, idempotent when done.
        #expect(try await store.purge(id: queued, now: 61) == .conflict(.queued))
        if case .done(let m) = try await store.purge(id: failed, now: 62) {
            #expect(m.contentPurged)
        } else {
            Issue.record("purge of a failed message")
        }
        #expect(try await store.purge(id: "no-such-\(tag)", now: 63) == .notFound)
        // Records: finished before 25 only, oldest first.
        #expect(try await store.purgeRecords(finishedBefore: 25, limit: 10) == 2)
        #expect(try await store.get(id: delivered[0]) == nil)
        #expect(try await store.get(id: delivered[1]) == nil)
        #expect(try await store.get(id: delivered[2]) != nil)
        #expect(try await store.purgeRecords(finishedBefore: 1000, limit: 10) == 3)
        #expect(try await store.get(id: queued)?.status == .queued, "an open message is never deleted")
        _ = try await store.reclaimSpace()
    }
}
