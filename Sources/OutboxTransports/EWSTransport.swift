import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import OutboxConfig
import OutboxMIME
import OutboxOAuth

/// EWS `CreateItem` with `MessageDisposition="SendAndSaveCopy"` and the message as
/// `t:MimeContent` (PROTOCOLS.md §3), posted to the URL in `server`.
///
/// The SOAP body is streamed: the envelope's head, the message base64-encoded chunk by chunk as
/// it is serialised, then the tail. Its length is known before it is sent (the head, the
/// base64 length of the MIME's size, the tail; the size is the message's known byte count, or
/// counted by serialising it once without keeping it), so the request carries
/// `Content-Length` and is never chunked (front ends of on-premises Exchange answer 411 to a
/// chunked body).
///
/// Decisions:
/// - **exchange-version → RequestServerVersion** (`requestServerVersion(_:)`): the documented
///   values and `Exchange2016`/`Exchange2019` as given; `Exchange2010_SP3` → `Exchange2010_SP2`
///   (SP2 covers SP3); `Office365` → `Exchange2013_SP1` (a documented value Exchange Online
///   accepts, and CreateItem with MimeContent needs nothing newer); empty → `Exchange2016` (the
///   option reference: "for Exchange 2019, leave this option empty or set it to Exchange2016").
///   Values are matched without regard to case; any other value is sent as it is when it is
///   made of letters, digits and `_` (the server answers ErrorInvalidServerVersion if it does
///   not know it), else `Exchange2010`.
/// - **Authentication** (`enable-authentication = true`): Basic `user:password`; NTLMv2
///   (``NTLMHTTPAuthenticator``) when a 401 offers NTLM or Negotiate but not Basic, or from the
///   start with `mail.ews.auth.mechanisms = NTLM`, over https only; or, with
///   `mail.ews.auth.mechanisms = XOAUTH2`, `Bearer <token>` with `X-AnchorMailbox: <user>`;
///   with an app-only token (client credentials) the request also impersonates `user`
///   (`ExchangeImpersonation`). With `enable-authentication = false` no credentials are sent
///   (no `Authorization` header, no token request, no NTLM), as the option reference says; a
///   server that wants them answers 401, reported as such.
/// - **allow-delegate**: as under Graph, the message's From (its MIME From header) is compared
///   with `user` (case-insensitive, only when authenticating and `user` is an address). When it
///   differs and `allow-delegate` is false, the message is refused before any request, with a
///   permanent error that names the option. When it is true, the item names that mailbox in
///   `t:From` (after `t:BccRecipients`, as `types.xsd` orders a `t:Message`, and as
///   exchangelib's `author` field writes `message:From`), and Exchange sends it as that mailbox
///   (Send As) or on its behalf (Send on Behalf: Exchange sets `t:Sender` to `user`, which is
///   read-only for clients); a copy goes to `user`'s Sent Items. ErrorSendAsDenied when `user`
///   has neither right.
/// - **Exact recipients**: the addresses that receive the message are exactly the envelope
///   recipients (`RecipientPlan`), whatever the MIME's To, Cc and Bcc say (Exchange takes
///   the recipients of MimeContent from its headers).
///   - The common case, every To and Cc address in the envelope and no Bcc field, stays one
///     CreateItem (SendAndSaveCopy): the envelope recipients that are in neither To nor Cc
///     (SMTP Bcc) are sent as `t:BccRecipients` after `t:MimeContent`.
///   - Otherwise (a header recipient outside the envelope, as when a client splits one message
///     into several transactions; a Bcc field in a relayed message; an address field that
///     cannot be parsed): CreateItem with `MessageDisposition="SaveOnly"` saves the MIME as a
///     draft in Drafts (the answer carries its `t:ItemId`), then one UpdateItem with
///     `MessageDisposition="SendAndSaveCopy"` (copy in Sent Items) sets `message:ToRecipients`
///     = To ∩ envelope, `message:CcRecipients` = Cc ∩ envelope, `message:BccRecipients` = the
///     other envelope recipients (`SetItemField`, display names kept; `DeleteItemField` for an
///     empty one) and sends it. Sources: office-developer-exchange-docs
///     `web-service-reference/createitem.md` (SaveOnly), `updateitem.md` (MessageDisposition
///     SendAndSaveCopy: "the item is updated and a copy is saved"; SendOnly: "updated and
///     sent"), `updateitem-operation.md` (SetItemField, DeleteItemField, "applied in the order
///     in which they are specified"), `fielduri.md` (message:ToRecipients ...). Two requests
///     instead of CreateItem + UpdateItem + SendItem. A failure of the UpdateItem leaves the
///     draft in Drafts.
///   - So the To and Cc that the recipients see shrink to the recipients of this transaction:
///     Exchange delivers to every listed recipient, so there is no other way. Envelope-only
///     recipients are only ever Bcc.
/// - **Errors**: ResponseClass Error with a throttling or server-side code (ErrorServerBusy,
///   ErrorInternalServerError, ...) is transient, any other code permanent; a SOAP fault with
///   ErrorServerBusy carries `BackOffMilliseconds` as ``DeliveryError/retryAfter``; 401 with a
///   token refreshes it once and sends once more.
public final class EWSTransport: MailTransport {
    /// `ews`.
    public let name = "ews"

