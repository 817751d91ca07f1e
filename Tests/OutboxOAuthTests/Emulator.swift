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
actor EmulatorState {
    // The credential set the emulator accepts.
    var tenant = "tenant-1"
    var clientID = "client-1"
    var clientSecret = "s3cret-value"
    var secretExpired = false
    var ropcUser = "agent@contoso.test"
    var ropcPassword = "user-pass"
    var expectedScope = "https://graph.microsoft.com/.default"
    var googleClientSecret = "google-secret"
    var googleRefreshToken = "refresh-1"
    var googleRevoked = false
    /// Issued tokens live this long.
    var expiresIn = 3600
    /// Token answers wait this long (so concurrent callers overlap).
    var tokenDelay: Duration = .zero
    /// The next token requests answered with 503.
    var tokenUnavailableNext = 0
    /// When set, every token issued has this value (the Postfix testbed's bearer token).
    var fixedToken: String?
    /// Tokens issued first, in order (before ``fixedToken`` or generated ones).
    var tokenSequence: [String] = []
    // Graph / EWS behaviour.
    var graphMailbox = "agent@contoso.test"
    /// From addresses the mailbox may send as (Send As / Send on Behalf).
    var delegates: Set<String> = []
    var throttleNext = 0
    var serverBusyNext = 0
    var ewsBasicUser = "agent@contoso.test"
    var ewsBasicPassword = "ews-pass"

    // What happened.
    var tokenRequests = 0
    var issued: [String: ContinuousClock.Instant] = [:]
    var revoked: Set<String> = []
    var graphRequests = 0
    var ewsRequests = 0
    var delivered: [[UInt8]] = []
    var lastEWSVersion: String?
    var lastEWSBody: String?
    var lastAnchorMailbox: String?
    var lastForm: [String: String] = [:]
    // The large-message way.
    var baseURL = ""
    var drafts: [String: Draft] = [:]
    var sentDrafts: [Draft] = []
    var uploadSessions: [String: UploadSession] = [:]
    var uploadChunkSizes: [Int] = []
    var uploadsWithAuthorization = 0
    var largestGraphRequest = 0

    struct Draft: Sendable {
        var json: [String: String]
        var recipients: [String: [String]]
        var attachments: [(name: String, bytes: [UInt8], viaUploadSession: Bool)] = []
    }

    struct UploadSession: Sendable {
        var draft: String
        var name: String
        var size: Int
        var received: [UInt8] = []
    }

    func set(_ update: @Sendable (isolated EmulatorState) -> Void) { update(self) }

    func issue() -> String {
        tokenRequests += 1
        let token = tokenSequence.isEmpty ? (fixedToken ?? "tok-\(tokenRequests)-\(UUID().uuidString.prefix(8))") : tokenSequence.removeFirst()
        issued[token] = .now + .seconds(expiresIn)
        return token
    }

    func isValid(_ token: String) -> Bool {
        guard let until = issued[token], !revoked.contains(token) else { return false }
        return ContinuousClock.now < until
    }

    func revokeAll() { revoked.formUnion(issued.keys) }
}

enum TestEnv {
    static func path(_ name: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
            Issue.record("\(name) is not set: run the tests through scripts/test.sh (it starts the testbed that writes the test certificates)")
            return nil
        }
        return value
    }
}

struct EmulatorMissingEnvironment: Error {}

