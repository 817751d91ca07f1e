import Foundation
import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("State machine: AUTH PLAIN, LOGIN, XOAUTH2, no sockets")
struct StateMachineAuthTests {
    /// A machine that has just read an EHLO offering `auth`; returns it with the action that followed.
    func afterEHLO(_ credentials: SMTPCredentials, mechanisms: [String], auth: String = "PLAIN LOGIN XOAUTH2") -> (TestMachine, TestAction) {
        var m = TestMachine(
            configuration: machineConfiguration(credentials: credentials, mechanisms: mechanisms),
            helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        let action = m.replyReceived(reply("250-mx\r\n250 AUTH \(auth)\r\n"), unprocessedBytes: 0, now: at(1))
        return (m, action)
    }

    static let password = SMTPCredentials.password(user: "u", password: SMTPSecret("p"))
    static let oauth = SMTPCredentials.oauth2(user: "u@x.test", token: { SMTPAccessToken(token: "tok") })

    @Test("PLAIN: the initial response on the AUTH line, 235, ready")
    func plain() {
        var (m, action) = afterEHLO(Self.password, mechanisms: ["PLAIN"])
        #expect(action.written == "AUTH PLAIN \(Data("\0u\0p".utf8).base64EncodedString())\r\n")
        guard case .sessionReady(_, let facts) = m.replyReceived(reply("235 2.7.0 ok"), unprocessedBytes: 0, now: at(2)) else {
            Issue.record("not ready"); return
        }
        #expect(facts.authMechanism == .plain && facts.stepTimings.last?.step == "auth")
    }

    @Test("LOGIN: user name and password after each 334")
    func login() {
        var (m, action) = afterEHLO(Self.password, mechanisms: ["LOGIN"])
        #expect(action.written == "AUTH LOGIN\r\n")
        #expect(m.replyReceived(reply("334 VXNlcm5hbWU6"), unprocessedBytes: 0, now: at(2)).written == "dQ==\r\n")
        #expect(m.replyReceived(reply("334 UGFzc3dvcmQ6"), unprocessedBytes: 0, now: at(2)).written == "cA==\r\n")
        guard case .sessionReady = m.replyReceived(reply("235 ok"), unprocessedBytes: 0, now: at(3)) else { Issue.record("not ready"); return }
    }

    @Test("XOAUTH2: the token is fetched (an action), then sent; its expiry is kept")
    func xoauth2() {
        var (m, action) = afterEHLO(Self.oauth, mechanisms: ["XOAUTH2"])
        guard case .fetchToken = action else { Issue.record("\(action)"); return }
        #expect(m.nextDeadline == nil, "no reply is awaited while the token is fetched")
        let expiry = ContinuousClock.now + .seconds(3600)
        let sent = m.tokenReceived(SMTPAccessToken(token: "tok", expiresAt: expiry), now: at(2))
        let response = Data("user=u@x.test\u{01}auth=Bearer tok\u{01}\u{01}".utf8).base64EncodedString()
        #expect(sent.written == "AUTH XOAUTH2 \(response)\r\n")
        guard case .sessionReady(_, let facts) = m.replyReceived(reply("235 ok"), unprocessedBytes: 0, now: at(3)) else {
            Issue.record("not ready"); return
        }
        #expect(facts.credentialExpiry == expiry && facts.authMechanism == .xoauth2)
    }

    @Test("XOAUTH2 error continuation: the 334 with the JSON status gets an empty line, the 535 fails with the status")
    func xoauth2ErrorChallenge() {
        var (m, _) = afterEHLO(Self.oauth, mechanisms: ["XOAUTH2"])
        _ = m.tokenReceived(SMTPAccessToken(token: "tok"), now: at(2))
        let status = #"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#
        let challenge = m.replyReceived(reply("334 \(Data(status.utf8).base64EncodedString())"), unprocessedBytes: 0, now: at(3))
        #expect(challenge.written == "\r\n")
        let action = m.replyReceived(reply("535 5.7.8 Username and Password not accepted"), unprocessedBytes: 0, now: at(4))
        let error = action.error(for: "session")
        #expect(action.closesConnection && error?.replyCode == 535 && error?.stage == .auth)
        #expect(error?.reply?.lines.last == "(XOAUTH2 status: \(status))")
        #expect(error?.message.contains("OAuth 2.0 token") == true)
    }

    @Test("a failed token fetch keeps the token source's own error")
    func tokenFailure() {
        struct TokenError: Error { var code = "oauth.refused" }
        var (m, _) = afterEHLO(Self.oauth, mechanisms: ["XOAUTH2"])
        let action = m.tokenFailed(TokenError())
        let error = action.error(for: "session")
        #expect(error?.code == .credentialsUnavailable && error?.code.rawValue == "credentials_unavailable")
        #expect((error?.underlying as? TokenError)?.code == "oauth.refused")
        #expect(error?.reply == nil && error?.isTransient == true)
    }

    @Test("a wrong password (535): the session fails with a hint, never the password")
    func wrongPassword() {
        var (m, _) = afterEHLO(.password(user: "u", password: SMTPSecret("Sekr3t")), mechanisms: ["PLAIN"])
        let error = m.replyReceived(reply("535 5.7.8 bad"), unprocessedBytes: 0, now: at(2)).error(for: "session")
        #expect(error?.replyCode == 535 && error?.enhancedCode?.description == "5.7.8")
        #expect(error.map { !"\($0)".contains("Sekr3t") } == true)
    }

    @Test("no mechanism in common; a server that offers no AUTH")
    func noCommonMechanism() {
        let (_, action) = afterEHLO(Self.password, mechanisms: ["CRAM-MD5"])
        #expect(action.error(for: "session")?.code == .noCommonAuthMechanism)
        var m = TestMachine(configuration: machineConfiguration(credentials: Self.password), helloName: "c", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        let none = m.replyReceived(reply("250 mx"), unprocessedBytes: 0, now: at(1)).error(for: "session")
        #expect(none?.code == .noCommonAuthMechanism && none?.message.contains("offers no AUTH") == true)
    }

    @Test("an initial response that would pass 512 octets follows the empty 334")
    func longInitialResponse() {
        let long = String(repeating: "t", count: 600)
        var (m, _) = afterEHLO(.oauth2(user: "u", token: { SMTPAccessToken(token: long) }), mechanisms: ["XOAUTH2"])
        #expect(m.tokenReceived(SMTPAccessToken(token: long), now: at(2)).written == "AUTH XOAUTH2\r\n")
        let response = m.replyReceived(reply("334 "), unprocessedBytes: 0, now: at(3)).written
        #expect(response?.count ?? 0 > 600)
    }

    @Test("an unexpected challenge is cancelled with *, and the session fails")
    func unexpectedChallenge() {
        var (m, _) = afterEHLO(Self.password, mechanisms: ["PLAIN"])
        #expect(m.replyReceived(reply("334 what"), unprocessedBytes: 0, now: at(2)).written == "*\r\n")
        let error = m.replyReceived(reply("501 cancelled"), unprocessedBytes: 0, now: at(3)).error(for: "session")
        #expect(error?.message.contains("unexpected AUTH PLAIN challenge") == true)
    }

    @Test("SMTPSecret hides its value from dump() and Mirror")
    func secretHidden() {
        let secret = SMTPSecret("hunter2")
        var dumped = ""
        dump(secret, to: &dumped)
        #expect(!dumped.contains("hunter2") && Mirror(reflecting: secret).children.isEmpty)
        #expect("\(secret)" == "<redacted>" && String(reflecting: secret) == "<redacted>")
    }
}
