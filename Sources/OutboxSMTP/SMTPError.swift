/// Every failure of the SMTP client: where it happened, what the server said, and whether a
/// later attempt can succeed. Its description never contains a password, token or AUTH payload:
/// server text is included, but commands the client sent never are.
public struct SMTPError: Error, Sendable, CustomStringConvertible {
    /// The step of the session that failed.
    public enum Stage: String, Sendable, Hashable {
        case connect, tls, greeting, ehlo, starttls, auth, mail, rcpt, data, quit, noop, rset
        /// The bytes the server sent could not be parsed, whatever step was running.
        case `protocol`
    }

    /// A stable code for callers and metrics.
    public enum Kind: String, Sendable, Hashable {
        /// The server answered with a failure reply (see `reply`).
        case reply
        /// No reply, or a write did not progress, within the timeout.
        case timeout
        /// The connection was closed or reset.
        case connectionClosed
        /// The server broke the protocol (malformed reply, endless line, unexpected data).
        case protocolViolation
        /// STARTTLS was required but the server does not offer it, or refused it.
        case tlsRequired
        /// The TLS handshake failed (certificate, host name, protocol version).
        case tlsHandshake
        /// Clear-text bytes followed the server's 220 to STARTTLS (command injection).
        case startTLSInjection
        /// No AUTH mechanism is supported by both sides.
        case noCommonAuthMechanism
        /// The message needs an extension the server lacks (SMTPUTF8), or exceeds its SIZE.
        case unsupportedByServer
        /// The client refused to send a value (CR, LF or NUL in an address or parameter).
        case invalidArgument
        /// The connection failed after the final dot was sent and before its reply arrived:
        /// the message may or may not have been accepted. Never resend blindly.
        case outcomeUnknown
        /// The connection was used after it had been closed or while in use.
        case connectionUnusable
    }

    public var stage: Stage
    public var kind: Kind
    /// The server's reply, when the server answered.
    public var reply: SMTPReply?
    /// What happened, in words a person can act on.
    public var message: String
    /// True when trying again later can succeed (4xx, network trouble, timeouts, 421).
    public var isTransient: Bool

    public init(stage: Stage, kind: Kind, reply: SMTPReply? = nil, message: String, isTransient: Bool? = nil) {
        self.stage = stage
        self.kind = kind
        self.reply = reply
        self.message = message
        if let isTransient {
            self.isTransient = isTransient
        } else if let reply {
            self.isTransient = reply.isTransientFailure
        } else {
            switch kind {
            case .timeout, .connectionClosed, .outcomeUnknown: self.isTransient = true
            case .reply, .protocolViolation, .tlsRequired, .tlsHandshake, .startTLSInjection,
                 .noCommonAuthMechanism, .unsupportedByServer, .invalidArgument, .connectionUnusable:
                self.isTransient = false
            }
        }
    }

    /// A failure reply from the server at `stage`.
    public static func reply(_ reply: SMTPReply, stage: Stage, message: String? = nil) -> SMTPError {
        SMTPError(stage: stage, kind: .reply, reply: reply,
                  message: message ?? "the server refused \(stage.rawValue.uppercased()): \(reply)")
    }

    public var enhancedCode: EnhancedStatusCode? { reply?.enhancedCode }
    public var replyCode: Int? { reply?.code }

    public var description: String {
        "SMTP \(stage.rawValue) failed (\(isTransient ? "transient" : "permanent")): \(message)"
    }
}
