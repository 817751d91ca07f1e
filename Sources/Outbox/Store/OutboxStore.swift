import Foundation
import NIOCore

/// Where a queued message is in its life.
public enum MessageStatus: String, Sendable, Codable, CaseIterable {
    /// Accepted, waiting for its first attempt.
    case queued
    /// Claimed by a dispatcher (under a lease) and being sent.
    case sending
    /// Every recipient accepted (or, for a partly accepted message, the rest rejected).
    case delivered
    /// The last attempt failed for now; it is tried again at `nextAttemptAt`.
    case deferred
    /// Failed for good: a permanent refusal, or transient failures past the maximum age.
    case failed
    /// The connection was lost after the final dot and no more retries are allowed: it may
    /// or may not have arrived. A human must look.
    case unknown
    /// Cancelled with `DELETE` before it was sent.
    case cancelled

    /// True when no dispatcher will touch it again (unless retried by hand).
    public var isFinal: Bool {
        switch self {
        case .delivered, .failed, .unknown, .cancelled: true
        case .queued, .sending, .deferred: false
        }
    }
}

/// One recipient's state across attempts: only `pending` and `deferred` (and `unknown`, within
/// the unknown-outcome allowance) recipients are sent to again.
public struct RecipientState: Sendable, Codable, Hashable {
    /// Where one recipient stands: not yet tried, accepted, refused for good, to be retried, or
    /// sent with an unknown outcome.
    public enum Status: String, Sendable, Codable, Hashable {
        case pending, accepted, rejected, deferred, unknown
    }

    /// The recipient's address as in the envelope.
    public var address: String
    /// Where the recipient stands after the attempts so far.
    public var status: Status
    /// The reply code of the last attempt for this recipient, or nil.
    public var code: Int?
    /// The enhanced status code of that reply (e.g. `4.2.2`), or nil.
    public var enhancedCode: String?
    /// The text of that reply, or nil.
    public var text: String?

    /// A recipient, by default not yet tried.
    public init(address: String, status: Status = .pending, code: Int? = nil, enhancedCode: String? = nil, text: String? = nil) {
        self.address = address
        self.status = status
        self.code = code
        self.enhancedCode = enhancedCode
        self.text = text
    }

    /// Still to be delivered.
    public var isOpen: Bool {
        switch self.status {
        case .pending, .deferred, .unknown: true
        case .accepted, .rejected: false
        }
    }
}

/// One delivery attempt, as shown by `GET /v1/messages/{id}`.
public struct AttemptRecord: Sendable, Codable, Hashable {
    /// 1 for the first attempt, then 2, 3, ...
    public var number: Int
    /// Seconds since 1970.
    public var startedAt: Double
    /// How long the attempt took, in seconds.
    public var durationSeconds: Double
    /// The transport that made it: `smtp`, `file`, `graph` or `ews`.
    public var transport: String
    /// Where it went (`host:port`, a URL or a file path), when known.
    public var destination: String?
    /// The server's reply after the final dot, when there was one.
    public var reply: String?
    /// Why the attempt failed, when it did.
    public var error: String?
    /// delivered, partial, deferred, failed, unknown, abandoned.
    public var outcome: String
    /// The recipients this attempt was sent to (the open ones at the time).
    public var recipients: [String]
    /// The instance (dispatcher lease owner) that made it.
    public var instance: String?

    /// An attempt record with every field given.
    public init(
        number: Int, startedAt: Double, durationSeconds: Double, transport: String, destination: String? = nil,
        reply: String? = nil, error: String? = nil, outcome: String, recipients: [String], instance: String? = nil
    ) {
        self.number = number
        self.startedAt = startedAt
        self.durationSeconds = durationSeconds
        self.transport = transport
        self.destination = destination
        self.reply = reply
        self.error = error
        self.outcome = outcome
        self.recipients = recipients
        self.instance = instance
    }
}

