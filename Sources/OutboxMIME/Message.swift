import Foundation
import OutboxSMTPGrammar

/// The SMTP envelope: the reverse-path and the forward-paths (addr-specs, no display names).
public struct Envelope: Sendable, Equatable {
    /// The reverse-path (`MAIL FROM`); empty for the null sender `<>`.
    public var from: String
    /// The forward-paths (`RCPT TO`), in order, without duplicates.
    public var recipients: [String]
    /// The submitter's DSN parameters (RFC 3461), for a message relayed with them.
    public var dsn: SMTPDSNParameters?
    /// An envelope from `from` to `recipients`, with the submitter's DSN parameters if any.
    public init(from: String, recipients: [String], dsn: SMTPDSNParameters? = nil) {
        self.from = from
        self.recipients = recipients
        self.dsn = dsn
    }
}

/// What the server offers and the caller allows, deciding how a message is encoded.
public struct MIMEEncodingOptions: Sendable, Equatable {
    /// Use `Content-Transfer-Encoding: 8bit` for UTF-8 text (the server offers 8BITMIME).
    public var allow8BitMIME: Bool
    /// Write UTF-8 addresses raw in headers (the server offers SMTPUTF8 and it is used).
    public var smtpUTF8: Bool
    /// Options that default to plain 7-bit MIME with ASCII headers, which any server accepts.
    public init(allow8BitMIME: Bool = false, smtpUTF8: Bool = false) {
        self.allow8BitMIME = allow8BitMIME
        self.smtpUTF8 = smtpUTF8
    }
}

/// Anything the SMTP engine can send.
public protocol MailContent: Sendable {
    /// From, and To + Cc + Bcc (Bcc is in the envelope, never in the headers).
    func envelope() throws(MIMEError) -> Envelope
    /// True when an envelope address has a non-ASCII local part (or headers must stay raw UTF-8).
    var requiresSMTPUTF8: Bool { get }
    /// The exact bytes to send: CRLF line ends, not dot-stuffed (the SMTP layer dot-stuffs).
    func byteStream(options: MIMEEncodingOptions) -> MessageByteStream
    /// The number of octets `byteStream` produces, when it is known without producing them
    /// (nil: count them).
    var knownByteCount: Int? { get }
}

extension MailContent {
    /// nil by default: the size is not known until the bytes are produced.
    public var knownByteCount: Int? { nil }

    /// The envelope with IDNA (Punycode) domains, for a server without SMTPUTF8.
    public func asciiEnvelope() throws(MIMEError) -> Envelope {
        let e = try envelope()
        var recipients: [String] = []
        for r in e.recipients { recipients.append(try Address(r).asciiMailbox()) }
        return Envelope(from: try Address(e.from).asciiMailbox(), recipients: recipients)
    }
}

/// A custom header written as given (the value is encoded with RFC 2047 when not ASCII).
public struct MessageHeader: Sendable, Hashable {
    /// The field name, e.g. `X-Campaign`; printable ASCII without a colon, not one Outbox writes.
    public var name: String
    /// The value as text; must not contain CR, LF or NUL.
    public var value: String
    /// A header `name: value`; both are checked by ``Message/validate()``.
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// Message priority, written as `X-Priority` and `Importance`.
public enum Priority: Int, Sendable, Hashable, CaseIterable {
    case highest = 1
    case high = 2
    case normal = 3
    case low = 4
    case lowest = 5
}

/// A file attached to a message, from memory or streamed from a file; with a `contentID` it is
/// an inline part (e.g. an image referenced by the HTML as `cid:...`).
public struct Attachment: Sendable, Hashable {
    /// Where an attachment's bytes come from.
    public enum Source: Sendable, Hashable {
        case data([UInt8])
        case file(path: String)
    }

    /// The bytes in memory, or the file they are streamed from.
    public var source: Source
    /// The file name shown to the recipient (RFC 2231-encoded when not ASCII).
    public var filename: String
    /// `type/subtype`; from the file extension when not given.
    public var contentType: String
    /// Set for inline parts; written as `Content-ID: <contentID>`.
    public var contentID: String?

    /// An attachment; the content type is guessed from `filename`'s extension when nil.
    public init(source: Source, filename: String, contentType: String? = nil, contentID: String? = nil) {
        self.source = source
        self.filename = filename
        self.contentType = contentType ?? ContentTypes.forFilename(filename)
        self.contentID = contentID
    }

