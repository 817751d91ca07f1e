import Foundation
import SQLiteNIO

/// Retention and space: content purged from finished messages, old records deleted, pages
/// given back to the file system (`auto_vacuum = INCREMENTAL`).
extension SQLiteOutboxStore {
    /// Empties the content (and removes the chunks) of up to `limit` finished messages in
    /// `statuses` last changed before `finishedBefore`, oldest first; returns how many.
    public func purgeContent(statuses: Set<MessageStatus>, finishedBefore: Double, limit: Int, now: Double) async throws -> Int {
        let wanted = statuses.filter(\.isFinal)
        guard !wanted.isEmpty, limit > 0 else { return 0 }
        let list = wanted.map { "'\($0.rawValue)'" }.sorted().joined(separator: ", ")
        let rows = try await writer.write(
            """
            UPDATE messages SET content = x'', content_purged_at = ?
            WHERE seq IN (
                SELECT seq FROM messages
                WHERE status IN (\(list)) AND content_purged_at IS NULL AND updated_at < ?
                ORDER BY updated_at LIMIT ?)
            RETURNING id, chunks
            """,
            [.float(now), .float(finishedBefore), .integer(limit)])
        let chunked = rows.filter { ($0.column("chunks")?.integer ?? 0) > 0 }.compactMap { $0.column("id")?.string }
        for id in chunked { _ = try await writer.write("DELETE FROM message_chunks WHERE message_id = ?", [.text(id)]) }
        return rows.count
    }

    /// Deletes up to `limit` finished messages (record, attempts, chunks) last changed before
    /// `finishedBefore`, oldest first; returns how many.
    public func purgeRecords(finishedBefore: Double, limit: Int) async throws -> Int {
        guard limit > 0 else { return 0 }
        let rows = try await writer.write(
            """
            DELETE FROM messages
            WHERE seq IN (
                SELECT seq FROM messages
                WHERE status IN ('delivered', 'failed', 'unknown', 'cancelled') AND updated_at < ?
                ORDER BY updated_at LIMIT ?)
            RETURNING id, chunks
            """,
            [.float(finishedBefore), .integer(limit)])
        let chunked = rows.filter { ($0.column("chunks")?.integer ?? 0) > 0 }.compactMap { $0.column("id")?.string }
        for id in chunked { _ = try await writer.write("DELETE FROM message_chunks WHERE message_id = ?", [.text(id)]) }
        return rows.count
    }

    /// Removes one finished message's content (chunks included); idempotent.
    public func purge(id: String, now: Double) async throws -> StoreChange {
        let rows = try await writer.write(
            """
            UPDATE messages SET content = x'', content_purged_at = ?
            WHERE id = ? AND status IN ('delivered', 'failed', 'unknown', 'cancelled') AND content_purged_at IS NULL
            RETURNING chunks
            """,
            [.float(now), .text(id)])
        if let chunks = rows.first?.column("chunks")?.integer, chunks > 0 {
            _ = try await writer.write("DELETE FROM message_chunks WHERE message_id = ?", [.text(id)])
        }
        guard let message = try await get(id: id) else { return .notFound }
        return message.contentPurged ? .done(message) : .conflict(message.status)
    }

    /// Gives the database's free pages back to the file system (`PRAGMA incremental_vacuum`);
    /// returns the bytes given back.
    public func reclaimSpace() async throws -> Int64 {
        func pages(_ pragma: String) async throws -> Int64 {
            Int64(try await connection.query("PRAGMA \(pragma)").first?.columns.first?.data.integer ?? 0)
        }
        let free = try await pages("freelist_count")
        guard free > 0 else { return 0 }
        _ = try await writer.write("PRAGMA incremental_vacuum")
        let given = (free - (try await pages("freelist_count"))) * (try await pages("page_size"))
        // The write-ahead log keeps its size until a checkpoint truncates it.
        _ = try? await writer.write("PRAGMA wal_checkpoint(TRUNCATE)")
        return given
    }

    /// SQLite gives pages back only with `auto_vacuum`: a new database gets `INCREMENTAL` at
    /// open, before WAL and its first table; an older one is converted here once (`VACUUM`,
    /// which needs free space as large as the file: when it fails, the store goes on without
    /// it and says so).
    func useIncrementalVacuum() async throws {
        let mode = try await connection.query("PRAGMA auto_vacuum").first?.columns.first?.data.integer ?? 0
        guard mode != 2 else { return }
        _ = try await connection.query("PRAGMA auto_vacuum = INCREMENTAL")
        do {
            _ = try await connection.query("VACUUM")
        } catch {
            logger.warning("could not convert the queue database to incremental vacuum (it needs free space as large as the file): \(error)")
        }
    }

}