/// Where a message came from, when that matters after it was queued: a relayed message's
/// delivery status notifications go back to its envelope sender, as its DSN parameters
/// (RFC 3461) asked.
public struct MessageOrigin: Sendable, Codable, Hashable {
    /// "relay" (the SMTP listener).
    public var kind: String
    /// The `[client-NAME]` it authenticated as, or the client's address.
    public var client: String?
    /// `RET=FULL|HDRS`, `ENVID=`.
    public var ret: String?
    /// `ENVID=` as given, or nil.
    public var envid: String?
    /// Per recipient, in order: `NOTIFY=` and `ORCPT=` as given ("" when absent).
    public var notify: [String]
    /// Per recipient, in order: `ORCPT=` as given ("" when absent).
    public var orcpt: [String]

    /// An origin with every field given.
    public init(kind: String, client: String?, ret: String?, envid: String?, notify: [String], orcpt: [String]) {
        self.kind = kind
        self.client = client
        self.ret = ret
        self.envid = envid
        self.notify = notify
        self.orcpt = orcpt
    }
}

/// A submission to store.
public struct NewMessage: Sendable {
    /// The id to store it under; nil: the store makes one.
    public var id: String?
    /// Where it came from (relayed messages), or nil.
    public var origin: MessageOrigin?
    /// The envelope sender; empty for the null sender `<>`.
    public var from: String
    /// The envelope recipients.
    public var recipients: [String]
    /// The final RFC 5322 bytes, sent as they are; for a large message, its first part only,
    /// followed by `chunkCount` chunks already written with `OutboxStore.writeChunk` under `id`.
    public var content: [UInt8]
    /// Chunks of content after `content` (a large relayed message, streamed to the store as it
    /// arrived); `enqueue` checks that all of them are there.
    public var chunkCount = 0
    /// The octets in those chunks.
    public var chunkedSize = 0
    /// The message's Message-ID, for display and lookups, or nil.
    public var messageID: String?
    /// The client's `Idempotency-Key`: a second submission with it returns the first message.
    public var idempotencyKey: String?
    /// A digest of the request, so a reused idempotency key with another body is refused.
    public var requestHash: String?
    /// The submitting request's W3C `traceparent`, so its delivery spans join that trace.
    public var traceparent: String?
    /// The route it goes through (`default`: `[smtp-client]`).
    public var route = "default"
    /// The `[client-NAME]` that submitted it (relay AUTH or a client API token), or nil.
    public var client: String?

    /// A message stored whole (no chunks).
    public init(
        from: String, recipients: [String], content: [UInt8], messageID: String? = nil,
        idempotencyKey: String? = nil, requestHash: String? = nil
    ) {
        self.from = from
        self.recipients = recipients
        self.content = content
        self.messageID = messageID
        self.idempotencyKey = idempotencyKey
        self.requestHash = requestHash
    }
}

/// A message as the store holds it (without its content).
public struct StoredMessage: Sendable, Hashable {
    /// The message's id in the queue.
    public var id: String
    /// Insertion order; the list cursor.
    public var sequence: Int64
    /// Where the message is in its life.
    public var status: MessageStatus
    /// The envelope sender; empty for the null sender `<>`.
    public var from: String
    /// Each envelope recipient and where it stands.
    public var recipients: [RecipientState]
    /// The message's Message-ID, or nil.
    public var messageID: String?
    /// The submission's idempotency key, or nil.
    public var idempotencyKey: String?
    /// The digest of the submitting request, or nil.
    public var requestHash: String?
    /// The content's size in octets (head and chunks).
    public var size: Int
    /// When it was queued, in seconds since 1970.
    public var createdAt: Double
    /// When it last changed, in seconds since 1970.
    public var updatedAt: Double
    /// When the maximum age starts: submission, or the last manual retry.
    public var ageBase: Double
    /// When it is due for its next attempt, in seconds since 1970; nil when none is planned.
    public var nextAttemptAt: Double?
    /// How many attempts were made.
    public var attemptCount: Int
    /// Attempts whose outcome was unknown (connection lost after the final dot, or a lease
    /// that expired while the message was being sent).
    public var unknownCount: Int
    /// An attempt's outcome was unknown: the message may have arrived more than once.
    public var possibleDuplicate: Bool
    /// The attempts, oldest first.
    public var attempts: [AttemptRecord]
    /// The last attempt's error, or nil.
    public var lastError: String?
    /// The dispatcher instance holding the lease while it is being sent, or nil.
    public var leaseOwner: String?
    /// When that lease ends, in seconds since 1970, or nil.
    public var leaseUntil: Double?
    /// Where it came from (relayed messages).
    public var origin: MessageOrigin?
    /// Content chunks after the stored head (0 for a message stored whole).
    public var chunkCount = 0
    /// Its content was purged (`retention-content`, or to keep `queue-min-free`): it cannot be
    /// retried.
    public var contentPurged = false
    /// The submitting request's W3C `traceparent` (the parent of its delivery spans), or nil.
    public var traceparent: String?
    /// The Subject header (encoded words decoded), or nil (none, or queued before the dashboard).
    public var subject: String?
    /// The route it goes through (`default`: `[smtp-client]`).
    public var route = "default"
    /// The `[client-NAME]` that submitted it, or nil.
    public var client: String?

