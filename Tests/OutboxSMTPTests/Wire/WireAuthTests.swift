import Foundation
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

private let user = "joe@x.test"
private let password = "s3cr3t-Pa55"
private func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }
private let plainPayload = b64("\0\(user)\0\(password)")
private let shortToken = "ya29.SHORT-token-value"
private let longToken = "eyJ0eXAi" + String(repeating: "LongOffice365TokenPart", count: 120)  // > 2500 bytes
private func xoauth2Payload(_ token: String) -> String { b64("user=\(user)\u{01}auth=Bearer \(token)\u{01}\u{01}") }
private let googleChallenge = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ=="

/// Every form in which a secret could leak.
private let secrets = [
    password, b64(password), plainPayload, shortToken, longToken, xoauth2Payload(shortToken), xoauth2Payload(longToken),
    String(xoauth2Payload(longToken).prefix(40)),
]

private func leaks(_ text: String) -> [String] { secrets.filter { text.contains($0) } }

private func oauth(_ token: String) -> SMTPCredentials {
    .oauth2(user: user) { SMTPAccessToken(token: token, expiresAt: ContinuousClock.now + .seconds(3600)) }
}

@Suite("Wire: AUTH exchanges", .timeLimit(.minutes(1)), .abortPeersOnCancel)
struct WireAuthTests {
    @Test("AUTH PLAIN with the initial response on the AUTH line; the debug log shows it redacted")
    func plain() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH LOGIN PLAIN"]) + [
                .expect("AUTH PLAIN \(plainPayload)"), .send("235 2.7.0 Authentication successful\r\n"),
            ] + WireScript.quit)
        let log = WireLogRecorder()
        let conn = try await server.connect(
            configuration: .wire(
                credentials: .password(user: user, password: SMTPSecret(password)),
                authMechanisms: ["PLAIN", "LOGIN"], enableDebug: true),
            logger: log.logger())
        #expect(conn.authMechanism == .plain)
        #expect(conn.stepTimings.map(\.step).last == "auth")
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(log.all.contains { $0.contains("C: AUTH PLAIN <redacted>") })
        #expect(log.all.contains { $0.contains("smtp.connection_id=") })
        #expect(leaks(log.joined).isEmpty)
    }

    @Test("AUTH LOGIN (JavaMail's default first choice): user and password answer the two 334 challenges")
    func login() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH PLAIN LOGIN"]) + [
                .expect("AUTH LOGIN"), .send("334 VXNlcm5hbWU6\r\n"),
                .expect(b64(user)), .send("334 UGFzc3dvcmQ6\r\n"),
                .expect(b64(password)), .send("235 2.7.0 ok\r\n"),
            ] + WireScript.quit)
        let log = WireLogRecorder()
        let conn = try await server.connect(
            configuration: .wire(credentials: .password(user: user, password: SMTPSecret(password)), enableDebug: true),
            logger: log.logger())
        #expect(conn.authMechanism == .login)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(log.all.filter { $0.contains("C: <redacted>") }.count == 2)
        #expect(leaks(log.joined).isEmpty)
    }

    @Test("AUTH XOAUTH2, one line when it fits in 512 octets")
    func xoauth2OneLine() async throws {
        let payload = xoauth2Payload(shortToken)
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH LOGIN PLAIN XOAUTH2"]) + [
                .expect("AUTH XOAUTH2 \(payload)"), .send("235 2.7.0 Accepted\r\n"),
            ] + WireScript.quit)
        let log = WireLogRecorder()
        let conn = try await server.connect(
            configuration: .wire(credentials: oauth(shortToken), authMechanisms: ["XOAUTH2"], enableDebug: true),
            logger: log.logger())
        #expect(conn.authMechanism == .xoauth2)
        #expect(conn.credentialExpiry != nil)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(leaks(log.joined).isEmpty)
    }

    @Test("AUTH XOAUTH2 with a token too long for one 512-octet line: RFC 4954 two-step form")
    func xoauth2TwoStep() async throws {
        let payload = xoauth2Payload(longToken)
        #expect(("AUTH XOAUTH2 " + payload + "\r\n").utf8.count > 512)
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH XOAUTH2"]) + [
                .expect("AUTH XOAUTH2"), .send("334 \r\n"),
                .expect(payload), .send("235 2.7.0 Authentication successful\r\n"),
            ] + WireScript.quit)
        let log = WireLogRecorder()
        let conn = try await server.connect(
            configuration: .wire(credentials: oauth(longToken), authMechanisms: ["XOAUTH2"], enableDebug: true),
            logger: log.logger())
        #expect(conn.authMechanism == .xoauth2)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(leaks(log.joined).isEmpty)
    }

    @Test("XOAUTH2 error challenge: answered with an empty line, the final 535 reported with the decoded status")
    func xoauth2ErrorChallenge() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH XOAUTH2 PLAIN"]) + [
                .expect("AUTH XOAUTH2 \(xoauth2Payload(shortToken))"), .send("334 \(googleChallenge)\r\n"),
                .expect(""),
                .send("535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support.google.com/mail/?p=BadCredentials\r\n"),
            ])
        let log = WireLogRecorder()
        let error = await wireCatch {
            try await server.connect(
                configuration: .wire(credentials: oauth(shortToken), authMechanisms: ["XOAUTH2"], enableDebug: true),
                logger: log.logger())
        }
        let e = try #require(error)
        #expect(e.stage == .auth && e.code == .reply && e.replyCode == 535 && e.enhancedCode?.description == "5.7.8")
        #expect(e.description.contains("OAuth 2.0 token"))
        #expect(e.description.contains("\"status\":\"401\""))
        #expect(leaks(e.description).isEmpty)
        #expect(leaks(log.joined).isEmpty)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript.count == 3, "EHLO, AUTH, the empty line, and nothing after")
    }

    static let failures: [(Int, String, String, Bool)] = [
        (535, "5.7.8", "user name or password", false),
        (534, "5.7.9", "too weak", false),
        (538, "5.7.11", "requires encryption", false),
        (454, "4.7.0", "temporary", true),
    ]

    @Test("AUTH failures map to errors naming the likely wrong option, with no secret", arguments: failures)
    func authFailure(_ code: Int, _ enhanced: String, _ hint: String, _ transient: Bool) async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH PLAIN"]) + [
                .expect("AUTH PLAIN \(plainPayload)"), .send("\(code) \(enhanced) nope\r\n"),
            ])
        let log = WireLogRecorder()
        let error = await wireCatch {
            try await server.connect(
                configuration: .wire(credentials: .password(user: user, password: SMTPSecret(password)), enableDebug: true),
                logger: log.logger())
        }
        let e = try #require(error)
        #expect(e.stage == .auth && e.replyCode == code && e.isTransient == transient)
        #expect(e.description.contains(hint), "\(e)")
        #expect(leaks(e.description).isEmpty)
        #expect(leaks(log.joined).isEmpty)
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("XOAUTH2 rejected with 535 names the token, not the password")
    func xoauth2Rejected() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["AUTH XOAUTH2"]) + [
                .expect("AUTH XOAUTH2"), .send("334 \r\n"), .readLine, .send("535 5.7.3 Authentication unsuccessful\r\n"),
            ])
        let error = await wireCatch {
            try await server.connect(configuration: .wire(credentials: oauth(longToken), authMechanisms: ["XOAUTH2"]))
        }
        #expect(error?.description.contains("OAuth 2.0 token") == true)
        #expect(error.map { leaks($0.description) } == [])
        await server.finished()
    }

    @Test("no mechanism in common: noCommonAuthMechanism, and no AUTH is sent")
    func noCommonMechanism() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["AUTH CRAM-MD5 GSSAPI"]))
        let error = await wireCatch {
            try await server.connect(
                configuration: .wire(credentials: .password(user: user, password: SMTPSecret(password))))
        }
        #expect(error?.code == .noCommonAuthMechanism && error?.stage == .auth)
        #expect(error?.description.contains("CRAM-MD5") == true)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test"])
    }

    @Test("no AUTH offered at all: the error suggests STARTTLS")
    func noAuthOffered() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["PIPELINING"]))
        let error = await wireCatch {
            try await server.connect(
                configuration: .wire(credentials: .password(user: user, password: SMTPSecret(password))))
        }
        #expect(error?.code == .noCommonAuthMechanism)
        #expect(error?.description.contains("smtp-connection-security") == true)
        await server.finished()
    }

    @Test("the whole debug transcript of a session with AUTH and a message holds no secret")
    func debugTranscript() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING", "AUTH LOGIN"]) + [
                .expect("AUTH LOGIN"), .send("334 VXNlcm5hbWU6\r\n"), .readLine, .send("334 UGFzc3dvcmQ6\r\n"), .readLine, .send("235 ok\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let log = WireLogRecorder()
        let conn = try await server.connect(
            configuration: .wire(credentials: .password(user: user, password: SMTPSecret(password)), enableDebug: true),
            logger: log.logger())
        _ = try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"]), body: WireBody("Subject: x\r\n\r\nbody\r\n"))
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        let text = log.joined
        #expect(text.contains("C: MAIL FROM:<a@x.test>"))
        #expect(text.contains("S: 250 queued"))
        #expect(leaks(text).isEmpty)
    }
}
