import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import Testing

/// Local HTTPS stand-ins for Microsoft's identity platform, Google's token endpoint, Graph
/// sendMail and EWS CreateItem that keep PROTOCOLS.md's contract and refuse what it forbids.
package actor EmulatorState {
    package init() {}

    // The credential set the emulator accepts.
    package var tenant = "tenant-1"
    package var clientID = "client-1"
    package var clientSecret = "s3cret-value"
    package var secretExpired = false
    package var ropcUser = "agent@contoso.test"
    package var ropcPassword = "user-pass"
    package var expectedScope = "https://graph.microsoft.com/.default"
    package var googleClientSecret = "google-secret"
    package var googleRefreshToken = "refresh-1"
    package var googleRevoked = false
    /// Issued tokens live this long.
    package var expiresIn = 3600
    /// Token answers wait this long (so concurrent callers overlap).
    package var tokenDelay: Duration = .zero
    /// The next token requests answered with 503.
    package var tokenUnavailableNext = 0
    /// When set, every token issued has this value (the Postfix testbed's bearer token).
    package var fixedToken: String?
    /// Tokens issued first, in order (before ``fixedToken`` or generated ones).
    package var tokenSequence: [String] = []
    // Graph / EWS behaviour.
    package var graphMailbox = "agent@contoso.test"
    /// From addresses the mailbox may send as (Send As / Send on Behalf).
    package var delegates: Set<String> = []
    package var throttleNext = 0
    package var serverBusyNext = 0
    package var ewsBasicUser = "agent@contoso.test"
    package var ewsBasicPassword = "ews-pass"

    // What happened.
    package var tokenRequests = 0
    package var issued: [String: ContinuousClock.Instant] = [:]
    package var revoked: Set<String> = []
    package var graphRequests = 0
    package var ewsRequests = 0
    package var delivered: [[UInt8]] = []
    package var lastEWSVersion: String?
    package var lastEWSBody: String?
    package var lastAnchorMailbox: String?
    package var lastForm: [String: String] = [:]
    // The large-message way.
    package var baseURL = ""
    package var drafts: [String: Draft] = [:]
    package var sentDrafts: [Draft] = []
    package var uploadSessions: [String: UploadSession] = [:]
    package var uploadChunkSizes: [Int] = []
    package var uploadsWithAuthorization = 0
    package var largestGraphRequest = 0
    /// Every Graph and EWS call, in order: "sendMail", "createDraft/mime", "createDraft/json",
    /// "patch", "attachment", "createUploadSession", "send", "delete"; "ews/CreateItem/SendAndSaveCopy",
    /// "ews/CreateItem/SaveOnly", "ews/UpdateItem/SendAndSaveCopy", "ews/SendItem".
    package var calls: [String] = []
    /// Every message sent, whichever way, with the recipients Exchange would deliver it to.
    package var deliveries: [Delivery] = []
    /// EWS items saved as drafts, by Id.
    package var ewsDrafts: [String: EWSDraft] = [:]

    package struct Draft: Sendable {
        package var json: [String: String]
        package var recipients: [String: [String]]
        package var attachments: [(name: String, bytes: [UInt8], viaUploadSession: Bool)] = []
        /// The MIME a draft was created from (POST messages with text/plain).
        package var mime: [UInt8]? = nil
        /// Display names given with the recipients (address lower-cased → name).
        package var names: [String: String] = [:]
        package var isInline: [String: Bool] = [:]
        package var contentTypes: [String: String] = [:]
    }

    package struct EWSDraft: Sendable {
        package var changeKey: String
        package var mime: [UInt8]
        package var recipients: [String: [String]]
        package var names: [String: String] = [:]
    }

    /// One message handed to Exchange for delivery.
    package struct Delivery: Sendable {
        package var via: String
        package var to: [String]
        package var cc: [String]
        package var bcc: [String]
        /// The MIME Outbox gave (sendMail, the MIME draft, EWS MimeContent); nil for a JSON draft.
        package var mime: [UInt8]?
        package var attachments: [(name: String, bytes: [UInt8], viaUploadSession: Bool)] = []
        package var names: [String: String] = [:]
        package var everyone: [String] { (to + cc + bcc).map { $0.lowercased() } }
    }

    package struct UploadSession: Sendable {
        package var draft: String
        package var name: String
        package var size: Int
        package var received: [UInt8] = []
    }

    package func set(_ update: @Sendable (isolated EmulatorState) -> Void) { update(self) }

    package func issue() -> String {
        tokenRequests += 1
        let token = tokenSequence.isEmpty ? (fixedToken ?? "tok-\(tokenRequests)-\(UUID().uuidString.prefix(8))") : tokenSequence.removeFirst()
        issued[token] = .now + .seconds(expiresIn)
        return token
    }

    package func isValid(_ token: String) -> Bool {
        guard let until = issued[token], !revoked.contains(token) else { return false }
        return ContinuousClock.now < until
    }

    package func revokeAll() { revoked.formUnion(issued.keys) }
}

