import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

/// The shared queue for several `outbox serve` instances: PostgreSQL, claims with
/// `FOR UPDATE SKIP LOCKED` so each due message goes to one instance. Every change is one SQL
/// statement, committed before the call returns.
public final class PostgresOutboxStore: OutboxStore, Sendable {
    /// The connection pool in use; replaced by a new one when PostgreSQL comes back after an
    /// outage (see PostgresOutboxStore+Recovery.swift).
    let pool: NIOLockedValueBox<Pool>
    let configuration: PostgresClient.Configuration
    let poolLogger: Logger
    let logger: Logger
    let recovery = NIOLockedValueBox(Recovery())
    /// `postgres`.
    public var kind: String { "postgres" }

    /// Connects with a `postgres://user:password@host:port/database` URL; call `migrate()` next.
    public static func open(url: String, logger: Logger = Logger(label: "outbox.store")) async throws -> PostgresOutboxStore {
        guard let components = URLComponents(string: url), let host = components.host, let user = components.user else {
            throw StoreError(
                .invalidURL,
                "store \(url.replacingOccurrences(of: #":[^:@/]*@"#, with: ":***@", options: .regularExpression)) is not postgres://user:password@host:port/database"
            )
        }
        let database = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        let configuration = PostgresClient.Configuration(
            host: host, port: components.port ?? 5432, username: user,
            password: components.password, database: database.isEmpty ? nil : database,
            tls: .disable)
        let store = PostgresOutboxStore(configuration: configuration, logger: logger)
        store.startMonitor()
        return store
    }

    private init(configuration: PostgresClient.Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        // The pool logs each failed connection attempt at info, with postgres-nio's generic
        // text: an outage is logged once by StoreHealth instead.
        var poolLogger = logger
        if poolLogger.logLevel < .warning { poolLogger.logLevel = .warning }
        self.poolLogger = poolLogger
        self.pool = NIOLockedValueBox(Pool.start(configuration, logger: poolLogger))
    }

    static let schema: [String] =
        [
            """
            CREATE TABLE IF NOT EXISTS outbox_messages (
                seq BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                idempotency_key TEXT UNIQUE,
                request_hash TEXT,
                mail_from TEXT NOT NULL,
                recipients TEXT NOT NULL,
                content BYTEA NOT NULL,
                message_id TEXT,
                size BIGINT NOT NULL,
                status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                age_base DOUBLE PRECISION NOT NULL,
                next_attempt_at DOUBLE PRECISION,
                attempt_count BIGINT NOT NULL DEFAULT 0,
                unknown_count BIGINT NOT NULL DEFAULT 0,
                possible_duplicate BIGINT NOT NULL DEFAULT 0,
                took_over BIGINT NOT NULL DEFAULT 0,
                attempts JSONB NOT NULL DEFAULT '[]'::jsonb,
                last_error TEXT,
                lease_owner TEXT,
                lease_until DOUBLE PRECISION
            )
            """,
            "CREATE INDEX IF NOT EXISTS outbox_messages_due ON outbox_messages(status, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS outbox_messages_status_seq ON outbox_messages(status, seq)",
            "CREATE TABLE IF NOT EXISTS outbox_schema (version BIGINT NOT NULL)",
            // Where a message came from (the relay's DSN parameters).
            "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS origin TEXT",
            // Large messages' content in chunks, written as it arrives.
            "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS chunks BIGINT NOT NULL DEFAULT 0",
            """
            CREATE TABLE IF NOT EXISTS outbox_message_chunks (
                message_id TEXT NOT NULL,
                n BIGINT NOT NULL,
                data BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (message_id, n)
            )
            """,
            // Retention: content purged, finished messages by age.
            "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS content_purged_at DOUBLE PRECISION",
            "CREATE INDEX IF NOT EXISTS outbox_messages_finished ON outbox_messages(status, updated_at)",
            // Held messages past their maximum age, found without a scan (claimAged).
            "CREATE INDEX IF NOT EXISTS outbox_messages_age ON outbox_messages(status, age_base)",
            // 6: the submitting request's traceparent (delivery spans join its trace).
            "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS traceparent TEXT",
            // Migration 8, routes: each message's route and submitting client; each route's lane claims its own.
            "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS route TEXT NOT NULL DEFAULT 'default'",
            "ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS client TEXT",
            "CREATE INDEX IF NOT EXISTS outbox_messages_route_due ON outbox_messages(route, status, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS outbox_messages_client_seq ON outbox_messages(client, seq)",
            // Pacing per route, shared by every instance (PostgresOutboxStore+Pacing.swift).
            "CREATE TABLE IF NOT EXISTS outbox_route_sends (route TEXT NOT NULL, sent_at DOUBLE PRECISION NOT NULL, recipients BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS outbox_route_sends_route ON outbox_route_sends(route, sent_at)",
            // max-concurrent per route, shared by every instance: one row per delivery in flight.
            """
            CREATE TABLE IF NOT EXISTS outbox_route_slots (
                route TEXT NOT NULL, slot BIGINT NOT NULL, holder TEXT NOT NULL, until DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (route, slot)
            )
            """,
        ] + PostgresOutboxStore.statisticsMigration

