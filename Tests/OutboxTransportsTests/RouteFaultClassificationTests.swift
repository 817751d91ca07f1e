import Foundation
import NIOCore
import OutboxSMTP
import Testing

@testable import OutboxOAuth
@testable import OutboxTransports

/// The queue's classification table: only the server's 5xx to MAIL, RCPT or the message (and
/// the message's own faults) is permanent; what an operator can fix is transient with a route
/// fault; a transaction's lost connection is transient with none; the provider's throttling is
/// transient with ``RouteFault/throttled``.
@Suite("Delivery error classification")
struct RouteFaultClassificationTests {
    struct Row: Sendable, CustomStringConvertible {
        var name: String
        var error: SMTPError
        var kind: DeliveryError.Kind
        var fault: RouteFault?
        var description: String { name }
    }

    static func reply(_ code: Int, _ stage: SMTPError.Stage) -> SMTPError {
        .reply(SMTPReply(code: code, lines: ["text"]), stage: stage)
    }

    static func enhanced(_ code: Int, _ enhanced: String, _ stage: SMTPError.Stage, _ text: String = "text") -> SMTPError {
        let parts = enhanced.split(separator: ".").compactMap { Int($0) }
        return .reply(
            SMTPReply(code: code, enhancedCode: EnhancedStatusCode(klass: parts[0], subject: parts[1], detail: parts[2]), lines: [text]),
            stage: stage)
    }

