import Foundation

/// A token request that failed: the OAuth `error`, the AADSTS code and description when the
/// server sent them, and the option that is probably wrong.
///
/// The description never contains the client secret, the password, the refresh token or an
/// access token: only what the token endpoint said about them.
package struct OAuthError: Error, Sendable, CustomStringConvertible {
    /// Stable codes for callers and metrics (snake_case, as every code in Outbox). Extensible:
    /// new codes are new static values, so a caller's `switch` needs a default.
    package struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        package var rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        package var description: String { rawValue }

        /// The token endpoint refused the request (HTTP 4xx with an OAuth error body).
        package static let refused = Code(rawValue: "oauth_refused")
        /// The token endpoint failed (5xx) or could not be reached: try again later.
        package static let unavailable = Code(rawValue: "oauth_unavailable")
        /// The request timed out (`connect-timeout` / `protocol-timeout`).
        package static let timeout = Code(rawValue: "oauth_timeout")
        /// The answer was not a token response.
        package static let badResponse = Code(rawValue: "oauth_bad_response")
        /// The options do not describe a usable credential set.
        package static let misconfigured = Code(rawValue: "oauth_misconfigured")
    }

    package var code: Code
    /// Which provider: `azure` or `google`.
    package var provider: String
    /// The HTTP status of the token endpoint's answer, when there was one.
    package var httpStatus: Int?
    /// The OAuth 2.0 `error` (`invalid_grant`, `invalid_client`, ...).
    package var oauthError: String?
    /// The first AADSTS code (Microsoft), e.g. 7000222 for an expired client secret.
    package var aadsts: Int?
    /// The server's `error_description` (Microsoft's starts with `AADSTSnnnn:`).
    package var errorDescription: String?
    /// The option that is probably wrong, and what to do, e.g. "password (the client secret): ...".
    package var likelyCause: String?
    /// 5xx, timeouts and connection failures: try again later.
    package var isTransient: Bool

    package init(
        code: Code, provider: String, httpStatus: Int? = nil, oauthError: String? = nil, aadsts: Int? = nil,
        errorDescription: String? = nil, likelyCause: String? = nil, isTransient: Bool
    ) {
        self.code = code
        self.provider = provider
        self.httpStatus = httpStatus
        self.oauthError = oauthError
        self.aadsts = aadsts
        self.errorDescription = errorDescription
        self.likelyCause = likelyCause
        self.isTransient = isTransient
    }

    package var description: String {
        var parts = ["\(provider == "google" ? "Google" : "Microsoft") token request failed"]
        if let httpStatus { parts.append("HTTP \(httpStatus)") }
        if let oauthError { parts.append("error=\(oauthError)") }
        if let aadsts { parts.append("AADSTS\(aadsts)") }
        var text = parts.joined(separator: ", ")
        if let errorDescription {
            // Keep the first line: Microsoft appends trace and correlation ids on later lines.
            let first = errorDescription.split(whereSeparator: \.isNewline).first.map(String.init) ?? errorDescription
            text += ": \(first.prefix(400))"
        }
        if let likelyCause { text += ". Probably wrong: \(likelyCause)" }
        text += isTransient ? " (transient: will be retried)" : ""
        return text
    }

    /// The AADSTS code at the start of a Microsoft `error_description` (`AADSTS7000222: ...`).
    static func aadstsCode(in description: String?) -> Int? {
        guard let description, let range = description.range(of: "AADSTS") else { return nil }
        let digits = description[range.upperBound...].prefix { $0.isNumber }
        return Int(digits)
    }

    /// The option behind a Microsoft error, from the AADSTS code first, the OAuth error second.
    static func azureCause(oauthError: String?, aadsts: Int?, grant: String) -> String? {
        switch aadsts {
        case 7000215: return "password (the application's client secret is invalid: copy the secret's Value, not its ID)"
        case 7000222: return "password (the application's client secret has expired: create a new one in the app registration and set password)"
        case 50126: return "user or password (the mailbox's user name or password is invalid)"
        case 50076, 50079: return "grant-type (the account requires MFA, which the password grant cannot do: use client_credentials)"
        case 700016: return "client-id (no application with this ID in the tenant directory-id)"
        case 90002, 900023: return "directory-id (the tenant was not found)"
        case 70011: return "scope (it must be a resource URI followed by /.default)"
        case 65001: return "scope or the app's API permissions (consent has not been granted)"
        case 50034: return "user (the account does not exist in the tenant)"
        case 50053: return "user (the account is locked)"
        case 50055, 50057: return "password (the account's password has expired or the account is disabled)"
        default: break
        }
        switch oauthError {
        case "invalid_client": return grant == "client_credentials" ? "password (the client secret) or client-id" : "client-id"
        case "invalid_scope": return "scope"
        case "unauthorized_client": return "client-id (the application is not allowed this grant) or grant-type"
        case "unsupported_grant_type": return "grant-type"
        case "invalid_grant": return grant == "password" ? "user or password" : "password (the client secret)"
        case "invalid_request": return "directory-id, tenant-authority or client-id"
        default: return nil
        }
    }

    /// The option behind a Google error.
    static func googleCause(oauthError: String?) -> String? {
        switch oauthError {
        case "invalid_grant":
            return "password (the refresh token has expired or was revoked: authorise the account again and set the new refresh token)"
        case "invalid_client", "unauthorized_client": return "client-id, or the password in [secret-<secret>] (the client secret)"
        case "invalid_scope": return "the scope the refresh token was created with (https://mail.google.com/)"
        case "invalid_request": return "client-id or password (the refresh token)"
        default: return nil
        }
    }
}
