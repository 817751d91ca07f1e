import Foundation
import OutboxConfig
import OutboxOAuth
import OutboxTestSupport
import OutboxTransports
import Synchronization
import Testing

/// A provider that counts its requests and hands out numbered tokens.
final class CountingProvider: TokenProvider, @unchecked Sendable {
    let count = Mutex(0)
    let expiresIn: Duration
    let delay: Duration
    init(expiresIn: Duration, delay: Duration = .zero) {
        self.expiresIn = expiresIn
        self.delay = delay
    }
    var cacheKey: String { "test|counting" }
    func fetchToken() async throws(OAuthError) -> AccessToken {
        let n = count.withLock {
            $0 += 1; return $0
        }
        if delay > .zero { try? await Task.sleep(for: delay) }
        return AccessToken(value: "t\(n)", expiresIn: expiresIn)
    }
}

@Suite("Token cache")
struct TokenCacheTests {
    @Test func reusedUntilExpiryMinusMargin() async throws {
        let clock = ManualClock()
        let cache = TokenCache(clock: clock, margin: .seconds(10))
        let provider = CountingProvider(expiresIn: .seconds(60))
        #expect(try await cache.token(for: provider).value.value == "t1")
        clock.advance(by: .seconds(49))
        #expect(try await cache.token(for: provider).value.value == "t1")
        clock.advance(by: .seconds(1))  // 50 s = 60 - 10: refresh, although the token is still valid for 10 s
        #expect(try await cache.token(for: provider).value.value == "t2")
        #expect(await cache.fetchCount == 2)
    }

    @Test func concurrentCallersShareOneRequestAndInvalidateDropsOnlyTheFailedToken() async throws {
        let cache = TokenCache(clock: ContinuousClock(), margin: .seconds(10))
        let provider = CountingProvider(expiresIn: .seconds(3600), delay: .milliseconds(100))
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<50 { group.addTask { try await cache.token(for: provider).value.value } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(Set(tokens) == ["t1"])
        #expect(provider.count.withLock { $0 } == 1)
        let first = try await cache.token(for: provider)
        await cache.invalidate(provider, token: first)
        let second = try await cache.token(for: provider)
        #expect(second.value.value == "t2")
        // A late 401 for the old token does not drop the new one.
        await cache.invalidate(provider, token: first)
        #expect(try await cache.token(for: provider).value.value == "t2")
        #expect(provider.count.withLock { $0 } == 2)
    }

    @Test func tokenEndpoint5xxIsTransient() async throws {
        let state = EmulatorState()
        await state.set { $0.tokenUnavailableNext = 1 }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            #expect(error?.kind == .transient)
            #expect(error?.message.contains("503") == true)
            // The failure is not cached: the next send gets a token.
            _ = try await transport.send(try rawMessage().0)
            await transport.shutdown()
            #expect(await state.delivered.count == 1)
        }
    }

    @Test func protocolTimeoutBoundsTheTokenRequest() async throws {
        let state = EmulatorState()
        await state.set { $0.tokenDelay = .seconds(6) }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(
                configuration: configuration(base, type: .graph) {
                    $0.smtpClient.protocolTimeout = .milliseconds(300)
                })
            // The answer would come after 6 s: a send that fails with the timeout, and delivers
            // nothing, ended without waiting for it. (No elapsed-time assertion: on a loaded
            // machine it measures the machine.)
            let error = await deliveryError { try await transport.send(try rawMessage().0) }
            await transport.shutdown()
            #expect(error?.kind == .transient)
            #expect(error?.message.contains("protocol-timeout") == true, "\(error?.message ?? "")")
            #expect(await state.delivered.isEmpty)
        }
    }

    @Test func ewsRefreshesTheTokenOnceOn401() async throws {
        let state = EmulatorState()
        await state.set { $0.expectedScope = "https://outlook.office365.com/.default" }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(
                configuration: configuration(base, type: .ews) {
                    $0.smtpClient.ewsAuthMechanisms = ["XOAUTH2"]
                    $0.smtpClient.scope = "https://outlook.office365.com/.default"
                    $0.smtpClient.grantType = .clientCredentials
                    $0.smtpClient.password = Secret("s3cret-value")
                })
            _ = try await transport.send(try rawMessage().0)
            await state.revokeAll()
            let report = try await transport.send(try rawMessage().0)
            await transport.shutdown()
            #expect(report.attempts == 2)
            #expect(await state.tokenRequests == 2)
            #expect(await state.ewsRequests == 3)
            // App-only token: the request impersonates the mailbox.
            #expect(await state.lastEWSBody?.contains("<t:PrimarySmtpAddress>agent@contoso.test</t:PrimarySmtpAddress>") == true)
        }
    }
}
