import Foundation
import OutboxMIME
import OutboxSMTP

/// What happened to one recipient.
public struct RecipientOutcome: Sendable, Hashable, Codable {
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

    public var address: String
    public var status: Status
    public var code: Int?
    public var enhancedCode: String?
    public var text: String?

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
    public var transport: String
    /// Where it went: `host:port`, a URL or a file path.
    public var destination: String
    public var messageID: String?
    public var recipients: [RecipientOutcome]
    /// The server's reply to the message (after the final dot), e.g. `250 2.0.0 Ok: queued as 4Xk...`.
    public var finalReply: String?
    public var startedAt: Date
    public var durationSeconds: Double
    /// How many connection attempts the delivery took (2 when a dead pooled connection was replaced).
    public var attempts: Int

    public init(transport: String, destination: String, messageID: String?, recipients: [RecipientOutcome],
                finalReply: String?, startedAt: Date, durationSeconds: Double, attempts: Int = 1) {
        self.transport = transport
        self.destination = destination
        self.messageID = messageID
        self.recipients = recipients
        self.finalReply = finalReply
        self.startedAt = startedAt
        self.durationSeconds = durationSeconds
        self.attempts = attempts
    }

    public var allAccepted: Bool { !recipients.isEmpty && recipients.allSatisfy { $0.status == .accepted } }
    public var anyRejected: Bool { recipients.contains { $0.status == .rejected } }
    public var anyDeferred: Bool { recipients.contains { $0.status == .deferred || $0.status == .unknown } }
}

/// A delivery that failed as a whole (nothing was accepted, or the outcome is unknown).
public struct DeliveryError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable {
        /// Try again later.
        case transient
        /// Do not try again: the message, an address or the configuration is wrong.
        case permanent
        /// The connection failed after the final dot: the message may have been delivered.
        case outcomeUnknown
    }

    public var kind: Kind
    public var message: String
    /// The SMTP failure behind it, when there is one.
    public var smtp: SMTPError?
    /// A partial report (recipients known so far), when there is one.
    public var report: DeliveryReport?
    /// The earliest time to try again that the server asked for (Graph's `Retry-After` on 429,
    /// 503 or 504; EWS's `BackOffMilliseconds` on ErrorServerBusy). nil: the caller's own backoff.
    public var retryAfter: Duration?

    public init(kind: Kind, message: String, smtp: SMTPError? = nil, report: DeliveryReport? = nil,
                retryAfter: Duration? = nil) {
        self.kind = kind
        self.message = message
        self.smtp = smtp
        self.report = report
        self.retryAfter = retryAfter
    }

    public init(_ error: SMTPError, report: DeliveryReport? = nil) {
        let kind: Kind = error.code == .outcomeUnknown ? .outcomeUnknown : (error.isTransient ? .transient : .permanent)
        self.init(kind: kind, message: error.description, smtp: error, report: report)
    }

    public var isTransient: Bool { kind != .permanent }
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
}

extension MailTransport {
    public var messageSizeLimit: Int? { nil }
    public func learnLimits() async {}

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
