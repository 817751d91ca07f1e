import Foundation
import OutboxConfig
import OutboxMIME
import OutboxSMTP

/// What happened to one recipient.
public struct RecipientOutcome: Sendable, Hashable, Codable {
    /// Whether the recipient got the message, will not, may later, or may have.
    public enum Status: String, Sendable, Hashable, Codable {
        /// The server accepted the message for this recipient.
        case accepted
        /// Refused for good (5xx): do not retry.
        case rejected
        /// Refused for now (4xx, or the message was not sent): retry later.
        case deferred
        /// The connection failed after the whole message was sent: it may have arrived.
        case unknown
    }

    /// The recipient's address as sent in the envelope.
    public var address: String
    /// What happened to it.
    public var status: Status
    /// The reply code behind the status (SMTP's reply to RCPT, or the HTTP status for Graph and
    /// EWS); nil when there was none (the file transport).
    public var code: Int?
    /// The SMTP enhanced status code (RFC 3463), e.g. `5.1.1`; nil when the server gave none.
    public var enhancedCode: String?
    /// The server's reply text (or, for the file transport, where the file was written).
    public var text: String?

    /// An outcome for `address`.
    public init(address: String, status: Status, code: Int? = nil, enhancedCode: String? = nil, text: String? = nil) {
        self.address = address
        self.status = status
        self.code = code
        self.enhancedCode = enhancedCode
        self.text = text
    }
}

/// The result of one delivery: per recipient, the server's final reply, timings.
public struct DeliveryReport: Sendable, Codable {
    /// The transport's name: `smtp`, `file`, `graph` or `ews`.
    public var transport: String
    /// Where it went: `host:port`, a URL or a file path.
    public var destination: String
    /// The message's Message-ID, when the content is a `Message`; nil otherwise.
    public var messageID: String?
    /// One outcome per envelope recipient, in envelope order.
    public var recipients: [RecipientOutcome]
    /// The server's reply to the message (after the final dot), e.g. `250 2.0.0 Ok: queued as 4Xk...`.
    public var finalReply: String?
    /// When the delivery started (wall clock).
    public var startedAt: Date
    /// How long the delivery took, in seconds, including any connection set-up and retries.
    public var durationSeconds: Double
    /// How many connection attempts the delivery took (2 when a dead pooled connection was replaced).
    public var attempts: Int
    /// The TLS the delivery went over: the version (`TLSv1.3`), `none` for a clear-text SMTP
    /// session, `https` for an HTTP transport (the version is not known there); nil: unknown
    /// (the file transport).
    public var tls: String?
    /// The provider's throttling answer (``Throttling``) to a recipient or to the message, when it
    /// throttled this delivery: those recipients are deferred, and a queue pauses the route.
    public var throttle: String?

    /// A report with every field given.
    public init(
        transport: String, destination: String, messageID: String?, recipients: [RecipientOutcome],
        finalReply: String?, startedAt: Date, durationSeconds: Double, attempts: Int = 1, tls: String? = nil
    ) {
        self.tls = tls
        self.transport = transport
        self.destination = destination
        self.messageID = messageID
        self.recipients = recipients
        self.finalReply = finalReply
        self.startedAt = startedAt
        self.durationSeconds = durationSeconds
        self.attempts = attempts
    }

    /// True when there are recipients and every one was accepted.
    public var allAccepted: Bool { !recipients.isEmpty && recipients.allSatisfy { $0.status == .accepted } }
    /// True when at least one recipient was refused for good.
    public var anyRejected: Bool { recipients.contains { $0.status == .rejected } }
    /// True when at least one recipient should be tried again (deferred, or outcome unknown).
    public var anyDeferred: Bool { recipients.contains { $0.status == .deferred || $0.status == .unknown } }
}

/// A delivery that failed as a whole (nothing was accepted, or the outcome is unknown).
public struct DeliveryError: Error, Sendable, CustomStringConvertible {
    /// How the caller should treat the failure.
    public enum Kind: String, Sendable, Codable {
        /// Try again later.
        case transient
        /// Do not try again: the message, an address or the configuration is wrong.
        case permanent
        /// The connection failed after the final dot: the message may have been delivered.
        case outcomeUnknown
    }

