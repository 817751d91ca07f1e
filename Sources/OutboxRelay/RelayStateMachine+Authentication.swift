import Foundation
import OutboxConfig
import OutboxSMTPGrammar

/// AUTH PLAIN and LOGIN (RFC 4954): the exchange up to the credentials the handler checks.
extension RelayStateMachine {
    mutating func auth(mechanism: String, initial: String?) -> Action {
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

    mutating func cancelled(_ bytes: [UInt8]) -> Action? {
        if bytes == [UInt8(ascii: "*")] {
            state = .command
            return error(SMTPServerReply(501, "5.0.0", "Authentication cancelled"))
        }
        return nil
    }

    mutating func authPLAINResponse(_ bytes: [UInt8]) -> Action {
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

    mutating func authLOGINUser(_ bytes: [UInt8]) -> Action {
        if let cancelled = cancelled(bytes) { return cancelled }
        guard let decoded = Base64Decoder.decode(bytes), let user = String(validating: decoded, as: UTF8.self), !user.isEmpty else {
            state = .command
            return error(SMTPServerReply(501, "5.5.2", "Cannot decode the user name (not base64)"))
        }
        state = .authLOGINPassword(user: user)
        return .reply(SMTPServerReply(334, nil, "UGFzc3dvcmQ6"))
    }

    mutating func authLOGINPassword(user: String, _ bytes: [UInt8]) -> Action {
        if let cancelled = cancelled(bytes) { return cancelled }
        guard let decoded = Base64Decoder.decode(bytes), let password = String(validating: decoded, as: UTF8.self) else {
            state = .command
            return error(SMTPServerReply(501, "5.5.2", "Cannot decode the password (not base64)"))
        }
        state = .verifying
        return .verify(user: user, password: password)
    }
}
