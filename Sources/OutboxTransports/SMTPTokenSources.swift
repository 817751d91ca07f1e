import AsyncHTTPClient
import NIOConcurrencyHelpers
import OutboxConfig
import OutboxOAuth
import OutboxSMTP

/// XOAUTH2 access tokens for SMTP from OutboxOAuth: one token cache per credential set for the
/// whole process (so a reload or a second transport with the same credentials shares the token
/// and its single refresh), and one HTTP client per timeout/CA combination, kept for the life of
/// the process (the SMTP pool has no hook to shut one down).
package enum SMTPTokenSources {
    private struct State {
        var clients: [String: HTTPClient] = [:]
        var caches: [String: TokenCache<ContinuousClock>] = [:]
        /// The `[secret-*]` section of the last configuration built, for reloads that only pass options.
        var secretSection: SecretSection?
    }
    private static let state = NIOLockedValueBox(State())

    static func client(options: SMTPClientOptions, settings: OutboxSettings) -> HTTPClient {
        let key = "\(options.connectTimeout)|\(options.protocolTimeout)|\(settings.tlsCAFile ?? "")"
        return state.withLockedValue { s in
            if let c = s.clients[key] { return c }
            let c = OutboxHTTP.makeClient(options: options, settings: settings)
            s.clients[key] = c
            return c
        }
    }

    /// The cache for `provider`'s credential set, with the margin `token-expiry-margin-time`.
    package static func cache(for provider: any TokenProvider, margin: Duration) -> TokenCache<ContinuousClock> {
        let key = "\(provider.cacheKey)|\(margin)"
        return state.withLockedValue { s in
            if let c = s.caches[key] { return c }
            let c = TokenCache(clock: ContinuousClock(), margin: margin)
            s.caches[key] = c
            return c
        }
    }

    static func remember(secretSection: SecretSection?) {
        state.withLockedValue { $0.secretSection = secretSection }
    }

    /// The provider and cache the options call for (nil secretSection: the one of the last
    /// configuration given to ``TransportFactory``).
    package static func tokenSource(
        options: SMTPClientOptions, settings: OutboxSettings,
        secretSection: SecretSection?
    ) throws(OAuthError) -> CachedTokenSource {
        let section = secretSection ?? state.withLockedValue { $0.secretSection }
        let provider = try OAuthProviders.make(
            options: options, secretSection: section, settings: settings,
            client: client(options: options, settings: settings))
        return CachedTokenSource(provider: provider, cache: cache(for: provider, margin: options.tokenExpiryMarginTime))
    }

    /// The closure the SMTP engine calls when a connection authenticates with XOAUTH2.
    package static func smtpTokenSource(
        options: SMTPClientOptions, settings: OutboxSettings,
        secretSection: SecretSection?
    ) -> @Sendable () async throws -> SMTPAccessToken {
        smtpTokenSourceWithRefresh(options: options, settings: settings, secretSection: secretSection).token
    }

    /// The token closure, and the hook that drops the last token handed out after a 535 (so the
    /// next authentication gets a new one; a newer token already cached is kept).
    package static func smtpTokenSourceWithRefresh(options: SMTPClientOptions, settings: OutboxSettings, secretSection: SecretSection?)
        -> (token: @Sendable () async throws -> SMTPAccessToken, rejected: @Sendable () async -> Void)
    {
        let source: CachedTokenSource
        do throws(OAuthError) {
            source = try tokenSource(options: options, settings: settings, secretSection: secretSection)
        } catch {
            return ({ throw error }, {})
        }
        let last = NIOLockedValueBox<AccessToken?>(nil)
        return (
            {
                let token = try await source.token()
                last.withLockedValue { $0 = token }
                return SMTPAccessToken(token: token.value.value, expiresAt: token.expiresAt)
            },
            {
                if let token = last.withLockedValue({ $0 }) { await source.invalidate(token) }
            }
        )
    }
}