    /// Whether to retry, not to, or to decide knowing the message may have arrived.
    public var kind: Kind
    /// What failed and, where it helps, what to check; never a secret.
    public var message: String
    /// The SMTP failure behind it, when there is one.
    public var smtp: SMTPError?
    /// A partial report (recipients known so far), when there is one.
    public var report: DeliveryReport?
    /// The earliest time to try again that the server asked for (Graph's `Retry-After` on 429,
    /// 503 or 504; EWS's `BackOffMilliseconds` on ErrorServerBusy). nil: the caller's own backoff.
    public var retryAfter: Duration?
    /// Set when the failure is the route's fault, not the message's: the server, the network,
    /// TLS, the credentials or the configuration, all of which an operator can fix. Such a
    /// failure is always transient; a queue defers the message, raises an alert on the route
    /// and pauses it. nil: the failure concerns this message or its recipients.
    public var routeFault: RouteFault?

    /// An error with every field given. With a `routeFault`, a `permanent` kind becomes
    /// `transient`: what an operator can fix is never the message's end.
    public init(
        kind: Kind, message: String, smtp: SMTPError? = nil, report: DeliveryReport? = nil,
        retryAfter: Duration? = nil, routeFault: RouteFault? = nil
    ) {
        self.kind = routeFault != nil && kind == .permanent ? .transient : kind
        self.message = message
        self.smtp = smtp
        self.report = report
        self.retryAfter = retryAfter
        self.routeFault = routeFault
    }

    /// The error for an SMTP failure, classified by ``classify(_:)``: only the server's 5xx to
    /// MAIL, RCPT or the message is permanent; its description becomes the message.
    public init(_ error: SMTPError, report: DeliveryReport? = nil) {
        let (kind, fault) = Self.classify(error)
        self.init(kind: kind, message: error.description, smtp: error, report: report, routeFault: fault)
    }

    /// True when the failure should raise an alert on the route (``routeFault`` is set).
    public var raisesRouteAlert: Bool { routeFault != nil }

    /// True unless the failure is permanent (an unknown outcome counts as transient).
    public var isTransient: Bool { kind != .permanent }
    /// The ``message``.
    public var description: String { message }
}

/// Something that delivers a finished message: SMTP, the file transport, Graph and EWS.
public protocol MailTransport: Sendable {
    /// Short name for reports and logs (`smtp`, `file`).
    var name: String { get }
    /// Delivers `content` to the envelope's recipients (derived from the headers when nil).
    func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport
    /// Keeps the transport's background work (pool timers) going until shutdown.
    func run() async
    /// Finishes in-flight deliveries and closes every connection.
    func shutdown() async
    /// The largest message the destination takes, as far as the transport knows now (an SMTP
    /// server's SIZE, Graph's 150 MB); nil: no limit known.
    var messageSizeLimit: Int? { get }
    /// Learns the destination's limits before the first message (an SMTP server's EHLO).
    func learnLimits() async
    /// Starts a graceful shutdown without waiting: new deliveries fail, in-flight ones finish.
    func beginShutdown()
    /// The connection pool's counters, when the transport keeps one.
    var poolStatistics: PoolStatistics? { get }
}

extension MailTransport {
    /// nil: no limit known.
    public var messageSizeLimit: Int? { nil }
    /// Does nothing: the transport has no limits to learn.
    public func learnLimits() async {}
    /// Does nothing: the transport has nothing to wind down early.
    public func beginShutdown() {}
    /// nil: the transport keeps no connection pool.
    public var poolStatistics: PoolStatistics? { nil }

    /// Delivers `content` to the recipients its headers name (To, Cc and Bcc).
    public func send(_ content: any MailContent) async throws(DeliveryError) -> DeliveryReport {
        try await send(content, envelope: nil)
    }
}

extension MailContent {
    /// The Message-ID the content carries, when it is a `Message`, or a raw message with one.
    var outboxMessageID: String? {
        if let message = self as? Message { return message.messageID }
        return nil
    }
}
