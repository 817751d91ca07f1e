import Foundation
import Logging
import NIOCore
import OutboxSMTP
import OutboxTestSupport
import Testing

/// Against the real Postfix started by scripts/test.sh (ports, CA and user from the environment).
@Suite("Postfix integration", .timeLimit(.minutes(3)))
struct PostfixIntegrationTests {
    let sender = "sender@example.test"

    func configuration(
        _ peer: TestPeers, port: Int, security: ConnectionSecurity,
        mechanisms: [String]? = nil, password: String? = nil, debug: Bool = false
    ) -> SMTPClientConfiguration {
        SMTPClientConfiguration(
            host: peer.smtpHost == "127.0.0.1" ? "localhost" : peer.smtpHost, port: port, security: security,
            connectTimeout: .seconds(10), protocolTimeout: .seconds(30),
            credentials: .password(user: peer.user, password: SMTPSecret(password ?? peer.password)),
            authMechanisms: mechanisms, tlsCAFile: peer.caFile, enableDebug: debug)
    }

    @Test("plain text, AUTH PLAIN: delivered")
    func plainAuthPlain() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = uniqueToken()
        let connection = try await SMTPConnection.connect(
            configuration: configuration(peer, port: peer.plainPort, security: .none, mechanisms: ["PLAIN"]))
        #expect(connection.authMechanism == .plain)
        #expect(connection.tlsInfo == nil)
        let result = try await connection.send(
            envelope: SMTPEnvelope(from: sender, recipients: ["rcpt@elsewhere.example"]),
            body: ChunkSequence(simpleMessage(from: sender, to: ["rcpt@elsewhere.example"], subject: token, body: "hello\r\n")))
        #expect(result.delivered)
        #expect(result.finalReply?.code == 250)
        await connection.quit()
        #expect(try await peer.maildir.waitForMessage(containing: token) != nil)
    }

    @Test("STARTTLS with the test CA, AUTH LOGIN, two messages on one connection")
    func startTLSLogin() async throws {
        let peer = try TestPeers.fromEnvironment()
        let connection = try await SMTPConnection.connect(
            configuration: configuration(peer, port: peer.submissionPort, security: .startTLSRequired, mechanisms: ["LOGIN"]))
        let tls = try #require(connection.tlsInfo)
        #expect(tls.version == "TLSv1.3" || tls.version == "TLSv1.2")
        #expect(connection.authMechanism == .login)
        #expect(connection.capabilities.authMechanisms.contains("PLAIN"))  // only offered after STARTTLS on this port
        for _ in 0..<2 {
            let token = uniqueToken()
            let result = try await connection.send(
                envelope: SMTPEnvelope(from: sender, recipients: ["a@elsewhere.example"]),
                body: ChunkSequence(simpleMessage(from: sender, to: ["a@elsewhere.example"], subject: token, body: "over TLS\r\n")))
            #expect(result.delivered)
            #expect(try await peer.maildir.waitForMessage(containing: token) != nil)
        }
        await connection.quit()
    }

    @Test("start-tls (optional) upgrades when offered")
    func startTLSOptional() async throws {
        let peer = try TestPeers.fromEnvironment()
        let connection = try await SMTPConnection.connect(configuration: configuration(peer, port: peer.submissionPort, security: .startTLS))
        #expect(connection.tlsInfo != nil)
        await connection.quit()
    }

    @Test("start-tls-required against a port without STARTTLS fails and sends nothing")
    func startTLSRequiredRefused() async throws {
        let peer = try TestPeers.fromEnvironment()
        let log = LogRecorder()
        let logger = log.logger()
        var config = configuration(peer, port: peer.plainPort, security: .startTLSRequired, debug: true)
        config.credentials = nil
        do {
            _ = try await SMTPConnection.connect(configuration: config, logger: logger)
            Issue.record("connected in clear text although STARTTLS was required")
        } catch {
            #expect(error.code == .tlsRequired)
            #expect(error.stage == .starttls)
            #expect(!error.isTransient)
            #expect(error.description.contains("start-tls-required"))
        }
        let sent = log.lines.filter { $0.contains("C: ") }
        #expect(sent.allSatisfy { !$0.contains("MAIL") && !$0.contains("AUTH") })
    }

    @Test("implicit TLS (ssl-tls), AUTH PLAIN: delivered")
    func implicitTLS() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = uniqueToken()
        let connection = try await SMTPConnection.connect(
            configuration: configuration(peer, port: peer.smtpsPort, security: .implicitTLS, mechanisms: ["PLAIN"]))
        #expect(connection.tlsInfo != nil)
        let result = try await connection.send(
            envelope: SMTPEnvelope(from: sender, recipients: ["b@elsewhere.example"]),
            body: ChunkSequence(simpleMessage(from: sender, to: ["b@elsewhere.example"], subject: token, body: "implicit\r\n")))
        #expect(result.delivered)
        await connection.quit()
        #expect(try await peer.maildir.waitForMessage(containing: token) != nil)
    }

    @Test("a certificate from an unknown CA is refused")
    func untrustedCertificate() async throws {
        let peer = try TestPeers.fromEnvironment()
        var config = configuration(peer, port: peer.smtpsPort, security: .implicitTLS)
        config.tlsCAFile = nil
        do {
            _ = try await SMTPConnection.connect(configuration: config)
            Issue.record("connected to a server whose certificate nobody trusts")
        } catch {
            #expect(error.code == .tlsHandshake)
            #expect(error.stage == .tls)
        }
    }

    @Test("mail.smtp.ssl.trust accepts the host's certificate without its CA")
    func trustedHost() async throws {
        let peer = try TestPeers.fromEnvironment()
        var config = configuration(peer, port: peer.smtpsPort, security: .implicitTLS)
        config.tlsCAFile = nil
        config.trustedHosts = [config.host]
        let connection = try await SMTPConnection.connect(configuration: config)
        #expect(connection.tlsInfo != nil)
        await connection.quit()
    }

    @Test("a wrong password fails with 535, for PLAIN and LOGIN, and never shows the password", arguments: ["PLAIN", "LOGIN"])
    func badPassword(mechanism: String) async throws {
        let peer = try TestPeers.fromEnvironment()
        let log = LogRecorder()
        let logger = log.logger()
        let wrong = "Wr0ng-Secret-\(mechanism)"
        do {
            _ = try await SMTPConnection.connect(
                configuration: configuration(
                    peer, port: peer.submissionPort, security: .startTLSRequired, mechanisms: [mechanism], password: wrong, debug: true),
                logger: logger)
            Issue.record("authenticated with a wrong password")
        } catch {
            #expect(error.stage == .auth)
            #expect(error.replyCode == 535)
            #expect(!error.isTransient)
            #expect(error.description.contains("password"))
            #expect(!error.description.contains(wrong))
        }
        let lines = log.lines
        #expect(lines.contains { $0.contains("AUTH \(mechanism)") })
        for secret in secretForms(user: peer.user, password: wrong) {
            #expect(!lines.contains { $0.contains(secret) }, "the debug log contains a secret form")
        }
    }

    @Test("the debug transcript never contains the password, the token or an AUTH payload")
    func debugLogRedaction() async throws {
        let peer = try TestPeers.fromEnvironment()
        for mechanism in ["PLAIN", "LOGIN"] {
            let log = LogRecorder()
            let logger = log.logger()
            let connection = try await SMTPConnection.connect(
                configuration: configuration(peer, port: peer.submissionPort, security: .startTLSRequired, mechanisms: [mechanism], debug: true),
                logger: logger)
            await connection.quit()
            let lines = log.lines
            #expect(lines.contains { $0.contains("<redacted>") })
            #expect(lines.contains { $0.contains("S: 235") })
            for secret in secretForms(user: peer.user, password: peer.password) {
                #expect(!lines.contains { $0.contains(secret) }, "\(mechanism): the debug log contains a secret form")
            }
        }
        // XOAUTH2
        let log = LogRecorder()
        let logger = log.logger()
        var config = configuration(peer, port: peer.submissionPort, security: .startTLSRequired, mechanisms: ["XOAUTH2"], debug: true)
        let token = peer.oauthToken
        config.credentials = .oauth2(user: peer.user) { SMTPAccessToken(token: token) }
        let connection = try await SMTPConnection.connect(configuration: config, logger: logger)
        await connection.quit()
        let lines = log.lines
        let payload = Data("user=\(peer.user)\u{01}auth=Bearer \(token)\u{01}\u{01}".utf8).base64EncodedString()
        #expect(!lines.contains { $0.contains(token) || $0.contains(payload) })
    }

    @Test("XOAUTH2 with a good token authenticates; a bad token gets the error challenge and 535")
    func xoauth2() async throws {
        let peer = try TestPeers.fromEnvironment()
        var config = configuration(peer, port: peer.submissionPort, security: .startTLSRequired, mechanisms: ["XOAUTH2"])
        let good = peer.oauthToken
        let expiry = ContinuousClock.now + .seconds(3600)
        config.credentials = .oauth2(user: peer.user) { SMTPAccessToken(token: good, expiresAt: expiry) }
        let connection = try await SMTPConnection.connect(configuration: config)
        #expect(connection.authMechanism == .xoauth2)
        #expect(connection.credentialExpiry == expiry)
        let tokenText = uniqueToken()
        let result = try await connection.send(
            envelope: SMTPEnvelope(from: sender, recipients: ["oauth@elsewhere.example"]),
            body: ChunkSequence(simpleMessage(from: sender, to: ["oauth@elsewhere.example"], subject: tokenText, body: "oauth\r\n")))
        #expect(result.delivered)
        await connection.quit()

        config.credentials = .oauth2(user: peer.user) { SMTPAccessToken(token: "expired-token-123") }
        do {
            _ = try await SMTPConnection.connect(configuration: config)
            Issue.record("authenticated with a bad token")
        } catch {
            #expect(error.replyCode == 535)
            #expect(error.description.contains("XOAUTH2 status"))
            #expect(!error.description.contains("expired-token-123"))
        }
    }

    @Test("a recipient Postfix refuses gets its own result; the others receive the message")
    func partialRecipients() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = uniqueToken()
        let recipients = ["ok1@elsewhere.example", "reject@example.test", "ok2@elsewhere.example", "tempfail@example.test"]
        let connection = try await SMTPConnection.connect(
            configuration: configuration(peer, port: peer.plainPort, security: .none, mechanisms: ["PLAIN"]))
        let result = try await connection.send(
            envelope: SMTPEnvelope(from: sender, recipients: recipients),
            body: ChunkSequence(simpleMessage(from: sender, to: recipients, subject: token, body: "partial\r\n")))
        #expect(result.delivered)
        #expect(result.acceptedRecipients.map(\.address) == ["ok1@elsewhere.example", "ok2@elsewhere.example"])
        let refused = Dictionary(uniqueKeysWithValues: result.refusedRecipients.map { ($0.address, $0) })
        #expect(refused["reject@example.test"]?.reply?.code == 554 || refused["reject@example.test"]?.reply?.code == 550)
        #expect(refused["reject@example.test"]?.isTransientFailure == false)
        #expect(refused["tempfail@example.test"]?.reply?.code == 450)
        #expect(refused["tempfail@example.test"]?.isTransientFailure == true)
        // The connection stays usable.
        try await connection.noop()
        await connection.quit()
        let stored = try #require(try await peer.maildir.waitForMessage(containing: token))
        let text = String(decoding: stored, as: UTF8.self)
        #expect(text.contains("ok1@elsewhere.example") || text.contains("ok2@elsewhere.example"))
        // Postfix stores one file per accepted recipient in the catch-all maildir.
        try await Task.sleep(for: .milliseconds(500))
        #expect(peer.maildir.countMessages(containing: token) == 2)
    }

    @Test("with mail.smtp.sendpartial = false a refused recipient stops the whole message")
    func sendPartialFalse() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = uniqueToken()
        var config = configuration(peer, port: peer.plainPort, security: .none, mechanisms: ["PLAIN"])
        config.sendPartial = false
        let connection = try await SMTPConnection.connect(configuration: config)
        let recipients = ["ok@elsewhere.example", "reject@example.test"]
        let result = try await connection.send(
            envelope: SMTPEnvelope(from: sender, recipients: recipients),
            body: ChunkSequence(simpleMessage(from: sender, to: recipients, subject: token, body: "none\r\n")))
        #expect(!result.delivered)
        #expect(result.abortedForPartialRefusal)
        await connection.quit()
        try await Task.sleep(for: .seconds(1))
        #expect(peer.maildir.countMessages(containing: token) == 0)
    }

    @Test("a message over Postfix's SIZE limit is refused before DATA")
    func sizeLimit() async throws {
        let peer = try TestPeers.fromEnvironment()
        let connection = try await SMTPConnection.connect(
            configuration: configuration(peer, port: peer.plainPort, security: .none, mechanisms: ["PLAIN"]))
        let limit = try #require(connection.capabilities.sizeLimit)
        #expect(limit == 26_214_400)
        do {
            _ = try await connection.send(
                envelope: SMTPEnvelope(from: sender, recipients: ["big@elsewhere.example"], size: limit + 1),
                body: ChunkSequence("Subject: too big\r\n\r\nx\r\n"))
            Issue.record("a message over SIZE was sent")
        } catch {
            #expect(error.stage == .mail)
            #expect(error.code == .unsupportedByServer)
            #expect(!error.isTransient)
        }
        // Unchanged connection: still usable.
        try await connection.noop()
        await connection.quit()
    }

    @Test("a 10 MiB message arrives byte-exact")
    func tenMiBByteExact() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = uniqueToken()
        // A base64 body with lines of 76 characters, some starting with a dot to exercise stuffing.
        var generator = SystemRandomNumberGenerator()
        var raw = [UInt8](repeating: 0, count: 7_800_000)
        for i in raw.indices { raw[i] = UInt8.random(in: 0...255, using: &generator) }
        let base64 = Data(raw).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
        var message = simpleMessage(from: sender, to: ["big@elsewhere.example"], subject: token, body: "")
        message = message.replacingOccurrences(of: "\r\n\r\n", with: "\r\nDate: Wed, 25 Nov 2026 21:07:28 +0000\r\n\r\n")
        message += ".leading dot line\r\n..two dots\r\n"
        message += base64 + "\r\n"
        let bytes = Array(message.utf8)
        #expect(bytes.count > 10 * 1024 * 1024)
        // Deliver it in uneven chunks.
        var chunks: [ByteBuffer] = []
        var offset = 0
        var size = 1
        while offset < bytes.count {
            let end = min(bytes.count, offset + size)
            chunks.append(ByteBuffer(bytes: bytes[offset..<end]))
            offset = end
            size = size * 3 + 7
            if size > 300_000 { size = 65_537 }
        }
        let connection = try await SMTPConnection.connect(
            configuration: configuration(peer, port: peer.plainPort, security: .none, mechanisms: ["PLAIN"]))
        let result = try await connection.send(
            envelope: SMTPEnvelope(from: sender, recipients: ["big@elsewhere.example"], size: bytes.count),
            body: ChunkSequence(chunks))
        #expect(result.delivered)
        await connection.quit()
        let stored = try #require(try await peer.maildir.waitForMessage(containing: token, timeout: .seconds(30)))
        // Postfix prepends its trace headers and stores lines with LF ends.
        let expected = Array(message.replacingOccurrences(of: "\r\n", with: "\n").utf8)
        #expect(stored.count >= expected.count)
        let matches = Array(stored.suffix(expected.count)) == expected
        #expect(matches, "the stored message differs from what was sent")
    }
}

/// The forms a password can take on the wire: itself, and the base64 payloads of PLAIN and LOGIN.
func secretForms(user: String, password: String) -> [String] {
    [
        password,
        Data("\0\(user)\0\(password)".utf8).base64EncodedString(),
        Data(password.utf8).base64EncodedString(),
    ]
}