    /// True for an inline part (it has a ``contentID``).
    public var isInline: Bool { contentID != nil }

    /// An attachment held in memory.
    public static func data(_ bytes: [UInt8], filename: String, contentType: String? = nil) -> Attachment {
        Attachment(source: .data(bytes), filename: filename, contentType: contentType)
    }

    /// An attachment read (and encoded) in chunks from `path` while the message is sent.
    public static func file(path: String, filename: String? = nil, contentType: String? = nil) -> Attachment {
        let name = filename ?? (path.split(separator: "/").last.map(String.init) ?? path)
        return Attachment(source: .file(path: path), filename: name, contentType: contentType)
    }

    /// An inline part held in memory, referenced from the HTML as `cid:<contentID>`.
    public static func inline(
        _ bytes: [UInt8], contentID: String, filename: String, contentType: String? = nil
    ) -> Attachment {
        Attachment(source: .data(bytes), filename: filename, contentType: contentType, contentID: contentID)
    }

    /// An inline part streamed from a file, referenced from the HTML as `cid:<contentID>`.
    public static func inline(
        path: String, contentID: String, filename: String? = nil, contentType: String? = nil
    ) -> Attachment {
        var a = Attachment.file(path: path, filename: filename, contentType: contentType)
        a.contentID = contentID
        return a
    }
}

/// A message built from its parts. The MIME structure and transfer encodings are chosen from
/// the content when it is serialised (`byteStream(options:)`).
public struct Message: MailContent, Hashable {
    /// The author (`From`), also the envelope sender.
    public var from: Address
    /// `Sender`, when someone sends on the author's behalf; nil: not written.
    public var sender: Address?
    /// `Reply-To` addresses; empty: not written.
    public var replyTo: [Address]
    /// `To` addresses.
    public var to: [Address]
    /// `Cc` addresses.
    public var cc: [Address]
    /// In the envelope, never in the headers.
    public var bcc: [Address]
    /// `Subject`, encoded with RFC 2047 when not ASCII; nil: not written.
    public var subject: String?
    /// `Date`, written in UTC.
    public var date: Date
    /// `<unique@sender-domain>`; generated by `init`.
    public var messageID: String
    /// Message-IDs for `In-Reply-To`, each `<id@domain>`.
    public var inReplyTo: [String]
    /// Message-IDs for `References`, each `<id@domain>`.
    public var references: [String]
    /// Custom headers (not ones Outbox writes itself).
    public var headers: [MessageHeader]
    /// Written as `X-Priority` and `Importance`; nil: not written.
    public var priority: Priority?
    /// The plain-text body, or nil.
    public var text: String?
    /// The HTML body, or nil; with ``text`` too the message is `multipart/alternative`.
    public var html: String?
    /// Attachments and inline parts (those with a `contentID`).
    public var attachments: [Attachment]

    /// A message from `from`; the date is now and the Message-ID is generated when not given.
    public init(
        from: Address, to: [Address] = [], cc: [Address] = [], bcc: [Address] = [], subject: String? = nil,
        text: String? = nil, html: String? = nil, attachments: [Attachment] = [],
        date: Date = Date(), messageID: String? = nil
    ) {
        self.from = from
        self.sender = nil
        self.replyTo = []
        self.to = to
        self.cc = cc
        self.bcc = bcc
        self.subject = subject
        self.date = date
        self.messageID = messageID ?? Message.makeMessageID(domain: String(from.domain))
        self.inReplyTo = []
        self.references = []
        self.headers = []
        self.priority = nil
        self.text = text
        self.html = html
        self.attachments = attachments
    }

    /// A new unique Message-ID `<random@domain>` (domain in its IDNA form).
    public static func makeMessageID(domain: String) -> String {
        let local = RandomToken.make(24)
        let d = (try? Punycode.toASCII(domain: domain)).flatMap { $0.isEmpty ? nil : $0 } ?? "outbox.invalid"
        let t = String(UInt64(Date().timeIntervalSince1970 * 1000), radix: 36)
        return "<\(t).\(String(decoding: local, as: UTF8.self))@\(d)>"
    }

    /// Header names Outbox writes itself; a custom header may not use them.
    static let reservedHeaders: Set<String> = [
        "from", "sender", "reply-to", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to",
        "references", "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
        "content-id", "x-priority", "importance",
    ]

