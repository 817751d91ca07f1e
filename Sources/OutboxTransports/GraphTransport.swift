import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import OutboxConfig
import OutboxMIME
import OutboxOAuth

/// Microsoft Graph `sendMail` with the MIME message (PROTOCOLS.md §4), or a draft when the
/// message needs one.
///
/// `POST {graph-url}/users/{user}/sendMail`, `Content-Type: text/plain`, the RFC 5322 message
/// base64-encoded; 202 means accepted. The token comes from the client-credentials grant (or
/// the one `grant-type` names) through the shared `TokenCache`; a 401 refreshes it once and
/// sends once more.
///
/// Decisions:
/// - **Exact recipients**: the addresses that receive the message are exactly the envelope
///   recipients (`RecipientPlan`), whatever the MIME's To, Cc and Bcc say; Graph, like
///   Exchange, takes the recipients of a MIME message from its headers.
///   - The common case, every To and Cc address in the envelope and no Bcc field, stays one
///     `sendMail` request: the envelope recipients that are in neither To nor Cc (SMTP Bcc)
///     are added as a `Bcc:` line at the top of the MIME sent to Graph (Exchange takes Bcc
///     recipients from it and does not show it to the other recipients).
///   - Otherwise (a header recipient outside the envelope, as when a client such as Postfix
///     splits one message into several transactions above its recipient limit; a Bcc field in
///     a relayed message; an address field that cannot be parsed): a draft from the MIME
///     (`POST /users/{user}/messages`, text/plain base64, 201 with `id`), `PATCH` of its
///     `toRecipients` = To ∩ envelope, `ccRecipients` = Cc ∩ envelope, `bccRecipients` = the
///     other envelope recipients (display names kept from the header), then
///     `POST .../messages/{id}/send` (202). See `GraphLargeMessage.swift` for the sources.
///   - So the To and Cc that the recipients see shrink to the recipients of this transaction:
///     Graph delivers to every listed recipient, so a header recipient who must not receive
///     this copy cannot stay listed; there is no other way with Graph. Envelope-only
///     recipients are only ever Bcc, never in the visible To or Cc.
/// - **allow-delegate**: the message's From (its MIME From header) is compared with `user`
///   (case-insensitive, only when `user` is an address). When it differs and `allow-delegate`
///   is true, the message is sent from `user`'s mailbox with its own From, which Graph takes as
///   the message's `from` (Send As / Send on Behalf, decided by Exchange; 403 ErrorSendAsDenied
///   when `user` has neither right). When `allow-delegate` is false it is refused before any
///   request, with a permanent error that names the option.
/// - **Size**: the request may be at most 4 MiB, so the MIME may be at most 3 MiB (base64 adds
///   a third). A larger message, whether built from parts (`Message`) or raw (relayed, .eml),
///   is serialised to MIME, read as a stream and split (`MIMEPartSplitter`): its large
///   attachment parts are decoded into temporary files, the rest becomes a MIME draft (so
///   every header, Message-ID, In-Reply-To, References and custom fields, and both
///   alternatives of a text + HTML body stay as they are), the recipients are set by PATCH,
///   each part is added (upload session from 3 MB, with its Content-ID and inline flag), then
///   the draft is sent. Memory holds the draft (at most
///   3 MiB) and one line, never the whole message. A message that cannot be split so that the
///   draft fits (a single-part body over 3 MiB, or text bodies over it) gets a permanent error
///   that says to use server-type = SMTP or EWS. Such a message reaches its recipients with
///   Exchange's rebuilt MIME structure (the attachments re-attached), not byte for byte.
/// Graph needs `Mail.Send` for sendMail and also `Mail.ReadWrite` for the draft ways.
public final class GraphTransport: MailTransport {
    /// `graph`.
    public let name = "graph"
    /// Graph takes messages up to 150 MB (PROTOCOLS.md §4 "Size limits"): the relay's SIZE.
    public var messageSizeLimit: Int? { 150 * 1024 * 1024 }
    /// Graph's request limit (4 MiB) and the raw MIME that fits in it.
    public static let maxRequestBytes = 4 * 1024 * 1024
    /// The largest raw MIME that fits in one request once base64-encoded (3 MiB).
    public static let maxMIMEBytes = maxRequestBytes / 4 * 3

    let client: HTTPClient
    let tokens: CachedTokenSource
    let graphURL: String
    let user: String
    let allowDelegate: Bool
    /// Who a message is sent as (`allow-delegate`, `send-as`, the route's name for refusals).
    let policy: SendAsPolicy
    let requestTimeout: Duration
    let logger: Logger
    /// `enable-debug`: each HTTP exchange is logged (``HTTPDebugLog``).
    let debug: HTTPDebugLog?

