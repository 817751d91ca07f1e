import Foundation
import OutboxConfig
import OutboxSMTPGrammar

/// What the listener knows of the current connection's policy (from `[relay]` and the client's
/// address), fixed when the connection opens; `clients` and limits are re-read on reload.
package struct RelaySessionPolicy: Sendable {
    package var hostname: String
    /// The client's address is in `allowed-networks`: it may send without AUTH.
    package var trustedNetwork: Bool
    /// A certificate is configured (STARTTLS can be offered).
    package var canStartTLS: Bool
    /// The connection arrived on an implicit-TLS port.
    package var implicitTLS: Bool
    package var requireTLSForAuth: Bool
    /// The SIZE advertised and enforced.
    package var maxMessageSize: Int
    package var maxRecipients: Int
    /// Bad commands before the listener hangs up (421).
    package var maxErrors: Int = 20

    package init(
        hostname: String, trustedNetwork: Bool, canStartTLS: Bool, implicitTLS: Bool, requireTLSForAuth: Bool,
        maxMessageSize: Int, maxRecipients: Int
    ) {
        self.hostname = hostname
        self.trustedNetwork = trustedNetwork
        self.canStartTLS = canStartTLS
        self.implicitTLS = implicitTLS
        self.requireTLSForAuth = requireTLSForAuth
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
    }
}

/// The envelope of one message as the client gave it, with its DSN parameters (RFC 3461).
package struct RelayEnvelope: Sendable, Hashable {
    package struct Recipient: Sendable, Hashable {
        package var address: String
        /// `NOTIFY=` as given (e.g. `FAILURE,DELAY` or `NEVER`), upper-cased.
        package var notify: String?
        /// `ORCPT=` as given (`rfc822;user@example.com`, xtext).
        package var orcpt: String?
    }

    /// Empty for the null sender `<>`.
    package var sender: String
    package var recipients: [Recipient] = []
    /// `RET=FULL|HDRS`.
    package var ret: String?
    /// `ENVID=` (xtext).
    package var envid: String?
    /// `BODY=8BITMIME|7BIT|BINARYMIME`, `SMTPUTF8`.
    package var body: String?
    package var smtpUTF8 = false
    /// `SIZE=` as declared.
    package var declaredSize: Int?
}

/// Who the client is, as the listener learned it.
package struct RelaySessionInfo: Sendable, Hashable {
    package var heloName: String?
    /// EHLO (not HELO) was used.
    package var extended = false
    package var tls = false
    /// TLS version and cipher, for the Received header ("TLSv1.3").
    package var tlsDescription: String?
    /// The `[client-NAME]` it authenticated as.
    package var authenticatedUser: String?
    package var clientName: String?
}