    /// A stored message with every field given (stores build it from their rows).
    public init(
        id: String, sequence: Int64, status: MessageStatus, from: String, recipients: [RecipientState], messageID: String?,
        idempotencyKey: String?, requestHash: String?, size: Int, createdAt: Double, updatedAt: Double, ageBase: Double,
        nextAttemptAt: Double?, attemptCount: Int, unknownCount: Int, possibleDuplicate: Bool, attempts: [AttemptRecord],
        lastError: String?, leaseOwner: String?, leaseUntil: Double?, origin: MessageOrigin? = nil, chunkCount: Int = 0,
        contentPurged: Bool = false, subject: String? = nil, route: String = "default", client: String? = nil
    ) {
        self.subject = subject
        self.route = route
        self.client = client
        self.contentPurged = contentPurged
        self.origin = origin
        self.chunkCount = chunkCount
        self.id = id
        self.sequence = sequence
        self.status = status
        self.from = from
        self.recipients = recipients
        self.messageID = messageID
        self.idempotencyKey = idempotencyKey
        self.requestHash = requestHash
        self.size = size
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.ageBase = ageBase
        self.nextAttemptAt = nextAttemptAt
        self.attemptCount = attemptCount
        self.unknownCount = unknownCount
        self.possibleDuplicate = possibleDuplicate
        self.attempts = attempts
        self.lastError = lastError
        self.leaseOwner = leaseOwner
        self.leaseUntil = leaseUntil
    }
}

/// A message claimed by a dispatcher, with the bytes to send.
public struct ClaimedMessage: Sendable {
    /// The message as stored, now `sending` under the claimer's lease.
    public var message: StoredMessage
    /// The content, or for a chunked message (`message.chunkCount > 0`) its head: the rest is
    /// read chunk by chunk with `OutboxStore.readChunk`, never held whole.
    public var content: [UInt8]
    /// True when the claim took over an expired lease: the previous attempt's outcome is unknown.
    public var tookOverExpiredLease: Bool
}

/// The result of `enqueue`.
public struct EnqueueResult: Sendable, Hashable {
    /// The message's id (the earlier one's for a reused idempotency key).
    public var id: String
    /// Its status now.
    public var status: MessageStatus
    /// False when an earlier submission with the same idempotency key was returned.
    public var created: Bool
    /// The stored request digest of that earlier submission.
    public var requestHash: String?
}

/// What a dispatcher records after an attempt.
public struct AttemptOutcome: Sendable {
    /// The message's status after the attempt.
    public var status: MessageStatus
    /// Every recipient's state after the attempt.
    public var recipients: [RecipientState]
    /// The attempt, appended to the message's attempts.
    public var attempt: AttemptRecord
    /// When to try again, in seconds since 1970; nil when no retry is planned.
    public var nextAttemptAt: Double?
    /// The attempt's error, or nil.
    public var lastError: String?
    /// The attempt's outcome was unknown.
    public var unknown: Bool

    /// An outcome with every field given.
    public init(
        status: MessageStatus, recipients: [RecipientState], attempt: AttemptRecord, nextAttemptAt: Double?,
        lastError: String?, unknown: Bool
    ) {
        self.status = status
        self.recipients = recipients
        self.attempt = attempt
        self.nextAttemptAt = nextAttemptAt
        self.lastError = lastError
        self.unknown = unknown
    }
}

