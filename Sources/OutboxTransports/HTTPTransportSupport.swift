import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import OutboxMIME
import OutboxOAuth

/// The addresses a message's own header section names (what Graph and EWS read from the MIME).
struct MIMEHeaderAddresses: Sendable {
    var from: [String] = []
    var to: [MailRecipient] = []
    var cc: [MailRecipient] = []
    var bcc: [MailRecipient] = []
    /// True when the header section has a Bcc field (even an empty one).
    var hasBcc = false
    /// True when a To, Cc or Bcc field could not be parsed: its recipients are unknown.
    var unparsable = false

    /// Parses the header section (up to the first empty line) of `bytes`.
    init(header bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        var fields: [(String, String)] = []
        for line in text.components(separatedBy: "\r\n") {
            if line.isEmpty { break }
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].1 += line
            } else if let colon = line.firstIndex(of: ":") {
                fields.append(
                    (
                        line[..<colon].lowercased().trimmingCharacters(in: .whitespaces),
                        String(line[line.index(after: colon)...])
                    ))
            }
        }
        for (name, value) in fields {
            guard ["from", "to", "cc", "bcc"].contains(name) else { continue }
            if name == "bcc" { hasBcc = true }
            let list: [MailRecipient]
            if value.trimmingCharacters(in: .whitespaces).isEmpty {
                list = []
            } else if let parsed = try? Address.parseList(value) {
                list = parsed.map { MailRecipient(address: $0.mailbox, name: $0.displayName) }
            } else {
                if name != "from" { unparsable = true }
                list = []
            }
            switch name {
            case "from": from += list.map(\.address)
            case "to": to += list
            case "cc": cc += list
            default: bcc += list
            }
        }
    }

    /// Envelope recipients that are in neither To nor Cc: the Bcc recipients (Outbox never
    /// writes Bcc into the MIME).
    func blindRecipients(of envelope: Envelope) -> [String] {
        RecipientPlan(header: self, envelope: envelope).bcc.map(\.address)
    }
}

/// A recipient as Graph's `emailAddress` and EWS's `t:Mailbox` take it.
struct MailRecipient: Sendable, Hashable {
    var address: String
    var name: String?
}

/// Who receives a message: exactly the envelope recipients, placed where the message's own
/// headers put them.
///
/// - To = the header's To ∩ envelope, Cc = the header's Cc ∩ envelope (display names kept, each
///   address once, To first), Bcc = every other envelope recipient.
/// - ``headersMatch``: true when the headers alone already give exactly that (no Bcc field, every
///   To and Cc address in the envelope), so the MIME can be sent as it is (plus a `Bcc:` line
///   for the envelope-only recipients). False when the message names somebody the envelope does
///   not (a client that split one message into several transactions, a Bcc field left in a
///   relayed message, an address field that cannot be parsed).
/// Addresses are compared without regard to case.
struct RecipientPlan: Sendable, Equatable {
    var to: [MailRecipient] = []
    var cc: [MailRecipient] = []
    var bcc: [MailRecipient] = []
    var headersMatch: Bool

    init(header: MIMEHeaderAddresses, envelope: Envelope) {
        self.init(to: header.to, cc: header.cc, bcc: header.bcc, envelope: envelope)
        headersMatch = headersMatch && !header.hasBcc && !header.unparsable
    }

    init(to headerTo: [MailRecipient], cc headerCc: [MailRecipient], bcc headerBcc: [MailRecipient], envelope: Envelope) {
        let wanted = Set(envelope.recipients.map { $0.lowercased() })
        var seen = Set<String>()
        to = headerTo.filter { wanted.contains($0.address.lowercased()) && seen.insert($0.address.lowercased()).inserted }
        cc = headerCc.filter { wanted.contains($0.address.lowercased()) && seen.insert($0.address.lowercased()).inserted }
        let names = Dictionary(headerBcc.map { ($0.address.lowercased(), $0.name) }, uniquingKeysWith: { a, _ in a })
        for r in envelope.recipients where seen.insert(r.lowercased()).inserted {
            bcc.append(MailRecipient(address: r, name: names[r.lowercased()] ?? nil))
        }
        headersMatch = (headerTo + headerCc).allSatisfy { wanted.contains($0.address.lowercased()) }
    }
}

enum MIMEHead {
    /// The header section of `content` (read from the start of its stream, at most 1 MiB).
    static func read(_ content: any MailContent, options: MIMEEncodingOptions) async throws -> [UInt8] {
        var out: [UInt8] = []
        for try await chunk in content.byteStream(options: options) {
            out += chunk.readableBytesView
            if let end = headerEnd(out) { return Array(out[..<end]) }
            if out.count > 1 << 20 { break }
        }
        return out
    }

    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 2
        }
        return nil
    }
}

