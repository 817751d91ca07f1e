import OutboxConfig

/// An OAuth 2.0 access token: the value (never printed) and how long it lives.
package struct AccessToken: Sendable, Equatable {
    package var value: Secret
    /// `expires_in` from the token response.
    package var expiresIn: Duration
    /// When the response arrived (the continuous clock, for the SMTP pool's connection retirement).
    package var receivedAt: ContinuousClock.Instant

    package init(value: String, expiresIn: Duration, receivedAt: ContinuousClock.Instant = .now) {
        self.value = Secret(value)
        self.expiresIn = expiresIn
        self.receivedAt = receivedAt
    }

    /// When the token stops working, on the continuous clock.
    package var expiresAt: ContinuousClock.Instant { receivedAt + expiresIn }
}

/// Gets a new access token from a token endpoint.
package protocol TokenProvider: Sendable {
    /// Identifies the credential set (endpoint, client, user, scope and a digest of the secret);
    /// tokens are cached under it.
    var cacheKey: String { get }
    /// One token request.
    func fetchToken() async throws(OAuthError) -> AccessToken
}