package struct EmulatorMissingEnvironment: Error {}

/// Runs the emulator on 127.0.0.1 with an ephemeral port for the duration of `body`.
/// Its certificate is the built-in test one unless `certificates` says otherwise (a client
/// that trusts `certificates.caFile` trusts the emulator).
package func withEmulator<T: Sendable>(
    _ state: EmulatorState, certificates: TestCertificates = .builtIn, _ body: @Sendable (_ base: String) async throws -> T
) async throws -> T {
    let chain = try NIOSSLCertificate.fromPEMFile(certificates.certificateFile).map { NIOSSLCertificateSource.certificate($0) }
    var tls = TLSConfiguration.makeServerConfiguration(
        certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: certificates.keyFile, format: .pem)))
    tls.minimumTLSVersion = .tlsv12
    let router = Router()
    Emulator.routes(router, state)
    let port = AsyncStream<Int>.makeStream()
    var logger = Logger(label: "emulator")
    logger.logLevel = .critical
    let app = Application(
        router: router, server: try .tls(.http1(), tlsConfiguration: tls),
        configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "emulator"),
        onServerRunning: { channel in
            port.continuation.yield(channel.localAddress?.port ?? 0)
            port.continuation.finish()
        }, logger: logger)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            do {
                try await app.run()
            } catch {
                Issue.record("the emulator failed: \(error)")
                port.continuation.finish()
                throw error
            }
            port.continuation.finish()
            return nil
        }
        var iterator = port.stream.makeAsyncIterator()
        guard let p = await iterator.next() else { throw EmulatorMissingEnvironment() }
        await state.set { $0.baseURL = "https://127.0.0.1:\(p)" }
        let result = try await body("https://127.0.0.1:\(p)")
        group.cancelAll()
        return result
    }
}

