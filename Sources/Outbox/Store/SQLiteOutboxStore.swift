import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SQLiteNIO

/// Group commit: writes that arrive while a commit is in progress go together in the next
/// transaction (one fsync for all), and each caller returns only after its transaction committed.
final class SQLiteGroupCommitter: @unchecked Sendable {
    // @unchecked: `connection` is used through its own serialising API; `state` is locked.
    struct Job {
        /// One statement; or several run as one unit (its own transaction, or a savepoint
        /// inside a group), each after the first only when the first returned rows.
        let statements: [(sql: String, binds: [SQLiteData])]
        let continuation: CheckedContinuation<[SQLiteRow], any Error>
    }

    private let connection: SQLiteConnection
    private let state = NIOLockedValueBox<(jobs: [Job], flushing: Bool)>(([], false))

    init(connection: SQLiteConnection) {
        self.connection = connection
    }

    func write(_ sql: String, _ binds: [SQLiteData] = []) async throws -> [SQLiteRow] {
        try await write([(sql, binds)])
    }

    /// Runs `statements` as one unit; returns the first statement's rows.
    func write(_ statements: [(sql: String, binds: [SQLiteData])]) async throws -> [SQLiteRow] {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[SQLiteRow], any Error>) in
            let start = state.withLockedValue { s -> Bool in
                s.jobs.append(Job(statements: statements, continuation: continuation))
                if s.flushing { return false }
                s.flushing = true
                return true
            }
            if start { Task { await self.flush() } }
        }
    }

    private func flush() async {
        while true {
            let jobs = state.withLockedValue { s -> [Job] in
                let jobs = s.jobs
                s.jobs = []
                if jobs.isEmpty { s.flushing = false }
                return jobs
            }
            if jobs.isEmpty { return }
            if jobs.count == 1, let job = jobs.first {
                do { job.continuation.resume(returning: try await run(job, grouped: false)) } catch { job.continuation.resume(throwing: error) }
                continue
            }
            do {
                _ = try await connection.query("BEGIN IMMEDIATE")
                var results: [Result<[SQLiteRow], any Error>] = []
                for job in jobs {
                    do { results.append(.success(try await run(job, grouped: true))) } catch { results.append(.failure(error)) }
                }
                _ = try await connection.query("COMMIT")
                for (job, result) in zip(jobs, results) { job.continuation.resume(with: result) }
            } catch {
                _ = try? await connection.query("ROLLBACK")
                for job in jobs { job.continuation.resume(throwing: error) }
            }
        }
    }

    private func run(_ job: Job, grouped: Bool) async throws -> [SQLiteRow] {
        guard let first = job.statements.first else { return [] }
        if job.statements.count == 1 { return try await connection.query(first.sql, first.binds) }
        _ = try await connection.query(grouped ? "SAVEPOINT job" : "BEGIN IMMEDIATE")
        do {
            let rows = try await connection.query(first.sql, first.binds)
            if !rows.isEmpty {
                for statement in job.statements.dropFirst() { _ = try await connection.query(statement.sql, statement.binds) }
            }
            _ = try await connection.query(grouped ? "RELEASE job" : "COMMIT")
            return rows
        } catch {
            if grouped {
                _ = try? await connection.query("ROLLBACK TO job")
                _ = try? await connection.query("RELEASE job")
            } else {
                _ = try? await connection.query("ROLLBACK")
            }
            throw error
        }
    }
}

/// The default queue: one SQLite file (`<data-directory>/outbox.sqlite`) in WAL mode with
/// `synchronous=FULL`, so a message is on disk when `enqueue` returns. Every change is one SQL
/// statement (autocommit), so no transaction is ever left half done. One process per file.
public final class SQLiteOutboxStore: OutboxStore, @unchecked Sendable {
    // @unchecked: `SQLiteConnection` serialises its calls on its thread pool; nothing else is stored.
    let connection: SQLiteConnection
    let writer: SQLiteGroupCommitter
    private let closed = NIOLockedValueBox(false)
    /// The database file.
    public let path: String
    /// `sqlite`.
    public var kind: String { "sqlite" }

    /// Opens (creating if needed) the database at `path`; call `migrate()` next.
    public static func open(path: String, logger: Logger = Logger(label: "outbox.store")) async throws -> SQLiteOutboxStore {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        // Before WAL and before any table: a new database then gives pages back (see migrate()).
        _ = try await connection.query("PRAGMA auto_vacuum = INCREMENTAL")
        _ = try await connection.query("PRAGMA journal_mode=WAL")
        _ = try await connection.query("PRAGMA synchronous=FULL")
        _ = try await connection.query("PRAGMA busy_timeout=5000")
        return SQLiteOutboxStore(connection: connection, path: path, logger: logger)
    }

