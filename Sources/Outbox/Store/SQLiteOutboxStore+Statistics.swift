import Foundation
import NIOCore
import SQLiteNIO

/// The dashboard's reads: counters kept by triggers (no page counts rows), the filtered
/// keyset listing, the oldest waiting message, a message's whole content.
extension SQLiteOutboxStore {
    /// Migration 7. The triggers run inside the statement that changes a message, so the
    /// counters commit (or roll back) with it. Every message goes by route `default` until routes
    /// (issue 16) add a `route` column; its migration then recreates these triggers with
    /// `NEW.route`/`OLD.route` in place of `'default'`.
    static let statisticsMigration: [String] = [
        "ALTER TABLE messages ADD COLUMN subject TEXT",
        """
        CREATE TABLE IF NOT EXISTS message_counts (
            route TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (route, status)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE IF NOT EXISTS message_rates (
            minute INTEGER NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (minute, status)
        ) WITHOUT ROWID
        """,
        "DELETE FROM message_counts",
        "INSERT INTO message_counts (route, status, n) SELECT 'default', status, COUNT(*) FROM messages GROUP BY status",
        """
        CREATE TRIGGER IF NOT EXISTS messages_counted_insert AFTER INSERT ON messages BEGIN
            INSERT INTO message_counts (route, status, n) VALUES ('default', NEW.status, 1)
                ON CONFLICT (route, status) DO UPDATE SET n = n + 1;
        END
        """,
        """
        CREATE TRIGGER IF NOT EXISTS messages_counted_delete AFTER DELETE ON messages BEGIN
            UPDATE message_counts SET n = n - 1 WHERE route = 'default' AND status = OLD.status;
        END
        """,
        """
        CREATE TRIGGER IF NOT EXISTS messages_counted_update AFTER UPDATE OF status ON messages
        WHEN OLD.status <> NEW.status BEGIN
            UPDATE message_counts SET n = n - 1 WHERE route = 'default' AND status = OLD.status;
            INSERT INTO message_counts (route, status, n) VALUES ('default', NEW.status, 1)
                ON CONFLICT (route, status) DO UPDATE SET n = n + 1;
            INSERT INTO message_rates (minute, status, n)
                SELECT CAST(NEW.updated_at / 60 AS INTEGER), NEW.status, 1 WHERE NEW.status IN ('delivered', 'failed')
                ON CONFLICT (minute, status) DO UPDATE SET n = n + 1;
            DELETE FROM message_rates
                WHERE NEW.status IN ('delivered', 'failed') AND minute < CAST(NEW.updated_at / 60 AS INTEGER) - 10080;
        END
        """,
    ]

    /// Migration 10: a route's messages in order, whole-address filters and possible duplicates,
    /// served by indexes (complete pages): the sender in any case, each recipient (lowercased) in
    /// a table kept by triggers, and the few messages that may have gone twice.
    static let addressIndexMigration: [String] = [
        // A route's messages newest first, without sorting them (the overview links to them).
        "CREATE INDEX IF NOT EXISTS messages_route_seq ON messages(route, seq)",
        "CREATE INDEX IF NOT EXISTS messages_sender ON messages(mail_from COLLATE NOCASE, seq)",
        "CREATE INDEX IF NOT EXISTS messages_duplicates ON messages(seq) WHERE possible_duplicate = 1",
        "CREATE INDEX IF NOT EXISTS messages_duplicates_status ON messages(status, seq) WHERE possible_duplicate = 1",
        """
        CREATE TABLE IF NOT EXISTS message_recipients (
            rcpt_address TEXT NOT NULL, rcpt_seq INTEGER NOT NULL, PRIMARY KEY (rcpt_address, rcpt_seq)
        ) WITHOUT ROWID
        """,
        """
        INSERT OR IGNORE INTO message_recipients (rcpt_address, rcpt_seq)
            SELECT lower(json_extract(j.value, '$.address')), m.seq FROM messages m, json_each(m.recipients) j
        """,
        """
        CREATE TRIGGER IF NOT EXISTS messages_recipients_insert AFTER INSERT ON messages BEGIN
            INSERT OR IGNORE INTO message_recipients (rcpt_address, rcpt_seq)
                SELECT lower(json_extract(value, '$.address')), NEW.seq FROM json_each(NEW.recipients);
        END
        """,
        """
        CREATE TRIGGER IF NOT EXISTS messages_recipients_delete AFTER DELETE ON messages BEGIN
            DELETE FROM message_recipients WHERE rcpt_seq = OLD.seq
                AND rcpt_address IN (SELECT lower(json_extract(value, '$.address')) FROM json_each(OLD.recipients));
        END
        """,
    ]