    /// Creates the tables, or upgrades them to the current schema; safe to run again.
    public func migrate() async throws {
        try await tracked { [self] client in
            try await self.migrate(client)
        }
    }

    private func migrate(_ client: PostgresClient) async throws {
        try await client.withTransaction(logger: Self.logger) { connection in
            // Several instances may start at once: one migrates, the others wait.
            try await connection.query("SELECT pg_advisory_xact_lock(7270001)", logger: Self.logger)
            for sql in Self.schema {
                try await connection.query(PostgresQuery(unsafeSQL: sql), logger: Self.logger)
            }
            let rows = try await connection.query("SELECT version FROM outbox_schema", logger: Self.logger).collect()
            if rows.isEmpty {
                try await connection.query("INSERT INTO outbox_schema (version) VALUES (\(Self.schemaVersion))", logger: Self.logger)
            }
        }
    }

    /// The version in `outbox_schema` (the later columns and tables are added in place).
    static let schemaVersion = 1

    static let logger = Logger(label: "outbox.store.postgres")

    static func columns(_ p: String = "") -> String {
        """
        \(p)seq, \(p)id, \(p)idempotency_key, \(p)request_hash, \(p)mail_from, \(p)recipients, \(p)message_id, \(p)size, \(p)status,
        \(p)created_at, \(p)updated_at, \(p)age_base, \(p)next_attempt_at, \(p)attempt_count, \(p)unknown_count, \(p)possible_duplicate,
        \(p)took_over, \(p)attempts::text AS attempts, \(p)last_error, \(p)lease_owner, \(p)lease_until, \(p)origin, \(p)chunks,
        \(p)content_purged_at, \(p)traceparent, \(p)subject, \(p)route, \(p)client
        """
    }

    func rows(_ query: PostgresQuery, function: String = #function) async throws -> [PostgresRow] {
        try await tracked(function) { client in try await client.query(query, logger: Self.logger).collect() }
    }

    /// Stores a message, committed before it returns; with an idempotency key already used,
    /// returns the earlier message. Throws ``StoreError/Code/chunksMissing`` when a chunked
    /// message's chunks are not all stored.
    public func enqueue(_ message: NewMessage, now: Double) async throws -> EnqueueResult {
        if let key = message.idempotencyKey, let existing = try await byIdempotencyKey(key) { return existing }
        let (id, query) = Self.insert(message, now: now)
        let inserted = try await rows(query)
        if inserted.isEmpty, let key = message.idempotencyKey, let existing = try await byIdempotencyKey(key) { return existing }
        if inserted.isEmpty {
            throw StoreError(
                .chunksMissing, "message \(id) was not queued: \(message.chunkCount) content chunks were expected and are not all in the store")
        }
        return EnqueueResult(id: id, status: .queued, created: true, requestHash: message.requestHash)
    }

