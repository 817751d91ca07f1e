import Foundation
import NIOConcurrencyHelpers
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("Wire: failed sessions against a scripted server (refusals, timeouts, garbage, closes)", .timeLimit(.minutes(1)), .abortPeersOnCancel)
struct WireSessionFailureTests {
    @Test("greeting 554: error at stage greeting, nothing sent")
    func greeting554() async throws {
        let server = ScriptedSMTPPeer([.send("554 5.7.1 no SMTP service here\r\n")])
        let error = await wireCatch { try await server.connect(configuration: .wire()) }
        #expect(error?.stage == .greeting && error?.code == .reply && error?.replyCode == 554 && error?.isTransient == false)
        await server.finished()
        #expect(server.transcript.isEmpty)
    }

    @Test("start-tls-required and no STARTTLS offered: tlsRequired, and nothing but EHLO was sent")
    func startTLSRequiredNotOffered() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["PIPELINING", "AUTH PLAIN"]))
        let error = await wireCatch {
            try await server.connect(
                configuration: .wire(
                    security: .startTLSRequired,
                    credentials: .password(user: "joe", password: SMTPSecret("s3cr3t"))))
        }
        #expect(error?.code == .tlsRequired && error?.stage == .starttls)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test"])
    }

    @Test("start-tls-required and STARTTLS refused: an error, nothing else sent")
    func startTLSRefused() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["STARTTLS"]) + [.expect("STARTTLS"), .send("454 4.7.0 TLS not available\r\n")])
        let error = await wireCatch { try await server.connect(configuration: .wire(security: .startTLSRequired)) }
        #expect(error?.stage == .starttls && error?.replyCode == 454 && error?.isTransient == true)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "STARTTLS"])
    }

    @Test("STARTTLS injection: 220 and a clear-text reply in one write close the connection")
    func startTLSInjection() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["STARTTLS"]) + [.expect("STARTTLS"), .send("220 go ahead\r\n250 injected\r\n")])
        let error = await wireCatch { try await server.connect(configuration: .wire(security: .startTLSRequired)) }
        #expect(error?.code == .startTLSInjection && error?.stage == .starttls)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "STARTTLS"], "no TLS bytes and no command followed")
        #expect(server.data.isEmpty)
    }

    @Test("server silent at the greeting: timeout, exactly when protocol-timeout has passed")
    func greetingTimeout() async throws {
        let server = ScriptedSMTPPeer([.advance(.milliseconds(299)), .expectOpen(true), .advance(.milliseconds(1))])
        let start = server.now
        let error = await wireCatch { try await server.connect(configuration: .wire(protocolTimeout: .milliseconds(300))) }
        #expect(error?.code == .timeout && error?.stage == .greeting && error?.isTransient == true, "\(String(describing: error))")
        #expect(server.now - start == .milliseconds(300))
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript.isEmpty)
    }

    @Test("server silent after MAIL: timeout at stage mail, connection closed")
    func mailTimeout() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [.expect("MAIL FROM:<a@x.test>"), .advance(.milliseconds(299)), .expectOpen(true), .advance(.milliseconds(1))])
        let conn = try await server.connect(configuration: .wire(protocolTimeout: .milliseconds(300)))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .timeout && error?.stage == .mail)
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>"])
    }

    @Test("an endless reply line (1 MiB without LF): protocolViolation, not a hang")
    func endlessLine() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .sendBytes([UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)),
            ])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .protocolViolation)
        #expect(!conn.isOpen)
        await server.finished()
    }

    @Test("garbage instead of a greeting: protocolViolation")
    func garbage() async throws {
        let server = ScriptedSMTPPeer([.send("SSH-2.0-OpenSSH_9.6\r\n")])
        let error = await wireCatch { try await server.connect(configuration: .wire()) }
        #expect(error?.code == .protocolViolation && error?.stage == .protocol && error?.isTransient == false)
        await server.finished()
        #expect(server.transcript.isEmpty)
    }

    @Test("421 mid-transaction: a transient error, and the connection is closed")
    func reply421() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("421 4.7.0 mx.test closing connection\r\n"), .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.replyCode == 421 && error?.isTransient == true && error?.stage == .rcpt)
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>"])
    }

    @Test("421 answering a pipelined group, then close: the 421 is reported, transient, connection closed")
    func reply421Pipelined() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n421 4.3.2 shutting down\r\n"), .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.isTransient == true)
        #expect(error?.replyCode == 421)
        #expect(!conn.isOpen)
        await server.finished()
    }

    @Test(
        "the server closes during DATA before the dot: connectionClosed at stage data (safe to retry)",
        arguments: [10, 70_000])
    func closeBeforeDot(tailSize: Int) async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"),
                .reset, .signal("reset"),
            ])
        let conn = try await server.connect(configuration: .wire())
        let head = ByteBuffer(string: "Subject: t\r\n\r\n" + String(repeating: "0123456789012345678901234567890123456789\r\n", count: 2000))
        let tail = ByteBuffer(string: String(repeating: "t", count: tailSize))
        // The tail is held back until the client has seen the connection go (the head is only
        // written once the tail is read).
        let body = WireBody([head, tail]) { index in
            guard index == 1 else { return }
            await server.waitForEvent("reset")
            #expect(!conn.isOpen)
        }
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: body) }
        #expect(error?.code == .connectionClosed && error?.stage == .data && error?.isTransient == true)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.data.isEmpty)
    }

    @Test("the server closes after the dot, before its reply: outcomeUnknown")
    func closeAfterDot() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .outcomeUnknown && error?.stage == .data)
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("the server closed an idle connection: the next send fails fast")
    func idleClose() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello([]) + [.send("421 4.4.2 idle timeout\r\n"), .close])
        let conn = try await server.connect(configuration: .wire())
        await server.finished()
        #expect(!conn.isOpen)
        // Fast: the loop's clock stands still, so a send that waited for any timer would never end.
        let start = server.now
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error != nil && error?.isTransient == true)
        #expect(server.now == start)
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test"])
    }
}
