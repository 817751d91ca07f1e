import Foundation
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

private let user = "joe@x.test"
private let password = "s3cr3t-Pa55"
private let plainPayload = Data("\0\(user)\0\(password)".utf8).base64EncodedString()

/// STARTTLS and implicit TLS with a real TLS handshake: the client's NIOSSL handler against
/// NIOSSL's server handler with the built-in test certificate (`localhost`, 127.0.0.1), in memory.
@Suite("Wire: TLS (STARTTLS and implicit TLS) against a scripted server", .timeLimit(.minutes(1)), .abortPeersOnCancel)
struct WireTLSTests {
    @Test("STARTTLS: 220, the handshake, EHLO again (only its capabilities count), AUTH and a message under TLS")
    func startTLS() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["STARTTLS", "SIZE 10"]) + [
                .expect("STARTTLS"), .send("220 2.0.0 Ready to start TLS\r\n"), .startTLS,
                .expect("EHLO client.test"), .send("250-mx.test\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n"),
                .expect("AUTH PLAIN \(plainPayload)"), .send("235 2.7.0 ok\r\n"),
                .expectWrite(["MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA"]),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 2.0.0 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(
            configuration: .wire(
                host: "localhost", security: .startTLSRequired, credentials: .password(user: user, password: SMTPSecret(password))))
        let tls = try #require(conn.tlsInfo)
        #expect(tls.version == "TLSv1.3")
        #expect(tls.peerSubject?.contains("CN=localhost") == true, "\(tls.peerSubject ?? "nil")")
        #expect(tls.peerNotValidAfter != nil)
        #expect(conn.capabilities.pipelining && conn.capabilities.sizeLimit == nil, "the capabilities of the EHLO under TLS")
        #expect(conn.authMechanism == .plain)
        #expect(conn.stepTimings.map(\.step) == ["connect", "greeting", "ehlo", "starttls", "auth"])
        #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.tlsErrors.isEmpty)
        #expect(
            server.transcript == [
                "EHLO client.test", "STARTTLS", "EHLO client.test", "AUTH PLAIN \(plainPayload)",
                "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA", "QUIT",
            ])
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("implicit TLS: the handshake first, then the greeting, EHLO and a message")
    func implicitTLS() async throws {
        let server = ScriptedSMTPPeer(
            [.startTLS] + WireScript.hello(["PIPELINING"]) + [
                .expectWrite(["MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA"]),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 2.0.0 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire(host: "localhost", security: .implicitTLS))
        #expect(conn.tlsInfo?.version == "TLSv1.3")
        #expect(conn.greeting.code == 220)
        #expect(conn.stepTimings.map(\.step) == ["connect", "tls", "greeting", "ehlo"])
        #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA", "QUIT"])
    }

    @Test("implicit TLS to an IP address: the certificate is checked against the IP (no SNI)")
    func implicitTLSToAnIPAddress() async throws {
        let server = ScriptedSMTPPeer([.startTLS] + WireScript.hello([]) + WireScript.quit)
        let conn = try await server.connect(configuration: .wire(host: "127.0.0.1", security: .implicitTLS))
        #expect(conn.tlsInfo != nil)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("STARTTLS to a host the certificate does not name: tls_handshake, the error names the host check, nothing more sent")
    func hostnameMismatch() async throws {
        // At an address the certificate does not name either (NIOSSL accepts a certificate
        // naming the peer's IP address whatever the host name).
        let server = ScriptedSMTPPeer(
            WireScript.hello(["STARTTLS", "AUTH PLAIN"]) + [.expect("STARTTLS"), .send("220 go ahead\r\n"), .startTLS],
            address: try SocketAddress(ipAddress: "192.0.2.25", port: 25))
        let error = await wireCatch {
            try await server.connect(
                configuration: .wire(
                    host: "mx.test", security: .startTLSRequired, credentials: .password(user: user, password: SMTPSecret(password))))
        }
        #expect(error?.code == .tlsHandshake && error?.stage == .tls, "\(String(describing: error))")
        #expect(error?.description.contains("does not match the host name") == true, "\(String(describing: error))")
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "STARTTLS"], "no command after the failed handshake, in clear or under TLS")
    }

    @Test("implicit TLS with a CA the client does not trust: tls_handshake, the error points to tls-ca-file")
    func untrustedCA() async throws {
        let server = ScriptedSMTPPeer([.startTLS])
        var configuration = SMTPClientConfiguration.wire(host: "localhost", security: .implicitTLS)
        configuration.tlsCAFile = nil
        let error = await wireCatch { try await server.connect(configuration: configuration) }
        #expect(error?.code == .tlsHandshake && error?.stage == .tls, "\(String(describing: error))")
        #expect(error?.description.contains("tls-ca-file") == true, "\(String(describing: error))")
        await server.finished()
        #expect(server.transcript.isEmpty)
        #expect(!server.tlsErrors.isEmpty, "the server saw the client give up the handshake")
    }

    @Test("mail.smtp.ssl.trust names the host: its certificate is accepted whoever issued it")
    func trustedHost() async throws {
        let server = ScriptedSMTPPeer([.startTLS] + WireScript.hello([]) + WireScript.quit)
        var configuration = SMTPClientConfiguration.wire(host: "mx.test", security: .implicitTLS)
        configuration.tlsCAFile = nil
        configuration.trustedHosts = ["mx.test"]
        let conn = try await server.connect(configuration: configuration)
        #expect(conn.tlsInfo != nil)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("a server silent in the TLS handshake: timeout exactly at connect-timeout, nothing sent in clear text after STARTTLS")
    func silentHandshake() async throws {
        // The server's TLS end never starts: the ClientHello goes unanswered.
        let server = ScriptedSMTPPeer(
            WireScript.hello(["STARTTLS"]) + [
                .expect("STARTTLS"), .send("220 go ahead\r\n"),
                .advance(.milliseconds(4999)), .expectOpen(true), .advance(.milliseconds(1)),
            ])
        let start = server.now
        let error = await wireCatch { try await server.connect(configuration: .wire(host: "localhost", security: .startTLSRequired)) }
        #expect(error?.code == .timeout && error?.isTransient == true, "\(String(describing: error))")
        #expect(server.now - start == .seconds(5))
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript.first == "EHLO client.test" && server.transcript.dropFirst().first == "STARTTLS")
    }

    @Test("the server closes under TLS (close_notify) after the dot, before its reply: outcomeUnknown")
    func closeUnderTLSAfterDot() async throws {
        let server = ScriptedSMTPPeer(
            [.startTLS] + WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .close,
            ])
        let conn = try await server.connect(configuration: .wire(host: "localhost", security: .implicitTLS))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .outcomeUnknown && error?.stage == .data, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [message + ".\r\n"])
    }
}