    /// Migration 9: the counters by each message's route (migration 8 added the column): the
    /// triggers are made anew with `NEW.route`/`OLD.route`, a move between routes moves its
    /// count, and the counts start again from the rows.
    static let routeCountersMigration: [String] = [
        "DROP TRIGGER IF EXISTS messages_counted_insert",
        "DROP TRIGGER IF EXISTS messages_counted_delete",
        "DROP TRIGGER IF EXISTS messages_counted_update",
        "DELETE FROM message_counts",
        "INSERT INTO message_counts (route, status, n) SELECT route, status, COUNT(*) FROM messages GROUP BY route, status",
        """
        CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages BEGIN
            INSERT INTO message_counts (route, status, n) VALUES (NEW.route, NEW.status, 1)
                ON CONFLICT (route, status) DO UPDATE SET n = n + 1;
        END
        """,
        """
        CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages BEGIN
            UPDATE message_counts SET n = n - 1 WHERE route = OLD.route AND status = OLD.status;
        END
        """,
        """
        CREATE TRIGGER messages_counted_update AFTER UPDATE OF status, route ON messages
        WHEN OLD.status <> NEW.status OR OLD.route <> NEW.route BEGIN
            UPDATE message_counts SET n = n - 1 WHERE route = OLD.route AND status = OLD.status;
            INSERT INTO message_counts (route, status, n) VALUES (NEW.route, NEW.status, 1)
                ON CONFLICT (route, status) DO UPDATE SET n = n + 1;
            INSERT INTO message_rates (minute, status, n)
                SELECT CAST(NEW.updated_at / 60 AS INTEGER), NEW.status, 1
                WHERE NEW.status IN ('delivered', 'failed') AND OLD.status <> NEW.status
                ON CONFLICT (minute, status) DO UPDATE SET n = n + 1;
            DELETE FROM message_rates
                WHERE NEW.status IN ('delivered', 'failed') AND minute < CAST(NEW.updated_at / 60 AS INTEGER) - 10080;
        END
        """,
    ]

    /// Messages per route and status, from the counters.
    public func countsByRoute() async throws -> [String: [MessageStatus: Int]] {
        var result: [String: [MessageStatus: Int]] = [:]
        for row in try await connection.query("SELECT route, status, n FROM message_counts") {
            guard let route = row.column("route")?.string, let status = row.column("status")?.string.flatMap(MessageStatus.init(rawValue:))
            else { continue }
            let n = Int(row.column("n")?.integer ?? 0)
            if n != 0 { result[route, default: [:]][status, default: 0] += n }
        }
        return result
    }

    /// Delivered and failed per minute since `since`.
    public func rates(since: Double) async throws -> [RatePoint] {
        var points: [Int: RatePoint] = [:]
        let rows = try await connection.query(
            "SELECT minute, status, n FROM message_rates WHERE minute >= ? ORDER BY minute", [.integer(Int(since / 60))])
        for row in rows {
            let minute = Int(row.column("minute")?.integer ?? 0)
            let n = Int(row.column("n")?.integer ?? 0)
            var point = points[minute] ?? RatePoint(minute: Double(minute * 60), delivered: 0, failed: 0)
            if row.column("status")?.string == "delivered" { point.delivered += n } else { point.failed += n }
            points[minute] = point
        }
        return points.keys.sorted().compactMap { points[$0] }
    }

    /// The oldest waiting message's queueing time: the first of each waiting status along the
    /// `(status, seq)` index.
    public func oldestWaiting() async throws -> Double? {
        let rows = try await connection.query(
            """
            SELECT MIN(created_at) AS oldest FROM (
                SELECT * FROM (SELECT created_at FROM messages WHERE status = 'queued' ORDER BY seq LIMIT 1)
                UNION ALL SELECT * FROM (SELECT created_at FROM messages WHERE status = 'deferred' ORDER BY seq LIMIT 1)
                UNION ALL SELECT * FROM (SELECT created_at FROM messages WHERE status = 'sending' ORDER BY seq LIMIT 1))
            """)
        return rows.first?.column("oldest")?.double
    }