    /// The INSERT of a new message (and its id). A chunked message is inserted only when all
    /// its chunks are there.
    static func insert(_ message: NewMessage, now: Double) -> (id: String, query: PostgresQuery) {
        let id = message.id ?? UUID().uuidString.lowercased()
        let recipients = StoreJSON.encode(message.recipients.map { RecipientState(address: $0) })
        let origin = message.origin.map { StoreJSON.encode($0) }
        let content = ByteBuffer(bytes: message.content)
        let size = message.content.count + message.chunkedSize
        let chunks = message.chunkCount
        let subject = MessageSubject.of(message.content)
        let query: PostgresQuery = """
            INSERT INTO outbox_messages (id, idempotency_key, request_hash, mail_from, recipients, content, message_id, size, status,
                                         created_at, updated_at, age_base, next_attempt_at, origin, chunks, traceparent, subject, route, client)
            SELECT \(id), \(message.idempotencyKey), \(message.requestHash), \(message.from), \(recipients), \(content),
                   \(message.messageID), \(size), 'queued', \(now), \(now), \(now), \(now), \(origin), \(chunks), \(message.traceparent), \(subject),
                   \(message.route), \(message.client)
            WHERE \(chunks) = 0 OR (SELECT COUNT(*) FROM outbox_message_chunks WHERE message_id = \(id)) = \(chunks)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """
        return (id, query)
    }

    /// Writes chunk `index` of a large message's content ahead of `enqueue`, committed when it
    /// returns.
    public func writeChunk(messageID: String, index: Int, bytes: ByteBuffer, now: Double) async throws {
        _ = try await rows(
            """
            INSERT INTO outbox_message_chunks (message_id, n, data, created_at) VALUES (\(messageID), \(index), \(bytes), \(now))
            ON CONFLICT (message_id, n) DO UPDATE SET data = EXCLUDED.data, created_at = EXCLUDED.created_at
            """)
    }

    /// Reads chunk `index` of a message's content; nil when there is none.
    public func readChunk(messageID: String, index: Int) async throws -> ByteBuffer? {
        guard let row = try await rows("SELECT data FROM outbox_message_chunks WHERE message_id = \(messageID) AND n = \(index)").first else {
            return nil
        }
        return try row.makeRandomAccess()["data"].decode(ByteBuffer.self)
    }

    /// Removes the chunks of a message that was not queued.
    public func discardChunks(messageID: String) async throws {
        _ = try await rows(
            """
            DELETE FROM outbox_message_chunks WHERE message_id = \(messageID)
            AND NOT EXISTS (SELECT 1 FROM outbox_messages WHERE id = \(messageID))
            """)
    }

    /// Removes chunks written before `before` (seconds since 1970) that belong to no message;
    /// returns how many.
    @discardableResult
    public func purgeOrphanChunks(before: Double) async throws -> Int {
        try await rows(
            """
            DELETE FROM outbox_message_chunks c WHERE c.created_at < \(before)
            AND NOT EXISTS (SELECT 1 FROM outbox_messages m WHERE m.id = c.message_id)
            RETURNING n
            """
        ).count
    }

    private func byIdempotencyKey(_ key: String) async throws -> EnqueueResult? {
        guard
            let row = try await rows("SELECT id, status, request_hash FROM outbox_messages WHERE idempotency_key = \(key)").first?.makeRandomAccess()
        else { return nil }
        return EnqueueResult(
            id: try row["id"].decode(String.self),
            status: MessageStatus(rawValue: try row["status"].decode(String.self)) ?? .queued,
            created: false, requestHash: try row["request_hash"].decode(String?.self))
    }

    /// Claims waiting messages (queued or deferred) whose age base is before `ageBefore`.
    public func claimAged(before ageBefore: Double, limit: Int, owner: String, now: Double, lease: Double, route: String?) async throws
        -> [ClaimedMessage]
    {
        let until = now + lease
        let result = try await rows(
            """
            UPDATE outbox_messages m SET status = 'sending', lease_owner = \(owner), lease_until = \(until), updated_at = \(now), took_over = 0
            FROM (SELECT seq FROM outbox_messages WHERE status IN ('queued', 'deferred') AND age_base < \(ageBefore)
                  AND (\(route)::text IS NULL OR route = \(route))
                  ORDER BY age_base LIMIT \(limit) FOR UPDATE SKIP LOCKED) aged
            WHERE m.seq = aged.seq
            RETURNING \(unescaped: Self.columns("m.")), m.content
            """)
        // RETURNING keeps no order (the statement-level counting triggers changed the plan's):
        // oldest first is restored here.
        return try result.map { row in
            let r = row.makeRandomAccess()
            var blob = try r["content"].decode(ByteBuffer.self)
            return ClaimedMessage(message: try Self.decode(r), content: blob.readBytes(length: blob.readableBytes) ?? [], tookOverExpiredLease: false)
        }.sorted { ($0.message.ageBase, $0.message.sequence) < ($1.message.ageBase, $1.message.sequence) }
    }

