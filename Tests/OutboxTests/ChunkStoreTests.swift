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