    enum Auth: Sendable {
        /// `enable-authentication = false`: no credentials.
        case anonymous
        case basic(user: String, password: Secret)
        case bearer(CachedTokenSource, anchorMailbox: String, impersonate: Bool)
    }

    let client: HTTPClient
    let url: String
    let version: String
    let auth: Auth
    let requestTimeout: Duration
    let logger: Logger
    /// The mailbox `user` names when it is an address and credentials are sent: a message from
    /// another address is sent as or on behalf of that one (``allowDelegate``).
    let mailbox: String?
    let allowDelegate: Bool
    /// Who a message is sent as (`allow-delegate`, `send-as`, the route's name for refusals).
    let policy: SendAsPolicy
    /// `enable-debug`: each HTTP exchange is logged (``HTTPDebugLog``).
    let debug: HTTPDebugLog?
    /// NTLM for the password case (nil with tokens): in use once its scheme is set.
    let windows: NTLMHTTPAuthenticator?

    init(
        url: String, version: String, auth: Auth, client: HTTPClient, requestTimeout: Duration, logger: Logger,
        windows: NTLMHTTPAuthenticator? = nil, mailbox: String? = nil, allowDelegate: Bool = false, debug: HTTPDebugLog? = nil,
        policy: SendAsPolicy? = nil
    ) {
        self.policy = policy ?? SendAsPolicy(route: "default", user: mailbox ?? "", allowDelegate: allowDelegate, sendAs: nil)
        self.windows = windows
        self.url = url
        self.version = version
        self.auth = auth
        self.client = client
        self.requestTimeout = requestTimeout
        self.logger = logger
        self.mailbox = mailbox
        self.allowDelegate = allowDelegate
        self.debug = debug
    }

    /// Builds the HTTP client, and the token source when `mail.ews.auth.mechanisms` is XOAUTH2.
    package convenience init(
        configuration: OutboxConfiguration, tokenCache: TokenCache<ContinuousClock>,
        logger: Logger = Logger(label: "outbox.ews"), route: String = "default"
    ) throws(DeliveryError) {
        let options = configuration.smtpClient
        guard let server = options.server, server.lowercased().hasPrefix("https://") || server.lowercased().hasPrefix("http://") else {
            throw DeliveryError(
                kind: .transient,
                message:
                    "ews: server must be the EWS URL, e.g. https://outlook.office365.com/EWS/Exchange.asmx (it is \(options.server ?? "not set"))",
                routeFault: .configuration)
        }
        let user = options.user ?? ""
        let client = OutboxHTTP.makeClient(options: options, settings: configuration.outbox)
        let auth: Auth
        var windows: NTLMHTTPAuthenticator?
        if !options.enableAuthentication {
            auth = .anonymous
        } else if options.usesXOAUTH2 {
            do throws(OAuthError) {
                let provider = try OAuthProviders.make(
                    options: options, secretSection: configuration.chosenSecretSection,
                    settings: configuration.outbox, client: client, logger: logger)
                auth = .bearer(
                    CachedTokenSource(provider: provider, cache: tokenCache), anchorMailbox: user,
                    impersonate: !options.isGoogle && options.effectiveGrantType == .clientCredentials)
            } catch {
                try? client.syncShutdown()
                throw DeliveryError(error, transport: "ews")
            }
        } else {
            auth = .basic(user: user, password: options.password ?? Secret(""))
            do throws(DeliveryError) {
                windows = try NTLMHTTPAuthenticator(options: options, settings: configuration.outbox, url: server)
            } catch {
                try? client.syncShutdown()
                throw error
            }
        }
        let connect = options.connectTimeout == .zero ? Duration.seconds(365 * 24 * 3600) : options.connectTimeout
        let read = options.protocolTimeout == .zero ? Duration.seconds(365 * 24 * 3600) : options.protocolTimeout
        self.init(
            url: server, version: Self.requestServerVersion(options.exchangeVersion), auth: auth, client: client,
            requestTimeout: connect + read * 20, logger: logger, windows: windows,
            mailbox: options.enableAuthentication && user.contains("@") ? user : nil, allowDelegate: options.allowDelegate,
            debug: options.enableDebug
                ? HTTPDebugLog(logger: logger, component: "ews", secrets: [options.password?.value ?? ""]) : nil,
            policy: SendAsPolicy(route: route, options: options))
    }