    /// Each status is read along its index, in due order, up to `limit` (one `OR` over them made
    /// the server gather and sort every due message for each claim: O(queue) per claim). A row
    /// locked by a branch and not taken stays locked only until this statement commits.
    public func claim(limit: Int, owner: String, now: Double, lease: Double, route: String?) async throws -> [ClaimedMessage] {
        let until = now + lease
        let result = try await rows(
            """
            UPDATE outbox_messages m SET
                status = 'sending', lease_owner = \(owner), lease_until = \(until), updated_at = \(now),
                took_over = CASE WHEN m.status = 'sending' THEN 1 ELSE 0 END,
                unknown_count = m.unknown_count + CASE WHEN m.status = 'sending' THEN 1 ELSE 0 END,
                possible_duplicate = CASE WHEN m.status = 'sending' THEN 1 ELSE m.possible_duplicate END,
                attempt_count = m.attempt_count + CASE WHEN m.status = 'sending' THEN 1 ELSE 0 END,
                attempts = CASE WHEN m.status = 'sending' THEN m.attempts || jsonb_build_array(jsonb_build_object(
                    'number', m.attempt_count + 1, 'startedAt', \(now)::float8, 'durationSeconds', 0, 'transport', '',
                    'error', 'the lease of ' || COALESCE(m.lease_owner, '?') || ' expired while it was sending: the outcome is unknown',
                    'outcome', 'unknown', 'recipients', '[]'::jsonb, 'instance', m.lease_owner)) ELSE m.attempts END
            FROM (SELECT seq FROM (
                      SELECT seq, next_attempt_at FROM (
                          SELECT seq, next_attempt_at FROM outbox_messages
                          WHERE status = 'queued' AND next_attempt_at <= \(now) AND (\(route)::text IS NULL OR route = \(route))
                          ORDER BY next_attempt_at LIMIT \(limit) FOR UPDATE SKIP LOCKED) queued
                      UNION ALL
                      SELECT seq, next_attempt_at FROM (
                          SELECT seq, next_attempt_at FROM outbox_messages
                          WHERE status = 'deferred' AND next_attempt_at <= \(now) AND (\(route)::text IS NULL OR route = \(route))
                          ORDER BY next_attempt_at LIMIT \(limit) FOR UPDATE SKIP LOCKED) deferred
                      UNION ALL
                      SELECT seq, next_attempt_at FROM (
                          SELECT seq, next_attempt_at FROM outbox_messages
                          WHERE status = 'sending' AND lease_until < \(now) AND (\(route)::text IS NULL OR route = \(route))
                          ORDER BY next_attempt_at LIMIT \(limit) FOR UPDATE SKIP LOCKED) expired
                  ) candidates
                  ORDER BY next_attempt_at LIMIT \(limit)) due
            WHERE m.seq = due.seq
            RETURNING \(unescaped: Self.columns("m.")), m.content
            """)
        // Due order (RETURNING keeps none).
        return try result.map { row in
            let r = row.makeRandomAccess()
            var blob = try r["content"].decode(ByteBuffer.self)
            let message = try Self.decode(r)
            return ClaimedMessage(
                message: message, content: blob.readBytes(length: blob.readableBytes) ?? [],
                tookOverExpiredLease: try r["took_over"].decode(Int.self) == 1)
        }.sorted { ($0.message.nextAttemptAt ?? 0, $0.message.sequence) < ($1.message.nextAttemptAt ?? 0, $1.message.sequence) }
    }

