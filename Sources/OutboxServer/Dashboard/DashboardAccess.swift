import Foundation
import Hummingbird
import HummingbirdAuth

/// The request context of the HTTP listener: the API ignores sessions, the dashboard keeps its
/// operator's session (hummingbird-auth's `SessionMiddleware`, in memory).
package struct OutboxRequestContext: RequestContext, SessionRequestContext {
    /// Hummingbird's per-request storage.
    package var coreContext: CoreRequestContextStorage
    /// The dashboard's session, when the request carries its cookie.
    package let sessions: SessionContext<DashboardSession>

    /// A context for one request.
    package init(source: Source) {
        self.coreContext = .init(source: source)
        self.sessions = .init()
    }
}

/// A dashboard session: who opened it (never a secret) and its CSRF token.
///
/// The login form has a session too, not yet authenticated (a "pre-session", as OWASP's CSRF
/// cheat sheet names it): it carries the CSRF token the login POST must send back, so that
/// another site cannot log a browser in under its own token (login CSRF). Logging in replaces
/// it with a new session under a new id.
package struct DashboardSession: Codable, Sendable {
    /// The token's position in `[outbox] api-tokens` (`token #2`), or `loopback`; empty for the
    /// login form's pre-session.
    package var who: String
    /// The per-session random token every POST form carries.
    package var csrf: String
    /// False for the login form's pre-session: it opens no page and allows no action.
    package var authenticated: Bool

    /// A session opened by `who`, with its CSRF token.
    package init(who: String, csrf: String, authenticated: Bool = true) {
        self.who = who
        self.csrf = csrf
        self.authenticated = authenticated
    }

    /// The login form's pre-session: a fresh CSRF token, nobody logged in.
    package static func preLogin() -> DashboardSession {
        DashboardSession(who: "", csrf: DashboardAccess.newToken(), authenticated: false)
    }
}

/// The checks the dashboard and the API share: the Host header on loopback without tokens
/// (DNS rebinding), and CSRF tokens.
package enum DashboardAccess {
    /// True for a Host header that names this machine: `localhost`, `127.x.y.z` or `[::1]`,
    /// with or without a port. A request without a Host header (HTTP/1.0) passes: a rebinding
    /// browser always sends the name it resolved.
    package static func isLoopbackHost(_ host: String?) -> Bool {
        guard var host = host?.trimmingCharacters(in: .whitespaces).lowercased() else { return true }
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let rest = host[host.index(after: close)...]
            guard rest.isEmpty || (rest.hasPrefix(":") && Int(rest.dropFirst()) != nil) else { return false }
            return host[host.index(after: host.startIndex)..<close] == "::1"
        }
        if let colon = host.lastIndex(of: ":") {
            guard Int(host[host.index(after: colon)...]) != nil else { return false }
            host = String(host[..<colon])
        }
        if host.hasSuffix(".") { host.removeLast() }
        if host == "localhost" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    /// The refusal of a request whose Host is not loopback while no token is required, or nil.
    static func hostRefusal(_ request: Request, requireToken: Bool) -> APIError? {
        guard !requireToken else { return nil }
        let host = request.head.authority
        guard !isLoopbackHost(host) else { return nil }
        return APIError(
            .forbidden, "forbidden_host",
            "without [outbox] api-tokens this listener answers only requests for localhost, 127.0.0.1 or [::1] (the Host header names another; DNS rebinding)"
        )
    }

    /// A new CSRF token: 32 bytes from the system's random generator, hex.
    package static func newToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// The form's CSRF token matches the session's (constant time).
    package static func csrfMatches(session: DashboardSession?, form: String?) -> Bool {
        guard let session, let form, !session.csrf.isEmpty else { return false }
        return OutboxAPI.constantTimeEqual(session.csrf, form)
    }
}

/// An `application/x-www-form-urlencoded` body or query.
package enum FormData {
    /// Every key's values, in order.
    package static func parse(_ text: String) -> [String: [String]] {
        var out: [String: [String]] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String {
                String(s).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            let key = decode(parts[0])
            out[key, default: []].append(parts.count > 1 ? decode(parts[1]) : "")
        }
        return out
    }

    /// Percent-encodes `value` for a query string.
    package static func encode(_ value: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }
}
