/// Every failure of the SMTP client: where it happened, what the server said, and whether a
/// later attempt can succeed. Its description never contains a password, token or AUTH payload:
/// server text is included, but commands the client sent never are.
///
/// Modelled on postgres-nio's `PSQLError`: a struct with an extensible `Code`, not a public enum.
public struct SMTPError: Error, Sendable, CustomStringConvertible {
    /// The step of the session that failed.
    public enum Stage: String, Sendable, Hashable {
        case connect, tls, greeting, ehlo, starttls, auth, mail, rcpt, data, quit, noop, rset
        /// The bytes the server sent could not be parsed, whatever step was running.
        case `protocol`
    }

    /// A stable code for callers and metrics, spelled in snake_case (`connection_closed`).
    /// New codes can be added without breaking callers that switch over the ones they know.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The snake_case spelling, e.g. `connection_closed`.
        public var rawValue: String
        /// A code from its wire spelling.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The ``rawValue``.
        public var description: String { rawValue }

        /// The server answered with a failure reply (see `reply`).
        public static let reply = Code(rawValue: "reply")
        /// No reply, or a write did not progress, within the timeout.
        public static let timeout = Code(rawValue: "timeout")
        /// The connection was closed or reset.
        public static let connectionClosed = Code(rawValue: "connection_closed")
        /// The server broke the protocol (malformed reply, endless line, unexpected data).
        public static let protocolViolation = Code(rawValue: "protocol_violation")
        /// STARTTLS was required but the server does not offer it, or refused it.
        public static let tlsRequired = Code(rawValue: "tls_required")
        /// The TLS handshake failed (certificate, host name, protocol version).
        public static let tlsHandshake = Code(rawValue: "tls_handshake")
        /// Clear-text bytes followed the server's 220 to STARTTLS (command injection).
        public static let startTLSInjection = Code(rawValue: "starttls_injection")
        /// No AUTH mechanism is supported by both sides.
        public static let noCommonAuthMechanism = Code(rawValue: "no_common_auth_mechanism")
        /// The credentials for AUTH could not be obtained (an OAuth 2.0 token fetch failed);
        /// `underlying` holds the token source's own error, with its own code.
        public static let credentialsUnavailable = Code(rawValue: "credentials_unavailable")
        /// The message needs an extension the server lacks (SMTPUTF8), or exceeds its SIZE.
        public static let unsupportedByServer = Code(rawValue: "unsupported_by_server")
        /// The client refused to send a value (CR, LF or NUL in an address or parameter).
        public static let invalidArgument = Code(rawValue: "invalid_argument")
        /// The connection failed after the final dot was sent and before its reply arrived:
        /// the message may or may not have been accepted. Never resend blindly.
        public static let outcomeUnknown = Code(rawValue: "outcome_unknown")
        /// The connection was used after it had been closed or while in use.
        public static let connectionUnusable = Code(rawValue: "connection_unusable")

        /// Whether a failure with this code and no reply can succeed later.
        var isTransientWithoutReply: Bool {
            self == .timeout || self == .connectionClosed || self == .outcomeUnknown || self == .credentialsUnavailable
        }
    }

    /// The step of the session that failed.
    public var stage: Stage
    /// What kind of failure it is; ``Code/reply`` when the server refused (see `reply`).
    public var code: Code
    /// The server's reply, when the server answered.
    public var reply: SMTPReply?
    /// What happened, in words a person can act on.
    public var message: String
    /// True when trying again later can succeed (4xx, network trouble, timeouts, 421).
    public var isTransient: Bool
    /// The error behind this one, when another component failed (the OAuth 2.0 token source
    /// for `credentialsUnavailable`): its own code survives.
    public var underlying: (any Error)?

    /// A failure at `stage`; `isTransient` defaults from the reply's class, else from the code.
    public init(
        stage: Stage, code: Code, reply: SMTPReply? = nil, message: String, isTransient: Bool? = nil,
        underlying: (any Error)? = nil
    ) {
        self.stage = stage
        self.code = code
        self.reply = reply
        self.message = message
        self.underlying = underlying
        if let isTransient {
            self.isTransient = isTransient
        } else if let reply {
            self.isTransient = reply.isTransientFailure
        } else {
            self.isTransient = code.isTransientWithoutReply
        }
    }

    /// A failure reply from the server at `stage`.
    public static func reply(_ reply: SMTPReply, stage: Stage, message: String? = nil) -> SMTPError {
        SMTPError(
            stage: stage, code: .reply, reply: reply,
            message: message ?? "the server refused \(stage.rawValue.uppercased()): \(reply)")
    }

    /// The enhanced status code of the server's reply, when it gave one.
    public var enhancedCode: EnhancedStatusCode? { reply?.enhancedCode }
    /// The three-digit code of the server's reply, when it answered.
    public var replyCode: Int? { reply?.code }

    /// `SMTP <stage> failed (transient|permanent): <message>`.
    public var description: String {
        "SMTP \(stage.rawValue) failed (\(isTransient ? "transient" : "permanent")): \(message)"
    }
}