    /// Records an attempt and its outcome, and queues `notification` in the same transaction;
    /// false (nothing recorded) when `owner` no longer holds the lease.
    @discardableResult
    public func record(id: String, owner: String, outcome: AttemptOutcome, notification: NewMessage?, now: Double) async throws -> Bool {
        let recipients = StoreJSON.encode(outcome.recipients)
        let attempt = "[" + StoreJSON.encode(outcome.attempt) + "]"
        let unknown = outcome.unknown ? 1 : 0
        let update: PostgresQuery = """
            UPDATE outbox_messages SET status = \(outcome.status.rawValue), recipients = \(recipients),
                attempts = attempts || \(attempt)::jsonb, attempt_count = attempt_count + 1,
                unknown_count = unknown_count + \(unknown), possible_duplicate = GREATEST(possible_duplicate, \(unknown)),
                next_attempt_at = \(outcome.nextAttemptAt), last_error = \(outcome.lastError),
                lease_owner = NULL, lease_until = NULL, took_over = 0, updated_at = \(now)
            WHERE id = \(id) AND lease_owner = \(owner) AND status = 'sending'
            RETURNING seq
            """
        guard let notification else { return !(try await rows(update)).isEmpty }
        // The outcome and the notification commit together, or neither does.
        let insert = Self.insert(notification, now: now).query
        return try await tracked { client in
            try await client.withTransaction(logger: Self.logger) { connection in
                let updated = try await connection.query(update, logger: Self.logger).collect()
                guard !updated.isEmpty else { return false }
                _ = try await connection.query(insert, logger: Self.logger).collect()
                return true
            }
        }
    }

    /// Ends `owner`'s lease at once: the next claim takes the message over as an unknown
    /// outcome.
    public func expireLease(id: String, owner: String, now: Double) async throws {
        _ = try await rows(
            """
            UPDATE outbox_messages SET lease_until = \(now - 1), updated_at = \(now)
            WHERE id = \(id) AND lease_owner = \(owner) AND status = 'sending'
            """)
    }

    /// Gives a claimed message back to the queue, due at `nextAttemptAt`, without counting an
    /// attempt.
    public func release(id: String, owner: String, nextAttemptAt: Double, now: Double) async throws {
        _ = try await rows(
            """
            UPDATE outbox_messages SET status = CASE WHEN attempt_count = 0 THEN 'queued' ELSE 'deferred' END,
                next_attempt_at = \(nextAttemptAt), lease_owner = NULL, lease_until = NULL, took_over = 0, updated_at = \(now)
            WHERE id = \(id) AND lease_owner = \(owner) AND status = 'sending'
            """)
    }

    /// Shared by several instances: claims are never released wholesale; expired leases are
    /// taken over by `claim` instead.
    public func recoverAbandoned(now: Double) async throws -> Int { 0 }

    /// The message with that id (without its content), or nil.
    public func get(id: String) async throws -> StoredMessage? {
        try await rows("SELECT \(unescaped: Self.columns()) FROM outbox_messages WHERE id = \(id)").first.map {
            try Self.decode($0.makeRandomAccess())
        }
    }

    /// Up to `limit` messages in insertion order after `cursor` (a `sequence`), of one status
    /// when `status` is given.
    public func list(status: MessageStatus?, limit: Int, after cursor: Int64?, route: String?, client: String?) async throws -> [StoredMessage] {
        let after = Int(cursor ?? 0)
        let status = status?.rawValue
        let result = try await rows(
            """
            SELECT \(unescaped: Self.columns()) FROM outbox_messages WHERE seq > \(after)
                AND (\(status)::text IS NULL OR status = \(status)) AND (\(route)::text IS NULL OR route = \(route))
                AND (\(client)::text IS NULL OR client = \(client))
            ORDER BY seq LIMIT \(limit)
            """)
        return try result.map { try Self.decode($0.makeRandomAccess()) }
    }

    /// Defers the waiting messages of a route that is not configured, with `reason`.
    public func holdRoute(_ route: String, reason: String, now: Double) async throws {
        _ = try await rows(
            """
            UPDATE outbox_messages SET status = 'deferred', last_error = \(reason), updated_at = \(now)
            WHERE route = \(route) AND status IN ('queued', 'deferred') AND (last_error IS DISTINCT FROM \(reason) OR status = 'queued')
            """)
    }

