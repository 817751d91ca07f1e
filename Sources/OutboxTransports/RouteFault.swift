import OutboxSMTP

/// Why a delivery failed for a reason that is the route's and not the message's: the server
/// broke the protocol or refused the session, TLS failed, the credentials were refused or could
/// not be had, the configuration is wrong, or the server cannot be reached. An operator can fix
/// each of them; none is the message's fault, so none fails a message (as Postfix defers mail for
/// a dead destination). A stable snake_case code, extensible like every code in Outbox.
public struct RouteFault: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// The snake_case spelling, e.g. `authentication_failed`.
    public var rawValue: String
    /// A fault from its spelling.
    public init(rawValue: String) { self.rawValue = rawValue }
    /// The ``rawValue``.
    public var description: String { rawValue }

    /// The server refused the credentials (SMTP 535 and other AUTH failures, HTTP 401).
    public static let authenticationFailed = RouteFault(rawValue: "authentication_failed")
    /// The credentials could not be had: the token endpoint refused (`invalid_grant`,
    /// `invalid_client`, `AADSTS...`) or failed.
    public static let credentialsUnavailable = RouteFault(rawValue: "credentials_unavailable")
    /// The server broke the protocol: a malformed reply, an endless line, too many lines.
    public static let protocolViolation = RouteFault(rawValue: "protocol_violation")
    /// The TLS handshake failed (certificate, host name, version), or STARTTLS was required
    /// and not offered, or was abused.
    public static let tlsFailed = RouteFault(rawValue: "tls_failed")
    /// The server could not be reached, or closed the connection before a transaction began.
    public static let connectionFailed = RouteFault(rawValue: "connection_failed")
    /// The server did not answer in time before a transaction began.
    public static let timeout = RouteFault(rawValue: "timeout")
    /// The server refused the session itself (its greeting, EHLO, or `530` authentication
    /// required), not a message.
    public static let sessionRefused = RouteFault(rawValue: "session_refused")
    /// The configuration cannot work: no common AUTH mechanism, a missing or wrong option, a
    /// permission the account lacks.
    public static let configuration = RouteFault(rawValue: "configuration")
    /// The provider throttles the route (``Throttling``): `432 4.3.2`, `421 4.7.x`, `454 4.7.0`,
    /// Gmail's `550 5.4.5`, Exchange Online's `554 5.2.0 ... SubmissionQuotaExceeded`, HTTP 429
    /// or 503 with `Retry-After`, EWS's `ErrorServerBusy`. The route pauses for the time asked
    /// (``DeliveryError/retryAfter``) or with back-off; the message is deferred, never failed.
    public static let throttled = RouteFault(rawValue: "throttled")
}

extension DeliveryError {
    /// How an SMTP failure counts: only the server's 5xx reply to MAIL, RCPT or the message
    /// (DATA, BDAT, the end of data) is permanent, and so are the client's refusals of the message
    /// itself (a CR or LF in an address, a message the server's SIZE or missing SMTPUTF8 cannot
    /// take). Everything an operator can fix is transient with a ``RouteFault``. A lost connection
    /// or a timeout once a transaction has begun is transient with none (the message may be at
    /// fault, or nothing is). The provider's throttling (``Throttling``), at any stage, is
    /// transient with ``RouteFault/throttled``, even when dressed as a 5xx; any other 421 is
    /// transient with none.
    public static func classify(_ error: SMTPError) -> (kind: Kind, routeFault: RouteFault?) {
        let beforeTransaction: Set<SMTPError.Stage> = [.connect, .tls, .greeting, .ehlo, .starttls, .auth]
        switch error.code {
        case .outcomeUnknown: return (.outcomeUnknown, nil)
        case .protocolViolation: return (.transient, .protocolViolation)
        case .tlsHandshake, .tlsRequired, .startTLSInjection: return (.transient, .tlsFailed)
        case .noCommonAuthMechanism: return (.transient, .configuration)
        case .credentialsUnavailable: return (.transient, .credentialsUnavailable)
        case .invalidArgument, .unsupportedByServer: return (.permanent, nil)
        case .connectionUnusable: return (.transient, nil)
        case .timeout: return (.transient, beforeTransaction.contains(error.stage) ? .timeout : nil)
        case .connectionClosed: return (.transient, beforeTransaction.contains(error.stage) ? .connectionFailed : nil)
        case .reply:
            guard let reply = error.reply else { return (error.isTransient ? .transient : .permanent, nil) }
            if Throttling.isThrottling(reply) { return (.transient, .throttled) }
            if reply.code == 421 { return (.transient, nil) }
            switch error.stage {
            case .mail, .rcpt, .data:
                // 530 5.7.0: the server wants AUTH before MAIL (enable-authentication is off).
                if reply.code == 530 { return (.transient, .sessionRefused) }
                return (reply.isTransientFailure ? .transient : .permanent, nil)
            case .auth: return (.transient, .authenticationFailed)
            case .starttls, .tls: return (.transient, .tlsFailed)
            case .protocol: return (.transient, .protocolViolation)
            case .connect, .greeting, .ehlo, .quit, .noop, .rset: return (.transient, .sessionRefused)
            }
        default:
            return (error.isTransient ? .transient : .permanent, nil)
        }
    }
}
