import NIOCore

/// AUTH (RFC 4954): PLAIN, LOGIN and XOAUTH2, chosen by JavaMail's rule (the first mechanism
/// of `mail.smtp.auth.mechanisms` the server offers).
extension SMTPClientStateMachine {
    /// Where an AUTH exchange stands.
    package enum AuthStep {
        /// `AUTH <mechanism> <initial response>` (or the response after an empty 334) sent.
        case response(SASLMechanism)
        /// `AUTH <mechanism>` sent alone: the initial response follows the empty 334.
        case awaitingEmptyChallenge(SASLMechanism)
        /// `AUTH LOGIN` sent: the user name follows the 334.
        case loginUser
        /// The user name sent: the password follows the 334.
        case loginPassword
        /// XOAUTH2's error challenge was answered with an empty line: the final reply follows.
        case xoauth2ErrorAcknowledged(status: String)
        /// An unexpected challenge was cancelled with `*`: its 501 follows.
        case cancelled(SMTPError)
    }

    /// What the exchange needs that is not in the state: the initial response of the
    /// mechanism (a secret), kept only until it is sent.
    struct Authentication {
        var mechanism: SASLMechanism
        var pendingResponse: String?
    }

    mutating func startAuthentication(now: NIODeadline) -> Action {
        guard let credentials = configuration.credentials else { return sessionReady(now: now) }
        let offered = facts.capabilities.authMechanisms
        guard !offered.isEmpty else {
            return closeWithFailure(
                SMTPError(
                    stage: .auth, code: .noCommonAuthMechanism,
                    message: "enable-authentication = true, but \(configuration.host):\(configuration.port) offers no AUTH"
                        + (facts.tlsEstablished ? "" : " in clear text (many servers offer it only after STARTTLS: set smtp-connection-security)")))
        }
        guard let mechanism = SASLMechanism.choose(preference: configuration.authMechanisms, serverOffers: offered) else {
            return closeWithFailure(
                SMTPError(
                    stage: .auth, code: .noCommonAuthMechanism,
                    message:
                        "No authentication mechanisms supported by both server and client: the server offers \(offered.joined(separator: " ")), mail.smtp.auth.mechanisms allows \(configuration.authMechanisms.joined(separator: " "))"
                ))
        }
        facts.authMechanism = mechanism
        let user = credentials.user
        switch (mechanism, credentials) {
        case (.plain, .password(_, let password)):
            return sendInitialResponse(mechanism, SASLMechanism.plainResponse(user: user, password: password.value), now: now)
        case (.login, .password):
            state = .authenticating(.loginUser)
            waitDeadline = now + protocolTimeout
            return .write(encode(.auth(mechanism: "LOGIN", initialResponse: nil)))
        case (.xoauth2, .oauth2):
            state = .fetchingToken
            waitDeadline = nil
            return .fetchToken
        case (.plain, .oauth2), (.login, .oauth2):
            return closeWithFailure(
                SMTPError(
                    stage: .auth, code: .noCommonAuthMechanism,
                    message: "mail.smtp.auth.mechanisms chose \(mechanism.rawValue), but the credentials are an OAuth 2.0 token: list XOAUTH2"))
        case (.xoauth2, .password):
            return closeWithFailure(
                SMTPError(
                    stage: .auth, code: .noCommonAuthMechanism,
                    message: "mail.smtp.auth.mechanisms chose XOAUTH2, but no OAuth 2.0 token source is configured"))
        }
    }

    /// The OAuth 2.0 token for XOAUTH2 arrived.
    package mutating func tokenReceived(_ token: SMTPAccessToken, now: NIODeadline) -> Action {
        guard case .fetchingToken = state else { return .none }
        facts.credentialExpiry = token.expiresAt
        let user = configuration.credentials?.user ?? ""
        return sendInitialResponse(.xoauth2, SASLMechanism.xoauth2Response(user: user, token: token.token.value), now: now)
    }

    /// The token source failed: the session fails with its error inside (its own code kept).
    package mutating func tokenFailed(_ error: any Error) -> Action {
        guard case .fetchingToken = state else { return .none }
        return closeWithFailure(
            SMTPError(
                stage: .auth, code: .credentialsUnavailable,
                message: "could not obtain an OAuth 2.0 access token: \(error)", isTransient: true,
                underlying: error))
    }

