import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import OutboxConfig

/// The token request shared by every grant: a form POST, a JSON answer (PROTOCOLS.md §1).
struct TokenEndpointRequest: Sendable {
    var url: String
    var form: [(String, String)]
    var provider: String
    var grant: String
    var timeout: Duration
    /// `enable-debug`: the exchange is logged without its bodies (they hold the secrets).
    var debug: HTTPDebugLog?

    func run(client: HTTPClient) async throws(OAuthError) -> AccessToken {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        var log = debug
        log?.showsBodies = false
        log?.secrets += form.filter { ["client_secret", "password", "refresh_token"].contains($0.0) }.map(\.1).filter { !$0.isEmpty }
        let status: Int
        let body: ByteBuffer
        do {
            let answer = try await OutboxHTTP.exchange(
                request, body: .bytes(ByteBuffer(string: OutboxHTTP.formEncode(form))), client: client, timeout: timeout,
                bodyLimit: 1 << 20, debug: log)
            status = answer.status
            body = answer.body
        } catch {
            if OutboxHTTP.isTimeout(error) {
                throw OAuthError(
                    code: .timeout, provider: provider, errorDescription: "no answer from \(url) in time (connect-timeout / protocol-timeout)",
                    isTransient: true)
            }
            throw OAuthError(code: .unavailable, provider: provider, errorDescription: "\(url) could not be reached: \(error)", isTransient: true)
        }
        let json = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any]
        if (200..<300).contains(status) {
            guard let json, let token = json["access_token"] as? String, !token.isEmpty else {
                throw OAuthError(
                    code: .badResponse, provider: provider, httpStatus: status,
                    errorDescription: "the answer from \(url) has no access_token", isTransient: true)
            }
            let raw = json["expires_in"]
            let seconds = (raw as? Int).map(Double.init) ?? (raw as? Double) ?? (raw as? String).flatMap(Double.init) ?? 3600
            return AccessToken(value: token, expiresIn: .milliseconds(Int64(seconds * 1000)))
        }
        let oauthError = json?["error"] as? String
        let description = json?["error_description"] as? String
        let aadsts = (json?["error_codes"] as? [Int])?.first ?? OAuthError.aadstsCode(in: description)
        let transient = status >= 500 || status == 429 || oauthError == "temporarily_unavailable"
        let cause =
            provider == "google"
            ? OAuthError.googleCause(oauthError: oauthError)
            : OAuthError.azureCause(oauthError: oauthError, aadsts: aadsts, grant: grant)
        throw OAuthError(
            code: transient ? .unavailable : .refused, provider: provider, httpStatus: status,
            oauthError: oauthError, aadsts: aadsts,
            errorDescription: description ?? (json == nil ? "HTTP \(status) from \(url)" : nil),
            likelyCause: transient ? nil : cause, isTransient: transient)
    }
}

/// A short, non-reversible digest of a secret, so that a changed secret gets a new cache entry
/// without the secret being kept in the key (FNV-1a 64).
func secretDigest(_ secret: String) -> String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in secret.utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x0000_0100_0000_01b3
    }
    return String(hash, radix: 16)
}

/// Microsoft identity platform v2: `POST {tenant-authority}/{directory-id}/oauth2/v2.0/token`.
package struct AzureTokenProvider: TokenProvider {
    package enum Grant: Sendable, Equatable {
        /// `grant_type=client_credentials`: the application's own token; `secret` is the client secret.
        case clientCredentials(secret: Secret)
        /// `grant_type=password` (ROPC): the mailbox's user name and password.
        case password(user: String, password: Secret)
    }

    package var tenantAuthority: String
    package var directoryID: String
    package var clientID: String
    package var scope: String
    package var grant: Grant
    package var timeout: Duration
    /// `enable-debug`: token requests are logged (without bodies).
    package var debug: HTTPDebugLog?
    let client: HTTPClient

    package init(
        tenantAuthority: String, directoryID: String, clientID: String, scope: String, grant: Grant,
        timeout: Duration, client: HTTPClient, debug: HTTPDebugLog? = nil
    ) {
        self.debug = debug
        self.tenantAuthority = tenantAuthority
        self.directoryID = directoryID
        self.clientID = clientID
        self.scope = scope
        self.grant = grant
        self.timeout = timeout
        self.client = client
    }

    package var tokenURL: String {
        var base = tenantAuthority
        while base.hasSuffix("/") { base.removeLast() }
        return "\(base)/\(OutboxHTTP.percentEncode(directoryID))/oauth2/v2.0/token"
    }

    package var cacheKey: String {
        switch grant {
        case .clientCredentials(let secret):
            return "azure|cc|\(tokenURL)|\(clientID)|\(scope)|\(secretDigest(secret.value))"
        case .password(let user, let password):
            return "azure|ropc|\(tokenURL)|\(clientID)|\(scope)|\(user.lowercased())|\(secretDigest(password.value))"
        }
    }

    package func fetchToken() async throws(OAuthError) -> AccessToken {
        let form: [(String, String)]
        let grantName: String
        switch grant {
        case .clientCredentials(let secret):
            grantName = "client_credentials"
            form = [("client_id", clientID), ("client_secret", secret.value), ("scope", scope), ("grant_type", grantName)]
        case .password(let user, let password):
            grantName = "password"
            form = [
                ("client_id", clientID), ("scope", scope), ("username", user), ("password", password.value),
                ("grant_type", grantName),
            ]
        }
        return try await TokenEndpointRequest(url: tokenURL, form: form, provider: "azure", grant: grantName, timeout: timeout, debug: debug)
            .run(client: client)
    }
}

