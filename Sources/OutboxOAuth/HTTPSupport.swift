import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOSSL
import OutboxConfig

/// HTTP clients for the token endpoints, Graph and EWS: `connect-timeout` bounds the connect,
/// `protocol-timeout` every read; `[outbox] tls-ca-file` is an additional trust root; TLS 1.2
/// at least. A timeout of zero means none (as in JavaMail).
package enum OutboxHTTP {
    /// The stand-in for "no timeout".
    static let forever: Duration = .seconds(365 * 24 * 3600)

    package static func tlsConfiguration(caFile: String?) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caFile, !caFile.isEmpty {
            tls.additionalTrustRoots = [.file(caFile)]
        }
        return tls
    }

    package static func makeClient(connectTimeout: Duration, protocolTimeout: Duration, caFile: String?) -> HTTPClient {
        let timeout = HTTPClient.Configuration.Timeout(
            connect: timeAmount(connectTimeout == .zero ? forever : connectTimeout),
            read: timeAmount(protocolTimeout == .zero ? forever : protocolTimeout))
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tlsConfiguration(caFile: caFile),
            redirectConfiguration: .disallow,
            timeout: timeout,
            connectionPool: HTTPClient.Configuration.ConnectionPool(),
            proxy: nil,
            ignoreUncleanSSLShutdown: false,
            decompression: .disabled)
        configuration.httpVersion = .http1Only
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    package static func makeClient(options: SMTPClientOptions, settings: OutboxSettings) -> HTTPClient {
        makeClient(connectTimeout: options.connectTimeout, protocolTimeout: options.protocolTimeout, caFile: settings.tlsCAFile)
    }

    package static func timeAmount(_ d: Duration) -> TimeAmount {
        let (s, atto) = d.components
        let capped = min(s, 10 * 365 * 24 * 3600)
        return .nanoseconds(capped * 1_000_000_000 + atto / 1_000_000_000)
    }

    /// `application/x-www-form-urlencoded`: every value percent-encoded (RFC 3986 unreserved
    /// characters stay as they are; space is %20).
    package static func formEncode(_ pairs: [(String, String)]) -> String {
        pairs.map { "\(percentEncode($0.0))=\(percentEncode($0.1))" }.joined(separator: "&")
    }

    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    package static func percentEncode(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: unreserved) ?? s
    }

    /// Whether an error from AsyncHTTPClient is a timeout.
    package static func isTimeout(_ error: any Error) -> Bool {
        if let e = error as? HTTPClientError {
            return e == .readTimeout || e == .connectTimeout || e == .deadlineExceeded || e == .writeTimeout
        }
        return false
    }
}

/// What a request's body is, for its length and for the debug log.
package enum HTTPRequestBody: Sendable {
    /// No body.
    case empty
    /// A body in memory: its length is known (`Content-Length`), its start may be logged.
    case bytes(ByteBuffer)
    /// A streamed body of exactly `length` bytes (`Content-Length`, never chunked): ``streamed(_:length:head:)``
    /// builds it; the debug log shows `head` (the part built before the stream, e.g. a SOAP head).
    case stream(HTTPClientRequest.Body, length: Int64, head: String)

    /// `sequence`, of exactly `length` bytes, sent with `Content-Length: length`.
    package static func streamed<S: AsyncSequence & Sendable>(_ sequence: S, length: Int64, head: String) -> Self
    where S.Element == ByteBuffer {
        .stream(.stream(sequence, length: .known(length)), length: length, head: head)
    }
}

