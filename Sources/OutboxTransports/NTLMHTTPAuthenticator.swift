import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import OutboxConfig
import OutboxOAuth

/// The challenges of a 401's `WWW-Authenticate` fields (RFC 9110 §11.6.1): each scheme with its
/// token68 (`NTLM <base64>`) or its parameters' text, in order.
package struct HTTPAuthenticateOffers: Sendable, Equatable {
    package struct Challenge: Sendable, Equatable {
        /// The scheme as the server spelled it.
        package var scheme: String
        /// The token68 or the parameters, nil when there are none.
        package var rest: String?
    }

    package var challenges: [Challenge] = []

    /// Parses every `WWW-Authenticate` field value. A comma outside quotes ends a challenge when
    /// the next word is a scheme (it has no `=`), else it separates the parameters of one.
    package init(headers: [String]) {
        for value in headers {
            var parts: [String] = []
            var current = ""
            var quoted = false
            var escaped = false
            for c in value {
                if escaped {
                    escaped = false
                } else if c == "\\" && quoted {
                    escaped = true
                } else if c == "\"" {
                    quoted.toggle()
                } else if c == "," && !quoted {
                    parts.append(current)
                    current = ""
                    continue
                }
                current.append(c)
            }
            parts.append(current)
            for part in parts {
                let trimmed = part.trimmingCharacters(in: .whitespaces)
                guard !trimmed.isEmpty else { continue }
                let word = trimmed.prefix { $0 != " " }
                if word.contains("=") {
                    // A parameter of the challenge before it.
                    if let last = challenges.indices.last {
                        challenges[last].rest = (challenges[last].rest.map { $0 + ", " } ?? "") + trimmed
                    }
                    continue
                }
                let rest = trimmed.dropFirst(word.count).trimmingCharacters(in: .whitespaces)
                challenges.append(Challenge(scheme: String(word), rest: rest.isEmpty ? nil : rest))
            }
        }
    }

    /// The schemes offered, in order, each once.
    package var schemes: [String] {
        var seen = Set<String>()
        return challenges.map(\.scheme).filter { seen.insert($0.lowercased()).inserted }
    }

    /// Whether `scheme` is offered (case-insensitive).
    package func offers(_ scheme: String) -> Bool {
        challenges.contains { $0.scheme.caseInsensitiveCompare(scheme) == .orderedSame }
    }

    /// The token of the first `scheme` challenge that has one.
    package func token(_ scheme: String) -> String? {
        challenges.first { $0.scheme.caseInsensitiveCompare(scheme) == .orderedSame && $0.rest != nil }?.rest
    }

    /// The Windows scheme to speak NTLM in: `NTLM` when offered, else `Negotiate` (Windows takes
    /// a raw NTLM token in Negotiate). nil when neither is offered.
    package var windowsScheme: String? {
        if offers("NTLM") { return "NTLM" }
        if offers("Negotiate") { return "Negotiate" }
        return nil
    }
}

