import Foundation
import NIOCore
import OutboxConfig
import OutboxMIME
import OutboxOAuth
import OutboxTestSupport
import OutboxTransports
import Testing

func deliveryError(_ body: () async throws -> DeliveryReport) async -> DeliveryError? {
    do {
        _ = try await body()
        return nil
    } catch let error as DeliveryError {
        return error
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

@Suite("Graph, EWS and OAuth against local emulators", .serialized)
struct EmulatorTransportTests {
    @Test func graphDeliversTheSameMIMEBytes() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let (message, bytes) = try rawMessage()
            let report = try await transport.send(message)
            await transport.shutdown()
            #expect(report.transport == "graph")
            #expect(report.allAccepted)
            #expect(report.recipients.map(\.address) == ["rcpt@example.test"])
            let delivered = await state.delivered
            #expect(delivered == [bytes])
            #expect(await state.lastForm["grant_type"] == "client_credentials")
            #expect(await state.lastForm["scope"] == "https://graph.microsoft.com/.default")
        }
    }

    @Test func graphAddsBccAsAHeader() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let (message, bytes) = try rawMessage(extra: "Bcc: hidden@example.test\r\n")
            _ = try await transport.send(message)
            await transport.shutdown()
            let delivered = try #require(await state.delivered.first)
            let prefix = Array("Bcc: hidden@example.test\r\n".utf8)
            #expect(Array(delivered.prefix(prefix.count)) == prefix)
            // The rest is the message as Outbox serialises it (without its own Bcc line).
            let withoutBcc = String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "Bcc: hidden@example.test\r\n", with: "")
            #expect(Array(delivered.dropFirst(prefix.count)) == Array(withoutBcc.utf8))
        }
    }

    @Test func ewsDeliversTheSameMIMEBytesWithBasicAuth() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(
                configuration: configuration(base, type: .ews) {
                    $0.smtpClient.exchangeVersion = "Exchange2010_SP3"
                })
            let (message, bytes) = try rawMessage(extra: "Bcc: hidden@example.test\r\n")
            let report = try await transport.send(message)
            await transport.shutdown()
            #expect(report.transport == "ews")
            #expect(report.allAccepted)
            let withoutBcc = String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "Bcc: hidden@example.test\r\n", with: "")
            #expect(await state.delivered == [Array(withoutBcc.utf8)])
            #expect(await state.lastEWSVersion == "Exchange2010_SP2")
            #expect(
                await state.lastEWSBody?.contains(
                    "<t:BccRecipients><t:Mailbox><t:EmailAddress>hidden@example.test</t:EmailAddress></t:Mailbox></t:BccRecipients>") == true)
            #expect(await state.tokenRequests == 0)
        }
    }

    @Test func ewsStreamsALargeMessage() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .ews))
            let line = String(repeating: "0123456789abcdef", count: 4) + "\r\n"
            let (message, bytes) = try rawMessage(body: String(repeating: line, count: 100_000))  // ~6.6 MB
            _ = try await transport.send(message)
            await transport.shutdown()
            #expect(await state.delivered.first == bytes)
        }
    }

    @Test func ewsWithXOAUTH2UsesBearerAndAnchorMailbox() async throws {
        let state = EmulatorState()
        await state.set { $0.expectedScope = "https://outlook.office365.com/.default" }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(
                configuration: configuration(base, type: .ews) {
                    $0.smtpClient.ewsAuthMechanisms = ["XOAUTH2"]
                    $0.smtpClient.scope = "https://outlook.office365.com/.default"
                    $0.smtpClient.password = Secret("user-pass")
                    $0.smtpClient.exchangeVersion = nil
                })
            let (message, bytes) = try rawMessage()
            _ = try await transport.send(message)
            await transport.shutdown()
            #expect(await state.delivered == [bytes])
            #expect(await state.lastForm["grant_type"] == "password")
            #expect(await state.lastForm["username"] == "agent@contoso.test")
            #expect(await state.lastAnchorMailbox == "agent@contoso.test")
            #expect(await state.lastEWSVersion == "Exchange2016")
        }
    }

    @Test func exchangeVersionMapping() {
        #expect(EWSTransport.requestServerVersion("Exchange2010_SP3") == "Exchange2010_SP2")
        #expect(EWSTransport.requestServerVersion("Office365") == "Exchange2013_SP1")
        #expect(EWSTransport.requestServerVersion(nil) == "Exchange2016")
        #expect(EWSTransport.requestServerVersion("exchange2013") == "Exchange2013")
        #expect(EWSTransport.requestServerVersion("Exchange2016") == "Exchange2016")
        #expect(EWSTransport.requestServerVersion("bad\"value") == "Exchange2010")
    }

    @Test func tokenIsReusedUntilExpiryMinusMarginThenRefreshed() async throws {
        // Without waiting on the wall clock (the cache's own timing is TokenCacheTests', on a
        // manual clock): a token valid for an hour is reused; one that expires within the margin
        // (valid 5 s, margin 10 s) is refreshed for every send.
        for (expiresIn, margin, requests) in [(3600, 10, 1), (5, 10, 3)] {
            let state = EmulatorState()
            await state.set { $0.expiresIn = expiresIn }
            try await withEmulator(state) { base in
                let transport = try TransportFactory.make(
                    configuration: configuration(base, type: .graph) {
                        $0.smtpClient.tokenExpiryMarginTime = .seconds(Int64(margin))
                        // Another credential set per case: the token caches are per set.
                        $0.smtpClient.clientID = "client-margin-\(margin)-\(expiresIn)"
                    })
                await state.set { $0.clientID = "client-margin-\(margin)-\(expiresIn)" }
                for _ in 0..<3 { _ = try await transport.send(try rawMessage().0) }
                await transport.shutdown()
                #expect(await state.tokenRequests == requests, "expires in \(expiresIn) s, margin \(margin) s")
                #expect(await state.delivered.count == 3)
            }
        }
    }

    @Test func fiftyConcurrentSendsShareOneTokenRequest() async throws {
        let state = EmulatorState()
        await state.set { $0.tokenDelay = .milliseconds(300) }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<50 {
                    group.addTask { try await transport.send(try rawMessage().0).allAccepted }
                }
                for try await ok in group { #expect(ok) }
            }
            await transport.shutdown()
            #expect(await state.tokenRequests == 1)
            #expect(await state.delivered.count == 50)
        }
    }

    @Test func a401RefreshesTheTokenOnceAndRetriesOnce() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            _ = try await transport.send(try rawMessage().0)
            await state.revokeAll()
            let report = try await transport.send(try rawMessage().0)
            #expect(report.attempts == 2)
            #expect(await state.tokenRequests == 2)
            #expect(await state.graphRequests == 3)
            // A token that is refused again: one refresh only, then the route's fault (transient:
            // the operator fixes the app's permissions; the message is not at fault).
            await state.set {
                $0.fixedToken = "always-revoked"; $0.revoked.insert("always-revoked")
            }
            await state.revokeAll()
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            await transport.shutdown()
            #expect(error?.kind == .transient)
            #expect(error?.routeFault == .authenticationFailed)
            #expect(await state.tokenRequests == 3)
            #expect(await state.graphRequests == 5)
        }
    }

    @Test func graph429IsTransientWithRetryAfter() async throws {
        let state = EmulatorState()
        await state.set { $0.throttleNext = 1 }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            #expect(error?.kind == .transient)
            #expect(error?.retryAfter == .seconds(7))
            #expect(error?.message.contains("ApplicationThrottled") == true)
            _ = try await transport.send(try rawMessage().0)
            await transport.shutdown()
            #expect(await state.delivered.count == 1)
        }
    }

    @Test func ewsServerBusyHonoursBackOffMilliseconds() async throws {
        let state = EmulatorState()
        await state.set { $0.serverBusyNext = 1 }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .ews))
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            await transport.shutdown()
            #expect(error?.kind == .transient)
            #expect(error?.retryAfter == .milliseconds(297_749))
            #expect(error?.message.contains("ErrorServerBusy") == true)
        }
    }

    @Test func sendAsDeniedAndAllowDelegate() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            // allow-delegate = false: refused before any request, naming the option.
            let strict = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let refused = await deliveryError { try await strict.send(try rawMessage(from: "shared@contoso.test").0) }
            await strict.shutdown()
            #expect(refused?.kind == .permanent)
            #expect(refused?.message.contains("allow-delegate") == true)
            #expect(await state.graphRequests == 0)
            // allow-delegate = true without the right: Graph's 403 ErrorSendAsDenied says what is missing.
            let delegating = try TransportFactory.make(configuration: configuration(base, type: .graph) { $0.smtpClient.allowDelegate = true })
            let denied = await deliveryError { try await delegating.send(try rawMessage(from: "shared@contoso.test").0) }
            #expect(denied?.kind == .permanent)
            #expect(denied?.message.contains("ErrorSendAsDenied") == true)
            #expect(denied?.message.contains("Send As or Send on Behalf") == true)
            // With the right, the message goes out with its own From.
            await state.set { $0.delegates = ["shared@contoso.test"] }
            let (message, bytes) = try rawMessage(from: "shared@contoso.test")
            _ = try await delegating.send(message)
            await delegating.shutdown()
            #expect(await state.delivered == [bytes])
            // EWS: ResponseClass Error ErrorSendAsDenied is permanent.
            await state.set { $0.delegates = [] }
            let ews = try TransportFactory.make(configuration: configuration(base, type: .ews) { $0.smtpClient.allowDelegate = true })
            let ewsDenied = await deliveryError { try await ews.send(try rawMessage(from: "shared@contoso.test").0) }
            await ews.shutdown()
            #expect(ewsDenied?.kind == .permanent)
            #expect(ewsDenied?.message.contains("ErrorSendAsDenied") == true)
        }
    }

    @Test func graphRefusesAMessageOverTheRequestLimit() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let line = String(repeating: "x", count: 78) + "\r\n"
            let error = await deliveryError { try await transport.send(try rawMessage(body: String(repeating: line, count: 40_000)).0) }
            await transport.shutdown()
            #expect(error?.kind == .permanent)
            #expect(error?.message.contains("4 MB") == true)
            #expect(await state.graphRequests == 0)
        }
    }

    @Test func expiredClientSecretIsAClearOperatorFixableError() async throws {
        let state = EmulatorState()
        await state.set { $0.secretExpired = true }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            await transport.shutdown()
            let e = try #require(error)
            #expect(e.kind == .transient)
            #expect(e.routeFault == .credentialsUnavailable)
            #expect(e.message.contains("AADSTS7000222"))
            #expect(e.message.contains("invalid_client"))
            #expect(e.message.contains("password"))
            #expect(!e.message.contains("s3cret-value"))
        }
    }

    @Test func wrongScopeNamesTheScopeOption() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(
                configuration: configuration(base, type: .graph) {
                    $0.smtpClient.scope = "https://graph.microsoft.com/Mail.Send"
                })
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            await transport.shutdown()
            #expect(error?.kind == .transient)
            #expect(error?.routeFault == .credentialsUnavailable)
            #expect(error?.message.contains("AADSTS70011") == true)
            #expect(error?.message.contains("Probably wrong: scope") == true)
        }
    }

    @Test func graphSendsALargeMessageThroughADraftAndUploadSessions() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            var rng = SystemRandomNumberGenerator()
            var block = [UInt8](repeating: 0, count: 65536)
            for i in stride(from: 0, to: block.count, by: 8) {
                withUnsafeBytes(of: rng.next() as UInt64) { block.replaceSubrange(i..<i + 8, with: $0) }
            }
            var big = [UInt8]()
            big.reserveCapacity(9 * 1024 * 1024 + 12345)
            for _ in 0..<144 { big += block }
            big += block[0..<12345]
            let small = Array("a small attachment\r\n".utf8)
            let message = Message(
                from: try Address("agent@contoso.test", displayName: "Agent"),
                to: [try Address("rcpt@example.test")], bcc: [try Address("hidden@example.test")],
                subject: "big one", text: "see attached",
                attachments: [.data(big, filename: "big.bin"), .data(small, filename: "small.txt")])
            let report = try await transport.send(message)
            await transport.shutdown()
            #expect(report.allAccepted)
            #expect(await state.graphRequests == 0)  // not the MIME sendMail
            #expect(await state.calls.first == "createDraft/mime")  // the message's own MIME, not a JSON draft
            let sent = try #require(await state.sentDrafts.first)
            let draft = String(decoding: try #require(sent.mime), as: UTF8.self)
            #expect(draft.contains("Subject: big one\r\n"))
            #expect(draft.contains("see attached"))
            #expect(sent.recipients["toRecipients"] == ["rcpt@example.test"])
            #expect(sent.recipients["bccRecipients"] == ["hidden@example.test"])
            // The big attachment is taken out and uploaded; the small one stays in the draft's MIME.
            #expect(sent.attachments.count == 1)
            #expect(sent.attachments.first { $0.name == "big.bin" }?.bytes == big)
            #expect(sent.attachments.first { $0.name == "big.bin" }?.viaUploadSession == true)
            #expect(draft.contains("small.txt"))
            #expect(draft.contains("a small attachment\r\n"))
            let chunks = await state.uploadChunkSizes
            #expect(chunks.count == 3)
            #expect(chunks.allSatisfy { $0 <= 4 * 1024 * 1024 })
            #expect(await state.uploadsWithAuthorization == 0)
            #expect(await state.largestGraphRequest <= 4 * 1024 * 1024)
        }
    }
}