/// `enable-debug` for HTTP: each exchange logged at info level, as the SMTP transcript is.
///
/// Request line and URL (the query, which may carry a credential such as an upload URL's,
/// redacted), status, headers and timing; `Authorization`, `Proxy-Authorization`, `Cookie` and
/// `Set-Cookie` values show only their scheme; bodies at most ``bodyLimit`` bytes, and none at
/// all when ``showsBodies`` is false (token endpoints: their bodies hold the client secret,
/// the password, the refresh token or the access token). Any of ``secrets`` that still appears
/// in a line is replaced by `<redacted>`.
package struct HTTPDebugLog: Sendable {
    /// The most bytes of a body a line shows.
    package static let bodyLimit = 2048
    static let sensitiveHeaders: Set<String> = ["authorization", "proxy-authorization", "cookie", "set-cookie"]

    package var logger: Logger
    /// What the lines start with, e.g. `graph`, `ews`, `azure token`.
    package var component: String
    package var showsBodies: Bool
    /// Values that must never appear (passwords, client secrets), whatever carries them.
    package var secrets: [String]

    package init(logger: Logger, component: String, showsBodies: Bool = true, secrets: [String] = []) {
        self.logger = logger
        self.component = component
        self.showsBodies = showsBodies
        self.secrets = secrets.filter { !$0.isEmpty }
    }

    /// The URL with its query (if any) redacted.
    static func redacted(url: String) -> String {
        guard let q = url.firstIndex(of: "?") else { return url }
        return url[..<q] + "?<redacted>"
    }

    static func redacted(headers: [(name: String, value: String)]) -> String {
        headers.map { name, value in
            guard sensitiveHeaders.contains(name.lowercased()) else { return "\(name): \(value)" }
            let scheme = value.split(separator: " ", maxSplits: 1).first.map { " \($0)" } ?? ""
            return "\(name):\(value.contains(" ") ? scheme : "") <redacted>"
        }.joined(separator: "; ")
    }

    /// The start of `bytes` as text, at most ``bodyLimit`` characters (CR, LF and bytes outside
    /// printable ASCII escaped), with the total size; `...` when there is more.
    static func preview(_ bytes: some Collection<UInt8>, total: Int) -> String {
        var text = ""
        var shown = 0
        for b in bytes {
            let piece: String
            switch b {
            case 13: piece = "\\r"
            case 10: piece = "\\n"
            case 9, 32...126: piece = String(UnicodeScalar(b))
            default: piece = String(format: "\\x%02X", b)
            }
            if text.utf8.count + piece.utf8.count > bodyLimit { break }
            text += piece
            shown += 1
        }
        return "\(total) bytes" + (total > 0 ? ": \(text)" : "") + (total > shown ? " ..." : "")
    }

    func scrub(_ line: String) -> String {
        secrets.reduce(line) { $0.replacingOccurrences(of: $1, with: "<redacted>") }
    }

    func request(_ request: HTTPClientRequest, body: HTTPRequestBody) {
        var line =
            "\(component) HTTP > \(request.method.rawValue) \(Self.redacted(url: request.url)) | \(Self.redacted(headers: request.headers.map { ($0.name, $0.value) }))"
        switch body {
        case .empty:
            break
        case .bytes(let buffer):
            line += "; Content-Length: \(buffer.readableBytes)"
            if showsBodies { line += " | body \(Self.preview(buffer.readableBytesView, total: buffer.readableBytes))" }
        case .stream(_, let length, let head):
            line += "; Content-Length: \(length)"
            if showsBodies { line += " | body \(Self.preview(Array(head.utf8), total: Int(length))) (streamed)" }
        }
        logger.info("\(scrub(line))")
    }

    func response(
        _ request: HTTPClientRequest, status: Int, reason: String, headers: [(name: String, value: String)], body: ByteBuffer, elapsed: Duration
    ) {
        var line =
            "\(component) HTTP < \(status) \(reason) for \(request.method.rawValue) \(Self.redacted(url: request.url)) in \(Self.milliseconds(elapsed)) ms | \(Self.redacted(headers: headers))"
        if showsBodies { line += " | body \(Self.preview(body.readableBytesView, total: body.readableBytes))" }
        logger.info("\(scrub(line))")
    }

    func failure(_ request: HTTPClientRequest, error: any Error, elapsed: Duration) {
        logger.info(
            "\(scrub("\(component) HTTP < no answer to \(request.method.rawValue) \(Self.redacted(url: request.url)) after \(Self.milliseconds(elapsed)) ms: \(error)"))"
        )
    }

    static func milliseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    }
}

/// A collected HTTP answer.
package struct HTTPExchangeResult: Sendable {
    package var status: Int
    package var headers: [(name: String, value: String)]
    package var body: ByteBuffer

    /// The first value of the header `name` (case-insensitive).
    package func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }
}

extension OutboxHTTP {
    /// Sends `request` with `body` and collects at most `bodyLimit` bytes of the answer. Every
    /// request carries `User-Agent: Outbox/<version>`, and a body its `Content-Length` (a
    /// streamed body has its length given, so it is never sent chunked). With `debug`, the
    /// exchange is logged (see ``HTTPDebugLog``).
    package static func exchange(
        _ request: HTTPClientRequest, body: HTTPRequestBody, client: HTTPClient, timeout: Duration, bodyLimit: Int,
        debug: HTTPDebugLog?
    ) async throws -> HTTPExchangeResult {
        var request = request
        request.headers.replaceOrAdd(name: "User-Agent", value: OutboxVersion.userAgent)
        switch body {
        case .empty: request.body = nil
        case .bytes(let buffer): request.body = .bytes(buffer)
        case .stream(let streamed, _, _): request.body = streamed
        }
        debug?.request(request, body: body)
        let start = ContinuousClock.now
        let span = HTTPTracing.start(method: request.method.rawValue, url: request.url)
        do {
            let response = try await client.execute(request, timeout: timeAmount(timeout))
            let collected = try await response.body.collect(upTo: bodyLimit)
            let headers = response.headers.map { (name: $0.name, value: $0.value) }
            debug?.response(
                request, status: Int(response.status.code), reason: response.status.reasonPhrase, headers: headers, body: collected,
                elapsed: ContinuousClock.now - start)
            HTTPTracing.end(span, status: Int(response.status.code))
            return HTTPExchangeResult(status: Int(response.status.code), headers: headers, body: collected)
        } catch {
            debug?.failure(request, error: error, elapsed: ContinuousClock.now - start)
            HTTPTracing.end(span, error: error)
            throw error
        }
    }
}