/// A FIFO gate for async code: one holder at a time, waiters resumed in order.
final class AsyncGate: Sendable {
    private struct State {
        var busy = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = NIOLockedValueBox(State())

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLockedValue { s -> Bool in
                if !s.busy {
                    s.busy = true
                    return true
                }
                s.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty {
                s.busy = false
                return nil
            }
            return s.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// NTLM over HTTP (MS-NLMP in `WWW-Authenticate: NTLM` or `Negotiate`) for EWS on-premises.
///
/// NTLM authenticates a connection, not a request, so its requests go through an HTTP client of
/// their own whose pool holds one HTTP/1.1 connection to the server, kept alive, and one request
/// at a time (a FIFO gate): NEGOTIATE (empty body) → 401 with the CHALLENGE → AUTHENTICATE with
/// the real request on the same connection. Later requests go without `Authorization` on the
/// authenticated connection; a 401 to one (the server or the pool replaced the connection) or a
/// connection idle longer than the pool keeps it (60 s) runs the handshake again.
///
/// Over TLS only: an `http://` URL is refused before any NTLM message is sent.
/// Neither the password, nor the NT hash, nor a message is ever logged or put into an error.
package final class NTLMHTTPAuthenticator: Sendable {
    struct State {
        var client: HTTPClient?
        var scheme: String?
        var offered: [String] = []
        var authenticated = false
        var lastUsed: ContinuousClock.Instant?
        var handshakes = 0
        var closed = false
    }

    let credentials: NTLM.Credentials
    let url: String
    let spn: String?
    let caFile: String?
    let connectTimeout: Duration
    let protocolTimeout: Duration
    let idleTimeout: Duration = .seconds(60)
    let state = NIOLockedValueBox(State())
    let gate = AsyncGate()

    package init(
        userName: String, password: Secret, url: String, caFile: String?, connectTimeout: Duration, protocolTimeout: Duration,
        scheme: String? = nil
    ) {
        credentials = NTLM.Credentials(userName: userName, password: password)
        self.url = url
        spn = URL(string: url)?.host.map { "HTTP/\($0)" }
        self.caFile = caFile
        self.connectTimeout = connectTimeout
        self.protocolTimeout = protocolTimeout
        state.withLockedValue { $0.scheme = scheme }
    }

    /// Whether the URL is `https://`: NTLM is refused over plain HTTP.
    package var overTLS: Bool { url.lowercased().hasPrefix("https://") }

    /// The scheme NTLM is spoken in (`NTLM` or `Negotiate`); nil while Basic is in use.
    package var scheme: String? { state.withLockedValue { $0.scheme } }

    /// The schemes the server offered in its last 401.
    package var offered: [String] { state.withLockedValue { $0.offered } }

    /// How many NTLM handshakes ran (tests and `outbox probe`).
    package var handshakes: Int { state.withLockedValue { $0.handshakes } }

    /// The error for NTLM over plain HTTP.
    func plainHTTPRefusal(_ transport: String) -> DeliveryError {
        DeliveryError(
            kind: .transient,
            message:
                "\(transport): \(url) offers only Windows authentication (NTLM/Negotiate), which Outbox speaks over https only: use the server's https:// EWS URL",
            routeFault: .configuration
        )
    }

    /// Records the schemes of a 401. When it offers NTLM or Negotiate and not Basic, switches to
    /// NTLM and returns true (the caller sends again); throws when that would be over plain HTTP.
    package func adopt(_ offers: HTTPAuthenticateOffers, transport: String) throws(DeliveryError) -> Bool {
        state.withLockedValue { $0.offered = offers.schemes }
        guard let windows = offers.windowsScheme, !offers.offers("Basic") else { return false }
        guard overTLS else { throw plainHTTPRefusal(transport) }
        state.withLockedValue { $0.scheme = windows }
        return true
    }

    func client() throws(DeliveryError) -> HTTPClient {
        let made = state.withLockedValue { s -> HTTPClient? in
            if s.closed { return nil }
            if let c = s.client { return c }
            let timeout = HTTPClient.Configuration.Timeout(
                connect: OutboxHTTP.timeAmount(connectTimeout), read: OutboxHTTP.timeAmount(protocolTimeout))
            var configuration = HTTPClient.Configuration(
                tlsConfiguration: OutboxHTTP.tlsConfiguration(caFile: caFile),
                redirectConfiguration: .disallow,
                timeout: timeout,
                connectionPool: .init(idleTimeout: OutboxHTTP.timeAmount(idleTimeout), concurrentHTTP1ConnectionsPerHostSoftLimit: 1),
                proxy: nil,
                ignoreUncleanSSLShutdown: false,
                decompression: .disabled)
            configuration.httpVersion = .http1Only
            let c = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
            s.client = c
            return c
        }
        guard let made else { throw DeliveryError(kind: .transient, message: "ews: the transport is shut down") }
        return made
    }

    /// Sends `request` (built without `Authorization`; `body` makes its body, once per send)
    /// on the NTLM-authenticated connection, running the handshake first when needed.
    func exchange(
        _ request: HTTPClientRequest, body: () -> HTTPRequestBody, timeout: Duration, bodyLimit: Int, debug: HTTPDebugLog? = nil,
        transport: String
    ) async throws(DeliveryError) -> HTTPAnswer {
        guard overTLS else { throw plainHTTPRefusal(transport) }
        let client = try client()
        await gate.acquire()
        defer { gate.release() }
        let (scheme, fresh) = state.withLockedValue { s -> (String, Bool) in
            let fresh = s.authenticated && s.lastUsed.map { ContinuousClock.now - $0 < idleTimeout * 0.9 } == true
            return (s.scheme ?? "NTLM", fresh)
        }
        if fresh {
            let answer = try await HTTPAnswer.exchange(
                request, body: body(), client: client, timeout: timeout, bodyLimit: bodyLimit, debug: debug, transport: transport, url: url)
            if answer.status != 401 {
                state.withLockedValue { $0.lastUsed = .now }
                return answer
            }
            state.withLockedValue { $0.authenticated = false }
        }
        return try await handshake(
            request, body: body, scheme: scheme, client: client, timeout: timeout, bodyLimit: bodyLimit, debug: debug, transport: transport)
    }

    func handshake(
        _ request: HTTPClientRequest, body: () -> HTTPRequestBody, scheme: String, client: HTTPClient, timeout: Duration, bodyLimit: Int,
        debug: HTTPDebugLog? = nil, transport: String
    ) async throws(DeliveryError) -> HTTPAnswer {
        state.withLockedValue { $0.handshakes += 1 }
        let negotiate = NTLM.negotiateMessage()
        var first = request
        first.headers.remove(name: "Content-Length")
        first.headers.remove(name: "Transfer-Encoding")
        first.headers.replaceOrAdd(name: "Authorization", value: "\(scheme) \(Data(negotiate).base64EncodedString())")
        let answer = try await HTTPAnswer.exchange(
            first, body: .bytes(ByteBuffer()), client: client, timeout: timeout, bodyLimit: bodyLimit, debug: debug, transport: transport,
            url: url)
        guard answer.status == 401 else {
            throw DeliveryError(
                kind: .transient,
                message: "\(transport): \(url) answered HTTP \(answer.status) to NTLM's NEGOTIATE message instead of a challenge",
                routeFault: .protocolViolation)
        }
        let offers = HTTPAuthenticateOffers(headers: answer.authenticate)
        guard let token = offers.token(scheme), let bytes = Data(base64Encoded: token) else {
            throw DeliveryError(
                kind: .transient,
                message:
                    "\(transport): \(url) answered NTLM's NEGOTIATE message with 401 but no \(scheme) challenge (offered: \(offers.schemes.joined(separator: ", ")))",
                routeFault: .protocolViolation
            )
        }
        let authenticate: [UInt8]
        do throws(NTLMError) {
            let challenge = try NTLM.Challenge(Array(bytes))
            var random = SystemRandomNumberGenerator()
            let clientChallenge = (0..<8).map { _ in UInt8.random(in: 0...255, using: &random) }
            authenticate = try NTLM.authenticateMessage(
                negotiate: negotiate, challenge: challenge, credentials: credentials, spn: spn, clientChallenge: clientChallenge)
        } catch {
            throw DeliveryError(
                kind: .transient, message: "\(transport): NTLM with \(url) failed: \(error.description)", routeFault: .protocolViolation)
        }
        var third = request
        third.headers.replaceOrAdd(name: "Authorization", value: "\(scheme) \(Data(authenticate).base64EncodedString())")
        let final = try await HTTPAnswer.exchange(
            third, body: body(), client: client, timeout: timeout, bodyLimit: bodyLimit, debug: debug, transport: transport, url: url)
        if final.status == 401 {
            state.withLockedValue { $0.authenticated = false }
            throw DeliveryError(
                kind: .transient,
                message:
                    "\(transport): \(url) refused the NTLM credentials (401): check user (DOMAIN\\user or user@domain) and password",
                routeFault: .authenticationFailed
            )
        }
        state.withLockedValue {
            $0.authenticated = true
            $0.lastUsed = .now
        }
        return final
    }

    /// Shuts the dedicated HTTP client down.
    package func shutdown() async {
        let client = state.withLockedValue { s -> HTTPClient? in
            s.closed = true
            defer { s.client = nil }
            return s.client
        }
        try? await client?.shutdown()
    }
}

extension NTLMHTTPAuthenticator {
    /// From the options: `mail.ews.auth.mechanisms` NTLM (or NEGOTIATE) speaks NTLM from the
    /// first request; otherwise Basic goes first and NTLM takes over when a 401 offers it and
    /// not Basic. Throws when NTLM is asked for over plain HTTP.
    convenience init(options: SMTPClientOptions, settings: OutboxSettings, url: String) throws(DeliveryError) {
        let mechanisms = options.ewsAuthMechanisms ?? []
        let scheme: String? = mechanisms.contains("NTLM") ? "NTLM" : (mechanisms.contains("NEGOTIATE") ? "Negotiate" : nil)
        let forever: Duration = .seconds(365 * 24 * 3600)
        self.init(
            userName: options.user ?? "", password: options.password ?? Secret(""), url: url, caFile: settings.tlsCAFile,
            connectTimeout: options.connectTimeout == .zero ? forever : options.connectTimeout,
            protocolTimeout: options.protocolTimeout == .zero ? forever : options.protocolTimeout, scheme: scheme)
        if scheme != nil, !overTLS {
            throw DeliveryError(
                kind: .transient,
                message: "ews: mail.ews.auth.mechanisms = NTLM needs the https:// EWS URL (NTLM over plain http is refused); server is \(url)",
                routeFault: .configuration)
        }
    }
}
