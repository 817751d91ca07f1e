import Foundation
import OutboxConfig
import OutboxOAuth
import OutboxTransports

/// One route's credentials as an operator needs to see them: which kind, when the token was
/// last refreshed and when it expires, and the last refresh error (its AADSTS code or
/// `invalid_grant`). Never a secret: no token, password or client secret, only what the token
/// endpoint said about them.
public struct CredentialState: Sendable, Equatable {
    /// The route the credentials belong to (`default` today).
    public var route: String
    /// `oauth2-azure`, `oauth2-google`, `password` or `none`.
    public var kind: String
    /// When the last access token was received; nil before the first (or without OAuth).
    public var lastRefresh: Date?
    /// When that token expires.
    public var expiresAt: Date?
    /// The last failed refresh's code: `AADSTS7000222`, `invalid_grant`, or Outbox's code
    /// (`oauth_unavailable`, `oauth_timeout`...); kept after a recovery (see ``lastErrorAt``).
    public var lastErrorCode: String?
    /// The last failed refresh's description (the token endpoint's words, first line).
    public var lastError: String?
    /// When the last refresh failed.
    public var lastErrorAt: Date?
    /// True while the last refresh failed and none succeeded since.
    public var failing: Bool
    /// Successful token requests (since the credential set's cache was made).
    public var refreshes: Int
    /// Failed token requests (since the credential set's cache was made).
    public var refreshFailures: Int

    /// A state with every field given.
    public init(
        route: String, kind: String, lastRefresh: Date? = nil, expiresAt: Date? = nil, lastErrorCode: String? = nil,
        lastError: String? = nil, lastErrorAt: Date? = nil, failing: Bool = false, refreshes: Int = 0, refreshFailures: Int = 0
    ) {
        self.route = route
        self.kind = kind
        self.lastRefresh = lastRefresh
        self.expiresAt = expiresAt
        self.lastErrorCode = lastErrorCode
        self.lastError = lastError
        self.lastErrorAt = lastErrorAt
        self.failing = failing
        self.refreshes = refreshes
        self.refreshFailures = refreshFailures
    }

    package init(route: String, kind: String, health: TokenHealth?) {
        self.init(
            route: route, kind: kind, lastRefresh: health?.lastRefresh, expiresAt: health?.expiresAt,
            lastErrorCode: health?.lastErrorCode, lastError: health?.lastError, lastErrorAt: health?.lastErrorAt,
            failing: health?.failing ?? false, refreshes: health?.refreshes ?? 0, refreshFailures: health?.refreshFailures ?? 0)
    }
}

extension Mailer {
    /// The credentials of each route (today one, `default`: the transport in force) and the
    /// health of their tokens. A caller-supplied XOAUTH2 token source (``init(configuration:logger:tokenSource:)``)
    /// is reported as its kind without token health: Outbox does not see its refreshes.
    public var credentialStates: [CredentialState] {
        get async {
            let configuration = self.configuration
            let kind = CredentialInspection.kind(configuration)
            let health: TokenHealth? =
                hasCustomTokenSource ? nil : await CredentialInspection.tokenHealth(transport: transport, configuration: configuration)
            return [CredentialState(route: RouteHealth.defaultRoute, kind: kind, health: health)]
        }
    }
}
