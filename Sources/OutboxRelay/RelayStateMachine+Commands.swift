import Foundation
import OutboxConfig
import OutboxSMTPGrammar

/// The commands of a session: EHLO/HELO, STARTTLS, MAIL, RCPT, DATA, BDAT, RSET and the rest.
extension RelayStateMachine {
    // MARK: - Commands

    mutating func error(_ reply: SMTPServerReply) -> Action {
        errors += 1
        if errors >= policy.maxErrors {
            state = .closed
            return .replyAndClose(SMTPServerReply(421, "4.7.0", "\(policy.hostname) Error: too many errors"))
        }
        return .reply(reply)
    }

    var inTransaction: Bool { envelope != nil }

    mutating func command(_ command: SMTPServerCommand) -> Action {
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

    mutating func resetTransaction() {
        envelope = nil
        messageOversized = false
        if case .bdatIdle = state { state = .command }
    }

    /// Whether AUTH may be offered now.
    var authAvailable: Bool { !policy.requireTLSForAuth || info.tls }

    func ehloLines() -> [String] {
        var lines = [
            policy.hostname, "PIPELINING", "SIZE \(policy.maxMessageSize)", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8",
            "CHUNKING", "DSN",
        ]
        if policy.canStartTLS && !info.tls { lines.append("STARTTLS") }
        if authAvailable { lines.append("AUTH PLAIN LOGIN") }
        return lines
    }

    mutating func mail(path: String, parameters: SMTPParameters) -> Action {
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
        // The queue's disk is below queue-min-free, or the declared SIZE does not fit: a
        // temporary refusal (RFC 5321 §4.5.3.1.10 / RFC 1870), not counted as the client's error.
        if let refusal = intake.refusal(declaredSize: envelope.declaredSize) { return .reply(refusal) }
        // The client is over its intake-limit-per-minute: try again later.
        if let refusal = clientIntakeRefusal { return .reply(refusal) }
        self.envelope = envelope
        return .reply(SMTPServerReply(250, "2.1.0", "Ok"))
    }

    mutating func rcpt(path: String, parameters: SMTPParameters) -> Action {
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
}
