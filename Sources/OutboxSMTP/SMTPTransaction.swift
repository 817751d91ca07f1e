import NIOCore

/// The envelope of one transaction (RFC 5321 §2.3.1): addresses as addr-specs, without `<>`.
public struct SMTPEnvelope: Sendable, Hashable {
    /// The reverse path; empty for a null sender (bounces).
    public var from: String
    /// The forward paths, one `RCPT TO` each, in this order.
    public var recipients: [String]
    /// The message or an address needs SMTPUTF8 (RFC 6531).
    public var requiresSMTPUTF8: Bool
    /// The body has 8-bit content (sent as BODY=8BITMIME when the server offers it).
    public var eightBitMIME: Bool
    /// The message size in bytes, when known (sent as SIZE=, checked against the server's limit).
    public var size: Int?
    /// This message's own DSN parameters (RFC 3461), passed on when the server offers DSN; they
    /// take the place of `mail.smtp.dsn.ret` / `mail.smtp.dsn.notify`.
    public var dsn: SMTPDSNParameters?

    /// An envelope from `from` to `recipients`; the flags are false and `size` and `dsn` nil unless
    /// given.
    public init(
        from: String, recipients: [String], requiresSMTPUTF8: Bool = false, eightBitMIME: Bool = false, size: Int? = nil,
        dsn: SMTPDSNParameters? = nil
    ) {
        self.dsn = dsn
        self.from = from
        self.recipients = recipients
        self.requiresSMTPUTF8 = requiresSMTPUTF8
        self.eightBitMIME = eightBitMIME
        self.size = size
    }
}

/// What the server said about one recipient.
public struct RecipientResult: Sendable, Hashable {
    /// The recipient's address, as in the envelope.
    public var address: String
    /// The reply to RCPT TO (nil when RCPT was never answered).
    public var reply: SMTPReply?
    /// True when the server answered RCPT TO with 2xx.
    public var accepted: Bool { reply?.isPositiveCompletion ?? false }
    /// A refusal that may succeed later (4xx).
    public var isTransientFailure: Bool { reply.map { !$0.isPositiveCompletion && $0.isTransientFailure } ?? true }

    /// The result for `address`: the server's reply, or nil when RCPT was never answered.
    public init(address: String, reply: SMTPReply?) {
        self.address = address
        self.reply = reply
    }
}

/// The outcome of one MAIL/RCPT/DATA transaction.
public struct SMTPTransactionResult: Sendable {
    /// One result per recipient of the envelope.
    public var recipients: [RecipientResult]
    /// The reply to the final dot: present when the message was sent to the accepted recipients.
    public var finalReply: SMTPReply?
    /// True when the message data was sent and the server accepted it.
    public var delivered: Bool { finalReply?.isPositiveCompletion ?? false }
    /// The message was not sent because a recipient was refused and `mail.smtp.sendpartial` is false.
    public var abortedForPartialRefusal: Bool
    /// Bytes of message data sent (after dot-stuffing).
    public var bytesSent: Int
    /// True when the connection was already handed back at the final dot (see
    /// `SMTPConnection.send`'s `handBack`): the caller must not use or release it any more.
    public internal(set) var handedBack = false

    /// The recipients whose RCPT TO got a 2xx reply.
    public var acceptedRecipients: [RecipientResult] { recipients.filter(\.accepted) }
    /// The recipients refused, or never answered.
    public var refusedRecipients: [RecipientResult] { recipients.filter { !$0.accepted } }
}