/// The listener's SMTP protocol as a value: events in, actions out. No channel, no clock, no
/// store: the handler (`RelayServerHandler`) carries out the actions and reports back.
package struct RelayStateMachine: Sendable {
    package enum AuthMechanism: String, Sendable {
        case plain = "PLAIN"
        case login = "LOGIN"
    }

    enum State: Sendable {
        /// Waiting for a command.
        case command
        /// AUTH sent 334; waiting for the client's next line.
        case authPLAIN
        case authLOGINUser
        case authLOGINPassword(user: String)
        /// The password is being checked; commands wait.
        case verifying
        /// 220 to STARTTLS sent; waiting for the handshake.
        case startingTLS
        /// 354 sent: the message's bytes follow.
        case data
        /// A BDAT chunk of `remaining` bytes follows.
        case bdat(remaining: Int, last: Bool)
        /// BDAT transaction between chunks.
        case bdatIdle
        /// The message is complete and being committed.
        case committing
        case closed
    }

    /// What the handler must do.
    package enum Action: Sendable, Equatable {
        case none
        case reply(SMTPServerReply)
        /// Write the reply, then close the connection.
        case replyAndClose(SMTPServerReply)
        /// Write the reply (220), drop whatever the client sent after STARTTLS, start TLS.
        case startTLS(SMTPServerReply)
        /// Check these credentials, then call `authVerified`.
        case verify(user: String, password: String)
        /// Write the reply (354) and read the message (dot-terminated).
        case receiveData(SMTPServerReply)
        /// Read `size` bytes of a BDAT chunk (nothing is written yet); `first`: the message's
        /// first chunk, so anything left of an earlier one (ended by RSET) is dropped.
        case receiveChunk(size: Int, first: Bool)
        /// The message is complete: check it, commit it, then call `committed`.
        case commit(RelayEnvelope)
    }

    package internal(set) var policy: RelaySessionPolicy
    package internal(set) var info = RelaySessionInfo()
    var state: State = .command
    /// The identity the client authenticated as.
    package internal(set) var identity: ClientIdentity?
    package internal(set) var envelope: RelayEnvelope?
    /// The message was larger than the limit (set by the handler's decoder).
    var messageOversized = false
    var errors = 0
    package internal(set) var shuttingDown = false
    /// Messages accepted in this session.
    package internal(set) var accepted = 0
    /// What the queue may take now (its disk's free space above `queue-min-free`), set by the
    /// handler before each command.
    package var intake: RelayIntake = .open(room: nil)
    /// The client is over its `intake-limit-per-minute`: MAIL gets this `452 4.7.0`.
    package var clientIntakeRefusal: SMTPServerReply?

    package init(policy: RelaySessionPolicy) {
        self.policy = policy
        self.info.tls = policy.implicitTLS
    }

    /// Greeting (RFC 5321 §4.3.1).
    package func greeting() -> SMTPServerReply {
        SMTPServerReply(220, nil, "\(policy.hostname) ESMTP Outbox")
    }

    /// True while the handler must read message bytes rather than command lines.
    package var readsMessage: Bool {
        switch state {
        case .data, .bdat: true
        default: false
        }
    }

    /// True while a command line may be read and handed to `line(_:)`.
    package var acceptsLines: Bool {
        switch state {
        case .command, .authPLAIN, .authLOGINUser, .authLOGINPassword, .bdatIdle: true
        default: false
        }
    }

    /// True while a message is being received or committed (shutdown lets it finish).
    package var inMessage: Bool {
        switch state {
        case .data, .bdat, .bdatIdle, .committing: true
        default: false
        }
    }

    /// Lines of AUTH exchanges carry credentials.
    package var expectsSecretLine: Bool {
        switch state {
        case .authPLAIN, .authLOGINUser, .authLOGINPassword: true
        default: false
        }
    }

    package var isClosed: Bool { if case .closed = state { true } else { false } }

    // MARK: - Events

    /// A command line arrived (without CRLF).
    package mutating func line(_ bytes: [UInt8]) -> Action {
        switch state {
        case .authPLAIN:
            return authPLAINResponse(bytes)
        case .authLOGINUser:
            return authLOGINUser(bytes)
        case .authLOGINPassword(let user):
            return authLOGINPassword(user: user, bytes)
        case .command, .bdatIdle:
            return command(SMTPServerCommand.parse(bytes))
        case .verifying, .startingTLS, .data, .bdat, .committing, .closed:
            // The handler never reads lines here; be safe.
            return .none
        }
    }

    /// A command line longer than allowed (RFC 5321 §4.5.3.1.4: 512 octets).
    package mutating func lineTooLong() -> Action {
        if expectsSecretLine { state = .command }
        return error(SMTPServerReply(500, "5.5.2", "Line too long (512 octets at most)"))
    }

    /// The TLS handshake after STARTTLS (or on an implicit-TLS port) completed.
    package mutating func tlsEstablished(description: String?) {
        info.tls = true
        info.tlsDescription = description
        if case .startingTLS = state {
            // RFC 3207 §4.2: the server forgets everything it knew; the client starts with EHLO.
            info.heloName = nil
            info.extended = false
            envelope = nil
            state = .command
        }
    }

    /// The outcome of `verify`.
    package enum AuthOutcome: Sendable {
        case success(ClientIdentity)
        case invalid
        /// Too many failures: refused for a while.
        case lockedOut
        /// The checker is overloaded or failed.
        case temporaryFailure
    }

    package mutating func authVerified(_ outcome: AuthOutcome) -> Action {
        guard case .verifying = state else { return .none }
        state = .command
        switch outcome {
        case .success(let client):
            identity = client
            info.authenticatedUser = client.user
            info.clientName = client.name
            return .reply(SMTPServerReply(235, "2.7.0", "Authentication successful"))
        case .invalid:
            return error(SMTPServerReply(535, "5.7.8", "Authentication credentials invalid"))
        case .lockedOut:
            return error(SMTPServerReply(454, "4.7.0", "Too many failed authentications; try again later"))
        case .temporaryFailure:
            return .reply(SMTPServerReply(454, "4.7.0", "Temporary authentication failure"))
        }
    }

    /// The message's bytes ended (DATA's final dot, or BDAT LAST's chunk read).
    package mutating func messageEnded(oversized: Bool) -> Action {
        switch state {
        case .data:
            break
        case .bdat(_, let last):
            if !last {
                state = .bdatIdle
                messageOversized = messageOversized || oversized
                return .reply(SMTPServerReply(250, "2.0.0", "Chunk received"))
            }
        default:
            return .none
        }
        guard let envelope else { state = .command; return .none }
        if oversized || messageOversized {
            self.envelope = nil
            messageOversized = false
            state = .command
            return .reply(SMTPServerReply(552, "5.3.4", "Message too big for system (at most \(policy.maxMessageSize) bytes)"))
        }
        state = .committing
        return .commit(envelope)
    }

    /// A BDAT chunk's bytes were read (not the last one): the next command follows.
    /// The outcome of `commit`: the queue id, or the reply that refuses it.
    package mutating func committed(_ result: Result<String, SMTPServerReplyError>) -> Action {
        guard case .committing = state else { return .none }
        envelope = nil
        messageOversized = false
        state = .command
        switch result {
        case .success(let id):
            accepted += 1
            return .reply(SMTPServerReply(250, "2.0.0", "Ok: queued as \(id)"))
        case .failure(let failure):
            return .reply(failure.reply)
        }
    }

    /// The command timer fired.
    package mutating func timedOut() -> Action {
        state = .closed
        return .replyAndClose(SMTPServerReply(421, "4.4.2", "\(policy.hostname) Error: timeout exceeded"))
    }

    /// The whole session lasted too long.
    package mutating func sessionExpired() -> Action {
        if inMessage { return .none }
        state = .closed
        return .replyAndClose(SMTPServerReply(421, "4.4.2", "\(policy.hostname) Error: session too long"))
    }

    /// The daemon is shutting down: a session waiting for a command is told so at once; one in
    /// the middle of a message finishes it first.
    package mutating func shutdown() -> Action {
        shuttingDown = true
        switch state {
        case .command, .authPLAIN, .authLOGINUser, .authLOGINPassword:
            state = .closed
            return .replyAndClose(Self.shuttingDownReply(policy.hostname))
        default:
            return .none
        }
    }

    static func shuttingDownReply(_ host: String) -> SMTPServerReply {
        SMTPServerReply(421, "4.3.2", "\(host) Service shutting down, closing transmission channel")
    }

    /// The connection closed.
    package mutating func closed() {
        state = .closed
    }

    /// Called by the handler as BDAT chunk bytes are read; true when the chunk is complete.
    package mutating func chunkBytesRead(_ count: Int) -> Bool {
        guard case .bdat(let remaining, let last) = state else { return false }
        let left = remaining - count
        state = .bdat(remaining: left, last: last)
        return left <= 0
    }

    /// The bytes a BDAT chunk still needs.
    package var chunkRemaining: Int? {
        if case .bdat(let remaining, _) = state { return remaining }
        return nil
    }

    package var chunkIsLast: Bool {
        if case .bdat(_, let last) = state { return last }
        return false
    }
}

/// Base64 (RFC 4648) for AUTH lines, strict: no white space, padding as required.
enum Base64Decoder {
    static func decode(_ input: [UInt8]) -> [UInt8]? {
        if input.isEmpty { return [] }
        return Data(base64Encoded: Data(input)).map { Array($0) }
    }
}

/// What the queue's store may take now, for MAIL's answer.
package enum RelayIntake: Sendable, Equatable {
    /// Open; `room`: bytes that fit before the store's `queue-min-free` (nil: unknown).
    case open(room: Int64?)
    /// Refused until deliveries free space.
    case refused

    /// The `452 4.3.1` for a MAIL that cannot be taken now (nil: it can).
    func refusal(declaredSize: Int?) -> SMTPServerReply? {
        switch self {
        case .refused:
            return SMTPServerReply(452, "4.3.1", "Insufficient system storage, try again later")
        case .open(let room):
            guard let room, let declaredSize, Int64(declaredSize) > room else { return nil }
            return SMTPServerReply(452, "4.3.1", "Insufficient system storage for a message of \(declaredSize) bytes, try again later")
        }
    }
}