package enum Emulator {
    package static func json(_ status: HTTPResponse.Status, _ object: [String: Any], headers: HTTPFields = [:]) -> Response {
        let data = try! JSONSerialization.data(withJSONObject: object)
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    package static func xml(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "text/xml; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    package static func form(_ body: ByteBuffer) -> [String: String] {
        var out: [String: String] = [:]
        for pair in String(buffer: body).split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            out[kv[0]] = kv.count > 1 ? kv[1] : ""
        }
        return out
    }

    package static func aad(_ error: String, _ code: Int, _ text: String) -> Response {
        json(
            error == "invalid_client" ? .unauthorized : .badRequest,
            [
                "error": error, "error_description": "AADSTS\(code): \(text)\r\nTrace ID: 0000\r\nCorrelation ID: 1111",
                "error_codes": [code], "timestamp": "2026-11-25 00:00:00Z", "trace_id": "0000", "correlation_id": "1111",
            ])
    }

    /// Strict base64 (RFC 4648 alphabet, padding, no white space), as Graph requires.
    package static func strictBase64(_ text: String) -> [UInt8]? {
        guard text.count % 4 == 0, text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "/" || $0 == "=") }) else {
            return nil
        }
        return Data(base64Encoded: text).map { [UInt8]($0) }
    }

    package static func bearer(_ request: Request) -> String? {
        guard let auth = request.headers[.authorization], auth.hasPrefix("Bearer ") else { return nil }
        return String(auth.dropFirst(7))
    }

    package static func fromHeader(_ mime: [UInt8]) -> String? {
        let text = String(decoding: mime, as: UTF8.self)
        for line in text.components(separatedBy: "\r\n") {
            if line.isEmpty { break }
            if line.lowercased().hasPrefix("from:") {
                let v = line.dropFirst(5)
                if let lt = v.firstIndex(of: "<"), let gt = v.firstIndex(of: ">") { return String(v[v.index(after: lt)..<gt]) }
                return v.trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }

    package static func routes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        // Microsoft identity platform v2 (PROTOCOLS.md §1.1).
        router.post("/:tenant/oauth2/v2.0/token") { request, context -> Response in
            var request = request
            let tenant = try context.parameters.require("tenant")
            guard request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true else {
                return aad("invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
            }
            let f = form(try await request.collectBody(upTo: 1 << 16))
            await state.set { $0.lastForm = f }
            let s = await state
            if await tenant != s.tenant { return aad("invalid_request", 90002, "Tenant '\(tenant)' not found.") }
            if await tokenDelaySleep(s) {}
            if await s.tokenUnavailableNext > 0 {
                await state.set { $0.tokenUnavailableNext -= 1 }
                return json(
                    .serviceUnavailable,
                    ["error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again."])
            }
            guard await f["client_id"] == s.clientID else {
                return aad("unauthorized_client", 700016, "Application with identifier '\(f["client_id"] ?? "")' was not found in the directory.")
            }
            let scope = f["scope"] ?? ""
            guard scope.hasSuffix("/.default"), await scope == s.expectedScope else {
                return aad("invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid.")
            }
            switch f["grant_type"] {
            case "client_credentials":
                guard await f["client_secret"] == s.clientSecret else {
                    return aad("invalid_client", 7000215, "Invalid client secret provided.")
                }
                if await s.secretExpired {
                    return aad("invalid_client", 7000222, "The provided client secret keys for app '\(f["client_id"]!)' are expired.")
                }
            case "password":
                guard await f["username"] == s.ropcUser, await f["password"] == s.ropcPassword else {
                    return aad("invalid_grant", 50126, "Error validating credentials due to invalid username or password.")
                }
            default:
                return aad("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
            }
            let token = await state.issue()
            return json(.ok, ["token_type": "Bearer", "expires_in": await s.expiresIn, "ext_expires_in": await s.expiresIn, "access_token": token])
        }
        // Google (PROTOCOLS.md §1.2).
        router.post("/google/token") { request, _ -> Response in
            var request = request
            guard request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true else {
                return json(.badRequest, ["error": "invalid_request", "error_description": "Invalid content type"])
            }
            let f = form(try await request.collectBody(upTo: 1 << 16))
            await state.set { $0.lastForm = f }
            let s = state
            guard f["grant_type"] == "refresh_token" else {
                return json(.badRequest, ["error": "unsupported_grant_type", "error_description": "Invalid grant_type: \(f["grant_type"] ?? "")"])
            }
            guard await f["client_id"] == s.clientID, await f["client_secret"] == s.googleClientSecret else {
                return json(.unauthorized, ["error": "invalid_client", "error_description": "Unauthorized"])
            }
            guard await f["refresh_token"] == s.googleRefreshToken, await !s.googleRevoked else {
                return json(.badRequest, ["error": "invalid_grant", "error_description": "Token has been expired or revoked."])
            }
            let token = await state.issue()
            return json(.ok, ["access_token": token, "expires_in": await s.expiresIn, "token_type": "Bearer", "scope": "https://mail.google.com/"])
        }
        // Graph sendMail with MIME (PROTOCOLS.md §4).
        router.post("/v1.0/users/:user/sendMail") { request, context -> Response in
            var request = request
            await state.set {
                $0.graphRequests += 1; $0.calls.append("sendMail")
            }
            let user = try context.parameters.require("user")
            guard let token = bearer(request), await state.isValid(token) else {
                return json(
                    .unauthorized, ["error": ["code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."]])
            }
            if await state.throttleNext > 0 {
                await state.set { $0.throttleNext -= 1 }
                return json(
                    .tooManyRequests, ["error": ["code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."]],
                    headers: [.retryAfter: "7"])
            }
            guard request.headers[.contentType] == "text/plain" else {
                return json(.unsupportedMediaType, ["error": ["code": "RequestBodyRead", "message": "Content-Type must be text/plain for MIME"]])
            }
            let body: ByteBuffer
            do {
                body = try await request.collectBody(upTo: 4 * 1024 * 1024)
            } catch {
                return json(.contentTooLarge, ["error": ["code": "RequestEntityTooLarge", "message": "Maximum request length exceeded."]])
            }
            await state.set { $0.largestGraphRequest = max($0.largestGraphRequest, body.readableBytes) }
            guard let mime = strictBase64(String(buffer: body)) else {
                return json(
                    .badRequest, ["error": ["code": "ErrorMimeContentInvalidBase64String", "message": "Invalid base64 string for MIME content."]])
            }
            guard await user.lowercased() == state.graphMailbox.lowercased() else {
                return json(.notFound, ["error": ["code": "ErrorInvalidUser", "message": "The requested user '\(user)' is invalid."]])
            }
            let from = fromHeader(mime)?.lowercased() ?? ""
            if from != user.lowercased(), await !state.delegates.contains(from) {
                return json(
                    .forbidden,
                    [
                        "error": [
                            "code": "ErrorSendAsDenied",
                            "message":
                                "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message.",
                        ]
                    ])
            }
            // Exchange takes the recipients of a MIME message from its To, Cc and Bcc fields.
            let h = headerRecipients(mime)
            await state.set {
                $0.delivered.append(mime)
                $0.deliveries.append(EmulatorState.Delivery(via: "sendMail", to: h.to, cc: h.cc, bcc: h.bcc, mime: mime, names: h.names))
            }
            return Response(status: .accepted)
        }
        largeMessageRoutes(router, state)
        // EWS CreateItem (PROTOCOLS.md §3).
        router.post("/EWS/Exchange.asmx") { request, _ -> Response in
            var request = request
            await state.set { $0.ewsRequests += 1 }
            guard request.headers[.contentType]?.hasPrefix("text/xml") == true else {
                return Response(status: .unsupportedMediaType)
            }
            let auth = request.headers[.authorization] ?? ""
            var mailbox = await state.ewsBasicUser
            if auth.hasPrefix("Basic ") {
                let decoded = Data(base64Encoded: String(auth.dropFirst(6))).map { String(decoding: $0, as: UTF8.self) } ?? ""
                guard await decoded == "\(state.ewsBasicUser):\(state.ewsBasicPassword)" else { return Response(status: .unauthorized) }
            } else if let token = bearer(request) {
                guard await state.isValid(token) else { return Response(status: .unauthorized) }
                guard let anchor = request.headers[HTTPField.Name("X-AnchorMailbox")!], !anchor.isEmpty else {
                    return xml(.internalServerError, fault("ErrorMissingEmailAddress", "X-AnchorMailbox header is required with OAuth."))
                }
                await state.set { $0.lastAnchorMailbox = anchor }
                mailbox = anchor
            } else {
                return Response(status: .unauthorized)
            }
            if await state.serverBusyNext > 0 {
                await state.set { $0.serverBusyNext -= 1 }
                return xml(.internalServerError, busyFault)
            }
            let text = String(buffer: try await request.collectBody(upTo: 64 << 20))
            await state.set { $0.lastEWSBody = text }
            for ns in [
                #"xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/""#,
                #"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types""#,
                #"xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages""#,
            ] where !text.contains(ns) {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation: namespace \(ns) missing."))
            }
            guard let v = text.range(of: #"<t:RequestServerVersion Version=""#),
                let vEnd = text[v.upperBound...].firstIndex(of: "\"")
            else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "RequestServerVersion missing."))
            }
            let version = String(text[v.upperBound..<vEnd])
            await state.set { $0.lastEWSVersion = version }
            if text.contains("<m:UpdateItem ") { return await updateItem(text, state) }
            let disposition: String
            if text.contains(#"<m:CreateItem MessageDisposition="SendAndSaveCopy">"#) {
                disposition = "SendAndSaveCopy"
            } else if text.contains(#"<m:CreateItem MessageDisposition="SaveOnly">"#) {
                disposition = "SaveOnly"
            } else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation."))
            }
            guard let open = text.range(of: #"<t:MimeContent CharacterSet="UTF-8">"#),
                let close = text.range(of: "</t:MimeContent>"), open.upperBound <= close.lowerBound,
                let mime = strictBase64(String(text[open.upperBound..<close.lowerBound]))
            else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation."))
            }
            let from = fromHeader(mime)?.lowercased() ?? ""
            if from != mailbox.lowercased(), await !state.delegates.contains(from) {
                return xml(
                    .ok,
                    createItemResponse(
                        "Error", "ErrorSendAsDenied",
                        "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."
                    ))
            }
            // Exchange takes the recipients from the MIME's To, Cc and Bcc, plus t:BccRecipients.
            let h = headerRecipients(mime)
            let extraBcc = mailboxes(in: text, element: "BccRecipients").map(\.0)
            await state.set { $0.calls.append("ews/CreateItem/\(disposition)") }
            if disposition == "SaveOnly" {
                let id = "AAMk-\(UUID().uuidString.prefix(12))="
                let draft = EmulatorState.EWSDraft(
                    changeKey: "CQAAAB-\(UUID().uuidString.prefix(6))", mime: mime,
                    recipients: ["ToRecipients": h.to, "CcRecipients": h.cc, "BccRecipients": h.bcc + extraBcc],
                    names: h.names)
                await state.set { $0.ewsDrafts[id] = draft }
                return xml(
                    .ok,
                    createItemResponse(
                        "Success", "NoError", nil,
                        items: #"<t:Message><t:ItemId Id="\#(id)" ChangeKey="\#(draft.changeKey)"/></t:Message>"#))
            }
            await state.set {
                $0.delivered.append(mime)
                $0.deliveries.append(
                    EmulatorState.Delivery(via: "ews/CreateItem", to: h.to, cc: h.cc, bcc: h.bcc + extraBcc, mime: mime, names: h.names))
            }
            return xml(.ok, createItemResponse("Success", "NoError", nil))
        }
    }

    /// `(address, name)` of each t:Mailbox inside the first `<t:element>`.
    package static func mailboxes(in text: String, element: String) -> [(String, String?)] {
        guard let open = text.range(of: "<t:\(element)>"), let close = text.range(of: "</t:\(element)>", range: open.upperBound..<text.endIndex)
        else { return [] }
        var out: [(String, String?)] = []
        var rest = text[open.upperBound..<close.lowerBound]
        while let m = rest.range(of: "<t:Mailbox>"), let e = rest.range(of: "</t:Mailbox>", range: m.upperBound..<rest.endIndex) {
            let box = rest[m.upperBound..<e.lowerBound]
            func inner(_ tag: String) -> String? {
                guard let a = box.range(of: "<t:\(tag)>"), let b = box.range(of: "</t:\(tag)>") else { return nil }
                return String(box[a.upperBound..<b.lowerBound]).replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(
                    of: "&gt;", with: ">"
                )
                .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(
                    of: "&amp;", with: "&")
            }
            if let address = inner("EmailAddress") { out.append((address, inner("Name"))) }
            rest = rest[e.upperBound...]
        }
        return out
    }

    /// UpdateItem (updateitem-operation.md): SetItemField / DeleteItemField on the recipient
    /// collections of a saved draft; MessageDisposition SendAndSaveCopy sends it.
    package static func updateItem(_ text: String, _ state: EmulatorState) async -> Response {
        guard let d = text.range(of: #"<m:UpdateItem MessageDisposition="([A-Za-z]+)""#, options: .regularExpression) else {
            return xml(.internalServerError, fault("ErrorSchemaValidation", "UpdateItem needs MessageDisposition for a message."))
        }
        let disposition = String(text[d].dropFirst(#"<m:UpdateItem MessageDisposition=""#.count).dropLast())
        await state.set { $0.calls.append("ews/UpdateItem/\(disposition)") }
        guard let idRange = text.range(of: #"<t:ItemId Id="[^"]+""#, options: .regularExpression) else {
            return xml(.internalServerError, fault("ErrorSchemaValidation", "ItemId missing."))
        }
        let id = String(text[idRange].dropFirst(#"<t:ItemId Id=""#.count).dropLast())
        guard var draft = await state.ewsDrafts[id] else {
            return xml(
                .ok, updateItemResponse("Error", "ErrorItemNotFound", "The specified object was not found in the store.", id: id, changeKey: ""))
        }
        if let ck = text.range(of: #"ChangeKey="[^"]+""#, options: .regularExpression),
            String(text[ck].dropFirst(#"ChangeKey=""#.count).dropLast()) != draft.changeKey
        {
            return xml(.ok, updateItemResponse("Error", "ErrorIrresolvableConflict", "The change key does not match.", id: id, changeKey: ""))
        }
        for field in ["ToRecipients", "CcRecipients", "BccRecipients"] {
            if text.contains(#"<t:DeleteItemField><t:FieldURI FieldURI="message:\#(field)"/></t:DeleteItemField>"#) {
                draft.recipients[field] = []
            } else if let set = text.range(of: #"<t:SetItemField><t:FieldURI FieldURI="message:\#(field)"/><t:Message><t:\#(field)>"#) {
                guard let end = text.range(of: "</t:\(field)></t:Message></t:SetItemField>", range: set.upperBound..<text.endIndex) else {
                    return xml(.internalServerError, fault("ErrorSchemaValidation", "SetItemField for \(field) must hold a Message with \(field)."))
                }
                let list = mailboxes(in: "<t:\(field)>" + text[set.upperBound..<end.lowerBound] + "</t:\(field)>", element: field)
                draft.recipients[field] = list.map(\.0)
                for (a, n) in list { draft.names[a.lowercased()] = n }
            }
        }
        draft.changeKey = "CQAAAB-\(UUID().uuidString.prefix(6))"
        let updated = draft
        switch disposition {
        case "SaveOnly":
            await state.set { $0.ewsDrafts[id] = updated }
        case "SendAndSaveCopy", "SendOnly":
            guard disposition == "SendOnly" || text.contains(#"<m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId>"#)
            else {
                return xml(.ok, updateItemResponse("Error", "ErrorInvalidSendItemSaveSettings", "SavedItemFolderId expected.", id: id, changeKey: ""))
            }
            await state.set {
                $0.ewsDrafts[id] = nil
                $0.deliveries.append(
                    EmulatorState.Delivery(
                        via: "ews/UpdateItem", to: updated.recipients["ToRecipients"] ?? [],
                        cc: updated.recipients["CcRecipients"] ?? [],
                        bcc: updated.recipients["BccRecipients"] ?? [], mime: updated.mime, names: updated.names))
            }
        default:
            return xml(.internalServerError, fault("ErrorSchemaValidation", "MessageDisposition \(disposition) is not valid."))
        }
        return xml(.ok, updateItemResponse("Success", "NoError", nil, id: id, changeKey: updated.changeKey))
    }

    package static func updateItemResponse(_ responseClass: String, _ code: String, _ text: String?, id: String, changeKey: String) -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:UpdateItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:UpdateItemResponseMessage ResponseClass="\#(responseClass)">"#
            + (text.map { "<m:MessageText>\($0)</m:MessageText>" } ?? "")
            + "<m:ResponseCode>\(code)</m:ResponseCode>"
            + (responseClass == "Success"
                ? #"<m:Items><t:Message><t:ItemId Id="\#(id)" ChangeKey="\#(changeKey)"/></t:Message></m:Items>"#
                : "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/>")
            + "</m:UpdateItemResponseMessage></m:ResponseMessages></m:UpdateItemResponse></s:Body></s:Envelope>"
    }

    package static func tokenDelaySleep(_ s: EmulatorState) async -> Bool {
        let d = await s.tokenDelay
        if d > .zero { try? await Task.sleep(for: d) }
        return true
    }

    package static func fault(_ code: String, _ text: String) -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:\#(code)</faultcode><faultstring xml:lang="en-US">\#(text)</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">\#(code)</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>"#
    }

    package static let busyFault =
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#

    package static func createItemResponse(_ responseClass: String, _ code: String, _ text: String?, items: String = "") -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:CreateItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:CreateItemResponseMessage ResponseClass="\#(responseClass)">"#
            + (text.map { "<m:MessageText>\($0)</m:MessageText>" } ?? "")
            + "<m:ResponseCode>\(code)</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
            + (items.isEmpty ? "<m:Items/>" : "<m:Items>\(items)</m:Items>")
            + "</m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse></s:Body></s:Envelope>"
    }
}

package enum JSONOrResponse {
    case success([String: Any])
    case failure(Response)
}

extension Emulator {
    package static func graphError(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        json(status, ["error": ["code": code, "message": message]])
    }

    /// Reads a JSON Graph request: a valid token, application/json, at most 4 MiB.
    package static func graphJSON(_ request: inout Request, _ state: EmulatorState) async throws -> JSONOrResponse {
        guard let token = bearer(request), await state.isValid(token) else {
            return .failure(graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."))
        }
        guard request.headers[.contentType]?.hasPrefix("application/json") == true else {
            return .failure(graphError(.unsupportedMediaType, "RequestBodyRead", "Content-Type must be application/json"))
        }
        let body: ByteBuffer
        do { body = try await request.collectBody(upTo: 4 * 1024 * 1024) } catch {
            return .failure(graphError(.contentTooLarge, "RequestEntityTooLarge", "Maximum request length exceeded."))
        }
        await state.set { $0.largestGraphRequest = max($0.largestGraphRequest, body.readableBytes) }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] else {
            return .failure(graphError(.badRequest, "BadRequest", "Unable to read JSON request payload."))
        }
        return .success(object)
    }

    /// To, Cc and Bcc of a MIME header section, read independently of Outbox's parser:
    /// unfolded fields, the list split at commas outside quotes and angle brackets, the address
    /// in `<...>` or the bare item.
    package static func headerRecipients(_ mime: [UInt8]) -> (to: [String], cc: [String], bcc: [String], names: [String: String], hasBcc: Bool) {
        var fields: [(String, String)] = []
        for line in String(decoding: mime, as: UTF8.self).components(separatedBy: "\r\n") {
            if line.isEmpty { break }
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].1 += line
            } else if let colon = line.firstIndex(of: ":") {
                fields.append((line[..<colon].lowercased(), String(line[line.index(after: colon)...])))
            }
        }
        var out: [String: [String]] = ["to": [], "cc": [], "bcc": []]
        var names: [String: String] = [:]
        var hasBcc = false
        for (name, value) in fields where out[name] != nil {
            if name == "bcc" { hasBcc = true }
            var items: [String] = []
            var current = ""
            var quoted = false
            var angle = false
            for c in value {
                if c == "\"" { quoted.toggle() }
                if c == "<" && !quoted { angle = true }
                if c == ">" && !quoted { angle = false }
                if c == "," && !quoted && !angle {
                    items.append(current)
                    current = ""
                } else {
                    current.append(c)
                }
            }
            items.append(current)
            for item in items {
                let t = item.trimmingCharacters(in: .whitespaces)
                if t.isEmpty { continue }
                if let lt = t.lastIndex(of: "<"), let gt = t.lastIndex(of: ">"), lt < gt {
                    let address = String(t[t.index(after: lt)..<gt])
                    var display = t[..<lt].trimmingCharacters(in: .whitespaces)
                    if display.hasPrefix("\""), display.hasSuffix("\""), display.count >= 2 { display = String(display.dropFirst().dropLast()) }
                    if !display.isEmpty { names[address.lowercased()] = display }
                    out[name]!.append(address)
                } else {
                    out[name]!.append(t)
                }
            }
        }
        return (out["to"]!, out["cc"]!, out["bcc"]!, names, hasBcc)
    }

    package static func recipientList(_ value: Any?) -> (addresses: [String], names: [String: String])? {
        guard let list = value as? [[String: Any]] else { return nil }
        var addresses: [String] = []
        var names: [String: String] = [:]
        for item in list {
            guard let e = item["emailAddress"] as? [String: Any], let a = e["address"] as? String else { return nil }
            addresses.append(a)
            if let n = e["name"] as? String { names[a.lowercased()] = n }
        }
        return (addresses, names)
    }

    package static func largeMessageRoutes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        // Create message (user-post-messages.md): JSON, or MIME as base64 with text/plain.
        router.post("/v1.0/users/:user/messages") { request, context -> Response in
            var request = request
            let id = "draft-\(UUID().uuidString.prefix(8))"
            if request.headers[.contentType] == "text/plain" {
                await state.set { $0.calls.append("createDraft/mime") }
                guard let token = bearer(request), await state.isValid(token) else {
                    return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
                }
                let body: ByteBuffer
                do { body = try await request.collectBody(upTo: 4 * 1024 * 1024) } catch {
                    return graphError(.contentTooLarge, "RequestEntityTooLarge", "Maximum request length exceeded.")
                }
                await state.set { $0.largestGraphRequest = max($0.largestGraphRequest, body.readableBytes) }
                guard let mime = strictBase64(String(buffer: body)) else {
                    return graphError(.badRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
                }
                let h = headerRecipients(mime)
                let draft = EmulatorState.Draft(
                    json: ["subject": ""], recipients: ["toRecipients": h.to, "ccRecipients": h.cc, "bccRecipients": h.bcc],
                    mime: mime, names: h.names)
                await state.set { $0.drafts[id] = draft }
                return json(
                    .created,
                    [
                        "id": id, "isDraft": true,
                        "toRecipients": h.to.map { ["emailAddress": ["address": $0]] },
                        "ccRecipients": h.cc.map { ["emailAddress": ["address": $0]] },
                        "bccRecipients": h.bcc.map { ["emailAddress": ["address": $0]] },
                    ])
            }
            await state.set { $0.calls.append("createDraft/json") }
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            var recipients: [String: [String]] = [:]
            var names: [String: String] = [:]
            for key in ["toRecipients", "ccRecipients", "bccRecipients", "replyTo"] {
                let list = recipientList(object[key]) ?? ([], [:])
                recipients[key] = list.addresses
                if key != "replyTo" { names.merge(list.names) { a, _ in a } }
            }
            var flat: [String: String] = ["subject": object["subject"] as? String ?? ""]
            if let body = object["body"] as? [String: Any] {
                flat["body.contentType"] = body["contentType"] as? String
                flat["body.content"] = body["content"] as? String
            }
            flat["from"] = ((object["from"] as? [String: Any])?["emailAddress"] as? [String: Any])?["address"] as? String
            let draft = EmulatorState.Draft(json: flat, recipients: recipients, names: names)
            await state.set { $0.drafts[id] = draft }
            return json(.created, ["id": id, "isDraft": true])
        }
        // Update message (message-update.md): the recipient collections of a draft.
        router.patch("/v1.0/users/:user/messages/:id") { request, context -> Response in
            var request = request
            await state.set { $0.calls.append("patch") }
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard var draft = await state.drafts[id] else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            for key in ["toRecipients", "ccRecipients", "bccRecipients"] where object[key] != nil {
                guard let list = recipientList(object[key]) else {
                    return graphError(.badRequest, "ErrorInvalidRecipients", "\(key) must be a collection of recipients with emailAddress.address")
                }
                draft.recipients[key] = list.addresses
                for a in list.addresses { draft.names[a.lowercased()] = list.names[a.lowercased()] }
            }
            let unknown = Set(object.keys).subtracting(["toRecipients", "ccRecipients", "bccRecipients", "subject", "body", "importance"])
            guard unknown.isEmpty else { return graphError(.badRequest, "ErrorInvalidProperty", "unexpected properties \(unknown.sorted())") }
            let updated = draft
            await state.set { $0.drafts[id] = updated }
            return json(.ok, ["id": id, "isDraft": true])
        }
        router.delete("/v1.0/users/:user/messages/:id") { request, context -> Response in
            await state.set { $0.calls.append("delete") }
            let id = try context.parameters.require("id")
            guard let token = bearer(request), await state.isValid(token) else {
                return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            }
            guard await state.drafts[id] != nil else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            await state.set { $0.drafts[id] = nil }
            return Response(status: .noContent)
        }
        router.post("/v1.0/users/:user/messages/:id/attachments") { request, context -> Response in
            var request = request
            await state.set { $0.calls.append("attachment") }
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard await state.drafts[id] != nil else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            guard object["@odata.type"] as? String == "#microsoft.graph.fileAttachment", let name = object["name"] as? String,
                let bytes = (object["contentBytes"] as? String).flatMap(strictBase64)
            else {
                return graphError(.badRequest, "ErrorInvalidRequest", "fileAttachment with name and base64 contentBytes expected")
            }
            let inline = object["isInline"] as? Bool ?? false
            let type = object["contentType"] as? String ?? ""
            await state.set {
                $0.drafts[id]!.attachments.append((name, bytes, false))
                $0.drafts[id]!.isInline[name] = inline
                $0.drafts[id]!.contentTypes[name] = type
            }
            return json(.created, ["id": "att-\(UUID().uuidString.prefix(6))"])
        }
        router.post("/v1.0/users/:user/messages/:id/attachments/createUploadSession") { request, context -> Response in
            var request = request
            await state.set { $0.calls.append("createUploadSession") }
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard await state.drafts[id] != nil else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            guard let item = object["AttachmentItem"] as? [String: Any], item["attachmentType"] as? String == "file",
                let name = item["name"] as? String, let size = item["size"] as? Int, size > 0
            else {
                return graphError(.badRequest, "ErrorInvalidRequest", "AttachmentItem with attachmentType file, name and size expected")
            }
            let inline = item["isInline"] as? Bool ?? false
            let type = item["contentType"] as? String ?? ""
            let sid = "s\(UUID().uuidString.prefix(8))"
            await state.set {
                $0.uploadSessions[sid] = EmulatorState.UploadSession(draft: id, name: name, size: size)
                $0.drafts[id]!.isInline[name] = inline
                $0.drafts[id]!.contentTypes[name] = type
            }
            return json(
                .created,
                [
                    "uploadUrl": "\(await state.baseURL)/upload/\(sid)", "expirationDateTime": "2030-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"],
                ])
        }
        router.put("/upload/:sid") { request, context -> Response in
            var request = request
            let sid = try context.parameters.require("sid")
            if request.headers[.authorization] != nil {
                await state.set { $0.uploadsWithAuthorization += 1 }
                return graphError(.badRequest, "InvalidRequest", "The upload URL must be called without an Authorization header.")
            }
            guard var session = await state.uploadSessions[sid] else { return graphError(.notFound, "ItemNotFound", "no such upload session") }
            let chunk: ByteBuffer
            do { chunk = try await request.collectBody(upTo: 4 * 1024 * 1024) } catch {
                return graphError(.contentTooLarge, "RequestEntityTooLarge", "An upload chunk may be at most 4 MB.")
            }
            let expected = "bytes \(session.received.count)-\(session.received.count + chunk.readableBytes - 1)/\(session.size)"
            guard request.headers[HTTPField.Name("Content-Range")!] == expected else {
                return graphError(.rangeNotSatisfiable, "InvalidRange", "expected Content-Range: \(expected)")
            }
            session.received += chunk.readableBytesView
            let done = session.received.count == session.size
            let finished = session
            await state.set {
                $0.uploadChunkSizes.append(chunk.readableBytes)
                $0.uploadSessions[sid] = done ? nil : finished
                if done { $0.drafts[finished.draft]!.attachments.append((finished.name, finished.received, true)) }
            }
            if done { return json(.created, ["id": "att-\(sid)"]) }
            return json(.ok, ["nextExpectedRanges": ["\(finished.received.count)-"]])
        }
        // Send (message-send.md): no body, Content-Length: 0; 202.
        router.post("/v1.0/users/:user/messages/:id/send") { request, context -> Response in
            await state.set { $0.calls.append("send") }
            let id = try context.parameters.require("id")
            guard let token = bearer(request), await state.isValid(token) else {
                return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            }
            guard request.headers[.contentLength] == "0" else {
                return graphError(.lengthRequired, "LengthRequired", "Content-Length: 0 is required")
            }
            guard let draft = await state.drafts[id] else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            let delivery = EmulatorState.Delivery(
                via: draft.mime == nil ? "draft/json" : "draft/mime",
                to: draft.recipients["toRecipients"] ?? [], cc: draft.recipients["ccRecipients"] ?? [],
                bcc: draft.recipients["bccRecipients"] ?? [], mime: draft.mime,
                attachments: draft.attachments, names: draft.names)
            await state.set {
                $0.sentDrafts.append(draft); $0.drafts[id] = nil; $0.deliveries.append(delivery)
            }
            return Response(status: .accepted)
        }
    }
}
