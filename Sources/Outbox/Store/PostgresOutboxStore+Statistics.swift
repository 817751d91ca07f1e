import Foundation
import NIOCore
import PostgresNIO

/// The dashboard's reads: counters kept by triggers (no page counts rows), the filtered
/// keyset listing, the oldest waiting message, a message's whole content.
extension PostgresOutboxStore {
    /// Migration 7 (the dashboard), idempotent like the rest of the schema.
    ///
    /// Counts are an append-only table of deltas written by statement-level triggers (one row
    /// per status a statement changed, with the transaction: no row is updated in place, so
    /// concurrent instances never wait on a counter nor deadlock on one); a read sums them and,
    /// past a few hundred rows, folds them into one row per route and status. Rates are kept per
    /// minute, status and connection shard, so two instances seldom share a row.  Counted by each
    /// message's route (the route column comes before this in the schema; a move between routes
    /// moves its count).
    static let statisticsMigration: [String] = [
        "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS subject TEXT",
        """
        CREATE OR REPLACE FUNCTION outbox_count_changes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO outbox_message_counts (route, status, n) SELECT route, status, COUNT(*) FROM new_rows GROUP BY route, status;
            ELSIF TG_OP = 'DELETE' THEN
                INSERT INTO outbox_message_counts (route, status, n) SELECT route, status, -COUNT(*) FROM old_rows GROUP BY route, status;
            ELSE
                INSERT INTO outbox_message_counts (route, status, n)
                    SELECT d.route, d.status, SUM(d.n) FROM (
                        SELECT route, status, -1 AS n FROM old_rows UNION ALL SELECT route, status, 1 AS n FROM new_rows) d
                    GROUP BY d.route, d.status HAVING SUM(d.n) <> 0;
                INSERT INTO outbox_message_rates (minute, status, shard, n)
                    SELECT floor(nr.updated_at / 60)::bigint, nr.status, pg_backend_pid() % 8, COUNT(*)
                    FROM new_rows nr JOIN old_rows o ON o.seq = nr.seq
                    WHERE nr.status IN ('delivered', 'failed') AND o.status <> nr.status
                    GROUP BY 1, 2 ORDER BY 1, 2
                    ON CONFLICT (minute, status, shard) DO UPDATE SET n = outbox_message_rates.n + EXCLUDED.n;
            END IF;
            RETURN NULL;
        END $$
        """,
        """
        CREATE TABLE IF NOT EXISTS outbox_message_rates (
            minute BIGINT NOT NULL, status TEXT NOT NULL, shard INTEGER NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (minute, status, shard))
        """,
        // The counters start from the rows when the triggers are not there (a new schema, or a
        // messages table dropped and made anew).
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_counted_insert' AND tgrelid = 'outbox_messages'::regclass) THEN
                LOCK TABLE outbox_messages IN SHARE ROW EXCLUSIVE MODE;
                DROP TABLE IF EXISTS outbox_message_counts;
                CREATE TABLE outbox_message_counts (route TEXT NOT NULL, status TEXT NOT NULL, n BIGINT NOT NULL);
                INSERT INTO outbox_message_counts (route, status, n) SELECT route, status, COUNT(*) FROM outbox_messages GROUP BY route, status;
                CREATE TRIGGER outbox_counted_insert AFTER INSERT ON outbox_messages
                    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_changes();
                CREATE TRIGGER outbox_counted_update AFTER UPDATE ON outbox_messages
                    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_changes();
                CREATE TRIGGER outbox_counted_delete AFTER DELETE ON outbox_messages
                    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_changes();
            END IF;
        END $$
        """,
        // Whole-address filters and possible duplicates, served by indexes (complete pages):
        // the sender in any case, each recipient (lowercased) in a table kept by triggers, and
        // the few messages that may have gone twice.
        // A route's messages newest first, without sorting them (the overview links to them).
        "CREATE INDEX IF NOT EXISTS outbox_messages_route_seq ON outbox_messages (route, seq)",
        "CREATE INDEX IF NOT EXISTS outbox_messages_sender ON outbox_messages (lower(mail_from), seq)",
        "CREATE INDEX IF NOT EXISTS outbox_messages_duplicates ON outbox_messages (seq) WHERE possible_duplicate = 1",
        "CREATE INDEX IF NOT EXISTS outbox_messages_duplicates_status ON outbox_messages (status, seq) WHERE possible_duplicate = 1",
        """
        CREATE OR REPLACE FUNCTION outbox_recipient_changes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO outbox_message_recipients (rcpt_address, rcpt_seq)
                    SELECT DISTINCT lower(e->>'address'), n.seq FROM new_rows n, jsonb_array_elements(n.recipients::jsonb) e
                    ON CONFLICT DO NOTHING;
            ELSE
                DELETE FROM outbox_message_recipients WHERE (rcpt_address, rcpt_seq) IN (
                    SELECT lower(e->>'address'), o.seq FROM old_rows o, jsonb_array_elements(o.recipients::jsonb) e);
            END IF;
            RETURN NULL;
        END $$
        """,
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_recipients_insert' AND tgrelid = 'outbox_messages'::regclass) THEN
                LOCK TABLE outbox_messages IN SHARE ROW EXCLUSIVE MODE;
                DROP TABLE IF EXISTS outbox_message_recipients;
                CREATE TABLE outbox_message_recipients (rcpt_address TEXT NOT NULL, rcpt_seq BIGINT NOT NULL, PRIMARY KEY (rcpt_address, rcpt_seq));
                INSERT INTO outbox_message_recipients (rcpt_address, rcpt_seq)
                    SELECT DISTINCT lower(e->>'address'), m.seq FROM outbox_messages m, jsonb_array_elements(m.recipients::jsonb) e;
                CREATE TRIGGER outbox_recipients_insert AFTER INSERT ON outbox_messages
                    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_recipient_changes();
                CREATE TRIGGER outbox_recipients_delete AFTER DELETE ON outbox_messages
                    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_recipient_changes();
            END IF;
        END $$
        """,
    ]