/// The result of `retry` and `cancel`.
public enum StoreChange: Sendable, Hashable {
    /// The change was made; the message as it now is.
    case done(StoredMessage)
    /// No message has that id.
    case notFound
    /// Not allowed in this status (e.g. cancelling a delivered message).
    case conflict(MessageStatus)
}

/// The durable queue. Every method that changes a message commits before it returns.
public protocol OutboxStore: OutboxStoreStatistics {
    /// "sqlite", "postgres".
    var kind: String { get }
    /// Creates or upgrades the schema.
    func migrate() async throws
    /// Stores a message (committed before it returns); with an idempotency key already used,
    /// returns the earlier message instead.
    func enqueue(_ message: NewMessage, now: Double) async throws -> EnqueueResult
    /// Claims up to `limit` due messages (queued or deferred with `nextAttemptAt <= now`, or
    /// sending with an expired lease) for `owner` until `now + lease`.
    func claim(limit: Int, owner: String, now: Double, lease: Double, route: String?) async throws -> [ClaimedMessage]
    /// Claims up to `limit` waiting messages (queued or deferred, due or not) whose maximum age
    /// counts from before `ageBefore`, as `claim` does: a paused route's held messages that are
    /// past their maximum age, to fail them without an attempt.
    func claimAged(before ageBefore: Double, limit: Int, owner: String, now: Double, lease: Double, route: String?) async throws
        -> [ClaimedMessage]
    /// Records an attempt and its outcome; false when `owner` no longer holds the lease.
    /// `notification` (a delivery status notification) is queued in the same transaction, only
    /// when the outcome was recorded: a crash can lose neither without the other.
    @discardableResult
    func record(id: String, owner: String, outcome: AttemptOutcome, notification: NewMessage?, now: Double) async throws -> Bool
    /// Writes one chunk of a large message's content ahead of `enqueue` (committed when it
    /// returns). Chunks whose message never comes are removed by `purgeOrphanChunks`.
    func writeChunk(messageID: String, index: Int, bytes: ByteBuffer, now: Double) async throws
    /// Reads chunk `index` of a message's content; nil when there is none.
    func readChunk(messageID: String, index: Int) async throws -> ByteBuffer?
    /// Removes the chunks of a message that was not queued (refused, or the client went away).
    func discardChunks(messageID: String) async throws
    /// Removes chunks written before `before` that belong to no message (a process that died
    /// while it received a large message). Returns how many.
    @discardableResult
    func purgeOrphanChunks(before: Double) async throws -> Int
    /// Gives a claimed message back to the queue without an attempt (rate limit): only for a
    /// message whose sending has not started.
    func release(id: String, owner: String, nextAttemptAt: Double, now: Double) async throws
    /// Ends the lease of a message that may be mid-delivery (shutdown deadline passed): the next
    /// claim takes it over as an unknown outcome (possible duplicate), by the retry policy's
    /// rules; a delivery that still finishes records its outcome while the lease is ours.
    func expireLease(id: String, owner: String, now: Double) async throws
    /// Releases every claim (single-instance stores at start: the previous process died).
    /// Counts them as attempts with an unknown outcome. Returns how many.
    func recoverAbandoned(now: Double) async throws -> Int
    /// The message with that id, or nil.
    func get(id: String) async throws -> StoredMessage?
    /// Messages in insertion order after `cursor` (a `sequence`), optionally of one status.
    func list(status: MessageStatus?, limit: Int, after cursor: Int64?, route: String?, client: String?) async throws -> [StoredMessage]
    /// How many messages wait (queued, deferred or sending) for each route.
    func waitingByRoute() async throws -> [String: Int]
    /// Defers the waiting messages (queued or deferred) of `route`, a route that is not
    /// configured, with `reason` as their last error; they stay due and go when it comes back.
    func holdRoute(_ route: String, reason: String, now: Double) async throws
    /// Moves a waiting message (queued or deferred) to `route`, due now; a message being sent,
    /// or finished, is a conflict.
    func move(id: String, route: String, now: Double) async throws -> StoreChange
    /// Puts a failed, unknown or deferred message back in the queue now.
    func retry(id: String, now: Double) async throws -> StoreChange
    /// Cancels a message not yet sent (queued or deferred).
    func cancel(id: String, now: Double) async throws -> StoreChange
    /// How many messages are in each status.
    func counts() async throws -> [MessageStatus: Int]
    /// Empties the content (and removes the chunks) of up to `limit` finished messages whose
    /// status is in `statuses` and that last changed before `finishedBefore`, oldest first;
    /// their records and attempts stay. Returns how many.
    func purgeContent(statuses: Set<MessageStatus>, finishedBefore: Double, limit: Int, now: Double) async throws -> Int
    /// Deletes up to `limit` finished messages (record, attempts and content) that last changed
    /// before `finishedBefore`, oldest first. Returns how many.
    func purgeRecords(finishedBefore: Double, limit: Int) async throws -> Int
    /// Gives freed space back to the file system where the store can; returns the bytes.
    func reclaimSpace() async throws -> Int64
    /// Removes one finished message's content (its record and attempts stay);
    /// ``StoreChange/conflict(_:)`` for a message still queued, sending or deferred.
    func purge(id: String, now: Double) async throws -> StoreChange
    /// Checks the store answers.
    func ping() async throws
    /// Closes the connection or database; the store cannot be used afterwards.
    func close() async throws
}

