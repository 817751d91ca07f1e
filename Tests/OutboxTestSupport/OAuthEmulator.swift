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
    /// Other mailboxes of the tenant that `/users/{mailbox}/sendMail` may send from (the
    /// application permission covers them), lowercased.
    package var tenantMailboxes: Set<String> = []
    /// The mailbox of each accepted sendMail, in order.
    package var sendMailMailboxes: [String] = []
    package var throttleNext = 0
    package var serverBusyNext = 0
    /// An accepted sendMail is answered after this long (so concurrent senders overlap).
    package var sendMailDelay: Duration = .zero
    /// Accepted sendMail requests being answered now, and the most there ever were at once.
    package var sendMailInFlight = 0
    package var sendMailMostInFlight = 0
    package var ewsBasicUser = "agent@contoso.test"
    package var ewsBasicPassword = "ews-pass"
    /// Answer 411 Length Required to a request with a body but no `Content-Length` (a chunked
    /// body), as IIS, reverse proxies and load balancers in front of Exchange commonly do.
    package var requireContentLength = true

    // What happened.
    /// Every request, in order, as it arrived (before any route).
    package var requests: [RequestRecord] = []
    /// Requests answered 411 (a body without Content-Length).
    package var lengthRequired = 0
    /// The Authorization header of each EWS request (nil: none).
    package var ewsAuthorizations: [String?] = []
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
        /// Content-ID given with an attachment (by name).
        package var contentIDs: [String: String] = [:]
        /// Display names given with the recipients (address lower-cased → name).
        package var names: [String: String] = [:]
        package var isInline: [String: Bool] = [:]
        package var contentTypes: [String: String] = [:]
    }

    /// One request's line and framing headers.
    package struct RequestRecord: Sendable {
        package var method: String
        package var path: String
        package var userAgent: String?
        package var contentLength: String?
        package var transferEncoding: String?
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
        /// The message as Exchange sends it: for a MIME draft with attachments added, the draft's
        /// MIME with those attachments put back (``Emulator/reconstruct(_:attachments:)``);
        /// otherwise ``mime``.
        package var sent: [UInt8]? = nil
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

    /// The address of the first `name:` header line (unfolded lines only), or nil.
    package static func headerAddress(_ mime: [UInt8], _ name: String) -> String? {
        let text = String(decoding: mime, as: UTF8.self)
        let prefix = name.lowercased() + ":"
        for line in text.components(separatedBy: "\r\n") {
            if line.isEmpty { break }
            if line.lowercased().hasPrefix(prefix) {
                let v = line.dropFirst(prefix.count)
                if let lt = v.firstIndex(of: "<"), let gt = v.firstIndex(of: ">") { return String(v[v.index(after: lt)..<gt]) }
                return v.trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
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
        router.add(middleware: Framing(state: state))
        tokenRoutes(router, state)
        sendMailRoute(router, state)
        largeMessageRoutes(router, state)
        ewsRoutes(router, state)
    }

    package static func tokenDelaySleep(_ s: EmulatorState) async -> Bool {
        let d = await s.tokenDelay
        if d > .zero { try? await Task.sleep(for: d) }
        return true
    }
}

/// Records every request's line, `User-Agent` and framing, and answers 411 Length Required to a
/// request that has a body without `Content-Length` (POST, PUT and PATCH must carry one) when
/// ``EmulatorState/requireContentLength`` is on.
struct Framing: RouterMiddleware {
    typealias Context = BasicRequestContext
    let state: EmulatorState

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let record = EmulatorState.RequestRecord(
            method: request.method.rawValue, path: request.uri.path, userAgent: request.headers[.userAgent],
            contentLength: request.headers[.contentLength], transferEncoding: request.headers[.transferEncoding])
        await state.set { $0.requests.append(record) }
        let hasBody = [HTTPRequest.Method.post, .put, .patch].contains(request.method)
        if await state.requireContentLength, hasBody, record.contentLength == nil || record.transferEncoding != nil {
            await state.set { $0.lengthRequired += 1 }
            return Response(
                status: .lengthRequired, headers: [.contentType: "text/html"],
                body: .init(byteBuffer: ByteBuffer(string: "<h1>Length Required</h1>")))
        }
        return try await next(request, context)
    }
}