    /// Past this many delta rows, a read folds the counts into one row per route and status.
    static let foldThreshold = 256

    /// Messages per route and status: the sum of the kept deltas.
    public func countsByRoute() async throws -> [String: [MessageStatus: Int]] {
        var result: [String: [MessageStatus: Int]] = [:]
        var deltas = 0
        for row in try await rows(
            "SELECT route, status, SUM(n)::bigint AS n, COUNT(*)::bigint AS k FROM outbox_message_counts GROUP BY route, status")
        {
            let r = row.makeRandomAccess()
            deltas += try r["k"].decode(Int.self)
            guard let status = MessageStatus(rawValue: try r["status"].decode(String.self)) else { continue }
            let n = try r["n"].decode(Int.self)
            if n != 0 { result[try r["route"].decode(String.self), default: [:]][status, default: 0] += n }
        }
        if deltas > Self.foldThreshold {
            // Rows another transaction is still writing are not visible here and stay as they are.
            _ = try await rows(
                """
                WITH d AS (DELETE FROM outbox_message_counts RETURNING route, status, n)
                INSERT INTO outbox_message_counts (route, status, n) SELECT route, status, SUM(n) FROM d GROUP BY route, status HAVING SUM(n) <> 0
                """)
        }
        return result
    }

    /// Delivered and failed per minute since `since`; minutes older than a week are dropped.
    public func rates(since: Double) async throws -> [RatePoint] {
        let first = Int(since / 60)
        var points: [Int: RatePoint] = [:]
        let result = try await rows(
            "SELECT minute, status, SUM(n)::bigint AS n FROM outbox_message_rates WHERE minute >= \(first) GROUP BY minute, status")
        for row in result {
            let r = row.makeRandomAccess()
            let minute = try r["minute"].decode(Int.self)
            let n = try r["n"].decode(Int.self)
            var point = points[minute] ?? RatePoint(minute: Double(minute * 60), delivered: 0, failed: 0)
            if try r["status"].decode(String.self) == "delivered" { point.delivered += n } else { point.failed += n }
            points[minute] = point
        }
        _ = try await rows("DELETE FROM outbox_message_rates WHERE minute < \(first - 10080)")
        return points.keys.sorted().compactMap { points[$0] }
    }

    /// The oldest waiting message's queueing time: the first of each waiting status along the
    /// `(status, seq)` index.
    public func oldestWaiting() async throws -> Double? {
        let result = try await rows(
            """
            SELECT MIN(created_at) AS oldest FROM (
                (SELECT created_at FROM outbox_messages WHERE status = 'queued' ORDER BY seq LIMIT 1)
                UNION ALL (SELECT created_at FROM outbox_messages WHERE status = 'deferred' ORDER BY seq LIMIT 1)
                UNION ALL (SELECT created_at FROM outbox_messages WHERE status = 'sending' ORDER BY seq LIMIT 1)) w
            """)
        return try result.first?.makeRandomAccess()["oldest"].decode(Double?.self)
    }

