import Foundation
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

@testable import OutboxTransports

@Suite("enable-debug, allow-delegate and enable-authentication on Graph and EWS", .serialized)
struct HTTPOptionTests {
    /// Graph with enable-debug: each exchange (token, sendMail, draft, upload PUT) is logged with
    /// method, URL, status, headers and timing; no token, client secret or upload credential
    /// shows, and the token endpoint's bodies never do.
    @Test func graphDebugLogsEachExchangeWithoutSecrets() async throws {
        let state = EmulatorState()
        let recorder = LogRecorder()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(
                configuration: configuration(base, type: .graph) { $0.smtpClient.enableDebug = true }, logger: recorder.logger())
            _ = try await sendOrShutDown(transport, try rawMessage().0)
            let large = Message(
                from: try Address("agent@contoso.test"), to: [try Address("rcpt@example.test")], subject: "large", text: "see attached",
                attachments: [.data(randomBytes(3_200_000), filename: "big.bin")])
            _ = try await sendOrShutDown(transport, large)
            await transport.shutdown()
        }
        let lines = recorder.lines
        let messages = recorder.messages
        #expect(messages.contains { $0.hasPrefix("azure token HTTP > POST ") && $0.contains("/tenant-1/oauth2/v2.0/token") })
        #expect(messages.contains { $0.hasPrefix("azure token HTTP < 200 OK for POST ") && $0.contains(" ms | ") })
        #expect(
            messages.contains { $0.hasPrefix("graph HTTP > POST ") && $0.contains("/sendMail | ") && $0.contains("Authorization: Bearer <redacted>") }
        )
        #expect(messages.contains { $0.hasPrefix("graph HTTP < 202 Accepted for POST ") && $0.contains("/sendMail in ") })
        #expect(messages.contains { $0.hasPrefix("graph HTTP > PUT ") && $0.contains("Content-Range: bytes 0-") })
        #expect(messages.allSatisfy { !$0.contains("HTTP >") || $0.contains("User-Agent: Outbox/\(OutboxVersion.current)") })
        // Bodies are bounded; the token endpoint's are never shown.
        #expect(messages.filter { $0.contains("HTTP") }.allSatisfy { $0.utf8.count < 4 * 1024 })
        #expect(messages.filter { $0.hasPrefix("azure token") }.allSatisfy { !$0.contains("body") })
        #expect(messages.contains { $0.hasPrefix("graph HTTP > PUT ") && $0.contains("| body 3200000 bytes: ") && $0.hasSuffix("...") })
        // No secret anywhere.
        let tokens = await Array(state.issued.keys)
        #expect(!tokens.isEmpty)
        for secret in tokens + ["s3cret-value", "client_secret="] {
            #expect(lines.allSatisfy { !$0.contains(secret) }, "\(secret) was logged")
        }
    }

    @Test func withoutEnableDebugNoExchangeIsLogged() async throws {
        let state = EmulatorState()
        let recorder = LogRecorder()
        try await withEmulator(state) { base in
            let graph = try TransportFactory.make(configuration: configuration(base, type: .graph), logger: recorder.logger())
            _ = try await sendOrShutDown(graph, try rawMessage().0)
            await graph.shutdown()
            let ews = try TransportFactory.make(configuration: configuration(base, type: .ews), logger: recorder.logger())
            _ = try await sendOrShutDown(ews, try rawMessage().0)
            await ews.shutdown()
            #expect(await state.deliveries.count == 2)
        }
        #expect(recorder.messages.allSatisfy { !$0.contains("HTTP >") && !$0.contains("HTTP <") })
    }

    /// EWS with enable-debug: Basic credentials and the password never show, the SOAP head does
    /// (the streamed MIME does not), and with XOAUTH2 the token neither.
    @Test func ewsDebugRedactsBasicAndBearer() async throws {
        let state = EmulatorState()
        await state.set { $0.expectedScope = "https://outlook.office365.com/.default" }
        let recorder = LogRecorder()
        try await withEmulator(state) { base in
            let basic = try TransportFactory.make(
                configuration: configuration(base, type: .ews) { $0.smtpClient.enableDebug = true }, logger: recorder.logger())
            _ = try await sendOrShutDown(basic, try rawMessage().0)
            await basic.shutdown()
            let bearer = try TransportFactory.make(
                configuration: configuration(base, type: .ews) {
                    $0.smtpClient.enableDebug = true
                    $0.smtpClient.ewsAuthMechanisms = ["XOAUTH2"]
                    $0.smtpClient.scope = "https://outlook.office365.com/.default"
                    $0.smtpClient.password = Secret("user-pass")
                }, logger: recorder.logger())
            _ = try await sendOrShutDown(bearer, try rawMessage().0)
            await bearer.shutdown()
            #expect(await state.deliveries.count == 2)
        }
        let messages = recorder.messages
        #expect(messages.contains { $0.hasPrefix("ews HTTP > POST ") && $0.contains("Authorization: Basic <redacted>") })
        #expect(messages.contains { $0.hasPrefix("ews HTTP > POST ") && $0.contains("Authorization: Bearer <redacted>") })
        #expect(
            messages.contains { $0.hasPrefix("ews HTTP > POST ") && $0.contains("<m:CreateItem MessageDisposition=") && $0.contains("(streamed)") })
        #expect(messages.contains { $0.hasPrefix("ews HTTP < 200 OK for POST ") && $0.contains("CreateItemResponse") })
        #expect(messages.contains { $0.hasPrefix("azure token HTTP > POST ") })
        let tokens = await Array(state.issued.keys)
        let basicCredentials = Data("agent@contoso.test:ews-pass".utf8).base64EncodedString()
        for secret in tokens + ["ews-pass", "user-pass", basicCredentials] {
            #expect(recorder.lines.allSatisfy { !$0.contains(secret) }, "\(secret) was logged")
        }
    }

    /// allow-delegate under EWS, as under Graph: refused before any request when false; when
    /// true, the item names the mailbox in t:From (no t:Sender), and Exchange's ErrorSendAsDenied
    /// says what is missing.
    @Test func ewsAllowDelegate() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let strict = try TransportFactory.make(configuration: configuration(base, type: .ews))
            let refused = await deliveryError { try await strict.send(try rawMessage(from: "shared@contoso.test").0) }
            await strict.shutdown()
            #expect(refused?.kind == .permanent)
            #expect(refused?.message.contains("allow-delegate") == true)
            #expect(await state.ewsRequests == 0)

            let delegating = try TransportFactory.make(configuration: configuration(base, type: .ews) { $0.smtpClient.allowDelegate = true })
            let denied = await deliveryError { try await delegating.send(try rawMessage(from: "shared@contoso.test").0) }
            #expect(denied?.kind == .permanent)
            #expect(denied?.message.contains("ErrorSendAsDenied") == true)

            await state.set { $0.delegates = ["shared@contoso.test"] }
            let (message, bytes) = try rawMessage(from: "shared@contoso.test", extra: "Bcc: hidden@example.test\r\n")
            let report = try await sendOrShutDown(delegating, message)
            #expect(report.allAccepted)
            let body = try #require(await state.lastEWSBody)
            #expect(
                body.contains(
                    "<t:BccRecipients><t:Mailbox><t:EmailAddress>hidden@example.test</t:EmailAddress></t:Mailbox></t:BccRecipients><t:From><t:Mailbox><t:EmailAddress>shared@contoso.test</t:EmailAddress></t:Mailbox></t:From></t:Message>"
                ))
            #expect(!body.contains("<t:Sender>"))
            let withoutBcc = String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "Bcc: hidden@example.test\r\n", with: "")
            #expect(await state.deliveries.last?.mime == Array(withoutBcc.utf8))
            // The exact-recipients way (SaveOnly, UpdateItem) names it too.
            let (relayedMessage, _) = relayed(
                headers: "To: a@example.test, b@example.test\r\n", envelope: ["a@example.test"], from: "shared@contoso.test")
            _ = try await sendOrShutDown(delegating, relayedMessage)
            await delegating.shutdown()
            #expect(await state.calls.suffix(2) == ["ews/CreateItem/SaveOnly", "ews/UpdateItem/SendAndSaveCopy"])
            #expect(await state.deliveries.last?.to == ["a@example.test"])
            // The user's own messages carry no t:From.
            let own = try TransportFactory.make(configuration: configuration(base, type: .ews) { $0.smtpClient.allowDelegate = true })
            _ = try await sendOrShutDown(own, try rawMessage().0)
            await own.shutdown()
            #expect(await state.lastEWSBody?.contains("<t:From>") == false)
        }
    }

    /// enable-authentication = false: no Authorization header and no token request, whatever
    /// user, password and mail.ews.auth.mechanisms say; a server that wants credentials answers
    /// 401, and the error names the option.
    @Test func ewsWithoutAuthenticationSendsNoCredentials() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            for xoauth2 in [false, true] {
                let transport = try TransportFactory.make(
                    configuration: configuration(base, type: .ews) {
                        $0.smtpClient.enableAuthentication = false
                        if xoauth2 { $0.smtpClient.ewsAuthMechanisms = ["XOAUTH2"] }
                    })
                let error = await deliveryError { try await transport.send(try rawMessage().0) }
                await transport.shutdown()
                // The configuration's fault, not the message's: transient, with the route's alert.
                #expect(error?.kind == .transient)
                #expect(error?.routeFault == .configuration)
                #expect(error?.message.contains("401") == true)
                #expect(error?.message.contains("enable-authentication = false") == true)
            }
            #expect(await state.ewsAuthorizations.count == 2)
            #expect(await state.ewsAuthorizations.allSatisfy { $0 == nil })
            #expect(await state.tokenRequests == 0)
            // And with it on, the same configuration sends them.
            let authenticated = try TransportFactory.make(configuration: configuration(base, type: .ews))
            _ = try await sendOrShutDown(authenticated, try rawMessage().0)
            await authenticated.shutdown()
            #expect(await state.ewsAuthorizations.last??.hasPrefix("Basic ") == true)
        }
    }
}
