import AsyncHTTPClient
import Foundation
import NIOCore
import OutboxConfig
import OutboxMIME
import OutboxOAuth
import OutboxTestSupport
import Testing

@testable import OutboxTransports

/// A file of `count` random bytes (a `Message` attachment streamed from disk: its size is not
/// known to the message until it is serialised).
func randomFile(_ count: Int, name: String) throws -> (path: String, bytes: [UInt8]) {
    let bytes = randomBytes(count)
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-\(UUID().uuidString)-\(name)").path
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return (path, bytes)
}

/// `transport.send(content)`; a failure shuts the transport down before it is thrown (an HTTP
/// client left running stops the test process): the test fails, the run goes on.
func sendOrShutDown(_ transport: any MailTransport, _ content: any MailContent) async throws -> DeliveryReport {
    do {
        return try await transport.send(content)
    } catch {
        await transport.shutdown()
        throw error
    }
}

/// An HTTP client that trusts the emulator, shut down after `body`.
func withTestClient(_ body: (HTTPClient) async throws -> Void) async throws {
    let client = OutboxHTTP.makeClient(connectTimeout: .seconds(5), protocolTimeout: .seconds(10), caFile: TestCertificates.builtIn.caFile)
    do {
        try await body(client)
    } catch {
        try? await client.shutdown()
        throw error
    }
    try await client.shutdown()
}