/// Google: the refresh-token grant at `[outbox] google-token-url`.
package struct GoogleTokenProvider: TokenProvider {
    package var tokenURL: String
    package var clientID: String
    package var clientSecret: Secret
    package var refreshToken: Secret
    package var timeout: Duration
    /// `enable-debug`: token requests are logged (without bodies).
    package var debug: HTTPDebugLog?
    let client: HTTPClient

    package init(
        tokenURL: String, clientID: String, clientSecret: Secret, refreshToken: Secret, timeout: Duration, client: HTTPClient,
        debug: HTTPDebugLog? = nil
    ) {
        self.debug = debug
        self.tokenURL = tokenURL
        self.clientID = clientID
        self.clientSecret = clientSecret
        self.refreshToken = refreshToken
        self.timeout = timeout
        self.client = client
    }

    package var cacheKey: String {
        "google|\(tokenURL)|\(clientID)|\(secretDigest(clientSecret.value))|\(secretDigest(refreshToken.value))"
    }

    package func fetchToken() async throws(OAuthError) -> AccessToken {
        let form = [
            ("client_id", clientID), ("client_secret", clientSecret.value), ("refresh_token", refreshToken.value),
            ("grant_type", "refresh_token"),
        ]
        return try await TokenEndpointRequest(
            url: tokenURL, form: form, provider: "google", grant: "refresh_token", timeout: timeout, debug: debug
        )
        .run(client: client)
    }
}

extension OAuthProviders {
    /// The provider the options call for (PROTOCOLS.md §1, §5):
    /// - `tenant-authority` containing "google": the refresh-token grant with `client-id`, the
    ///   client secret from `[secret-<secret>]` and the refresh token in `password`;
    /// - otherwise Azure: client credentials for GRAPH or `grant-type = client_credentials`
    ///   (`password` is the client secret), the password grant (`user`, `password`) when the
    ///   grant type is `password` or unset for SMTP/EWS; `scope` from ``SMTPClientOptions/effectiveScope``.
    /// With `enable-debug` and a `logger`, each token request is logged without its bodies.
    package static func make(
        options: SMTPClientOptions, secretSection: SecretSection?, settings: OutboxSettings,
        client: HTTPClient, logger: Logger? = nil
    ) throws(OAuthError) -> any TokenProvider {
        let timeout =
            (options.connectTimeout == .zero ? OutboxHTTP.forever : options.connectTimeout)
            + (options.protocolTimeout == .zero ? OutboxHTTP.forever : options.protocolTimeout)
        let provider = options.isGoogle ? "google" : "azure"
        let debug = options.enableDebug ? logger.map { HTTPDebugLog(logger: $0, component: "\(provider) token", showsBodies: false) } : nil
        func missing(_ what: String) -> OAuthError {
            OAuthError(code: .misconfigured, provider: provider, errorDescription: "\(what) is not set", likelyCause: what, isTransient: false)
        }
        guard let clientID = options.clientID, !clientID.isEmpty else { throw missing("client-id") }
        if options.isGoogle {
            guard let secret = secretSection?.password, !secret.value.isEmpty else {
                throw missing("password in [secret-\(options.secret)] (the Google client secret)")
            }
            guard let refresh = options.password, !refresh.value.isEmpty else { throw missing("password (the refresh token)") }
            return GoogleTokenProvider(
                tokenURL: settings.googleTokenURL, clientID: clientID, clientSecret: secret,
                refreshToken: refresh, timeout: timeout, client: client, debug: debug)
        }
        guard let directory = options.directoryID, !directory.isEmpty else { throw missing("directory-id") }
        guard let password = options.password, !password.value.isEmpty else {
            throw missing(options.effectiveGrantType == .clientCredentials ? "password (the application's client secret)" : "password")
        }
        let grant: AzureTokenProvider.Grant
        switch options.effectiveGrantType {
        case .clientCredentials:
            grant = .clientCredentials(secret: password)
        case .password:
            guard let user = options.user, !user.isEmpty else { throw missing("user") }
            grant = .password(user: user, password: password)
        }
        return AzureTokenProvider(
            tenantAuthority: options.tenantAuthority, directoryID: directory, clientID: clientID,
            scope: options.effectiveScope, grant: grant, timeout: timeout, client: client, debug: debug)
    }
}

/// Namespace for building providers from options.
package enum OAuthProviders {}