    static let documentedVersions = [
        "Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1", "Exchange2010_SP2",
        "Exchange2013", "Exchange2013_SP1", "Exchange2016", "Exchange2019",
    ]

    /// `exchange-version` → `RequestServerVersion/@Version` (see the type's documentation).
    package static func requestServerVersion(_ option: String?) -> String {
        guard let raw = option?.trimmingCharacters(in: .whitespaces), !raw.isEmpty else { return "Exchange2016" }
        switch raw.lowercased() {
        case "exchange2010_sp3": return "Exchange2010_SP2"
        case "office365": return "Exchange2013_SP1"
        default: break
        }
        if let known = documentedVersions.first(where: { $0.lowercased() == raw.lowercased() }) { return known }
        if raw.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) { return raw }
        return "Exchange2010"
    }

    /// Returns at once: EWS requests need no background work.
    public func run() async {}

    /// Shuts the HTTP client down.
    public func shutdown() async {
        await windows?.shutdown()
        try? await client.shutdown()
    }

    /// One EWS request with this transport's authentication; a 401 with a token refreshes it
    /// once and sends once more. `body` builds the request body for the impersonated mailbox.
    func post(operation: String, _ body: (_ impersonate: String?) -> HTTPRequestBody) async throws(DeliveryError) -> (EWSResponse, String, Int) {
        var attempts = 0
        var refreshed = false
        while true {
            attempts += 1
            var request = HTTPClientRequest(url: url)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "text/xml; charset=utf-8")
            var usedToken: AccessToken?
            var impersonate: String?
            switch auth {
            case .anonymous:
                break
            case .basic(let user, let password):
                if windows?.scheme != nil { break }  // NTLM: NTLMHTTPAuthenticator authenticates the connection
                let credentials = Data("\(user):\(password.value)".utf8).base64EncodedString()
                request.headers.add(name: "Authorization", value: "Basic \(credentials)")
            case .bearer(let tokens, let anchor, let appOnly):
                do throws(OAuthError) {
                    let token = try await tokens.token()
                    usedToken = token
                    request.headers.add(name: "Authorization", value: "Bearer \(token.value.value)")
                } catch {
                    throw DeliveryError(error, transport: name)
                }
                request.headers.add(name: "X-AnchorMailbox", value: anchor)
                if appOnly { impersonate = anchor }
            }
            let answer: HTTPAnswer
            if let windows, windows.scheme != nil {
                answer = try await windows.exchange(
                    request, body: { body(impersonate) }, timeout: requestTimeout, bodyLimit: 4 << 20, debug: debug, transport: name)
            } else {
                answer = try await HTTPAnswer.exchange(
                    request, body: body(impersonate), client: client, timeout: requestTimeout, bodyLimit: 4 << 20,
                    debug: debug, transport: name, url: url)
            }
            let status = answer.status
            if status == 401, case .basic = auth, let windows,
                try windows.adopt(HTTPAuthenticateOffers(headers: answer.authenticate), transport: name)
            {
                logger.notice("EWS offers Windows authentication, not Basic; using NTLM", metadata: ["scheme": "\(windows.scheme ?? "NTLM")"])
                continue
            }
            if status == 401 {
                if case .bearer(let tokens, _, _) = auth, let usedToken, !refreshed {
                    refreshed = true
                    logger.notice("EWS refused the access token (401); refreshing it once and sending again")
                    await tokens.invalidate(usedToken)
                    continue
                }
                if case .anonymous = auth {
                    throw DeliveryError(
                        kind: .transient,
                        message:
                            "ews: \(url) answered 401: it wants credentials, and enable-authentication = false sends none; set enable-authentication = true (with user and password)",
                        routeFault: .configuration
                    )
                }
                if case .basic = auth {
                    throw DeliveryError(
                        kind: .transient,
                        message: "ews: \(url) answered 401: check user and password (or set mail.ews.auth.mechanisms = XOAUTH2 for Exchange Online)",
                        routeFault: .authenticationFailed)
                }
                throw DeliveryError(
                    kind: .transient,
                    message:
                        "ews: \(url) answered 401 to a new token too: check scope (https://outlook.office365.com/.default), client-id and the app's EWS permission",
                    routeFault: .authenticationFailed
                )
            }
            let text = String(buffer: answer.body)
            return (EWSResponse(status: status, body: text, retryAfter: answer.retryAfter, operation: operation), text, attempts)
        }
    }

    /// Sends with EWS `CreateItem` (SendAndSaveCopy); see the type's documentation for the
    /// recipients and the errors.
    public func send(_ content: any MailContent, envelope given: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        let started = Date()
        let clock = ContinuousClock.now
        let envelope: Envelope
        do throws(MIMEError) {
            if let given { envelope = given } else { envelope = try content.envelope() }
        } catch {
            throw DeliveryError(kind: .permanent, message: "ews: the message's envelope is invalid: \(error.message)")
        }
        let options = MIMEEncodingOptions(allow8BitMIME: true, smtpUTF8: content.requiresSMTPUTF8)
        let plan: RecipientPlan
        let head: MIMEHeaderAddresses
        do {
            head = MIMEHeaderAddresses(header: try await MIMEHead.read(content, options: options))
            plan = RecipientPlan(header: head, envelope: envelope)
        } catch {
            throw DeliveryError(http: error, transport: name, url: url)
        }
        let sendAs = try delegation(header: head)
        let size = try await mimeSize(content, options: options)
        guard plan.headersMatch else {
            return try await sendExact(
                content, plan: plan, envelope: envelope, options: options, size: size, sendAs: sendAs, started: started, clock: clock)
        }
        let bcc = plan.bcc.map(\.address)
        let (outcome, _, attempts) = try await post(operation: "CreateItem") { impersonate in
            Self.mimeBody(
                content, options: options, size: size, head: soapHead(impersonate: impersonate), tail: Self.soapTail(bcc: bcc, from: sendAs))
        }
        switch outcome.result {
        case .success:
            return HTTPTransportReport.accepted(
                transport: name, destination: url, content: content, envelope: envelope,
                code: 200, text: "CreateItem \(outcome.responseCode ?? "NoError")",
                started: started, clock: clock, attempts: attempts)
        case .failure(let error):
            throw error
        }
    }

    /// The headers name somebody the envelope does not (or have a Bcc field): CreateItem saves
    /// the MIME as a draft, UpdateItem sets its recipients to exactly the envelope's and sends it.
    func sendExact(
        _ content: any MailContent, plan: RecipientPlan, envelope: Envelope, options: MIMEEncodingOptions, size: Int, sendAs: String?,
        started: Date, clock: ContinuousClock.Instant
    ) async throws(DeliveryError) -> DeliveryReport {
        let (created, createdBody, createAttempts) = try await post(operation: "CreateItem") { impersonate in
            Self.mimeBody(
                content, options: options, size: size, head: soapHead(impersonate: impersonate, draft: true),
                tail: Self.soapTail(bcc: [], from: sendAs))
        }
        if case .failure(let error) = created.result { throw error }
        guard let item = Self.itemID(in: createdBody) else {
            throw DeliveryError(kind: .permanent, message: "ews: CreateItem (SaveOnly) answered without the draft's ItemId; nothing was sent")
        }
        let (updated, _, updateAttempts) = try await post(operation: "UpdateItem") { impersonate in
            .bytes(ByteBuffer(string: updateAndSend(id: item.id, changeKey: item.changeKey, plan: plan, impersonate: impersonate)))
        }
        switch updated.result {
        case .success:
            return HTTPTransportReport.accepted(
                transport: name, destination: url, content: content, envelope: envelope,
                code: 200, text: "UpdateItem \(updated.responseCode ?? "NoError") (draft sent to the envelope's recipients)",
                started: started, clock: clock, attempts: max(createAttempts, updateAttempts))
        case .failure(let error):
            throw error
        }
    }
}

