import Foundation
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import Testing

@Suite("SMTP XOAUTH2 with a token from the Azure emulator, through the Postfix testbed", .serialized)
struct SMTPXOAUTH2Tests {
    @Test func xoauth2TokenFromROPCGrantIsAcceptedByPostfix() async throws {
        let peer = try TestPeers.fromEnvironment()
        let (token, user) = (peer.oauthToken, peer.user)
        let state = EmulatorState()
        await state.set {
            $0.fixedToken = token
            $0.ropcUser = user
            $0.expectedScope = "https://outlook.office.com/.default"
        }
        try await withEmulator(state, certificates: peer.certificates) { base in
            let c = xoauth2Configuration(base, peer: peer, password: "user-pass")
            let transport = try TransportFactory.make(configuration: c)
            let runner = Task { await transport.run() }
            let (message, _) = try rawMessage(from: user, to: "xoauth2-rcpt@example.test")
            let report = try await transport.send(message)
            await transport.shutdown()
            await runner.value
            #expect(report.allAccepted)
            #expect(await state.tokenRequests == 1)
            #expect(await state.lastForm["grant_type"] == "password")
            #expect(await state.lastForm["scope"] == "https://outlook.office.com/.default")
        }
    }

    @Test func a535RefreshesTheTokenOnceAndRetriesOnce() async throws {
        let peer = try TestPeers.fromEnvironment()
        let (token, user) = (peer.oauthToken, peer.user)
        let state = EmulatorState()
        await state.set {
            $0.tokenSequence = ["revoked-by-the-server"]
            $0.fixedToken = token
            $0.ropcUser = user
            $0.expectedScope = "https://outlook.office.com/.default"
        }
        try await withEmulator(state, certificates: peer.certificates) { base in
            // Another credential set than the test above (the token cache is per credential set).
            let c = xoauth2Configuration(base, peer: peer, password: "user-pass-535")
            await state.set { $0.ropcPassword = "user-pass-535" }
            let transport = try TransportFactory.make(configuration: c)
            let runner = Task { await transport.run() }
            let report = try await transport.send(try rawMessage(from: user, to: "xoauth2-rcpt@example.test").0)
            await transport.shutdown()
            await runner.value
            #expect(report.allAccepted)
            #expect(await state.tokenRequests == 2)
        }
    }

    @Test("after a reload, a 535 refreshes the token of the new token source and the retry succeeds")
    func a535AfterAReloadUsesTheNewTokenSource() async throws {
        let peer = try TestPeers.fromEnvironment()
        let (token, user) = (peer.oauthToken, peer.user)
        let state = EmulatorState()
        await state.set {
            $0.fixedToken = token
            $0.ropcUser = user
            $0.ropcPassword = "user-pass-reload"
            $0.expectedScope = "https://outlook.office.com/.default"
        }
        try await withEmulator(state, certificates: peer.certificates) { base in
            let c = xoauth2Configuration(base, peer: peer, password: "user-pass-reload")
            let mailer = try Mailer(configuration: c)
            let runner = Task { try await mailer.run() }
            let first = try await mailer.send(try rawMessage(from: user, to: "xoauth2-rcpt@example.test").0)
            #expect(first.allAccepted)
            // A new token-expiry-margin-time takes effect at once: the new transport's tokens come
            // from another cache, whose first token the server refuses (535).
            await state.set { $0.tokenSequence = ["refused-after-the-reload"] }
            var reloaded = c
            reloaded.smtpClient.tokenExpiryMarginTime = .seconds(42)
            try mailer.reload(reloaded)
            let second = try await mailer.send(try rawMessage(from: user, to: "xoauth2-rcpt@example.test").0)
            #expect(second.allAccepted, "the retry after 535 must get a fresh token from the new source")
            // The first token, the refused one, then the fresh one: the 535 path was taken.
            #expect(await state.tokenRequests == 3)
            await mailer.shutdown()
            runner.cancel()
            _ = try? await runner.value
        }
    }

    /// SMTP with STARTTLS and AUTH XOAUTH2 to the Postfix testbed, its token from the emulator's
    /// password grant (tenant-1).
    /// The emulator runs with the testbed's certificate, so one CA file trusts it and Postfix.
    private func xoauth2Configuration(_ base: String, peer: TestPeers, password: String) -> OutboxConfiguration {
        var c = configuration(base, type: .smtp, caFile: peer.caFile)
        c.smtpClient.server = peer.smtpHost
        c.smtpClient.port = peer.submissionPort
        c.smtpClient.smtpConnectionSecurity = .startTLSRequired
        c.smtpClient.enableAuthentication = true
        c.smtpClient.authMechanisms = ["XOAUTH2"]
        c.smtpClient.user = peer.user
        c.smtpClient.password = Secret(password)
        c.smtpClient.directoryID = "tenant-1"
        return c
    }
}