@Suite("HTTP requests: Content-Length, User-Agent, Graph attachments", .serialized)
struct HTTPRequestTests {
    /// The emulator answers 411 to a body without Content-Length: a request sent chunked
    /// (`length: .unknown`) is refused, the same one with its length goes through.
    @Test func theEmulatorRefusesAChunkedBody() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            try await withTestClient { client in
                let chunks = ["<soap:Envelope>", "</soap:Envelope>"].map { ByteBuffer(string: $0) }
                let stream = {
                    AsyncStream<ByteBuffer> { c in
                        for chunk in chunks { c.yield(chunk) }
                        c.finish()
                    }
                }
                var request = HTTPClientRequest(url: "\(base)/EWS/Exchange.asmx")
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "text/xml; charset=utf-8")
                request.body = .stream(stream(), length: .unknown)
                let chunked = try await client.execute(request, timeout: .seconds(30))
                #expect(chunked.status.code == 411)
                request.body = .stream(stream(), length: .known(Int64(chunks.map(\.readableBytes).reduce(0, +))))
                let known = try await client.execute(request, timeout: .seconds(30))
                #expect(known.status.code == 401)  // past the framing check: no credentials
                #expect(await state.lengthRequired == 1)
                #expect(await state.requests.first?.transferEncoding?.lowercased() == "chunked")
            }
        }
    }

    /// Every request of every way (token, sendMail, MIME draft, PATCH, attachment, upload
    /// session, upload PUTs, send; EWS CreateItem streamed, SaveOnly + UpdateItem) carries its
    /// Content-Length, no Transfer-Encoding, and `User-Agent: Outbox/<version>`.
    @Test func everyRequestCarriesItsLengthAndUserAgent() async throws {
        let state = EmulatorState()
        let big = try randomFile(5 * 1024 * 1024 + 17, name: "big.bin")
        let medium = try randomFile(300 * 1024, name: "medium.bin")
        defer {
            for f in [big.path, medium.path] { try? FileManager.default.removeItem(atPath: f) }
        }
        try await withEmulator(state) { base in
            // 5 MiB through a debug build on a loaded machine: a wait of a minute, not 10 s.
            let patient: (inout OutboxConfiguration) -> Void = { $0.smtpClient.protocolTimeout = .seconds(60) }
            let graph = try TransportFactory.make(configuration: configuration(base, type: .graph, patient))
            _ = try await sendOrShutDown(graph, try rawMessage().0)
            let large = Message(
                from: try Address("agent@contoso.test"), to: [try Address("rcpt@example.test")], subject: "large", text: "see attached",
                attachments: [.file(path: big.path, filename: "big.bin"), .file(path: medium.path, filename: "medium.bin")])
            _ = try await sendOrShutDown(graph, large)
            await graph.shutdown()
            let ews = try TransportFactory.make(configuration: configuration(base, type: .ews, patient))
            // A Message with a file attachment: its size is unknown until it is serialised.
            #expect(large.knownByteCount == nil)
            _ = try await sendOrShutDown(ews, large)
            let (relayedMessage, _) = relayed(headers: "To: a@example.test, b@example.test\r\n", envelope: ["a@example.test"])
            _ = try await sendOrShutDown(ews, relayedMessage)
            await ews.shutdown()
            #expect(await state.lengthRequired == 0)
            let requests = await state.requests
            let paths = Set(
                requests.map {
                    "\($0.method) \($0.path.replacingOccurrences(of: #"draft-[^/]+|s[0-9A-F]{8}$"#, with: "*", options: .regularExpression))"
                })
            for expected in [
                "POST /tenant-1/oauth2/v2.0/token", "POST /v1.0/users/agent@contoso.test/sendMail", "POST /v1.0/users/agent@contoso.test/messages",
                "PATCH /v1.0/users/agent@contoso.test/messages/*", "POST /v1.0/users/agent@contoso.test/messages/*/attachments",
                "POST /v1.0/users/agent@contoso.test/messages/*/attachments/createUploadSession", "PUT /upload/*",
                "POST /v1.0/users/agent@contoso.test/messages/*/send", "POST /EWS/Exchange.asmx",
            ] {
                #expect(paths.contains(expected), "no \(expected) in \(paths.sorted())")
            }
            for r in requests {
                #expect(r.userAgent == "Outbox/\(OutboxVersion.current)", "\(r.method) \(r.path)")
                #expect(r.transferEncoding == nil, "\(r.method) \(r.path)")
                if ["POST", "PUT", "PATCH"].contains(r.method) { #expect(r.contentLength != nil, "\(r.method) \(r.path)") }
            }
            #expect(await state.calls.contains("ews/CreateItem/SendAndSaveCopy"))
            #expect(await state.calls.contains("ews/UpdateItem/SendAndSaveCopy"))
            let sentByEWS = try #require(await state.deliveries.first { $0.via == "ews/CreateItem" })
            #expect(
                String(decoding: try #require(sentByEWS.mime), as: UTF8.self).contains(
                    Data(medium.bytes.prefix(300)).base64EncodedString().prefix(60)))
        }
    }

    @Test func outboxVersionIsOneConstant() {
        #expect(OutboxVersion.userAgent == "Outbox/\(OutboxVersion.current)")
        #expect(OutboxVersion.current.split(separator: ".").count == 3)
    }

    /// Graph refuses an attachment without `@odata.type` (its body is read as the abstract
    /// attachment type); Outbox's attachments carry it, so the small parts of a large message go
    /// through.
    @Test func attachmentsCarryTheirODataType() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let small = randomBytes(200 * 1024)
            let message = Message(
                from: try Address("agent@contoso.test"), to: [try Address("rcpt@example.test")], subject: "two parts", text: "see attached",
                attachments: [.data(randomBytes(4 * 1024 * 1024), filename: "big.bin"), .data(small, filename: "small.bin")])
            let report = try await sendOrShutDown(transport, message)
            await transport.shutdown()
            #expect(report.allAccepted)
            #expect(await state.calls.contains("attachment"))
            let d = try #require(await state.deliveries.first)
            #expect(d.attachments.first { $0.name == "small.bin" }?.bytes == small)
            // The emulator's refusal, as Graph's: a fileAttachment body without the type.
            try await withTestClient { client in
                let provider = try OAuthProviders.make(
                    options: configuration(base, type: .graph).smtpClient, secretSection: nil, settings: configuration(base, type: .graph).outbox,
                    client: client)
                let token = try await provider.fetchToken()
                var create = HTTPClientRequest(url: "\(base)/v1.0/users/agent@contoso.test/messages")
                create.method = .POST
                create.headers.add(name: "Authorization", value: "Bearer \(token.value.value)")
                create.headers.add(name: "Content-Type", value: "text/plain")
                create.body = .bytes(ByteBuffer(string: Data(try rawMessage().1).base64EncodedString()))
                let created = try await client.execute(create, timeout: .seconds(10))
                let id = try #require(
                    (try JSONSerialization.jsonObject(with: Data(buffer: try await created.body.collect(upTo: 1 << 20))) as? [String: Any])?["id"]
                        as? String)
                var attach = HTTPClientRequest(url: "\(base)/v1.0/users/agent@contoso.test/messages/\(id)/attachments")
                attach.method = .POST
                attach.headers.add(name: "Authorization", value: "Bearer \(token.value.value)")
                attach.headers.add(name: "Content-Type", value: "application/json")
                attach.body = .bytes(ByteBuffer(string: #"{"name":"a.txt","contentType":"text/plain","contentBytes":"aGk="}"#))
                let refused = try await client.execute(attach, timeout: .seconds(10))
                #expect(refused.status.code == 400)
                let text = String(buffer: try await refused.body.collect(upTo: 1 << 20))
                #expect(text.contains("RequestBodyRead"))
            }
        }
    }
}
