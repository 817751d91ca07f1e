import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing
@testable import OutboxSMTP


/// The pipelined fast path (`SMTPPipelinedExchange`): a small message against a server with
/// PIPELINING runs its whole transaction inside the handler. These cover its failure paths.
@Suite("Wire: the pipelined exchange", .timeLimit(.minutes(1)))
struct WirePipelinedExchangeTests {
    @Test("many messages on one connection: commands in one write, replies matched, body after the 354")
    func manyMessages() async throws {
        var steps = WireScript.hello(["PIPELINING", "ENHANCEDSTATUSCODES"])
        for i in 0..<5 {
            steps += [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<c@x.test>"), .expect("DATA"),
                .send("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <c@x.test>: unknown\r\n354 go\r\n"),
                .readData, .send("250 2.0.0 Ok: queued as Q\(i)\r\n"),
            ]
        }
        let server = try ScriptedSMTPServer(steps + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        for i in 0..<5 {
            let result = try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test"]),
                                             body: WireBody(message))
            #expect(result.delivered)
            #expect(result.recipients.map(\.accepted) == [true, false])
            #expect(result.recipients[1].reply?.code == 550 && result.recipients[1].reply?.enhancedCode?.description == "5.1.1")
            #expect(result.recipients[1].reply?.text == "<c@x.test>: unknown")
            #expect(result.finalReply?.text == "Ok: queued as Q\(i)")
        }
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == Array(repeating: message + ".\r\n", count: 5))
    }

    @Test("whenAccepted runs once the server accepted the message (connection already free), not when it refused it")
    func handBack() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("554 5.7.1 rejected by policy\r\n"),
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
        ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let calls = NIOLockedValueBox(0)
        let first = try await conn.send(envelope: envelope1, body: WireBody(message), whenAccepted: { calls.withLockedValue { $0 += 1 } })
        #expect(first.delivered && first.connectionHandedBack)
        #expect(calls.withLockedValue { $0 } == 1)
        // Refused after the dot: not handed back; the error is the server's, the connection usable.
        let error = await wireCatch {
            try await conn.send(envelope: envelope1, body: WireBody(message), whenAccepted: { calls.withLockedValue { $0 += 1 } })
        }
        #expect(error?.replyCode == 554 && error?.stage == .data)
        #expect(calls.withLockedValue { $0 } == 1)
        // The connection was left free both times.
        let third = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(third.delivered && !third.connectionHandedBack)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("silent after the pipelined group: timeout at stage mail, connection closed")
    func silentAfterGroup() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
        ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port, protocolTimeout: .milliseconds(300)))
        let start = ContinuousClock.now
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.kind == .timeout && error?.stage == .mail && error?.isTransient == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(!conn.isOpen)
        await server.finished()
    }

    @Test("the timer armed for an earlier message still catches a later silent one (re-armed, not lost)")
    func timerReArmed() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n"),  // then silence: the RCPT's reply never comes
        ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port, protocolTimeout: .milliseconds(400)))
        #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
        try await Task.sleep(for: .milliseconds(250))  // the first timer fires during the second wait
        let start = ContinuousClock.now
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        let waited = ContinuousClock.now - start
        #expect(error?.kind == .timeout && error?.stage == .rcpt, "\(String(describing: error))")
        // The whole protocol-timeout of the second message, not what was left of the first one's.
        #expect(waited >= .milliseconds(380), "\(waited)")
        #expect(waited < .seconds(3))
        await server.finished()
    }

    @Test("a slow but steady server is not cut off: each message gets its own protocol-timeout")
    func slowServer() async throws {
        var steps = WireScript.hello(["PIPELINING"])
        for _ in 0..<3 {
            steps += [.expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                      .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n")]
        }
        let server = try ScriptedSMTPServer(steps + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port, protocolTimeout: .milliseconds(500)))
        for _ in 0..<3 {
            #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
            try await Task.sleep(for: .milliseconds(300))  // 3 x 300 ms: longer than one timeout in all
        }
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("closed after the dot, before the reply: outcomeUnknown (never a blind resend)")
    func closeAfterDot() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .close,
        ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.kind == .outcomeUnknown && error?.stage == .data && error?.isTransient == true, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("closed after some of the group's replies: connectionClosed at the stage still waiting")
    func closeMidGroup() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("250 ok\r\n"), .close,
        ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.kind == .connectionClosed && error?.stage == .rcpt && error?.isTransient == true, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
    }

    @Test("MAIL refused in the group (and so RCPT and DATA): the 451 is reported, RSET, the connection stays usable")
    func mailRefused() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            .send("451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n"),
            .expect("RSET"), .send("250 ok\r\n"),
            .expect("NOOP"), .send("250 ok\r\n"),
        ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.replyCode == 451 && error?.stage == .mail && error?.isTransient == true, "\(String(describing: error))")
        #expect(conn.isOpen)
        try await conn.noop()
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("a reply line split across reads at every byte still matches its command")
    func splitReplies() async throws {
        let replies = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + [
            .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
        ] + replies.utf8.map { WireStep.sendBytes([$0]) } + [.readData, .send("25"), .send("0 2.0.0 Ok\r\n")] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let result = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(result.delivered && result.finalReply?.enhancedCode?.description == "2.0.0")
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }
}