/// Runs the emulator on 127.0.0.1 with an ephemeral port for the duration of `body`.
func withEmulator<T: Sendable>(_ state: EmulatorState, _ body: @Sendable (_ base: String) async throws -> T) async throws -> T {
    guard let certPath = TestEnv.path("OUTBOX_TEST_TLS_CERT"), let keyPath = TestEnv.path("OUTBOX_TEST_TLS_KEY") else {
        throw EmulatorMissingEnvironment()
    }
    let chain = try NIOSSLCertificate.fromPEMFile(certPath).map { NIOSSLCertificateSource.certificate($0) }
    var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem)))
    tls.minimumTLSVersion = .tlsv12
    let router = Router()
    Emulator.routes(router, state)
    let port = AsyncStream<Int>.makeStream()
    var logger = Logger(label: "emulator")
    logger.logLevel = .critical
    let app = Application(router: router, server: try .tls(.http1(), tlsConfiguration: tls),
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

enum Emulator {
    static func json(_ status: HTTPResponse.Status, _ object: [String: Any], headers: HTTPFields = [:]) -> Response {
        let data = try! JSONSerialization.data(withJSONObject: object)
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func xml(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "text/xml; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func form(_ body: ByteBuffer) -> [String: String] {
        var out: [String: String] = [:]
        for pair in String(buffer: body).split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            out[kv[0]] = kv.count > 1 ? kv[1] : ""
        }
        return out
    }

    static func aad(_ error: String, _ code: Int, _ text: String) -> Response {
        json(error == "invalid_client" ? .unauthorized : .badRequest,
             ["error": error, "error_description": "AADSTS\(code): \(text)\r\nTrace ID: 0000\r\nCorrelation ID: 1111",
              "error_codes": [code], "timestamp": "2026-11-25 00:00:00Z", "trace_id": "0000", "correlation_id": "1111"])
    }

    /// Strict base64 (RFC 4648 alphabet, padding, no white space), as Graph requires.
    static func strictBase64(_ text: String) -> [UInt8]? {
        guard text.count % 4 == 0, text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "/" || $0 == "=") }) else { return nil }
        return Data(base64Encoded: text).map { [UInt8]($0) }
    }

    static func bearer(_ request: Request) -> String? {
        guard let auth = request.headers[.authorization], auth.hasPrefix("Bearer ") else { return nil }
        return String(auth.dropFirst(7))
    }

    static func fromHeader(_ mime: [UInt8]) -> String? {
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

    static func routes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
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
                return json(.serviceUnavailable, ["error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again."])
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
            await state.set { $0.graphRequests += 1 }
            let user = try context.parameters.require("user")
            guard let token = bearer(request), await state.isValid(token) else {
                return json(.unauthorized, ["error": ["code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."]])
            }
            if await state.throttleNext > 0 {
                await state.set { $0.throttleNext -= 1 }
                return json(.tooManyRequests, ["error": ["code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."]],
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
            guard let mime = strictBase64(String(buffer: body)) else {
                return json(.badRequest, ["error": ["code": "ErrorMimeContentInvalidBase64String", "message": "Invalid base64 string for MIME content."]])
            }
            guard await user.lowercased() == state.graphMailbox.lowercased() else {
                return json(.notFound, ["error": ["code": "ErrorInvalidUser", "message": "The requested user '\(user)' is invalid."]])
            }
            let from = fromHeader(mime)?.lowercased() ?? ""
            if from != user.lowercased(), await !state.delegates.contains(from) {
                return json(.forbidden, ["error": ["code": "ErrorSendAsDenied", "message": "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message."]])
            }
            await state.set { $0.delivered.append(mime) }
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
            for ns in [#"xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/""#,
                       #"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types""#,
                       #"xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages""#] where !text.contains(ns) {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation: namespace \(ns) missing."))
            }
            guard let v = text.range(of: #"<t:RequestServerVersion Version=""#),
                  let vEnd = text[v.upperBound...].firstIndex(of: "\"") else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "RequestServerVersion missing."))
            }
            let version = String(text[v.upperBound..<vEnd])
            await state.set { $0.lastEWSVersion = version }
            guard text.contains(#"<m:CreateItem MessageDisposition="SendAndSaveCopy">"#),
                  let open = text.range(of: #"<t:MimeContent CharacterSet="UTF-8">"#),
                  let close = text.range(of: "</t:MimeContent>"), open.upperBound <= close.lowerBound,
                  let mime = strictBase64(String(text[open.upperBound..<close.lowerBound])) else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation."))
            }
            let from = fromHeader(mime)?.lowercased() ?? ""
            if from != mailbox.lowercased(), await !state.delegates.contains(from) {
                return xml(.ok, createItemResponse("Error", "ErrorSendAsDenied",
                    "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."))
            }
            await state.set { $0.delivered.append(mime) }
            return xml(.ok, createItemResponse("Success", "NoError", nil))
        }
    }

    static func tokenDelaySleep(_ s: EmulatorState) async -> Bool {
        let d = await s.tokenDelay
        if d > .zero { try? await Task.sleep(for: d) }
        return true
    }

    static func fault(_ code: String, _ text: String) -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:\#(code)</faultcode><faultstring xml:lang="en-US">\#(text)</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">\#(code)</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>"#
    }

    static let busyFault = #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#

    static func createItemResponse(_ responseClass: String, _ code: String, _ text: String?) -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:CreateItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:CreateItemResponseMessage ResponseClass="\#(responseClass)">"#
            + (text.map { "<m:MessageText>\($0)</m:MessageText>" } ?? "")
            + "<m:ResponseCode>\(code)</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse></s:Body></s:Envelope>"
    }
}

