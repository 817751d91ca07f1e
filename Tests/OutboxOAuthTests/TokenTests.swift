import AsyncHTTPClient
import Foundation
import OutboxConfig
import OutboxOAuth
import OutboxTestSupport
import Testing

@Suite("Token providers against local emulators", .serialized)
struct TokenProviderTests {
    func googleOptions(_ base: String) -> (SMTPClientOptions, OutboxSettings, SecretSection) {
        var o = SMTPClientOptions()
        o.tenantAuthority = "https://accounts.google.com"
        o.clientID = "client-1"
        o.password = Secret("refresh-1")
        o.user = "agent@gmail.test"
        var s = OutboxSettings()
        s.googleTokenURL = "\(base)/google/token"
        s.tlsCAFile = TestCertificates.builtIn.caFile
        return (o, s, SecretSection(name: "smtp", password: Secret("google-secret")))
    }

    @Test func googleRefreshTokenGrant() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let (o, s, secret) = googleOptions(base)
            let client = OutboxHTTP.makeClient(options: o, settings: s)
            let provider = try OAuthProviders.make(options: o, secretSection: secret, settings: s, client: client)
            let cache = TokenCache(clock: ContinuousClock(), margin: .seconds(10))
            let token = try await cache.token(for: provider)
            #expect(await state.isValid(token.value.value))
            #expect(
                await state.lastForm == [
                    "client_id": "client-1", "client_secret": "google-secret",
                    "refresh_token": "refresh-1", "grant_type": "refresh_token",
                ])
            try await client.shutdown()
        }
    }

    @Test func revokedGoogleRefreshTokenSaysSo() async throws {
        let state = EmulatorState()
        await state.set { $0.googleRevoked = true }
        try await withEmulator(state) { base in
            let (o, s, secret) = googleOptions(base)
            let client = OutboxHTTP.makeClient(options: o, settings: s)
            let provider = try OAuthProviders.make(options: o, secretSection: secret, settings: s, client: client)
            await #expect {
                _ = try await provider.fetchToken()
            } throws: { error in
                guard let e = error as? OAuthError else { return false }
                return e.oauthError == "invalid_grant" && !e.isTransient && e.description.contains("refresh token")
                    && e.description.contains("Token has been expired or revoked.") && !e.description.contains("refresh-1")
                    && !e.description.contains("google-secret")
            }
            try await client.shutdown()
        }
    }

    @Test func unreachableEndpointIsTransient() async throws {
        var o = SMTPClientOptions()
        o.clientID = "c"
        o.directoryID = "t"
        o.password = Secret("p")
        o.serverType = .graph
        o.tenantAuthority = "https://127.0.0.1:1"
        o.connectTimeout = .seconds(2)
        let client = OutboxHTTP.makeClient(options: o, settings: OutboxSettings())
        let provider = try OAuthProviders.make(options: o, secretSection: nil, settings: OutboxSettings(), client: client)
        await #expect {
            _ = try await provider.fetchToken()
        } throws: { error in
            (error as? OAuthError)?.isTransient == true
        }
        try await client.shutdown()
    }

    @Test func missingOptionsAreNamed() throws {
        var o = SMTPClientOptions()
        o.serverType = .graph
        let client = OutboxHTTP.makeClient(options: o, settings: OutboxSettings())
        defer { try? client.syncShutdown() }
        #expect {
            _ = try OAuthProviders.make(options: o, secretSection: nil, settings: OutboxSettings(), client: client)
        } throws: { error in
            (error as? OAuthError)?.likelyCause == "client-id"
        }
    }
}
