import Foundation

/// One access token per credential set, reused until `expires_in - token-expiry-margin-time`
/// after it was requested (PROTOCOLS.md §1.3).
///
/// Callers that need a token while one is being fetched wait for that request: there is at
/// most one token request per credential set at a time, however many sends run. After a 401
/// (Graph, EWS) or 535 (SMTP XOAUTH2), ``invalidate(_:token:)`` drops the token only if it is
/// still the one that failed, so 50 concurrent failures lead to one refresh, not 50.
///
/// Each credential set's health (``TokenHealth``: last refresh, expiry, last error) is kept for
/// `/v1/status`, `/readyz` and the metrics.
///
/// Generic over the clock so that expiry and margin can be tested with a manual clock.
package actor TokenCache<C: Clock> where C.Duration == Duration {
    private enum Entry {
        case ready(AccessToken, validUntil: C.Instant)
        case fetching(Task<AccessToken, any Error>, id: Int)
    }

    private let clock: C
    package let margin: Duration
    private var entries: [String: Entry] = [:]
    private var nextID = 0
    /// How many token requests were made (for tests and metrics).
    package private(set) var fetchCount = 0
    /// Each credential set's refreshes and errors, by cache key.
    private var healthByKey: [String: TokenHealth] = [:]

    package init(clock: C, margin: Duration) {
        self.clock = clock
        self.margin = margin
    }

    /// A valid token for `provider`'s credential set: the cached one, or a new one.
    package func token(for provider: any TokenProvider) async throws(OAuthError) -> AccessToken {
        let key = provider.cacheKey
        switch entries[key] {
        case .ready(let token, let validUntil) where clock.now < validUntil:
            return token
        case .fetching(let task, _):
            return try await Self.wait(task, provider: provider)
        case .ready, nil:
            break
        }
        nextID += 1
        let id = nextID
        fetchCount += 1
        let requestedAt = clock.now
        let margin = self.margin
        let task = Task<AccessToken, any Error> { try await provider.fetchToken() }
        entries[key] = .fetching(task, id: id)
        do {
            let token = try await Self.wait(task, provider: provider)
            healthByKey[key, default: TokenHealth(provider: TokenHealth.provider(ofKey: key))].succeeded(at: Date(), expiresIn: token.expiresIn)
            if case .fetching(_, let current) = entries[key], current == id {
                let life = token.expiresIn - margin
                entries[key] = .ready(token, validUntil: requestedAt.advanced(by: life > .zero ? life : .zero))
            }
            return token
        } catch {
            healthByKey[key, default: TokenHealth(provider: TokenHealth.provider(ofKey: key))].failed(at: Date(), error: error)
            if case .fetching(_, let current) = entries[key], current == id { entries[key] = nil }
            throw error
        }
    }

    /// The health of `provider`'s credential set: a fresh record (no refresh yet) when none was
    /// requested.
    package func health(for provider: any TokenProvider) -> TokenHealth {
        healthByKey[provider.cacheKey] ?? TokenHealth(provider: TokenHealth.provider(ofKey: provider.cacheKey))
    }

    /// Forgets `token` (it was refused with 401 or 535) unless a newer one replaced it already.
    package func invalidate(_ provider: any TokenProvider, token: AccessToken) {
        let key = provider.cacheKey
        if case .ready(let cached, _) = entries[key], cached.value == token.value {
            entries[key] = nil
        }
    }

    /// Forgets every token (configuration reload).
    package func removeAll() {
        entries.removeAll()
    }

    private static func wait(_ task: Task<AccessToken, any Error>, provider: any TokenProvider) async throws(OAuthError) -> AccessToken {
        do {
            return try await task.value
        } catch let error as OAuthError {
            throw error
        } catch {
            throw OAuthError(
                code: .unavailable, provider: provider.cacheKey.hasPrefix("google") ? "google" : "azure",
                errorDescription: "\(error)", isTransient: true)
        }
    }
}

/// A provider bound to a cache: what a transport holds.
package struct CachedTokenSource: Sendable {
    package let provider: any TokenProvider
    package let cache: TokenCache<ContinuousClock>

    package init(provider: any TokenProvider, cache: TokenCache<ContinuousClock>) {
        self.provider = provider
        self.cache = cache
    }

    package func token() async throws(OAuthError) -> AccessToken {
        try await cache.token(for: provider)
    }

    package func invalidate(_ token: AccessToken) async {
        await cache.invalidate(provider, token: token)
    }

    /// The credential set's health (last refresh, expiry, last error).
    package func health() async -> TokenHealth {
        await cache.health(for: provider)
    }
}