enum JSONOrResponse {
    case success([String: Any])
    case failure(Response)
}

extension Emulator {
    static func graphError(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        json(status, ["error": ["code": code, "message": message]])
    }

    /// Reads a JSON Graph request: a valid token, application/json, at most 4 MiB.
    static func graphJSON(_ request: inout Request, _ state: EmulatorState) async throws -> JSONOrResponse {
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

    static func largeMessageRoutes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        router.post("/v1.0/users/:user/messages") { request, context -> Response in
            var request = request
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            var recipients: [String: [String]] = [:]
            for key in ["toRecipients", "ccRecipients", "bccRecipients", "replyTo"] {
                recipients[key] = (object[key] as? [[String: Any]] ?? []).compactMap { ($0["emailAddress"] as? [String: Any])?["address"] as? String }
            }
            var flat: [String: String] = ["subject": object["subject"] as? String ?? ""]
            if let body = object["body"] as? [String: Any] {
                flat["body.contentType"] = body["contentType"] as? String
                flat["body.content"] = body["content"] as? String
            }
            flat["from"] = ((object["from"] as? [String: Any])?["emailAddress"] as? [String: Any])?["address"] as? String
            let id = "draft-\(UUID().uuidString.prefix(8))"
            let draft = EmulatorState.Draft(json: flat, recipients: recipients)
            await state.set { $0.drafts[id] = draft }
            return json(.created, ["id": id, "isDraft": true])
        }
        router.post("/v1.0/users/:user/messages/:id/attachments") { request, context -> Response in
            var request = request
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard await state.drafts[id] != nil else { return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.") }
            guard object["@odata.type"] as? String == "#microsoft.graph.fileAttachment", let name = object["name"] as? String,
                  let bytes = (object["contentBytes"] as? String).flatMap(strictBase64) else {
                return graphError(.badRequest, "ErrorInvalidRequest", "fileAttachment with name and base64 contentBytes expected")
            }
            await state.set { $0.drafts[id]!.attachments.append((name, bytes, false)) }
            return json(.created, ["id": "att-\(UUID().uuidString.prefix(6))"])
        }
        router.post("/v1.0/users/:user/messages/:id/attachments/createUploadSession") { request, context -> Response in
            var request = request
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard await state.drafts[id] != nil else { return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.") }
            guard let item = object["AttachmentItem"] as? [String: Any], item["attachmentType"] as? String == "file",
                  let name = item["name"] as? String, let size = item["size"] as? Int, size > 0 else {
                return graphError(.badRequest, "ErrorInvalidRequest", "AttachmentItem with attachmentType file, name and size expected")
            }
            let sid = "s\(UUID().uuidString.prefix(8))"
            await state.set { $0.uploadSessions[sid] = EmulatorState.UploadSession(draft: id, name: name, size: size) }
            return json(.created, ["uploadUrl": "\(await state.baseURL)/upload/\(sid)", "expirationDateTime": "2030-01-01T00:00:00Z",
                                   "nextExpectedRanges": ["0-"]])
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
        router.post("/v1.0/users/:user/messages/:id/send") { request, context -> Response in
            let id = try context.parameters.require("id")
            guard let token = bearer(request), await state.isValid(token) else {
                return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            }
            guard let draft = await state.drafts[id] else { return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.") }
            await state.set { $0.sentDrafts.append(draft); $0.drafts[id] = nil }
            return Response(status: .accepted)
        }
    }
}