    /// Moves a waiting message to `route`, due now.
    public func move(id: String, route: String, now: Double) async throws -> StoreChange {
        let result = try await rows(
            """
            UPDATE outbox_messages SET route = \(route), next_attempt_at = \(now), updated_at = \(now)
            WHERE id = \(id) AND status IN ('queued', 'deferred')
            RETURNING \(unescaped: Self.columns())
            """)
        if let row = result.first { return .done(try Self.decode(row.makeRandomAccess())) }
        guard let message = try await get(id: id) else { return .notFound }
        return .conflict(message.status)
    }

    /// Puts a failed, unknown or deferred message back in the queue, due now, and restarts its
    /// maximum age.
    public func retry(id: String, now: Double) async throws -> StoreChange {
        guard let message = try await get(id: id) else { return .notFound }
        guard [.failed, .unknown, .deferred].contains(message.status), !message.contentPurged else { return .conflict(message.status) }
        let recipients = StoreJSON.encode(
            message.recipients.map { r -> RecipientState in
                var r = r
                if r.status != .accepted { r.status = .pending }
                return r
            })
        let result = try await rows(
            """
            UPDATE outbox_messages SET status = 'queued', recipients = \(recipients), next_attempt_at = \(now), age_base = \(now),
                unknown_count = 0, updated_at = \(now), last_error = NULL
            WHERE id = \(id) AND status IN ('failed', 'unknown', 'deferred') AND content_purged_at IS NULL
            RETURNING \(unescaped: Self.columns())
            """)
        if let row = result.first { return .done(try Self.decode(row.makeRandomAccess())) }
        return try await get(id: id).map { .conflict($0.status) } ?? .notFound
    }

    /// Cancels a message that is queued or deferred; ``StoreChange/conflict(_:)`` in any other
    /// status.
    public func cancel(id: String, now: Double) async throws -> StoreChange {
        let result = try await rows(
            """
            UPDATE outbox_messages SET status = 'cancelled', updated_at = \(now), next_attempt_at = NULL
            WHERE id = \(id) AND status IN ('queued', 'deferred')
            RETURNING \(unescaped: Self.columns())
            """)
        if let row = result.first { return .done(try Self.decode(row.makeRandomAccess())) }
        guard let message = try await get(id: id) else { return .notFound }
        return .conflict(message.status)
    }

    /// Empties the content (and removes the chunks) of up to `limit` finished messages in
    /// `statuses` last changed before `finishedBefore`, oldest first; returns how many.
    /// The rows are picked in a CTE, run once: `WHERE seq IN (SELECT ... LIMIT n FOR UPDATE SKIP
    /// LOCKED)` may be planned as a join that runs the subquery again and takes more than `limit`.
    public func purgeContent(statuses: Set<MessageStatus>, finishedBefore: Double, limit: Int, now: Double) async throws -> Int {
        let wanted = statuses.filter(\.isFinal).map(\.rawValue).sorted()
        guard !wanted.isEmpty, limit > 0 else { return 0 }
        let purged = try await rows(
            """
            WITH picked AS (
                SELECT seq FROM outbox_messages
                WHERE status = ANY(\(wanted)) AND content_purged_at IS NULL AND updated_at < \(finishedBefore)
                ORDER BY updated_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
            UPDATE outbox_messages m SET content = ''::bytea, content_purged_at = \(now)
            FROM picked WHERE m.seq = picked.seq
            RETURNING m.id, m.chunks
            """)
        for row in purged {
            let (id, chunks) = try row.decode((String, Int).self)
            if chunks > 0 { _ = try await rows("DELETE FROM outbox_message_chunks WHERE message_id = \(id)") }
        }
        return purged.count
    }

    /// Deletes up to `limit` finished messages (record, attempts, chunks) last changed before
    /// `finishedBefore`, oldest first; returns how many.
    public func purgeRecords(finishedBefore: Double, limit: Int) async throws -> Int {
        guard limit > 0 else { return 0 }
        let deleted = try await rows(
            """
            WITH picked AS (
                SELECT seq FROM outbox_messages
                WHERE status IN ('delivered', 'failed', 'unknown', 'cancelled') AND updated_at < \(finishedBefore)
                ORDER BY updated_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
            DELETE FROM outbox_messages m USING picked WHERE m.seq = picked.seq
            RETURNING m.id, m.chunks
            """)
        for row in deleted {
            let (id, chunks) = try row.decode((String, Int).self)
            if chunks > 0 { _ = try await rows("DELETE FROM outbox_message_chunks WHERE message_id = \(id)") }
        }
        return deleted.count
    }