    /// A page of messages that `filter` takes (keyset on `seq`; see ``MessageFilter``).
    public func list(_ filter: MessageFilter) async throws -> MessagePage {
        var conditions: [String] = []
        var binds: [SQLiteData] = []
        if let route = filter.route {
            conditions.append("route = ?")
            binds.append(.text(route))
        }
        if let client = filter.client {
            conditions.append("client = ?")
            binds.append(.text(client))
        }
        var windowEnd: Int64?
        // The walk: along one recipient's entries, one sender's, the possible duplicates, or the
        // messages (the status index or the sequence).
        var from = "messages"
        var key = "seq"
        if let address = filter.recipientAddress {
            from = "message_recipients CROSS JOIN messages ON seq = rcpt_seq"
            key = "rcpt_seq"
            conditions.append("rcpt_address = lower(?)")
            binds.append(.text(address))
        } else if filter.senderAddress != nil {
            from = "messages INDEXED BY messages_sender"
        } else if filter.possibleDuplicate == true {
            from = "messages INDEXED BY \(filter.statuses.isEmpty ? "messages_duplicates" : "messages_duplicates_status")"
        }
        if filter.needsScan {
            let bounds = try await connection.query("SELECT (SELECT MIN(seq) FROM messages) AS lo, (SELECT MAX(seq) FROM messages) AS hi")
            let lo = Int64(bounds.first?.column("lo")?.integer ?? 0)
            let hi = Int64(bounds.first?.column("hi")?.integer ?? 0)
            if filter.newestFirst {
                let start = filter.cursor ?? (hi + 1)
                let floor = start - filter.scanWindow
                conditions.append("\(key) >= ?")
                binds.append(.integer(Int(floor)))
                if floor > lo { windowEnd = floor }
            } else {
                let start = filter.cursor ?? (lo - 1)
                let ceiling = start + filter.scanWindow
                conditions.append("\(key) <= ?")
                binds.append(.integer(Int(ceiling)))
                if ceiling < hi { windowEnd = ceiling }
            }
        }
        if let cursor = filter.cursor {
            conditions.append(filter.newestFirst ? "\(key) < ?" : "\(key) > ?")
            binds.append(.integer(Int(cursor)))
        }
        if !filter.statuses.isEmpty {
            conditions.append("status IN (\(filter.statuses.map { _ in "?" }.joined(separator: ", ")))")
            binds += filter.statuses.map { .text($0.rawValue) }
        }
        if let address = filter.senderAddress {
            conditions.append("mail_from = ? COLLATE NOCASE")
            binds.append(.text(address))
        } else if let sender = filter.sender {
            conditions.append(#"mail_from LIKE ? ESCAPE '\'"#)
            binds.append(.text(MessageFilter.likePattern(sender)))
        }
        if let recipient = filter.recipient, filter.recipientAddress == nil {
            let pattern = MessageFilter.likePattern(recipient)
            conditions.append(
                #"recipients LIKE ? ESCAPE '\' AND EXISTS (SELECT 1 FROM json_each(recipients) WHERE json_extract(value, '$.address') LIKE ? ESCAPE '\')"#
            )
            binds += [.text(pattern), .text(pattern)]
        }
        if let subject = filter.subject {
            conditions.append(#"subject LIKE ? ESCAPE '\'"#)
            binds.append(.text(MessageFilter.likePattern(subject)))
        }
        if let since = filter.since {
            conditions.append("created_at >= ?")
            binds.append(.float(since))
        }
        if let until = filter.until {
            conditions.append("created_at < ?")
            binds.append(.float(until))
        }
        if let duplicate = filter.possibleDuplicate {
            // A literal, so that the partial index's condition is seen to hold.
            conditions.append("possible_duplicate = \(duplicate ? 1 : 0)")
        }
        var sql = "SELECT \(Self.columns) FROM \(from)"
        if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
        sql += " ORDER BY \(key) \(filter.newestFirst ? "DESC" : "ASC") LIMIT ?"
        binds.append(.integer(filter.limit))
        let messages = try await connection.query(sql, binds).map(Self.decode)
        if messages.count == filter.limit, let last = messages.last { return MessagePage(messages: messages, nextCursor: last.sequence) }
        return MessagePage(messages: messages, nextCursor: windowEnd)
    }

    /// The message's content: its head, then (unless `headOnly`) its chunks in order.
    public func content(id: String, headOnly: Bool) async throws -> [UInt8]? {
        let rows = try await connection.query("SELECT content, chunks FROM messages WHERE id = ?", [.text(id)])
        guard let row = rows.first else { return nil }
        var bytes: [UInt8] = []
        if var blob = row.column("content")?.blob { bytes = blob.readBytes(length: blob.readableBytes) ?? [] }
        let chunks = Int(row.column("chunks")?.integer ?? 0)
        for index in 0..<(headOnly ? 0 : chunks) {
            guard var chunk = try await readChunk(messageID: id, index: index) else { break }
            bytes += chunk.readBytes(length: chunk.readableBytes) ?? []
        }
        return bytes
    }
}
