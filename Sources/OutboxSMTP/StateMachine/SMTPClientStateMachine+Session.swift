import NIOCore

/// Session set-up: the greeting, EHLO (HELO when EHLO is not understood), STARTTLS with the
/// injection check, EHLO again under TLS, then AUTH (see `+Authentication.swift`).
extension SMTPClientStateMachine {
    mutating func greetingReceived(_ reply: SMTPReply, now: NIODeadline) -> Action {
        facts.greeting = reply
        mark("greeting", now: now)
        guard reply.code == 220 else {
            return closeWithFailure(
                SMTPError.reply(
                    reply, stage: .greeting,
                    message: "the server refused the session in its greeting: \(reply)"))
        }
        return sendHello(ehlo: true, now: now)
    }

    mutating func sendHello(ehlo: Bool, now: NIODeadline) -> Action {
        state = .hello(ehlo: ehlo)
        waitDeadline = now + protocolTimeout
        return .write(encode(ehlo ? .ehlo(helloName) : .helo(helloName)))
    }

    mutating func helloAnswered(_ reply: SMTPReply, ehlo: Bool, now: NIODeadline) -> Action {
        if reply.code == 421 { return closeClosing(reply, stage: .ehlo) }
        if ehlo {
            if reply.code == 250 {
                facts.capabilities = SMTPCapabilities(ehloReply: reply)
                return afterHello(now: now)
            }
            // EHLO not understood: HELO (RFC 5321 §4.1.4).
            guard [500, 501, 502, 504, 550].contains(reply.code) else {
                return closeWithFailure(SMTPError.reply(reply, stage: .ehlo))
            }
            return sendHello(ehlo: false, now: now)
        }
        guard reply.code == 250 else { return closeWithFailure(SMTPError.reply(reply, stage: .ehlo)) }
        facts.capabilities = SMTPCapabilities(extensions: [:], isExtended: false)
        return afterHello(now: now)
    }

    /// After EHLO: STARTTLS when configured and not done yet, else AUTH, else ready.
    mutating func afterHello(now: NIODeadline) -> Action {
        let upgrade = configuration.security == .startTLS || configuration.security == .startTLSRequired
        if facts.tlsEstablished {
            if upgrade { mark("starttls", now: now) } else { mark("ehlo", now: now) }
        } else {
            mark("ehlo", now: now)
        }
        if upgrade && !facts.tlsEstablished {
            return sendStartTLS(required: configuration.security == .startTLSRequired, now: now)
        }
        return startAuthentication(now: now)
    }

    mutating func sendStartTLS(required: Bool, now: NIODeadline) -> Action {
        guard facts.capabilities.startTLS else {
            if required {
                return closeWithFailure(
                    SMTPError(
                        stage: .starttls, code: .tlsRequired,
                        message:
                            "smtp-connection-security = start-tls-required, but \(configuration.host):\(configuration.port) does not offer STARTTLS; nothing was sent in clear text"
                    ))
            }
            facts.notices.append("the server does not offer STARTTLS: continuing in clear text (smtp-connection-security = start-tls)")
            return startAuthentication(now: now)
        }
        state = .startTLS
        waitDeadline = now + protocolTimeout
        return .write(encode(.startTLS))
    }

    mutating func startTLSAnswered(_ reply: SMTPReply, unprocessedBytes: Int, now: NIODeadline) -> Action {
        guard reply.code == 220 else {
            if reply.code == 421 { return closeClosing(reply, stage: .starttls) }
            if configuration.security == .startTLSRequired {
                return closeWithFailure(
                    SMTPError.reply(
                        reply, stage: .starttls,
                        message:
                            "the server refused STARTTLS (\(reply)) and smtp-connection-security = start-tls-required; nothing was sent in clear text"
                    ))
            }
            facts.notices.append("the server refused STARTTLS (\(reply)): continuing in clear text (smtp-connection-security = start-tls)")
            return startAuthentication(now: now)
        }
        // RFC 3207 §5, CVE-2011-0411: whatever came after the 220 in clear text would be read
        // as if it came under TLS. Close.
        guard unprocessedBytes == 0 else {
            return closeWithFailure(
                SMTPError(
                    stage: .starttls, code: .startTLSInjection,
                    message:
                        "the server sent \(unprocessedBytes) bytes of clear text after agreeing to STARTTLS (possible command injection); the connection was closed"
                ))
        }
        state = .tlsHandshake(afterStartTLS: true)
        waitDeadline = now + configuration.connectTimeout.timeAmount
        return .addTLSHandler
    }

    /// The TLS handshake completed (implicit TLS, or after STARTTLS).
    package mutating func tlsHandshakeCompleted(now: NIODeadline) -> Action {
        guard case .tlsHandshake(let afterStartTLS) = state else { return .none }
        facts.tlsEstablished = true
        if afterStartTLS {
            // RFC 3207 §4.2: forget everything learnt before TLS and say EHLO again.
            facts.capabilities = SMTPCapabilities(extensions: [:], isExtended: false)
            return sendHello(ehlo: true, now: now)
        }
        mark("tls", now: now)
        state = .greeting
        waitDeadline = now + protocolTimeout
        return .none
    }

    /// The TLS handler could not be added, or the handshake failed.
    package mutating func tlsFailed(_ message: String) -> Action {
        closeWithFailure(SMTPError(stage: .tls, code: .tlsHandshake, message: message))
    }

    /// A 421 during the set-up.
    mutating func closeClosing(_ reply: SMTPReply, stage: SMTPError.Stage) -> Action {
        closeWithFailure(SMTPError.reply(reply, stage: stage, message: "the server is closing the connection: \(reply)"))
    }
}