    /// Removes one finished message's content (chunks included); idempotent.
    public func purge(id: String, now: Double) async throws -> StoreChange {
        let purged = try await rows(
            """
            UPDATE outbox_messages SET content = ''::bytea, content_purged_at = \(now)
            WHERE id = \(id) AND status IN ('delivered', 'failed', 'unknown', 'cancelled') AND content_purged_at IS NULL
            RETURNING chunks
            """)
        if let row = purged.first, try row.decode(Int.self) > 0 {
            _ = try await rows("DELETE FROM outbox_message_chunks WHERE message_id = \(id)")
        }
        guard let message = try await get(id: id) else { return .notFound }
        return message.contentPurged ? .done(message) : .conflict(message.status)
    }

    /// PostgreSQL's autovacuum reuses the space: nothing to do here.
    public func reclaimSpace() async throws -> Int64 { 0 }

    /// Empties the queue: for tests against a shared server only.
    package func deleteAllForTesting() async throws {
        _ = try await rows("DELETE FROM outbox_messages")
        _ = try await rows("DELETE FROM outbox_message_chunks")
        _ = try await rows("DELETE FROM outbox_message_rates")
        _ = try await rows("DELETE FROM outbox_route_sends")
        _ = try await rows("DELETE FROM outbox_route_slots")
    }

    /// Reads the schema's version: throws when the database does not answer, and
    /// ``StoreError/Code/schemaMissing`` when Outbox's tables are not there or are of a version
    /// this Outbox does not know.
    public func ping() async throws {
        let versions = try await rows("SELECT version FROM outbox_schema").map { try $0.decode(Int.self) }
        guard versions == [Self.schemaVersion] else {
            throw StoreError(
                .schemaMissing,
                versions.isEmpty
                    ? "the table outbox_schema is empty"
                    : "outbox_schema holds version \(versions.map(String.init).joined(separator: ", ")), not \(Self.schemaVersion)")
        }
    }

    /// Stops the monitor and the connection pool; the store cannot be used afterwards.
    public func close() async throws {
        recovery.withLockedValue { $0.monitor }?.cancel()
        let task = pool.withLockedValue { $0.task }
        task.cancel()
        await task.value
    }

    static func decode(_ r: PostgresRandomAccessRow) throws -> StoredMessage {
        var message = StoredMessage(
            id: try r["id"].decode(String.self), sequence: Int64(try r["seq"].decode(Int.self)),
            status: MessageStatus(rawValue: try r["status"].decode(String.self)) ?? .queued,
            from: try r["mail_from"].decode(String.self),
            recipients: StoreJSON.decode([RecipientState].self, try r["recipients"].decode(String.self)) ?? [],
            messageID: try r["message_id"].decode(String?.self), idempotencyKey: try r["idempotency_key"].decode(String?.self),
            requestHash: try r["request_hash"].decode(String?.self), size: try r["size"].decode(Int.self),
            createdAt: try r["created_at"].decode(Double.self), updatedAt: try r["updated_at"].decode(Double.self),
            ageBase: try r["age_base"].decode(Double.self), nextAttemptAt: try r["next_attempt_at"].decode(Double?.self),
            attemptCount: try r["attempt_count"].decode(Int.self), unknownCount: try r["unknown_count"].decode(Int.self),
            possibleDuplicate: try r["possible_duplicate"].decode(Int.self) != 0,
            attempts: StoreJSON.decode([AttemptRecord].self, try r["attempts"].decode(String.self)) ?? [],
            lastError: try r["last_error"].decode(String?.self), leaseOwner: try r["lease_owner"].decode(String?.self),
            leaseUntil: try r["lease_until"].decode(Double?.self),
            origin: StoreJSON.decode(MessageOrigin.self, try r["origin"].decode(String?.self)), chunkCount: try r["chunks"].decode(Int.self),
            contentPurged: try r["content_purged_at"].decode(Double?.self) != nil, subject: try r["subject"].decode(String?.self),
            route: try r["route"].decode(String.self), client: try r["client"].decode(String?.self))
        message.traceparent = try r["traceparent"].decode(String?.self)
        return message
    }
}