extension OutboxStore {
    /// How many messages are in each status, from the kept counters (``countsByRoute()``).
    public func counts() async throws -> [MessageStatus: Int] {
        var out: [MessageStatus: Int] = [:]
        for (_, byStatus) in try await countsByRoute() {
            for (status, n) in byStatus { out[status, default: 0] += n }
        }
        return out
    }

    /// How many messages wait (queued, deferred or sending) for each route, from the kept
    /// counters (no rows counted: `/v1/status` over 1M messages).
    public func waitingByRoute() async throws -> [String: Int] {
        var out: [String: Int] = [:]
        for (route, byStatus) in try await countsByRoute() {
            let n = (byStatus[.queued] ?? 0) + (byStatus[.deferred] ?? 0) + (byStatus[.sending] ?? 0)
            if n > 0 { out[route] = n }
        }
        return out
    }

    /// Claims due messages of every route (see ``claim(limit:owner:now:lease:route:)``).
    public func claim(limit: Int, owner: String, now: Double, lease: Double) async throws -> [ClaimedMessage] {
        try await claim(limit: limit, owner: owner, now: now, lease: lease, route: nil)
    }

    /// Claims aged waiting messages of every route.
    public func claimAged(before ageBefore: Double, limit: Int, owner: String, now: Double, lease: Double) async throws -> [ClaimedMessage] {
        try await claimAged(before: ageBefore, limit: limit, owner: owner, now: now, lease: lease, route: nil)
    }

    /// Messages of every route and client (see ``list(status:limit:after:route:client:)``).
    public func list(status: MessageStatus?, limit: Int, after cursor: Int64?) async throws -> [StoredMessage] {
        try await list(status: status, limit: limit, after: cursor, route: nil, client: nil)
    }

    /// Records an attempt and its outcome; false when `owner` no longer holds the lease.
    @discardableResult
    public func record(id: String, owner: String, outcome: AttemptOutcome, now: Double) async throws -> Bool {
        try await record(id: id, owner: owner, outcome: outcome, notification: nil, now: now)
    }
}

/// A store error: a stable code and a message that says what went wrong.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    /// Stable codes (snake_case); extensible.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The code as text, e.g. `store_invalid_url`.
        public var rawValue: String
        /// A code from its text.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The code as text (``rawValue``).
        public var description: String { rawValue }

        /// The store's address (`store = postgres://...`) cannot be used.
        public static let invalidURL = Code(rawValue: "store_invalid_url")
        /// A chunked message's chunks are not all in the store: it was not queued.
        public static let chunksMissing = Code(rawValue: "store_chunks_missing")
        /// The store's disk is full, or below `queue-min-free`: intake is refused for now
        /// (SQLite's `SQLITE_FULL`, PostgreSQL's `53100`).
        public static let insufficientStorage = Code(rawValue: "insufficient_storage")
    }

    /// What kind of error; stable.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// An error with `code` and `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The ``message``.
    public var description: String { message }
}

enum StoreJSON {
    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String?) -> T? {
        guard let text else { return nil }
        return try? JSONDecoder().decode(type, from: Data(text.utf8))
    }
}