/// Base64 of an async byte sequence, streamed: each input chunk is encoded as it arrives (the
/// 0 to 2 bytes left over go with the next one), with `prefix` before and `suffix` after.
/// Holds one chunk at a time, so a 30 MiB attachment is never in memory at once.
struct Base64Wrapped<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
    typealias Element = ByteBuffer
    let base: Base
    let prefix: ByteBuffer
    let suffix: ByteBuffer

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: Base.AsyncIterator
        var prefix: ByteBuffer?
        var suffix: ByteBuffer?
        var carry: [UInt8] = []
        var finished = false

        mutating func next() async throws -> ByteBuffer? {
            if let p = prefix {
                prefix = nil
                return p
            }
            while !finished {
                guard let chunk = try await base.next() else {
                    finished = true
                    if !carry.isEmpty {
                        let tail = Data(carry).base64EncodedString()
                        carry = []
                        return ByteBuffer(string: tail)
                    }
                    break
                }
                var bytes = carry
                bytes += chunk.readableBytesView
                let usable = bytes.count - bytes.count % 3
                carry = Array(bytes[usable...])
                if usable > 0 {
                    return ByteBuffer(string: Data(bytes[..<usable]).base64EncodedString())
                }
            }
            if let s = suffix {
                suffix = nil
                return s
            }
            return nil
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), prefix: prefix, suffix: suffix)
    }
}

extension DeliveryError {
    /// A token that could not be had: a refusal (`invalid_grant`, `AADSTS...`) is the
    /// credentials' fault, not the message's, so every one is transient with a route fault.
    init(_ error: OAuthError, transport: String) {
        self.init(kind: .transient, message: "\(transport): \(error.description)", routeFault: .credentialsUnavailable)
    }

    /// A failure of the HTTP exchange itself. Before the request was sent (connect): transient;
    /// after (read timeout, connection closed while waiting for the answer): the outcome is unknown.
    init(http error: any Error, transport: String, url: String) {
        if let e = error as? HTTPClientError, e == .connectTimeout {
            self.init(kind: .transient, message: "\(transport): could not connect to \(url) in time (connect-timeout)", routeFault: .timeout)
        } else if let e = error as? HTTPClientError, e == .readTimeout {
            self.init(kind: .outcomeUnknown, message: "\(transport): no answer from \(url) within protocol-timeout; the message may have been sent")
        } else if let e = error as? HTTPClientError, e == .remoteConnectionClosed {
            self.init(kind: .outcomeUnknown, message: "\(transport): \(url) closed the connection before answering; the message may have been sent")
        } else if error is DeliveryError {
            self = error as! DeliveryError
        } else if let e = error as? MIMEError {
            self.init(kind: .permanent, message: "\(transport): the message cannot be encoded: \(e.message)")
        } else {
            self.init(kind: .transient, message: "\(transport): the request to \(url) failed: \(error)", routeFault: .connectionFailed)
        }
    }
}

/// What a transport decides on from an HTTP answer.
struct HTTPAnswer {
    var status: Int
    var body: ByteBuffer
    var retryAfter: String?
    /// The `WWW-Authenticate` field values (a 401's offered schemes).
    var authenticate: [String] = []
    var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] }

    /// Sends `request` with `body` within `timeout` (with `User-Agent` and `Content-Length`,
    /// logged when `debug` is given: ``OutboxHTTP/exchange(_:body:client:timeout:bodyLimit:debug:)``)
    /// and collects at most `bodyLimit` bytes of the answer; a failure of the exchange itself
    /// becomes the transport's error naming `url`.
    static func exchange(
        _ request: HTTPClientRequest, body: HTTPRequestBody, client: HTTPClient, timeout: Duration, bodyLimit: Int,
        debug: HTTPDebugLog?, transport: String, url: String
    ) async throws(DeliveryError) -> HTTPAnswer {
        do {
            let answer = try await OutboxHTTP.exchange(request, body: body, client: client, timeout: timeout, bodyLimit: bodyLimit, debug: debug)
            return HTTPAnswer(
                status: answer.status, body: answer.body, retryAfter: answer.header("Retry-After"),
                authenticate: answer.headers.filter { $0.name.lowercased() == "www-authenticate" }.map(\.value))
        } catch {
            throw DeliveryError(http: error, transport: transport, url: url)
        }
    }
}

enum HTTPTransportReport {
    static func accepted(
        transport: String, destination: String, content: any MailContent, envelope: Envelope,
        code: Int, text: String, started: Date, clock: ContinuousClock.Instant, attempts: Int
    ) -> DeliveryReport {
        DeliveryReport(
            transport: transport, destination: destination, messageID: content.outboxMessageID,
            recipients: envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: code, text: text) },
            finalReply: "\(code) \(text)", startedAt: started,
            durationSeconds: (ContinuousClock.now - clock).seconds, attempts: attempts,
            tls: destination.lowercased().hasPrefix("https:") ? "https" : "none")
    }

    /// `Retry-After` in seconds (the HTTP-date form is read too).
    static func retryAfter(_ header: String?) -> Duration? {
        guard let value = header?.trimmingCharacters(in: .whitespaces) else { return nil }
        if let seconds = Double(value) { return .milliseconds(Int64(max(0, seconds) * 1000)) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        if let date = formatter.date(from: value) {
            return .milliseconds(Int64(max(0, date.timeIntervalSinceNow) * 1000))
        }
        return nil
    }
}
