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

    package private(set) var policy: RelaySessionPolicy
    package private(set) var info = RelaySessionInfo()
    var state: State = .command
    /// The identity the client authenticated as.
    package private(set) var identity: ClientIdentity?
    package private(set) var envelope: RelayEnvelope?
    /// The message was larger than the limit (set by the handler's decoder).
    var messageOversized = false
    var errors = 0
    package private(set) var shuttingDown = false
    /// Messages accepted in this session.
    package private(set) var accepted = 0

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

    // MARK: - Commands

    private mutating func error(_ reply: SMTPServerReply) -> Action {
        errors += 1
        if errors >= policy.maxErrors {
            state = .closed
            return .replyAndClose(SMTPServerReply(421, "4.7.0", "\(policy.hostname) Error: too many errors"))
        }
        return .reply(reply)
    }

    private var inTransaction: Bool { envelope != nil }

    private mutating func command(_ command: SMTPServerCommand) -> Action {
        if shuttingDown {
            state = .closed
            return .replyAndClose(Self.shuttingDownReply(policy.hostname))
        }
        if case .bdatIdle = state {
            switch command {
            case .bdat, .rset, .quit, .noop: break
            default:
                return error(SMTPServerReply(503, "5.5.1", "Error: only BDAT, RSET, NOOP or QUIT may follow a BDAT chunk"))
            }
        }
        switch command {
        case .ehlo(let name):
            info.heloName = name
            info.extended = true
            resetTransaction()
            return .reply(SMTPServerReply(250, nil, ehloLines()))
        case .helo(let name):
            info.heloName = name
            info.extended = false
            resetTransaction()
            return .reply(SMTPServerReply(250, nil, policy.hostname))
        case .startTLS:
            if info.tls { return error(SMTPServerReply(503, "5.5.1", "Error: TLS already active")) }
            if !policy.canStartTLS { return error(SMTPServerReply(502, "5.5.1", "Error: command not implemented (no certificate is configured)")) }
            if inTransaction { return error(SMTPServerReply(503, "5.5.1", "Error: STARTTLS in the middle of a mail transaction")) }
            state = .startingTLS
            return .startTLS(SMTPServerReply(220, "2.0.0", "Ready to start TLS"))
        case .auth(let mechanism, let initial):
            return auth(mechanism: mechanism, initial: initial)
        case .mail(let path, let parameters):
            return mail(path: path, parameters: parameters)
        case .rcpt(let path, let parameters):
            return rcpt(path: path, parameters: parameters)
        case .data:
            guard let envelope else { return error(SMTPServerReply(503, "5.5.1", "Error: need MAIL command")) }
            if envelope.recipients.isEmpty { return error(SMTPServerReply(554, "5.5.1", "Error: no valid recipients")) }
            if envelope.body == "BINARYMIME" { return error(SMTPServerReply(503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT, not DATA")) }
            state = .data
            return .receiveData(SMTPServerReply(354, nil, "End data with <CR><LF>.<CR><LF>"))
        case .bdat(let size, let last):
            guard let envelope else { return error(SMTPServerReply(503, "5.5.1", "Error: need MAIL command")) }
            if envelope.recipients.isEmpty { return error(SMTPServerReply(554, "5.5.1", "Error: no valid recipients")) }
            let first: Bool
            if case .bdatIdle = state { first = false } else { first = true }
            state = .bdat(remaining: size, last: last)
            return .receiveChunk(size: size, first: first)
        case .rset:
            resetTransaction()
            return .reply(SMTPServerReply(250, "2.0.0", "Ok"))
        case .noop:
            return .reply(SMTPServerReply(250, "2.0.0", "Ok"))
        case .quit:
            state = .closed
            return .replyAndClose(SMTPServerReply(221, "2.0.0", "Bye"))
        case .vrfy:
            return .reply(SMTPServerReply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"))
        case .expn:
            return error(SMTPServerReply(502, "5.5.1", "Error: EXPN is not supported"))
        case .help:
            return .reply(SMTPServerReply(214, "2.0.0", "Outbox: see RFC 5321 and RFC 6409"))
        case .invalid(let reply):
            return error(reply)
        case .unknown:
            return error(SMTPServerReply(500, "5.5.2", "Error: command not recognized"))
        }
    }

    private mutating func resetTransaction() {
        envelope = nil
        messageOversized = false
        if case .bdatIdle = state { state = .command }
    }

    /// Whether AUTH may be offered now.
    private var authAvailable: Bool { !policy.requireTLSForAuth || info.tls }

    func ehloLines() -> [String] {
        var lines = [
            policy.hostname, "PIPELINING", "SIZE \(policy.maxMessageSize)", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8",
            "CHUNKING", "DSN",
        ]
        if policy.canStartTLS && !info.tls { lines.append("STARTTLS") }
        if authAvailable { lines.append("AUTH PLAIN LOGIN") }
        return lines
    }

    private mutating func auth(mechanism: String, initial: String?) -> Action {
        if info.heloName == nil { return error(SMTPServerReply(503, "5.5.1", "Error: send EHLO first")) }
        if identity != nil { return error(SMTPServerReply(503, "5.5.1", "Error: already authenticated")) }
        if inTransaction { return error(SMTPServerReply(503, "5.5.1", "Error: AUTH is not allowed during a mail transaction")) }
        if !authAvailable { return error(SMTPServerReply(538, "5.7.11", "Encryption required for requested authentication mechanism")) }
        switch AuthMechanism(rawValue: mechanism) {
        case .plain:
            guard let initial else {
                state = .authPLAIN
                return .reply(SMTPServerReply(334, nil, ""))
            }
            return authPLAINResponse(Array(initial.utf8))
        case .login:
            guard let initial else {
                state = .authLOGINUser
                return .reply(SMTPServerReply(334, nil, "VXNlcm5hbWU6"))
            }
            return authLOGINUser(Array(initial.utf8))
        case nil:
            return error(SMTPServerReply(504, "5.5.4", "Unrecognized authentication type (PLAIN and LOGIN are offered)"))
        }
    }

    private mutating func cancelled(_ bytes: [UInt8]) -> Action? {
        if bytes == [UInt8(ascii: "*")] {
            state = .command
            return error(SMTPServerReply(501, "5.0.0", "Authentication cancelled"))
        }
        return nil
    }

    private mutating func authPLAINResponse(_ bytes: [UInt8]) -> Action {
        if let cancelled = cancelled(bytes) { return cancelled }
        state = .command
        // An empty initial response ("=") is an empty message: no credentials.
        guard let decoded = Base64Decoder.decode(bytes == [UInt8(ascii: "=")] ? [] : bytes) else {
            return error(SMTPServerReply(501, "5.5.2", "Cannot decode the AUTH response (not base64)"))
        }
        let parts = decoded.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let authcid = String(validating: parts[1], as: UTF8.self),
            let password = String(validating: parts[2], as: UTF8.self), !authcid.isEmpty
        else {
            return error(SMTPServerReply(501, "5.5.2", "Malformed AUTH PLAIN response (authzid NUL authcid NUL password)"))
        }
        if let authzid = String(validating: parts[0], as: UTF8.self), !authzid.isEmpty, authzid != authcid {
            return error(SMTPServerReply(535, "5.7.8", "Authentication credentials invalid (no authorization identity other than the user)"))
        }
        state = .verifying
        return .verify(user: authcid, password: password)
    }

    private mutating func authLOGINUser(_ bytes: [UInt8]) -> Action {
        if let cancelled = cancelled(bytes) { return cancelled }
        guard let decoded = Base64Decoder.decode(bytes), let user = String(validating: decoded, as: UTF8.self), !user.isEmpty else {
            state = .command
            return error(SMTPServerReply(501, "5.5.2", "Cannot decode the user name (not base64)"))
        }
        state = .authLOGINPassword(user: user)
        return .reply(SMTPServerReply(334, nil, "UGFzc3dvcmQ6"))
    }

    private mutating func authLOGINPassword(user: String, _ bytes: [UInt8]) -> Action {
        if let cancelled = cancelled(bytes) { return cancelled }
        guard let decoded = Base64Decoder.decode(bytes), let password = String(validating: decoded, as: UTF8.self) else {
            state = .command
            return error(SMTPServerReply(501, "5.5.2", "Cannot decode the password (not base64)"))
        }
        state = .verifying
        return .verify(user: user, password: password)
    }

    private mutating func mail(path: String, parameters: SMTPParameters) -> Action {
        if info.heloName == nil { return error(SMTPServerReply(503, "5.5.1", "Error: send HELO/EHLO first")) }
        if inTransaction { return error(SMTPServerReply(503, "5.5.1", "Error: nested MAIL command")) }
        // Never an open relay: a client must be in allowed-networks or authenticated.
        if identity == nil && !policy.trustedNetwork {
            return error(SMTPServerReply(530, "5.7.0", "Authentication required"))
        }
        if let identity, !path.isEmpty, !identity.allows(sender: path) {
            return error(SMTPServerReply(553, "5.7.1", "Sender address rejected: not owned by user \(identity.user)"))
        }
        var envelope = RelayEnvelope(sender: path)
        for (key, value) in parameters.items {
            switch key {
            case "SIZE":
                guard let value, value.count <= 12, let size = Int(value), size >= 0 else {
                    return error(SMTPServerReply(501, "5.5.4", "Bad SIZE parameter"))
                }
                if size > policy.maxMessageSize {
                    return error(SMTPServerReply(552, "5.3.4", "Message size exceeds fixed limit (at most \(policy.maxMessageSize) bytes)"))
                }
                envelope.declaredSize = size
            case "BODY":
                guard let v = value?.uppercased(), ["7BIT", "8BITMIME", "BINARYMIME"].contains(v) else {
                    return error(SMTPServerReply(501, "5.5.4", "Bad BODY parameter (7BIT, 8BITMIME or BINARYMIME)"))
                }
                envelope.body = v
            case "SMTPUTF8":
                guard value == nil else { return error(SMTPServerReply(501, "5.5.4", "SMTPUTF8 takes no value")) }
                envelope.smtpUTF8 = true
            case "RET":
                guard let v = value?.uppercased(), v == "FULL" || v == "HDRS" else {
                    return error(SMTPServerReply(501, "5.5.4", "Bad RET parameter (FULL or HDRS)"))
                }
                envelope.ret = v
            case "ENVID":
                guard let v = value, !v.isEmpty, v.utf8.count <= 100, XText.isValid(v) else {
                    return error(SMTPServerReply(501, "5.5.4", "Bad ENVID parameter (xtext, 100 characters at most)"))
                }
                envelope.envid = v
            case "AUTH":
                // RFC 4954 §5: accepted and not passed on as given.
                continue
            default:
                return error(SMTPServerReply(555, "5.5.4", "Unsupported MAIL parameter \(SMTPServerCommand.printable(key))"))
            }
        }
        if !envelope.smtpUTF8, path.utf8.contains(where: { $0 >= 0x80 }) {
            return error(SMTPServerReply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter"))
        }
        self.envelope = envelope
        return .reply(SMTPServerReply(250, "2.1.0", "Ok"))
    }

    private mutating func rcpt(path: String, parameters: SMTPParameters) -> Action {
        guard var envelope else { return error(SMTPServerReply(503, "5.5.1", "Error: need MAIL command")) }
        if envelope.recipients.count >= policy.maxRecipients {
            return .reply(SMTPServerReply(452, "4.5.3", "Error: too many recipients (at most \(policy.maxRecipients) per message)"))
        }
        if !envelope.smtpUTF8, path.utf8.contains(where: { $0 >= 0x80 }) {
            return error(SMTPServerReply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter at MAIL"))
        }
        var recipient = RelayEnvelope.Recipient(address: path)
        for (key, value) in parameters.items {
            switch key {
            case "NOTIFY":
                let items = (value ?? "").uppercased().split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                let valid =
                    items == ["NEVER"]
                    || (!items.isEmpty && Set(items).count == items.count && items.allSatisfy { ["SUCCESS", "FAILURE", "DELAY"].contains($0) })
                guard valid else { return error(SMTPServerReply(501, "5.5.4", "Bad NOTIFY parameter (NEVER, or SUCCESS, FAILURE, DELAY)")) }
                recipient.notify = items.joined(separator: ",")
            case "ORCPT":
                guard let v = value, let semicolon = v.firstIndex(of: ";"), v[..<semicolon].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }),
                    XText.isValid(String(v[v.index(after: semicolon)...])), v.utf8.count <= 500
                else {
                    return error(SMTPServerReply(501, "5.5.4", "Bad ORCPT parameter (addr-type;xtext)"))
                }
                recipient.orcpt = v
            default:
                return error(SMTPServerReply(555, "5.5.4", "Unsupported RCPT parameter \(SMTPServerCommand.printable(key))"))
            }
        }
        envelope.recipients.append(recipient)
        self.envelope = envelope
        return .reply(SMTPServerReply(250, "2.1.5", "Ok"))
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