    package init(
        options: SMTPClientOptions, settings: OutboxSettings, tokens: CachedTokenSource, client: HTTPClient,
        logger: Logger = Logger(label: "outbox.graph"), route: String = "default"
    ) {
        self.policy = SendAsPolicy(route: route, options: options)
        self.client = client
        self.tokens = tokens
        var base = settings.graphURL
        while base.hasSuffix("/") { base.removeLast() }
        self.graphURL = base
        self.user = options.user ?? ""
        self.allowDelegate = options.allowDelegate
        let connect = options.connectTimeout == .zero ? Duration.seconds(365 * 24 * 3600) : options.connectTimeout
        let read = options.protocolTimeout == .zero ? Duration.seconds(365 * 24 * 3600) : options.protocolTimeout
        self.requestTimeout = connect + read * 4
        self.logger = logger
        self.debug =
            options.enableDebug ? HTTPDebugLog(logger: logger, component: "graph", secrets: [options.password?.value ?? ""]) : nil
    }

    /// The same transport sending from `mailbox` (a `send-as` address): it shares the HTTP
    /// client and the token cache (the application permission covers the tenant's mailboxes).
    private init(copying other: GraphTransport, mailbox: String) {
        client = other.client
        tokens = other.tokens
        graphURL = other.graphURL
        user = mailbox
        allowDelegate = other.allowDelegate
        policy = SendAsPolicy(route: other.policy.route, user: mailbox, allowDelegate: false, sendAs: nil)
        requestTimeout = other.requestTimeout
        logger = other.logger
        debug = other.debug
    }

    /// Builds the HTTP client and token source from the configuration.
    package convenience init(
        configuration: OutboxConfiguration, tokenCache: TokenCache<ContinuousClock>,
        logger: Logger = Logger(label: "outbox.graph"), route: String = "default"
    ) throws(OAuthError) {
        let options = configuration.smtpClient
        let client = OutboxHTTP.makeClient(options: options, settings: configuration.outbox)
        let provider: any TokenProvider
        do {
            provider = try OAuthProviders.make(
                options: options, secretSection: configuration.chosenSecretSection,
                settings: configuration.outbox, client: client, logger: logger)
        } catch {
            try? client.syncShutdown()
            throw error
        }
        self.init(
            options: options, settings: configuration.outbox,
            tokens: CachedTokenSource(provider: provider, cache: tokenCache), client: client, logger: logger, route: route)
    }

    /// Returns at once: Graph requests need no background work.
    public func run() async {}

    /// Shuts the HTTP client down.
    public func shutdown() async {
        try? await client.shutdown()
    }

    var sendMailURL: String { "\(graphURL)/users/\(Self.pathSegment(user))/sendMail" }

