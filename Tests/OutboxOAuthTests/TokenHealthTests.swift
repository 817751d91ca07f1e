import Foundation
import OutboxOAuth
import OutboxTestSupport
import Synchronization
import Testing

/// A provider whose token endpoint refuses while `refusing` is set (Microsoft's invalid_grant).
final class SwitchingProvider: TokenProvider, @unchecked Sendable {
    let refusing = Mutex(false)
    let count = Mutex(0)
    var cacheKey: String { "azure|test|switching" }
    func fetchToken() async throws(OAuthError) -> AccessToken {
        let n = count.withLock {
            $0 += 1
            return $0
        }
        if refusing.withLock({ $0 }) {
            throw OAuthError(
                code: .refused, provider: "azure", httpStatus: 400, oauthError: "invalid_grant", aadsts: 50126,
                errorDescription: "AADSTS50126: Error validating credentials due to invalid username or password.", isTransient: false)
        }
        return AccessToken(value: "secret-token-\(n)", expiresIn: .seconds(60))
    }
}

@Suite("Token health")
struct TokenHealthRecordTests {
    @Test("refreshes, a refused one (AADSTS code kept after recovery), then a recovery; no token in the record")
    func refusedThenRecovered() async throws {
        let clock = ManualClock()
        let cache = TokenCache(clock: clock, margin: .seconds(60))  // every call refreshes
        let provider = SwitchingProvider()
        var health = await cache.health(for: provider)
        #expect(health.provider == "azure")
        #expect(health.lastRefresh == nil && !health.failing && health.refreshes == 0)

        let before = Date()
        _ = try await cache.token(for: provider)
        health = await cache.health(for: provider)
        #expect(health.refreshes == 1 && !health.failing)
        let refreshed = try #require(health.lastRefresh)
        #expect(refreshed >= before)
        let expires = try #require(health.expiresAt)
        #expect(abs(expires.timeIntervalSince(refreshed) - 60) < 0.001)

        provider.refusing.withLock { $0 = true }
        await #expect(throws: OAuthError.self) { _ = try await cache.token(for: provider) }
        health = await cache.health(for: provider)
        #expect(health.failing)
        #expect(health.lastErrorCode == "AADSTS50126")
        #expect(health.lastError?.contains("invalid_grant") == true)
        #expect(health.refreshFailures == 1)

        provider.refusing.withLock { $0 = false }
        _ = try await cache.token(for: provider)
        health = await cache.health(for: provider)
        #expect(!health.failing)
        #expect(health.lastErrorCode == "AADSTS50126", "the last error stays on record")
        #expect(health.refreshes == 2 && health.refreshFailures == 1)
        #expect(!"\(health)".contains("secret-token"))
    }

    @Test("the code: AADSTS first, then the OAuth error, then Outbox's code")
    func codes() {
        #expect(
            TokenHealth.code(of: OAuthError(code: .refused, provider: "google", oauthError: "invalid_grant", isTransient: false)) == "invalid_grant")
        #expect(TokenHealth.code(of: OAuthError(code: .timeout, provider: "azure", isTransient: true)) == "oauth_timeout")
        #expect(
            TokenHealth.code(of: OAuthError(code: .refused, provider: "azure", oauthError: "invalid_client", aadsts: 7_000_222, isTransient: false))
                == "AADSTS7000222")
    }
}
