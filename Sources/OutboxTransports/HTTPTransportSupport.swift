import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import OutboxMIME
import OutboxOAuth

/// The addresses a message's own header section names (what Graph and EWS read from the MIME).
struct MIMEHeaderAddresses: Sendable {
    var from: [String] = []
    var to: [String] = []
    var cc: [String] = []

    /// Parses the header section (up to the first empty line) of `bytes`.
    init(header bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        var fields: [(String, String)] = []
        for line in text.components(separatedBy: "\r\n") {
            if line.isEmpty { break }
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].1 += line
            } else if let colon = line.firstIndex(of: ":") {
                fields.append((line[..<colon].lowercased(), String(line[line.index(after: colon)...])))
            }
        }
        for (name, value) in fields {
            let list = ((try? Address.parseList(value)) ?? []).map(\.mailbox)
            switch name {
            case "from": from += list
            case "to": to += list
            case "cc": cc += list
            default: break
            }
        }
    }

    /// Envelope recipients that are in neither To nor Cc: the Bcc recipients (Outbox never
    /// writes Bcc into the MIME).
    func blindRecipients(of envelope: Envelope) -> [String] {
        let visible = Set((to + cc).map { $0.lowercased() })
        var seen = Set<String>()
        return envelope.recipients.filter { !visible.contains($0.lowercased()) && seen.insert($0.lowercased()).inserted }
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
    /// A token that could not be had: transient for 5xx and time-outs, permanent otherwise.
    init(_ error: OAuthError, transport: String) {
        self.init(kind: error.isTransient ? .transient : .permanent, message: "\(transport): \(error.description)")
    }

    /// A failure of the HTTP exchange itself. Before the request was sent (connect): transient;
    /// after (read timeout, connection closed while waiting for the answer): the outcome is unknown.
    init(http error: any Error, transport: String, url: String) {
        if let e = error as? HTTPClientError, e == .connectTimeout {
            self.init(kind: .transient, message: "\(transport): could not connect to \(url) in time (connect-timeout)")
        } else if let e = error as? HTTPClientError, e == .readTimeout {
            self.init(kind: .outcomeUnknown, message: "\(transport): no answer from \(url) within protocol-timeout; the message may have been sent")
        } else if let e = error as? HTTPClientError, e == .remoteConnectionClosed {
            self.init(kind: .outcomeUnknown, message: "\(transport): \(url) closed the connection before answering; the message may have been sent")
        } else if error is DeliveryError {
            self = error as! DeliveryError
        } else if let e = error as? MIMEError {
            self.init(kind: .permanent, message: "\(transport): the message cannot be encoded: \(e.message)")
        } else {
            self.init(kind: .transient, message: "\(transport): the request to \(url) failed: \(error)")
        }
    }
}

/// What a transport decides on from an HTTP answer.
struct HTTPAnswer {
    var status: Int
    var body: ByteBuffer
    var retryAfter: String?
    var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] }

    /// Sends `request` within `timeout` and collects at most `bodyLimit` bytes of the answer; a
    /// failure of the exchange itself becomes the transport's error naming `url`.
    static func exchange(_ request: HTTPClientRequest, client: HTTPClient, timeout: Duration, bodyLimit: Int,
                         transport: String, url: String) async throws(DeliveryError) -> HTTPAnswer {
        do {
            let response = try await client.execute(request, timeout: OutboxHTTP.timeAmount(timeout))
            return HTTPAnswer(status: Int(response.status.code), body: try await response.body.collect(upTo: bodyLimit),
                              retryAfter: response.headers.first(name: "Retry-After"))
        } catch {
            throw DeliveryError(http: error, transport: transport, url: url)
        }
    }
}

enum HTTPTransportReport {
    static func accepted(transport: String, destination: String, content: any MailContent, envelope: Envelope,
                         code: Int, text: String, started: Date, clock: ContinuousClock.Instant, attempts: Int) -> DeliveryReport {
        DeliveryReport(transport: transport, destination: destination, messageID: content.outboxMessageID,
                       recipients: envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: code, text: text) },
                       finalReply: "\(code) \(text)", startedAt: started,
                       durationSeconds: (ContinuousClock.now - clock).seconds, attempts: attempts)
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