    static let rows: [Row] = [
        // The message's or the recipient's refusal: permanent, no alert.
        Row(name: "550 to RCPT", error: reply(550, .rcpt), kind: .permanent, fault: nil),
        Row(name: "553 to MAIL", error: reply(553, .mail), kind: .permanent, fault: nil),
        Row(name: "554 to the message", error: reply(554, .data), kind: .permanent, fault: nil),
        Row(name: "552 to the message", error: reply(552, .data), kind: .permanent, fault: nil),
        Row(
            name: "CR in an address", error: SMTPError(stage: .mail, code: .invalidArgument, message: "CR"), kind: .permanent,
            fault: nil),
        Row(
            name: "over the server's SIZE", error: SMTPError(stage: .mail, code: .unsupportedByServer, message: "SIZE"),
            kind: .permanent, fault: nil),
        // Transient for the message: no alert.
        Row(name: "451 to RCPT (greylisting)", error: reply(451, .rcpt), kind: .transient, fault: nil),
        Row(name: "452 to the message", error: reply(452, .data), kind: .transient, fault: nil),
        Row(name: "421 at greeting (connection limit)", error: reply(421, .greeting), kind: .transient, fault: nil),
        Row(name: "421 to MAIL", error: reply(421, .mail), kind: .transient, fault: nil),
        // The provider's throttling: transient, the route pauses.
        Row(name: "432 4.3.2 at the greeting", error: enhanced(432, "4.3.2", .greeting), kind: .transient, fault: .throttled),
        Row(name: "432 4.3.2 to the message", error: enhanced(432, "4.3.2", .data), kind: .transient, fault: .throttled),
        Row(name: "421 4.7.0 to MAIL", error: enhanced(421, "4.7.0", .mail), kind: .transient, fault: .throttled),
        Row(name: "421 4.7.28 to the message", error: enhanced(421, "4.7.28", .data), kind: .transient, fault: .throttled),
        Row(name: "454 4.7.0 to AUTH (too many logins)", error: enhanced(454, "4.7.0", .auth), kind: .transient, fault: .throttled),
        Row(name: "Gmail 550 5.4.5 daily limit", error: enhanced(550, "5.4.5", .mail), kind: .transient, fault: .throttled),
        Row(
            name: "Exchange 554 5.2.0 SubmissionQuotaExceeded",
            error: enhanced(554, "5.2.0", .data, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"), kind: .transient,
            fault: .throttled),
        Row(
            name: "554 5.2.0 send-as denied is the message's",
            error: enhanced(554, "5.2.0", .data, "STOREDRV.Submission.Exception:SendAsDeniedException"), kind: .permanent, fault: nil),
        Row(name: "452 4.5.3 to RCPT is not throttling", error: enhanced(452, "4.5.3", .rcpt), kind: .transient, fault: nil),
        Row(
            name: "connection closed during DATA", error: SMTPError(stage: .data, code: .connectionClosed, message: "closed"),
            kind: .transient, fault: nil),
        Row(name: "timeout during RCPT", error: SMTPError(stage: .rcpt, code: .timeout, message: "slow"), kind: .transient, fault: nil),
        Row(
            name: "lost after the final dot", error: SMTPError(stage: .data, code: .outcomeUnknown, message: "lost"),
            kind: .outcomeUnknown, fault: nil),
        // What an operator can fix: transient, with the route's alert.
        Row(name: "535 to AUTH", error: reply(535, .auth), kind: .transient, fault: .authenticationFailed),
        Row(name: "534 to AUTH", error: reply(534, .auth), kind: .transient, fault: .authenticationFailed),
        Row(name: "454 to AUTH", error: reply(454, .auth), kind: .transient, fault: .authenticationFailed),
        Row(name: "530 to MAIL (authentication required)", error: reply(530, .mail), kind: .transient, fault: .sessionRefused),
        Row(name: "554 greeting", error: reply(554, .greeting), kind: .transient, fault: .sessionRefused),
        Row(name: "550 to EHLO", error: reply(550, .ehlo), kind: .transient, fault: .sessionRefused),
        Row(name: "454 to STARTTLS", error: reply(454, .starttls), kind: .transient, fault: .tlsFailed),
        Row(
            name: "malformed reply", error: SMTPError(stage: .protocol, code: .protocolViolation, message: "bad", isTransient: false),
            kind: .transient, fault: .protocolViolation),
        Row(
            name: "more than 512 lines", error: SMTPError(stage: .ehlo, code: .protocolViolation, message: "lines", isTransient: false),
            kind: .transient, fault: .protocolViolation),
        Row(
            name: "TLS handshake", error: SMTPError(stage: .tls, code: .tlsHandshake, message: "certificate"), kind: .transient,
            fault: .tlsFailed),
        Row(
            name: "STARTTLS not offered", error: SMTPError(stage: .starttls, code: .tlsRequired, message: "no"), kind: .transient,
            fault: .tlsFailed),
        Row(
            name: "STARTTLS injection", error: SMTPError(stage: .starttls, code: .startTLSInjection, message: "inj"),
            kind: .transient, fault: .tlsFailed),
        Row(
            name: "no common AUTH mechanism", error: SMTPError(stage: .auth, code: .noCommonAuthMechanism, message: "none"),
            kind: .transient, fault: .configuration),
        Row(
            name: "token unavailable", error: SMTPError(stage: .auth, code: .credentialsUnavailable, message: "invalid_grant"),
            kind: .transient, fault: .credentialsUnavailable),
        Row(
            name: "connection refused", error: SMTPError(stage: .connect, code: .connectionClosed, message: "refused"),
            kind: .transient, fault: .connectionFailed),
        Row(
            name: "connect timeout", error: SMTPError(stage: .connect, code: .timeout, message: "timeout"), kind: .transient,
            fault: .timeout),
        Row(
            name: "closed before the greeting", error: SMTPError(stage: .greeting, code: .connectionClosed, message: "closed"),
            kind: .transient, fault: .connectionFailed),
    ]

    @Test("SMTP failures", arguments: rows)
    func smtp(_ row: Row) {
        let error = DeliveryError(row.error)
        #expect(error.kind == row.kind)
        #expect(error.routeFault == row.fault)
        #expect(error.raisesRouteAlert == (row.fault != nil))
        #expect(error.isTransient == (row.kind != .permanent))
    }

    @Test("a route fault is never permanent, whatever kind it was given")
    func routeFaultIsTransient() {
        let error = DeliveryError(kind: .permanent, message: "x", routeFault: .configuration)
        #expect(error.kind == .transient)
        #expect(DeliveryError(kind: .permanent, message: "x").kind == .permanent)
    }

    @Test("a token endpoint's refusal (invalid_grant, AADSTS) is transient with the credentials' fault")
    func oauth() {
        let refused = OAuthError(
            code: .refused, provider: "azure", httpStatus: 400, oauthError: "invalid_client", aadsts: 7_000_222,
            errorDescription: "AADSTS7000222: The provided client secret keys are expired.", isTransient: false)
        let error = DeliveryError(refused, transport: "graph")
        #expect(error.kind == .transient)
        #expect(error.routeFault == .credentialsUnavailable)
        let grant = OAuthError(code: .refused, provider: "google", httpStatus: 400, oauthError: "invalid_grant", isTransient: false)
        #expect(DeliveryError(grant, transport: "ews").routeFault == .credentialsUnavailable)
    }

    @Test("Graph: 401, 403 and 404 are the route's; 400, 413 and Send As denied are the message's; 429 throttles")
    func graph() {
        func error(_ status: Int, _ code: String) -> DeliveryError {
            GraphTransport.error(
                status: status, body: ByteBuffer(string: #"{"error":{"code":"\#(code)","message":"m"}}"#), retryAfter: nil,
                user: "u@example.test", from: "u@example.test")
        }
        #expect(error(401, "InvalidAuthenticationToken").routeFault == .authenticationFailed)
        #expect(error(401, "InvalidAuthenticationToken").kind == .transient)
        #expect(error(403, "ErrorAccessDenied").routeFault == .configuration)
        #expect(error(404, "ErrorInvalidUser").routeFault == .configuration)
        #expect(error(403, "ErrorSendAsDenied").kind == .permanent)
        #expect(error(400, "ErrorInvalidRecipients").kind == .permanent)
        #expect(error(400, "ErrorInvalidRecipients").routeFault == nil)
        #expect(error(413, "RequestEntityTooLarge").kind == .permanent)
        #expect(error(429, "ApplicationThrottled").kind == .transient)
        #expect(error(429, "ApplicationThrottled").routeFault == .throttled)
        #expect(error(504, "GatewayTimeout").routeFault == nil)
        let busy = GraphTransport.error(
            status: 503, body: ByteBuffer(string: #"{"error":{"code":"ServiceUnavailable","message":"m"}}"#), retryAfter: "7",
            user: "u@example.test", from: "u@example.test")
        #expect(busy.routeFault == .throttled && busy.retryAfter == .seconds(7))
        #expect(error(503, "ServiceUnavailable").routeFault == nil, "503 without Retry-After is not throttling")
    }

    @Test("EWS: 401 and a wrong URL are the route's; a refused item is the message's")
    func ews() {
        let notFound = EWSResponse(status: 404, body: "", retryAfter: nil)
        guard case .failure(let e404) = notFound.result else {
            Issue.record("404 succeeded")
            return
        }
        #expect(e404.routeFault == .configuration && e404.kind == .transient)
        let refused = EWSResponse(
            status: 200,
            body:
                #"<m:CreateItemResponseMessage ResponseClass="Error"><m:MessageText>bad</m:MessageText><m:ResponseCode>ErrorInvalidRecipients</m:ResponseCode></m:CreateItemResponseMessage>"#,
            retryAfter: nil)
        guard case .failure(let item) = refused.result else {
            Issue.record("a refused item succeeded")
            return
        }
        #expect(item.kind == .permanent && item.routeFault == nil)
        let busy = EWSResponse(
            status: 500,
            body:
                #"<s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring>The server cannot service this request right now.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">2500</t:Value></t:MessageXml></detail></s:Fault>"#,
            retryAfter: nil)
        guard case .failure(let throttled) = busy.result else {
            Issue.record("ErrorServerBusy succeeded")
            return
        }
        #expect(throttled.routeFault == .throttled && throttled.kind == .transient)
        #expect(throttled.retryAfter == .milliseconds(2500))
    }
}
