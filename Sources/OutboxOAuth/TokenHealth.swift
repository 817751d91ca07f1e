import Foundation

/// What a ``TokenCache`` knows of one credential set's tokens: the last refresh, the token's
/// expiry, the last error. For `/v1/status`, `/readyz`, the dashboard and the metrics.
///
/// Never a secret: the error is the token endpoint's OAuth error, its AADSTS code and the first
/// line of its description (``OAuthError/description``), which name options, not their values.
package struct TokenHealth: Sendable, Equatable {
    /// `azure` or `google`.
    package var provider: String
    /// When the last token was received (wall clock); nil before the first.
    package var lastRefresh: Date?
    /// When that token expires (wall clock).
    package var expiresAt: Date?
    /// `AADSTS7000222`, `invalid_grant`, or the error's code (`oauth_unavailable`...) of the last
    /// failed refresh; kept after a recovery (with ``lastErrorAt``), so an operator sees what happened.
    package var lastErrorCode: String?
    /// The last failed refresh's description.
    package var lastError: String?
    /// When the last refresh failed.
    package var lastErrorAt: Date?
    /// The last refresh failed (and none succeeded since).
    package var failing = false
    /// Token requests that succeeded, since the cache was made.
    package var refreshes = 0
    /// Token requests that failed, since the cache was made.
    package var refreshFailures = 0

    package init(provider: String) {
        self.provider = provider
    }

    /// A refresh succeeded at `now` with a token living `expiresIn`.
    package mutating func succeeded(at now: Date, expiresIn: Duration) {
        lastRefresh = now
        expiresAt = now.addingTimeInterval(Double(expiresIn.components.seconds) + Double(expiresIn.components.attoseconds) / 1e18)
        failing = false
        refreshes += 1
    }

    /// A refresh failed at `now` with `error`.
    package mutating func failed(at now: Date, error: OAuthError) {
        lastErrorCode = Self.code(of: error)
        lastError = error.description
        lastErrorAt = now
        failing = true
        refreshFailures += 1
    }

    /// The most specific code of an error: Microsoft's AADSTS code, else the OAuth `error`
    /// (`invalid_grant`), else Outbox's code.
    package static func code(of error: OAuthError) -> String {
        if let aadsts = error.aadsts { return "AADSTS\(aadsts)" }
        if let oauth = error.oauthError, !oauth.isEmpty { return oauth }
        return error.code.rawValue
    }

    /// The provider named by a cache key (`azure|...`, `google|...`).
    package static func provider(ofKey key: String) -> String {
        key.hasPrefix("google") ? "google" : "azure"
    }
}