    /// RFC 4954 §4: the initial response goes on the AUTH line unless the line would pass 512
    /// octets; then AUTH is sent alone and the response follows the empty 334.
    mutating func sendInitialResponse(_ mechanism: SASLMechanism, _ response: String, now: NIODeadline) -> Action {
        waitDeadline = now + protocolTimeout
        let name = mechanism.rawValue
        if ("AUTH \(name) ".utf8.count + response.utf8.count + 2) <= 512 {
            state = .authenticating(.response(mechanism))
            return .write(encode(.auth(mechanism: name, initialResponse: response)))
        }
        authentication = Authentication(mechanism: mechanism, pendingResponse: response)
        state = .authenticating(.awaitingEmptyChallenge(mechanism))
        return .write(encode(.auth(mechanism: name, initialResponse: nil)))
    }

    mutating func authAnswered(_ reply: SMTPReply, step: AuthStep, now: NIODeadline) -> Action {
        if reply.code == 421 { return closeClosing(reply, stage: .auth) }
        waitDeadline = now + protocolTimeout
        switch step {
        case .awaitingEmptyChallenge(let mechanism):
            guard reply.code == 334, let response = authentication?.pendingResponse else {
                authentication = nil
                return authResult(reply, mechanism: mechanism, now: now)
            }
            authentication = nil
            state = .authenticating(.response(mechanism))
            return .write(encode(.authResponse(response)))
        case .loginUser:
            guard reply.code == 334, case .password(let user, _)? = configuration.credentials else {
                return authResult(reply, mechanism: .login, now: now)
            }
            state = .authenticating(.loginPassword)
            return .write(encode(.authResponse(SASLMechanism.base64(user))))
        case .loginPassword:
            guard reply.code == 334, case .password(_, let password)? = configuration.credentials else {
                return authResult(reply, mechanism: .login, now: now)
            }
            state = .authenticating(.response(.login))
            return .write(encode(.authResponse(SASLMechanism.base64(password.value))))
        case .response(let mechanism):
            if mechanism == .xoauth2 && reply.code == 334 {
                // The error challenge: base64 JSON with the status; answer with an empty line.
                let detail = SASLMechanism.decodeXOAUTH2Challenge(reply.text) ?? reply.text
                if configuration.enableDebug { transcriptLines.append("XOAUTH2 error challenge: \(detail)") }
                state = .authenticating(.xoauth2ErrorAcknowledged(status: detail))
                return .write(encode(.authResponse("")))
            }
            return authResult(reply, mechanism: mechanism, now: now)
        case .xoauth2ErrorAcknowledged(let status):
            var final = reply
            final.lines.append("(XOAUTH2 status: \(status))")
            return authResult(final, mechanism: .xoauth2, now: now)
        case .cancelled(let error):
            return closeWithFailure(error)
        }
    }

    /// The reply that ends the exchange: 235, or the failure.
    mutating func authResult(_ reply: SMTPReply, mechanism: SASLMechanism, now: NIODeadline) -> Action {
        if reply.code == 235 {
            mark("auth", now: now)
            return sessionReady(now: now)
        }
        if reply.code == 334 {
            // A challenge we cannot answer: cancel the exchange (the server answers 501).
            state = .authenticating(
                .cancelled(
                    SMTPError.reply(
                        reply, stage: .auth,
                        message: "the server sent an unexpected AUTH \(mechanism.rawValue) challenge; the exchange was cancelled")))
            return .write(encode(.authResponse("*")))
        }
        return closeWithFailure(Self.authError(reply, mechanism: mechanism))
    }

    static func authError(_ reply: SMTPReply, mechanism: SASLMechanism) -> SMTPError {
        let hint: String
        switch reply.code {
        case 535:
            hint =
                mechanism == .xoauth2
                ? "the server rejected the OAuth 2.0 token (check client-id, scope and the grant)"
                : "the server rejected the user name or password (check user and password)"
        case 534: hint = "the server considers AUTH \(mechanism.rawValue) too weak for this account (list another in mail.smtp.auth.mechanisms)"
        case 538:
            hint = "the server requires encryption for AUTH \(mechanism.rawValue) (set smtp-connection-security to start-tls-required or ssl-tls)"
        case 454: hint = "the server could not authenticate now (temporary failure)"
        case 530: hint = "the server requires authentication"
        default: hint = "authentication failed"
        }
        return SMTPError.reply(reply, stage: .auth, message: "\(hint): \(reply)")
    }
}
