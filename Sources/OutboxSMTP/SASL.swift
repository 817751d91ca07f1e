import Foundation
import NIOCore

/// The secret part of a credential: never printed. Its `description`, `debugDescription` and
/// mirror never show the value (so `dump()` and `Mirror` do not either), as the configuration's
/// `Secret` does.
public struct SMTPSecret: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The secret itself: read only where it goes on the wire.
    public let value: String
    /// A secret holding `value`.
    public init(_ value: String) { self.value = value }
    /// Always `<redacted>`, never the value.
    public var description: String { "<redacted>" }
    /// Always `<redacted>`, never the value.
    public var debugDescription: String { "<redacted>" }
    /// A mirror with no children, so `dump()` and `Mirror` show no value.
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}

/// An OAuth 2.0 access token and when it stops working.
public struct SMTPAccessToken: Sendable {
    /// The bearer token, sent in XOAUTH2's initial response.
    public var token: SMTPSecret
    /// When the token stops working; nil when not known. A pooled connection authenticated with
    /// it is retired `token-expiry-margin-time` before then.
    public var expiresAt: ContinuousClock.Instant?
    /// A token holding `token` as a secret, expiring at `expiresAt` (nil: not known).
    public init(token: String, expiresAt: ContinuousClock.Instant? = nil) {
        self.token = SMTPSecret(token)
        self.expiresAt = expiresAt
    }
}

/// Where AUTH gets its credentials.
public enum SMTPCredentials: Sendable {
    /// A user name and password (PLAIN, LOGIN).
    case password(user: String, password: SMTPSecret)
    /// A user name and an OAuth 2.0 access token, fetched when a connection authenticates (XOAUTH2).
    case oauth2(user: String, token: @Sendable () async throws -> SMTPAccessToken)

    /// The user name AUTH sends, for either kind of credential.
    public var user: String {
        switch self {
        case .password(let user, _), .oauth2(let user, _): return user
        }
    }
}

/// The SASL mechanisms Outbox speaks, and how one is chosen.
public enum SASLMechanism: String, Sendable, CaseIterable {
    case plain = "PLAIN"
    case login = "LOGIN"
    case xoauth2 = "XOAUTH2"

    /// JavaMail's default preference list (`mail.smtp.auth.mechanisms` unset). XOAUTH2 is only
    /// used when listed explicitly, as in JavaMail.
    public static let javaMailDefault = ["LOGIN", "PLAIN", "DIGEST-MD5", "NTLM"]

    /// JavaMail's rule: the first mechanism of the preference list that the server announces and
    /// Outbox implements; no fallback to another one when it fails.
    public static func choose(preference: [String], serverOffers: [String]) -> SASLMechanism? {
        let offered = Set(serverOffers.map { $0.uppercased() })
        for name in preference.map({ $0.uppercased() }) where offered.contains(name) {
            if let mechanism = SASLMechanism(rawValue: name) { return mechanism }
        }
        return nil
    }

    static func base64(_ string: String) -> String {
        Data(string.utf8).base64EncodedString()
    }

    /// PLAIN's initial response (RFC 4616): authzid empty, authcid, password.
    static func plainResponse(user: String, password: String) -> String {
        base64("\0\(user)\0\(password)")
    }

    /// XOAUTH2's initial response: `user=U^Aauth=Bearer T^A^A`, base64.
    static func xoauth2Response(user: String, token: String) -> String {
        base64("user=\(user)\u{01}auth=Bearer \(token)\u{01}\u{01}")
    }

    /// Decodes the JSON of an XOAUTH2 error challenge (`334 eyJzdGF0dXMiOi...`) to show its status.
    static func decodeXOAUTH2Challenge(_ text: String) -> String? {
        guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespaces)),
            let json = String(data: data, encoding: .utf8)
        else { return nil }
        return json
    }
}