    /// A page of messages that `filter` takes (keyset on `seq`; see ``MessageFilter``).
    public func list(_ filter: MessageFilter) async throws -> MessagePage {
        var binds = PostgresBindings()
        func bind(_ value: some PostgresThrowingDynamicTypeEncodable) throws -> String {
            try binds.append(value)
            return "$\(binds.count)"
        }
        // The walk: along one recipient's entries, or the messages (the planner picks the
        // status, sender or duplicates index, or the sequence).
        var key = "seq"
        var sql = "SELECT \(Self.columns()) FROM outbox_messages WHERE true"
        if let address = filter.recipientAddress {
            key = "r.rcpt_seq"
            sql =
                try "SELECT \(Self.columns("m.")) FROM outbox_message_recipients r JOIN outbox_messages m ON m.seq = r.rcpt_seq"
                + " WHERE r.rcpt_address = lower(\(bind(address)))"
        }
        var windowEnd: Int64?
        if filter.needsScan {
            let bounds = try await rows(
                """
                SELECT COALESCE((SELECT MIN(seq) FROM outbox_messages), 0)::bigint AS lo,
                       COALESCE((SELECT MAX(seq) FROM outbox_messages), 0)::bigint AS hi
                """)
            let r = bounds.first?.makeRandomAccess()
            let lo = Int64(try r?["lo"].decode(Int.self) ?? 0)
            let hi = Int64(try r?["hi"].decode(Int.self) ?? 0)
            if filter.newestFirst {
                let floor = (filter.cursor ?? (hi + 1)) - filter.scanWindow
                sql += try " AND \(key) >= \(bind(Int(floor)))"
                if floor > lo { windowEnd = floor }
            } else {
                let ceiling = (filter.cursor ?? (lo - 1)) + filter.scanWindow
                sql += try " AND \(key) <= \(bind(Int(ceiling)))"
                if ceiling < hi { windowEnd = ceiling }
            }
        }
        if let route = filter.route { sql += try " AND route = \(bind(route))" }
        if let client = filter.client { sql += try " AND client = \(bind(client))" }
        if let cursor = filter.cursor { sql += try " AND \(key) \(filter.newestFirst ? "<" : ">") \(bind(Int(cursor)))" }
        if !filter.statuses.isEmpty { sql += try " AND status = ANY(\(bind(filter.statuses.map(\.rawValue))))" }
        if let address = filter.senderAddress {
            sql += try " AND lower(mail_from) = lower(\(bind(address)))"
        } else if let sender = filter.sender {
            sql += try " AND mail_from ILIKE \(bind(MessageFilter.likePattern(sender)))"
        }
        if let recipient = filter.recipient, filter.recipientAddress == nil {
            let pattern = try bind(MessageFilter.likePattern(recipient))
            sql +=
                " AND recipients ILIKE \(pattern) AND EXISTS (SELECT 1 FROM jsonb_array_elements(recipients::jsonb) e WHERE e->>'address' ILIKE \(pattern))"
        }
        if let subject = filter.subject { sql += try " AND subject ILIKE \(bind(MessageFilter.likePattern(subject)))" }
        if let since = filter.since { sql += try " AND created_at >= \(bind(since))" }
        if let until = filter.until { sql += try " AND created_at < \(bind(until))" }
        // A literal, so that the partial index's condition is seen to hold.
        if let duplicate = filter.possibleDuplicate { sql += " AND possible_duplicate = \(duplicate ? 1 : 0)" }
        sql += try " ORDER BY \(key) \(filter.newestFirst ? "DESC" : "ASC") LIMIT \(bind(filter.limit))"
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        let messages = try await rows(query).map { try Self.decode($0.makeRandomAccess()) }
        if messages.count == filter.limit, let last = messages.last { return MessagePage(messages: messages, nextCursor: last.sequence) }
        return MessagePage(messages: messages, nextCursor: windowEnd)
    }

    /// The message's content: its head, then (unless `headOnly`) its chunks in order.
    public func content(id: String, headOnly: Bool) async throws -> [UInt8]? {
        guard let row = try await rows("SELECT content, chunks FROM outbox_messages WHERE id = \(id)").first else { return nil }
        let r = row.makeRandomAccess()
        var head = try r["content"].decode(ByteBuffer.self)
        var bytes = head.readBytes(length: head.readableBytes) ?? []
        for index in 0..<(headOnly ? 0 : try r["chunks"].decode(Int.self)) {
            guard var chunk = try await readChunk(messageID: id, index: index) else { break }
            bytes += chunk.readBytes(length: chunk.readableBytes) ?? []
        }
        return bytes
    }
}