    /// True when any address has a non-ASCII local part.
    public var requiresSMTPUTF8: Bool {
        ([from] + (sender.map { [$0] } ?? []) + replyTo + to + cc + bcc).contains(where: \.requiresSMTPUTF8)
    }

    /// From, and To + Cc + Bcc without duplicates (compared ignoring case). Throws
    /// ``MIMEError/Code/missingField`` when there is no recipient.
    public func envelope() throws(MIMEError) -> Envelope {
        var seen = Set<String>()
        var recipients: [String] = []
        for a in to + cc + bcc where seen.insert(a.mailbox.lowercased()).inserted {
            recipients.append(a.mailbox)
        }
        guard !recipients.isEmpty else {
            throw MIMEError(.missingField, "the message from \(from.mailbox) has no recipient in To, Cc or Bcc")
        }
        return Envelope(from: from.mailbox, recipients: recipients)
    }

    /// Checks every caller-supplied header value: no CR, LF or NUL; valid custom header names
    /// and message IDs. `byteStream` runs it too (its first `next()` throws the error).
    public func validate() throws(MIMEError) {
        for a in [from] + (sender.map { [$0] } ?? []) + replyTo + to + cc + bcc {
            try Address.validate(mailbox: a.mailbox)
            if let n = a.displayName { try MIMEError.checkNoLineBreaks(n, header: "display name of \(a.mailbox)") }
        }
        if let subject { try MIMEError.checkNoLineBreaks(subject, header: "Subject") }
        for id in [messageID] + inReplyTo + references { _ = try Message.normalizedMessageID(id) }
        for h in headers {
            let nameOK = !h.name.isEmpty && h.name.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }
            guard nameOK else {
                throw MIMEError(
                    .invalidHeaderName, "the header name \"\(h.name.debugEscaped)\" is invalid: use printable ASCII without \":\" or spaces")
            }
            guard !Message.reservedHeaders.contains(h.name.lowercased()) else {
                throw MIMEError(.invalidHeaderName, "the header \(h.name) is written by Outbox; use the Message property instead")
            }
            try MIMEError.checkNoLineBreaks(h.value, header: h.name)
        }
        for a in attachments {
            try MIMEError.checkNoLineBreaks(a.filename, header: "filename of an attachment")
            try MIMEError.checkNoLineBreaks(a.contentType, header: "Content-Type of \(a.filename)")
            let parts = a.contentType.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy(MIMEParams.isTokenChar) }) else {
                throw MIMEError(.invalidHeaderValue, "the content type \"\(a.contentType)\" of \(a.filename) is not type/subtype")
            }
            if let cid = a.contentID { _ = try Message.normalizedMessageID(cid, what: "Content-ID") }
        }
    }

    /// `<id>` from `id` or `<id>`; refuses white space, control characters and angle brackets inside.
    static func normalizedMessageID(_ id: String, what: String = "Message-ID") throws(MIMEError) -> String {
        try MIMEError.checkNoLineBreaks(id, header: what)
        var core = Substring(id)
        if core.hasPrefix("<") && core.hasSuffix(">") && core.count >= 2 { core = core.dropFirst().dropLast() }
        guard !core.isEmpty, core.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "<") && $0 != UInt8(ascii: ">") })
        else {
            throw MIMEError(
                .invalidHeaderValue, "the \(what) \"\(id.debugEscaped)\" is invalid: use printable ASCII without spaces, like <id@domain>")
        }
        return "<\(core)>"
    }

    /// The serialised message, produced chunk by chunk; validation errors are thrown by the
    /// stream's first `next()`.
    public func byteStream(options: MIMEEncodingOptions) -> MessageByteStream {
        let message = self
        return MessageByteStream { () throws(MIMEError) -> [Segment] in
            try MessageSerializer(message: message, options: options).segments()
        }
    }
}

/// Random alphanumeric tokens (boundaries, Message-IDs) from the system CSPRNG, ~5.9 bits a character.
enum RandomToken {
    private static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    static func make(_ count: Int) -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var bits: UInt64 = 0
        var left = 0
        while out.count < count {
            if left == 0 {
                bits = rng.next()
                left = 10
            }
            out.append(alphabet[Int(bits % 62)])
            bits /= 62
            left -= 1
        }
        return out
    }
}