    static func pathSegment(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~@!$&'()*+,;=")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// Sends through Microsoft Graph (`sendMail`, or a draft for a large message); see the type's
    /// documentation for the ways, the errors and the limits.
    public func send(_ content: any MailContent, envelope given: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        let started = Date()
        let clock = ContinuousClock.now
        guard !user.isEmpty else {
            throw DeliveryError(
                kind: .transient, message: "graph: user is not set: it names the mailbox that sends (/users/{user}/sendMail)",
                routeFault: .configuration)
        }
        let envelope: Envelope
        do throws(MIMEError) {
            if let given { envelope = given } else { envelope = try content.envelope() }
        } catch {
            throw DeliveryError(kind: .permanent, message: "graph: the message's envelope is invalid: \(error.message)")
        }
        // Exchange Online takes UTF-8 headers (RFC 6532) in MIME; 8-bit bodies are kept as is.
        let options = MIMEEncodingOptions(allow8BitMIME: true, smtpUTF8: content.requiresSMTPUTF8)
        // Read up to the request limit; a larger message goes on from `stream` in sendSplit.
        var stream = content.byteStream(options: options).makeAsyncIterator()
        var mime: [UInt8] = []
        var complete = false
        do {
            while true {
                guard let chunk = try await stream.next() else {
                    complete = true
                    break
                }
                mime += chunk.readableBytesView
                if mime.count > Self.maxMIMEBytes { break }
            }
        } catch {
            throw DeliveryError(http: error, transport: name, url: sendMailURL)
        }
        let headerEnd = MIMEHead.headerEnd(mime) ?? mime.count
        let addresses = MIMEHeaderAddresses(header: Array(mime[..<headerEnd]))
        let from = addresses.from.first ?? envelope.from
        switch try policy.decide(from: from, component: "graph") {
        case .sendAs(let mailbox):
            // As that mailbox: /users/{from}/sendMail (or its drafts), with the same token.
            return try await GraphTransport(copying: self, mailbox: mailbox).send(content, envelope: given)
        case .onBehalf:
            // From the user's mailbox on behalf of From: the Sender header names the user.
            let header = String(decoding: mime[..<headerEnd], as: UTF8.self).lowercased()
            if !header.hasPrefix("sender:") && !header.contains("\nsender:") {
                mime = Array("Sender: \(user)\r\n".utf8) + mime
            }
        case .own, .delegate:
            break
        }
        let plan = RecipientPlan(header: addresses, envelope: envelope)
        guard complete else {
            // Over the request limit, built from parts or raw: the MIME itself goes on, split.
            return try await sendSplit(
                head: &mime, rest: &stream, plan: plan, from: from, content: content, envelope: envelope,
                started: started, clock: clock)
        }
        if !plan.headersMatch {
            // The headers name somebody the envelope does not (or a Bcc field): one sendMail
            // would deliver to them, so draft, set the recipients, send.
            return try await sendMIMEDraft(
                mime, plan: plan, attachments: [], from: from, content: content, envelope: envelope,
                way: "exact recipients", started: started, clock: clock)
        }
        // The common case, one request: the envelope-only recipients go in a Bcc line on top
        // (Exchange takes Bcc recipients from it and does not show it to the others).
        let bccLine = plan.bcc.isEmpty ? [] : Array("Bcc: \(plan.bcc.map(\.address).joined(separator: ", "))\r\n".utf8)
        guard mime.count + bccLine.count <= Self.maxMIMEBytes else {
            // Only the Bcc line makes it too large: the draft way sets Bcc by PATCH instead.
            return try await sendMIMEDraft(
                mime, plan: plan, attachments: [], from: from, content: content, envelope: envelope,
                way: "exact recipients", started: started, clock: clock)
        }
        mime = bccLine + mime
        let body = ByteBuffer(string: Data(mime).base64EncodedString())
        var attempts = 0
        var refreshed = false
        while true {
            attempts += 1
            let token: AccessToken
            do throws(OAuthError) {
                token = try await tokens.token()
            } catch {
                throw DeliveryError(error, transport: name)
            }
            var request = HTTPClientRequest(url: sendMailURL)
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(token.value.value)")
            request.headers.add(name: "Content-Type", value: "text/plain")
            let answer = try await HTTPAnswer.exchange(
                request, body: .bytes(body), client: client, timeout: requestTimeout, bodyLimit: 1 << 20,
                debug: debug, transport: name, url: sendMailURL)
            let status = answer.status
            if status == 202 || status == 200 {
                logger.debug("graph accepted the message", metadata: ["graph.status": "\(status)", "graph.user": "\(user)"])
                return HTTPTransportReport.accepted(
                    transport: name, destination: sendMailURL, content: content, envelope: envelope,
                    code: status, text: "Accepted by Microsoft Graph", started: started,
                    clock: clock, attempts: attempts)
            }
            if status == 401 && !refreshed {
                refreshed = true
                logger.notice("graph refused the access token (401); refreshing it once and sending again")
                await tokens.invalidate(token)
                continue
            }
            throw Self.error(status: status, body: answer.body, retryAfter: answer.retryAfter, user: user, from: from)
        }
    }

    /// Graph's error body `{"error":{"code","message"}}`, mapped (PROTOCOLS.md §4).
    static func error(status: Int, body: ByteBuffer, retryAfter: String?, user: String, from: String) -> DeliveryError {
        let json = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any]
        let error = json?["error"] as? [String: Any]
        let code = error?["code"] as? String ?? "HTTP \(status)"
        let message = (error?["message"] as? String).map { String($0.prefix(500)) } ?? String(buffer: body).prefix(300).description
        let said = "Graph answered \(status) \(code): \(message)"
        switch status {
        case 429, 503, 504:
            let after = HTTPTransportReport.retryAfter(retryAfter)
            // 429, or 503 with Retry-After: Graph throttles the route (it pauses).
            return DeliveryError(
                kind: .transient, message: "graph: \(said) (retry\(after.map { " after \($0.seconds) s" } ?? " later"))",
                retryAfter: after, routeFault: Throttling.isThrottling(httpStatus: status, retryAfter: after) ? .throttled : nil)
        case 401:
            return DeliveryError(
                kind: .transient,
                message:
                    "graph: \(said); a new token was refused too: check scope (https://graph.microsoft.com/.default), client-id and directory-id",
                routeFault: .authenticationFailed)
        case 403 where code == "ErrorSendAsDenied":
            return DeliveryError(
                kind: .permanent,
                message:
                    "graph: \(said). The mailbox \(user) lacks the Send As or Send on Behalf permission on \(from): grant it in Exchange (Add-RecipientPermission / GrantSendOnBehalfTo), or send from \(user)"
            )
        case 403:
            return DeliveryError(
                kind: .transient,
                message:
                    "graph: \(said). The application needs the Mail.Send application permission with admin consent, and no application access policy may exclude \(user)",
                routeFault: .configuration
            )
        case 404:
            return DeliveryError(
                kind: .transient, message: "graph: \(said). Check user: no mailbox \(user) in the tenant", routeFault: .configuration)
        case 413:
            return DeliveryError(kind: .permanent, message: "graph: \(said). The message is over Graph's 4 MB request limit")
        case 400..<500:
            return DeliveryError(kind: .permanent, message: "graph: \(said)")
        default:
            return DeliveryError(kind: .transient, message: "graph: \(said)", retryAfter: HTTPTransportReport.retryAfter(retryAfter))
        }
    }
}