/// What an EWS answer means (PROTOCOLS.md §3: ResponseClass, ResponseCode, SOAP faults, throttling).
struct EWSResponse {
    enum Result {
        case success
        case failure(DeliveryError)
    }

    var result: Result
    var responseCode: String?

    /// Response codes that mean "try again later".
    static let transientCodes: Set<String> = [
        "ErrorServerBusy", "ErrorInternalServerError", "ErrorInternalServerTransientError", "ErrorTimeoutExpired",
        "ErrorExceededConnectionCount", "ErrorMailboxStoreUnavailable", "ErrorMailboxMoveInProgress", "ErrorConnectionFailed",
        "ErrorTooManyObjectsOpened", "ErrorBatchProcessingStopped", "ErrorExceededSubscriptionCount",
    ]

    /// EWS's throttling codes (``Throttling``): the route pauses for `BackOffMilliseconds`.
    static func throttles(_ code: String) -> Bool {
        code == "ErrorServerBusy" || code == "ErrorExceededConnectionCount" || code == "ErrorTooManyObjectsOpened"
    }

    static func first(_ tag: String, in body: String) -> String? {
        // `<m:Tag>`, `<Tag>` or `<e:Tag xmlns:e=...>`: the text up to the next '<'.
        guard let open = body.range(of: #"<([A-Za-z0-9]+:)?\#(tag)(\s[^>]*)?>"#, options: .regularExpression) else { return nil }
        let rest = body[open.upperBound...]
        return String(rest.prefix { $0 != "<" }).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func backOff(in body: String) -> Duration? {
        guard let r = body.range(of: #"Name="BackOffMilliseconds"[^>]*>\s*([0-9]+)"#, options: .regularExpression) else { return nil }
        let digits = body[r].reversed().prefix { $0.isNumber }.reversed()
        return Int64(String(digits)).map { .milliseconds($0) }
    }

    init(status: Int, body: String, retryAfter: String?, operation: String = "CreateItem") {
        let code = Self.first("ResponseCode", in: body)
        responseCode = code
        let text = Self.first("MessageText", in: body) ?? Self.first("faultstring", in: body)
        let faultcode = Self.first("faultcode", in: body)
        let backOff = Self.backOff(in: body)
        let describe = { (what: String) -> String in
            "ews: \(what)\(code.map { " \($0)" } ?? "")\(text.map { ": \($0.prefix(400))" } ?? "")"
        }
        if status == 503 || status == 429 {
            let after = HTTPTransportReport.retryAfter(retryAfter)
            result = .failure(
                DeliveryError(
                    kind: .transient, message: "ews: the server answered \(status) (requests queuing): retry later",
                    retryAfter: after ?? backOff,
                    routeFault: Throttling.isThrottling(httpStatus: status, retryAfter: after) || backOff != nil ? .throttled : nil))
            return
        }
        if let faultcode {
            let faultName = faultcode.split(separator: ":").last.map(String.init) ?? faultcode
            let name = code ?? faultName
            if Self.transientCodes.contains(name) || Self.transientCodes.contains(faultName) {
                result = .failure(
                    DeliveryError(
                        kind: .transient, message: describe("SOAP fault \(faultName);") + (backOff.map { " (back off \($0.seconds) s)" } ?? ""),
                        retryAfter: backOff, routeFault: Self.throttles(name) || Self.throttles(faultName) ? .throttled : nil))
            } else if faultName == "ErrorInvalidServerVersion" || name == "ErrorInvalidServerVersion" {
                result = .failure(
                    DeliveryError(
                        kind: .transient, message: describe("SOAP fault \(faultName);") + ". Check exchange-version", routeFault: .configuration))
            } else {
                result = .failure(
                    DeliveryError(
                        kind: status >= 500 && code == nil ? .transient : .permanent,
                        message: describe("SOAP fault \(faultName);")))
            }
            return
        }
        guard status == 200 else {
            result = .failure(
                DeliveryError(
                    kind: status >= 500 ? .transient : .permanent,
                    message: "ews: the server answered HTTP \(status)\(text.map { ": \($0)" } ?? "")",
                    retryAfter: HTTPTransportReport.retryAfter(retryAfter),
                    // Not the message's: a wrong URL (404, 405), a refused account (403).
                    routeFault: [403, 404, 405].contains(status) ? .configuration : nil))
            return
        }
        guard let classRange = body.range(of: #"ResponseClass="([A-Za-z]+)""#, options: .regularExpression) else {
            result = .failure(
                DeliveryError(kind: .outcomeUnknown, message: "ews: the answer has no \(operation)ResponseMessage; the message may have been sent"))
            return
        }
        let responseClass = body[classRange].dropFirst("ResponseClass=\"".count).dropLast()
        switch responseClass {
        case "Success", "Warning":
            result = .success
        default:
            let name = code ?? "unknown"
            if Self.transientCodes.contains(name) {
                result = .failure(
                    DeliveryError(
                        kind: .transient, message: describe("\(operation) failed:"), retryAfter: backOff,
                        routeFault: Self.throttles(name) ? .throttled : nil))
            } else if name == "ErrorSendAsDenied" {
                result = .failure(
                    DeliveryError(
                        kind: .permanent,
                        message: describe("\(operation) failed:")
                            + ". The account in user lacks the Send As right on the message's From mailbox: grant it in Exchange, or send from the user's own address"
                    ))
            } else {
                result = .failure(DeliveryError(kind: .permanent, message: describe("\(operation) failed:")))
            }
        }
    }
}