    let logger: Logger

    private init(connection: SQLiteConnection, path: String, logger: Logger) {
        self.logger = logger
        self.connection = connection
        self.writer = SQLiteGroupCommitter(connection: connection)
        self.path = path
    }

    /// Schema versions, applied in order; `PRAGMA user_version` holds how many ran.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE IF NOT EXISTS messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                idempotency_key TEXT UNIQUE,
                request_hash TEXT,
                mail_from TEXT NOT NULL,
                recipients TEXT NOT NULL,
                content BLOB NOT NULL,
                message_id TEXT,
                size INTEGER NOT NULL,
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                age_base REAL NOT NULL,
                next_attempt_at REAL,
                attempt_count INTEGER NOT NULL DEFAULT 0,
                unknown_count INTEGER NOT NULL DEFAULT 0,
                possible_duplicate INTEGER NOT NULL DEFAULT 0,
                took_over INTEGER NOT NULL DEFAULT 0,
                attempts TEXT NOT NULL DEFAULT '[]',
                last_error TEXT,
                lease_owner TEXT,
                lease_until REAL
            )
            """,
            "CREATE INDEX IF NOT EXISTS messages_due ON messages(status, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS messages_status_seq ON messages(status, seq)",
        ],
        // 2: where a message came from (the relay's DSN parameters).
        ["ALTER TABLE messages ADD COLUMN origin TEXT"],
        // 3: large messages' content in chunks, written as it arrives.
        [
            "ALTER TABLE messages ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0",
            """
            CREATE TABLE IF NOT EXISTS message_chunks (
                message_id TEXT NOT NULL,
                n INTEGER NOT NULL,
                data BLOB NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (message_id, n)
            )
            """,
        ],
        // 4: retention (content purged, finished messages by age).
        [
            "ALTER TABLE messages ADD COLUMN content_purged_at REAL",
            "CREATE INDEX IF NOT EXISTS messages_finished ON messages(status, updated_at)",
        ],
        // 5: held messages past their maximum age, found without a scan (claimAged).
        ["CREATE INDEX IF NOT EXISTS messages_age ON messages(status, age_base)"],
        // 6: the submitting request's traceparent (delivery spans join its trace).
        ["ALTER TABLE messages ADD COLUMN traceparent TEXT"],
        // 7: the dashboard: the subject for filtering, and counters kept by triggers (counts per
        // route and status, delivered and failed per minute) so no page counts rows.
        SQLiteOutboxStore.statisticsMigration,
        // 8: routes: each message's route and submitting client; each route's lane claims its own.
        [
            "ALTER TABLE messages ADD COLUMN route TEXT NOT NULL DEFAULT 'default'",
            "ALTER TABLE messages ADD COLUMN client TEXT",
            "CREATE INDEX IF NOT EXISTS messages_route_due ON messages(route, status, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS messages_client_seq ON messages(client, seq)",
        ],
        // 9: the dashboard's counters by route.
        SQLiteOutboxStore.routeCountersMigration,
        // 10: the dashboard's whole-address filters and possible duplicates, by index.
        SQLiteOutboxStore.addressIndexMigration,
    ]

    /// Creates the tables, or upgrades them to the current schema; safe to run again.
    public func migrate() async throws {
        let rows = try await connection.query("PRAGMA user_version")
        let version = Int(rows.first?.columns.first?.data.integer ?? 0)
        try await useIncrementalVacuum()
        guard version < Self.migrations.count else { return }
        for (index, statements) in Self.migrations.enumerated() where index >= version {
            _ = try await connection.query("BEGIN IMMEDIATE")
            do {
                for sql in statements { _ = try await connection.query(sql) }
                _ = try await connection.query("PRAGMA user_version = \(index + 1)")
                _ = try await connection.query("COMMIT")
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        }
    }

    static let columns = """
        seq, id, idempotency_key, request_hash, mail_from, recipients, message_id, size, status, created_at, updated_at, age_base,
        next_attempt_at, attempt_count, unknown_count, possible_duplicate, took_over, attempts, last_error, lease_owner, lease_until, origin,
        chunks, content_purged_at, traceparent, subject, route, client
        """

    /// Stores a message, committed before it returns; with an idempotency key already used,
    /// returns the earlier message. Throws ``StoreError/Code/chunksMissing`` when a chunked
    /// message's chunks are not all stored.
    public func enqueue(_ message: NewMessage, now: Double) async throws -> EnqueueResult {
        if let key = message.idempotencyKey, let existing = try await byIdempotencyKey(key) {
            return existing
        }
        let (id, insert) = Self.insert(message, now: now)
        let rows = try await writer.write(insert.sql, insert.binds)
        if rows.isEmpty, let key = message.idempotencyKey, let existing = try await byIdempotencyKey(key) {
            return existing
        }
        if rows.isEmpty {
            throw StoreError(
                .chunksMissing, "message \(id) was not queued: \(message.chunkCount) content chunks were expected and are not all in the store")
        }
        return EnqueueResult(id: id, status: .queued, created: true, requestHash: message.requestHash)
    }

    /// The INSERT of a new message (and its id). A chunked message is inserted only when all
    /// its chunks are there.
    static func insert(_ message: NewMessage, now: Double) -> (id: String, (sql: String, binds: [SQLiteData])) {
        let id = message.id ?? UUID().uuidString.lowercased()
        let recipients = message.recipients.map { RecipientState(address: $0) }
        let sql = """
            INSERT INTO messages (id, idempotency_key, request_hash, mail_from, recipients, content, message_id, size, status,
                                  created_at, updated_at, age_base, next_attempt_at, origin, chunks, traceparent, subject, route, client)
            SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15
            WHERE ?11 = 0 OR (SELECT COUNT(*) FROM message_chunks WHERE message_id = ?1) = ?11
            ON CONFLICT(idempotency_key) DO NOTHING
            RETURNING id
            """
        let binds: [SQLiteData] = [
            .text(id), message.idempotencyKey.map(SQLiteData.text) ?? .null, message.requestHash.map(SQLiteData.text) ?? .null,
            .text(message.from), .text(StoreJSON.encode(recipients)), .blob(ByteBuffer(bytes: message.content)),
            message.messageID.map(SQLiteData.text) ?? .null, .integer(message.content.count + message.chunkedSize),
            .float(now), message.origin.map { .text(StoreJSON.encode($0)) } ?? .null, .integer(message.chunkCount),
            message.traceparent.map(SQLiteData.text) ?? .null,
            MessageSubject.of(message.content).map(SQLiteData.text) ?? .null,
            .text(message.route), message.client.map(SQLiteData.text) ?? .null,
        ]
        return (id, (sql, binds))
    }

    /// Writes chunk `index` of a large message's content ahead of `enqueue`, committed when it
    /// returns.
    public func writeChunk(messageID: String, index: Int, bytes: ByteBuffer, now: Double) async throws {
        _ = try await writer.write(
            "INSERT OR REPLACE INTO message_chunks (message_id, n, data, created_at) VALUES (?, ?, ?, ?)",
            [.text(messageID), .integer(index), .blob(bytes), .float(now)])
    }

    /// Reads chunk `index` of a message's content; nil when there is none.
    public func readChunk(messageID: String, index: Int) async throws -> ByteBuffer? {
        let rows = try await connection.query("SELECT data FROM message_chunks WHERE message_id = ? AND n = ?", [.text(messageID), .integer(index)])
        return rows.first?.column("data")?.blob
    }

    /// Removes the chunks of a message that was not queued.
    public func discardChunks(messageID: String) async throws {
        _ = try await writer.write(
            "DELETE FROM message_chunks WHERE message_id = ?1 AND NOT EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
            [.text(messageID)])
    }

    /// Removes chunks written before `before` (seconds since 1970) that belong to no message;
    /// returns how many.
    @discardableResult
    public func purgeOrphanChunks(before: Double) async throws -> Int {
        let rows = try await writer.write(
            """
            DELETE FROM message_chunks WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.id = message_chunks.message_id)
            RETURNING n
            """, [.float(before)])
        return rows.count
    }

    private func byIdempotencyKey(_ key: String) async throws -> EnqueueResult? {
        let rows = try await connection.query("SELECT id, status, request_hash FROM messages WHERE idempotency_key = ?", [.text(key)])
        guard let row = rows.first, let id = row.column("id")?.string else { return nil }
        return EnqueueResult(
            id: id, status: MessageStatus(rawValue: row.column("status")?.string ?? "") ?? .queued,
            created: false, requestHash: row.column("request_hash")?.string)
    }

    /// Each status is read along its index, in due order, up to `limit` (one `OR` over them made
    /// SQLite gather and sort every due message for each claim: O(queue) per claim).
    public func claim(limit: Int, owner: String, now: Double, lease: Double, route: String?) async throws -> [ClaimedMessage] {
        // One route's messages (its lane), or every route's (nil).
        let only = route == nil ? "" : " AND route = ?5"
        let rows = try await writer.write(
            """
            UPDATE messages SET
                status = 'sending', lease_owner = ?1, lease_until = ?2, updated_at = ?3,
                took_over = CASE WHEN status = 'sending' THEN 1 ELSE 0 END,
                unknown_count = unknown_count + (CASE WHEN status = 'sending' THEN 1 ELSE 0 END),
                possible_duplicate = CASE WHEN status = 'sending' THEN 1 ELSE possible_duplicate END,
                attempt_count = attempt_count + (CASE WHEN status = 'sending' THEN 1 ELSE 0 END),
                attempts = CASE WHEN status = 'sending' THEN json_insert(attempts, '$[#]', json_object(
                    'number', attempt_count + 1, 'startedAt', ?3, 'durationSeconds', 0, 'transport', '',
                    'error', 'the lease of ' || COALESCE(lease_owner, '?') || ' expired while it was sending: the outcome is unknown',
                    'outcome', 'unknown', 'recipients', json('[]'), 'instance', lease_owner)) ELSE attempts END
            WHERE seq IN (
                SELECT seq FROM (
                    SELECT * FROM (SELECT seq, next_attempt_at FROM messages
                                   WHERE status = 'queued' AND next_attempt_at <= ?3\(only) ORDER BY next_attempt_at LIMIT ?4)
                    UNION ALL
                    SELECT * FROM (SELECT seq, next_attempt_at FROM messages
                                   WHERE status = 'deferred' AND next_attempt_at <= ?3\(only) ORDER BY next_attempt_at LIMIT ?4)
                    UNION ALL
                    SELECT * FROM (SELECT seq, next_attempt_at FROM messages
                                   WHERE status = 'sending' AND lease_until < ?3\(only) ORDER BY next_attempt_at LIMIT ?4))
                ORDER BY next_attempt_at LIMIT ?4)
            RETURNING \(Self.columns), content
            """,
            [.text(owner), .float(now + lease), .float(now), .integer(limit)] + (route.map { [SQLiteData.text($0)] } ?? []))
        return rows.map { row in
            let message = Self.decode(row)
            var content: [UInt8] = []
            if var blob = row.column("content")?.blob { content = blob.readBytes(length: blob.readableBytes) ?? [] }
            return ClaimedMessage(message: message, content: content, tookOverExpiredLease: row.column("took_over")?.integer == 1)
        }
    }

    /// Claims waiting messages (queued or deferred) whose age base is before `ageBefore`.
    public func claimAged(before ageBefore: Double, limit: Int, owner: String, now: Double, lease: Double, route: String?) async throws
        -> [ClaimedMessage]
    {
        let only = route == nil ? "" : " AND route = ?6"
        let rows = try await writer.write(
            """
            UPDATE messages SET status = 'sending', lease_owner = ?1, lease_until = ?2, updated_at = ?3, took_over = 0
            WHERE seq IN (SELECT seq FROM messages WHERE status IN ('queued', 'deferred') AND age_base < ?4\(only) ORDER BY age_base LIMIT ?5)
            RETURNING \(Self.columns), content
            """,
            [.text(owner), .float(now + lease), .float(now), .float(ageBefore), .integer(limit)] + (route.map { [SQLiteData.text($0)] } ?? []))
        return rows.map { row in
            var content: [UInt8] = []
            if var blob = row.column("content")?.blob { content = blob.readBytes(length: blob.readableBytes) ?? [] }
            return ClaimedMessage(message: Self.decode(row), content: content, tookOverExpiredLease: false)
        }
    }

    /// Records an attempt and its outcome, and queues `notification` in the same transaction;
    /// false (nothing recorded) when `owner` no longer holds the lease.
    @discardableResult
    public func record(id: String, owner: String, outcome: AttemptOutcome, notification: NewMessage?, now: Double) async throws -> Bool {
        var statements: [(sql: String, binds: [SQLiteData])] = [
            (
                """
                UPDATE messages SET status = ?, recipients = ?, attempts = json_insert(attempts, '$[#]', json(?)),
                    attempt_count = attempt_count + 1, unknown_count = unknown_count + ?,
                    possible_duplicate = MAX(possible_duplicate, ?), next_attempt_at = ?, last_error = ?,
                    lease_owner = NULL, lease_until = NULL, took_over = 0, updated_at = ?
                WHERE id = ? AND lease_owner = ? AND status = 'sending'
                RETURNING seq
                """,
                [
                    .text(outcome.status.rawValue), .text(StoreJSON.encode(outcome.recipients)), .text(StoreJSON.encode(outcome.attempt)),
                    .integer(outcome.unknown ? 1 : 0), .integer(outcome.unknown ? 1 : 0),
                    outcome.nextAttemptAt.map(SQLiteData.float) ?? .null, outcome.lastError.map(SQLiteData.text) ?? .null,
                    .float(now), .text(id), .text(owner),
                ]
            )
        ]
        if let notification { statements.append(Self.insert(notification, now: now).1) }
        let rows = try await writer.write(statements)
        return !rows.isEmpty
    }

    /// Ends `owner`'s lease at once: the next claim takes the message over as an unknown
    /// outcome.
    public func expireLease(id: String, owner: String, now: Double) async throws {
        _ = try await writer.write(
            "UPDATE messages SET lease_until = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'sending'",
            [.float(now - 1), .float(now), .text(id), .text(owner)])
    }

    /// Gives a claimed message back to the queue, due at `nextAttemptAt`, without counting an
    /// attempt.
    public func release(id: String, owner: String, nextAttemptAt: Double, now: Double) async throws {
        _ = try await writer.write(
            """
            UPDATE messages SET status = CASE WHEN attempt_count = 0 THEN 'queued' ELSE 'deferred' END,
                next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, took_over = 0, updated_at = ?
            WHERE id = ? AND lease_owner = ? AND status = 'sending'
            """,
            [.float(nextAttemptAt), .float(now), .text(id), .text(owner)])
    }

    /// Releases every claim left by a process that died, counting each as an attempt with an
    /// unknown outcome; returns how many.
    public func recoverAbandoned(now: Double) async throws -> Int {
        let rows = try await writer.write(
            """
            UPDATE messages SET status = 'deferred', next_attempt_at = ?1, updated_at = ?1,
                unknown_count = unknown_count + 1, possible_duplicate = 1, attempt_count = attempt_count + 1,
                attempts = json_insert(attempts, '$[#]', json_object(
                    'number', attempt_count + 1, 'startedAt', ?1, 'durationSeconds', 0, 'transport', '',
                    'error', 'Outbox stopped while it was sending (crash or kill): the outcome is unknown',
                    'outcome', 'unknown', 'recipients', json('[]'), 'instance', lease_owner)),
                lease_owner = NULL, lease_until = NULL, took_over = 0
            WHERE status = 'sending'
            RETURNING seq
            """,
            [.float(now)])
        return rows.count
    }

    /// The message with that id (without its content), or nil.
    public func get(id: String) async throws -> StoredMessage? {
        let rows = try await connection.query("SELECT \(Self.columns) FROM messages WHERE id = ?", [.text(id)])
        return rows.first.map(Self.decode)
    }

    /// Up to `limit` messages in insertion order after `cursor` (a `sequence`), of one status
    /// when `status` is given.
    public func list(status: MessageStatus?, limit: Int, after cursor: Int64?, route: String?, client: String?) async throws -> [StoredMessage] {
        var sql = "SELECT \(Self.columns) FROM messages WHERE seq > ?"
        var binds: [SQLiteData] = [.integer(SQLiteInt64(cursor ?? 0))]
        if let status {
            sql += " AND status = ?"
            binds.append(.text(status.rawValue))
        }
        if let route {
            sql += " AND route = ?"
            binds.append(.text(route))
        }
        if let client {
            sql += " AND client = ?"
            binds.append(.text(client))
        }
        sql += " ORDER BY seq LIMIT ?"
        binds.append(.integer(limit))
        return try await connection.query(sql, binds).map(Self.decode)
    }

    /// Puts a failed, unknown or deferred message back in the queue, due now, and restarts its
    /// maximum age.
    public func retry(id: String, now: Double) async throws -> StoreChange {
        guard let message = try await get(id: id) else { return .notFound }
        guard [.failed, .unknown, .deferred].contains(message.status), !message.contentPurged else { return .conflict(message.status) }
        let recipients = message.recipients.map { r -> RecipientState in
            var r = r
            if r.status != .accepted { r.status = .pending }
            return r
        }
        let rows = try await writer.write(
            """
            UPDATE messages SET status = 'queued', recipients = ?, next_attempt_at = ?, age_base = ?, unknown_count = 0,
                updated_at = ?, last_error = NULL
            WHERE id = ? AND status IN ('failed', 'unknown', 'deferred') AND content_purged_at IS NULL
            RETURNING seq
            """,
            [.text(StoreJSON.encode(recipients)), .float(now), .float(now), .float(now), .text(id)])
        guard !rows.isEmpty, let updated = try await get(id: id) else {
            return try await get(id: id).map { .conflict($0.status) } ?? .notFound
        }
        return .done(updated)
    }

    /// Cancels a message that is queued or deferred; ``StoreChange/conflict(_:)`` in any other
    /// status.
    public func cancel(id: String, now: Double) async throws -> StoreChange {
        let rows = try await writer.write(
            """
            UPDATE messages SET status = 'cancelled', updated_at = ?, next_attempt_at = NULL
            WHERE id = ? AND status IN ('queued', 'deferred')
            RETURNING \(Self.columns)
            """,
            [.float(now), .text(id)])
        if let row = rows.first { return .done(Self.decode(row)) }
        guard let message = try await get(id: id) else { return .notFound }
        return .conflict(message.status)
    }

    /// Defers the waiting messages of a route that is not configured, with `reason`.
    public func holdRoute(_ route: String, reason: String, now: Double) async throws {
        _ = try await writer.write(
            """
            UPDATE messages SET status = 'deferred', last_error = ?1, updated_at = ?2
            WHERE route = ?3 AND status IN ('queued', 'deferred') AND (last_error IS NOT ?1 OR status = 'queued')
            """, [.text(reason), .float(now), .text(route)])
    }

    /// Moves a waiting message to `route`, due now.
    public func move(id: String, route: String, now: Double) async throws -> StoreChange {
        let rows = try await writer.write(
            """
            UPDATE messages SET route = ?1, next_attempt_at = ?2, updated_at = ?2
            WHERE id = ?3 AND status IN ('queued', 'deferred')
            RETURNING \(Self.columns)
            """, [.text(route), .float(now), .text(id)])
        if let row = rows.first { return .done(Self.decode(row)) }
        guard let message = try await get(id: id) else { return .notFound }
        return .conflict(message.status)
    }

    /// Runs `SELECT 1`: throws when the database does not answer.
    public func ping() async throws {
        _ = try await connection.query("SELECT 1")
    }

    /// Closes the database; closing it again does nothing.
    public func close() async throws {
        guard
            closed.withLockedValue({ c in
                defer { c = true }; return !c
            })
        else { return }
        try await connection.close()
    }

    deinit {
        // A store dropped without close() (a test that failed early): close it in the background.
        if closed.withLockedValue({ !$0 }) { _ = connection.close() }
    }

    static func decode(_ row: SQLiteRow) -> StoredMessage {
        func s(_ n: String) -> String? { row.column(n)?.string }
        func d(_ n: String) -> Double? { row.column(n)?.double }
        func i(_ n: String) -> Int { Int(row.column(n)?.integer ?? 0) }
        var message = StoredMessage(
            id: s("id") ?? "", sequence: Int64(row.column("seq")?.integer ?? 0),
            status: MessageStatus(rawValue: s("status") ?? "") ?? .queued,
            from: s("mail_from") ?? "", recipients: StoreJSON.decode([RecipientState].self, s("recipients")) ?? [],
            messageID: s("message_id"), idempotencyKey: s("idempotency_key"), requestHash: s("request_hash"),
            size: i("size"), createdAt: d("created_at") ?? 0, updatedAt: d("updated_at") ?? 0, ageBase: d("age_base") ?? 0,
            nextAttemptAt: d("next_attempt_at"), attemptCount: i("attempt_count"), unknownCount: i("unknown_count"),
            possibleDuplicate: i("possible_duplicate") != 0, attempts: StoreJSON.decode([AttemptRecord].self, s("attempts")) ?? [],
            lastError: s("last_error"), leaseOwner: s("lease_owner"), leaseUntil: d("lease_until"),
            origin: StoreJSON.decode(MessageOrigin.self, s("origin")), chunkCount: i("chunks"), contentPurged: d("content_purged_at") != nil,
            subject: s("subject"), route: s("route") ?? "default", client: s("client"))
        message.traceparent = s("traceparent")
        return message
    }
}
