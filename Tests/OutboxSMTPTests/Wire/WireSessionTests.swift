import Foundation
import NIOConcurrencyHelpers
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("Wire: whole sessions against a scripted server", .timeLimit(.minutes(1)), .abortPeersOnCancel)
struct WireSessionTests {
    @Test("every stage without PIPELINING: greeting, EHLO, MAIL with SIZE and BODY, RCPT, DATA, NOOP, RSET, QUIT")
    func plainSession() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["SIZE 1000000", "8BITMIME", "ENHANCEDSTATUSCODES"]) + [
                .expect("MAIL FROM:<a@x.test> SIZE=21 BODY=8BITMIME"), .send("250 2.1.0 Ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 2.1.5 Ok\r\n"),
                .expect("DATA"), .send("354 End data with <CR><LF>.<CR><LF>\r\n"),
                .readData, .send("250 2.0.0 Ok: queued as ABC\r\n"),
                .expect("NOOP"), .send("250 2.0.0 Ok\r\n"),
                .expect("RSET"), .send("250 2.0.0 Ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        #expect(conn.greeting == SMTPReply(code: 220, lines: ["mx.test ESMTP ready"]))
        #expect(conn.capabilities.sizeLimit == 1_000_000 && conn.capabilities.eightBitMIME && !conn.capabilities.pipelining)
        #expect(conn.stepTimings.map(\.step) == ["connect", "greeting", "ehlo"])
        let result = try await conn.send(
            envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], eightBitMIME: true, size: 21),
            body: WireBody(message))
        #expect(result.delivered)
        #expect(result.finalReply?.enhancedCode?.description == "2.0.0")
        #expect(result.recipients.map(\.accepted) == [true])
        #expect(result.bytesSent == message.utf8.count + 3)
        try await conn.noop()
        try await conn.reset()
        await conn.quit()
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(
            server.transcript == [
                "EHLO client.test", "MAIL FROM:<a@x.test> SIZE=21 BODY=8BITMIME", "RCPT TO:<b@x.test>",
                "DATA", "NOOP", "RSET", "QUIT",
            ])
        #expect(server.dataStrings == [message + ".\r\n"])
        // A closed connection refuses further use.
        #expect(await wireCatch { try await conn.noop() }?.code == .connectionUnusable)
    }

    @Test("PIPELINING: MAIL, RCPT, RCPT and DATA all arrive in one write, before any reply is sent")
    func pipelining() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expectWrite(["MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "RCPT TO:<c@x.test>", "DATA"]),
                .send("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test"]), body: WireBody(message))
        #expect(result.delivered && result.acceptedRecipients.count == 2)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "RCPT TO:<c@x.test>", "DATA", "QUIT"])
    }

    @Test("partial acceptance: 2 of 3 recipients accepted, the message goes to 2, results per recipient")
    func partialAcceptance() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING", "ENHANCEDSTATUSCODES"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<bad@x.test>"),
                .expect("RCPT TO:<c@x.test>"), .expect("DATA"),
                .send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <bad@x.test>: user unknown\r\n250 2.1.5 ok\r\n354 go\r\n"),
                .readData, .send("250 2.0.0 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(
            envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "bad@x.test", "c@x.test"]),
            body: WireBody(message))
        #expect(result.delivered)
        #expect(!result.abortedForPartialRefusal)
        #expect(result.acceptedRecipients.map(\.address) == ["b@x.test", "c@x.test"])
        let refused = try #require(result.refusedRecipients.first)
        #expect(result.refusedRecipients.count == 1)
        #expect(refused.address == "bad@x.test" && refused.reply?.code == 550 && !refused.isTransientFailure)
        #expect(refused.reply?.enhancedCode?.description == "5.1.1")
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("partial refusal with sendPartial false: no DATA, RSET, abortedForPartialRefusal; the connection stays usable")
    func partialRefusalAllOrNothing() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<c@x.test>"),
                .send("250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire(sendPartial: false))
        let result = try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test"]), body: WireBody(message))
        #expect(result.abortedForPartialRefusal)
        #expect(!result.delivered && result.finalReply == nil && result.bytesSent == 0)
        #expect(result.recipients.map(\.accepted) == [true, false])
        #expect(result.recipients[1].isTransientFailure)
        try await conn.noop()
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(
            server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "RCPT TO:<c@x.test>", "RSET", "NOOP", "QUIT"])
    }

    @Test("every RCPT refused but the pipelined DATA got 354: a lone dot, then RSET, no delivery")
    func allRefusedAfterPipelined354() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<c@x.test>"), .expect("DATA"),
                .send("250 ok\r\n550 no\r\n550 no\r\n354 go\r\n"),
                .expect("."), .send("554 5.5.1 Error: no valid recipients\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test"]), body: WireBody(message))
        #expect(!result.delivered && result.finalReply == nil && !result.abortedForPartialRefusal)
        #expect(result.acceptedRecipients.isEmpty && result.refusedRecipients.count == 2)
        #expect(conn.isOpen)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.data.isEmpty, "no message data was sent")
        #expect(server.transcript.suffix(4) == ["DATA", ".", "RSET", "QUIT"])
    }

    @Test("every RCPT refused without PIPELINING: RSET, no DATA")
    func allRefusedSequential() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("550 5.1.1 unknown\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(!result.delivered && result.refusedRecipients.count == 1)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(!server.transcript.contains("DATA"))
    }

    @Test("MAIL refused: a reply error at stage mail; RSET follows and the connection stays usable")
    func mailRefused() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("553 5.7.1 sender rejected\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.stage == .mail && error?.code == .reply && error?.replyCode == 553 && error?.isTransient == false)
        try await conn.noop()
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("the message refused after the final dot: a reply error, no RSET needed, the connection stays usable")
    func messageRefused() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"),
                .readData, .send("552 5.3.4 message too big\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.stage == .data && error?.code == .reply && error?.replyCode == 552)
        // The reply to the dot ends the transaction: no RSET is needed, the connection goes on.
        try await conn.noop()
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("dot-stuffing on the wire: leading dots, lone LF, CR at chunk boundaries, missing final CRLF")
    func dotStuffingOnTheWire() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(envelope: envelope1, body: WireBody("Subject: t\n\n.line1\r", "\n..two\rthree", "\n.", "\r\n.\r", "\nend"))
        let expected = "Subject: t\r\n\r\n..line1\r\n...two\r\nthree\r\n..\r\n..\r\nend\r\n.\r\n"
        #expect(result.bytesSent == expected.utf8.count)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [expected])
    }

    @Test("a large body streams in several writes, byte for byte")
    func largeBody() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let line = ".0123456789abcdefghijklmnopqrstuvwxyz\n"
        let chunks = (0..<40).map { _ in ByteBuffer(string: String(repeating: line, count: 200)) }
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(envelope: envelope1, body: WireBody(chunks))
        let expected = String(repeating: "." + line.dropLast() + "\r\n", count: 8000) + ".\r\n"
        #expect(result.bytesSent == expected.utf8.count)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [expected])
    }

    @Test(
        "a body of a few chunks (up to 256 KiB as sent) goes as one exchange, handed back at its dot; a larger one streams",
        arguments: [(1_000, true), (3_000, true), (7_000, false)])
    func fewChunksOneExchange(lines: Int, oneExchange: Bool) async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        // Lines that need stuffing, in chunks that do not end at line ends.
        let line = ".0123456789abcdefghijklmnopqrstuvwxyz\n"
        let text = String(repeating: line, count: lines)
        let bytes = Array(text.utf8)
        let chunks = stride(from: 0, to: bytes.count, by: 10_007).map { ByteBuffer(bytes: bytes[$0..<min($0 + 10_007, bytes.count)]) }
        let conn = try await server.connect(configuration: .wire())
        let freed = NIOLockedValueBox(0)
        let result = try await conn.send(envelope: envelope1, body: WireBody(chunks), handBack: { freed.withLockedValue { $0 += 1 } })
        let expected = String(repeating: "." + line.dropLast() + "\r\n", count: lines) + ".\r\n"
        #expect(result.delivered && result.bytesSent == expected.utf8.count)
        #expect((expected.utf8.count <= SMTPConnection.exchangeLimit) == oneExchange)
        #expect(result.handedBack == oneExchange)
        #expect(freed.withLockedValue { $0 } == (oneExchange ? 1 : 0))
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [expected])
    }

    @Test("a message that fails to read after its first chunk: nothing is sent, the error says so, the connection stays usable")
    func unreadableAfterFirstChunk() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        struct Unreadable: Error {}
        struct FailingBody: AsyncSequence, Sendable {
            typealias Element = ByteBuffer
            struct AsyncIterator: AsyncIteratorProtocol {
                var index = 0
                mutating func next() async throws -> ByteBuffer? {
                    index += 1
                    if index > 2 { throw Unreadable() }
                    return ByteBuffer(string: String(repeating: "0123456789abcdefghijklmnopqrstuvwxyz012345678\r\n", count: 1000))
                }
            }
            func makeAsyncIterator() -> AsyncIterator { AsyncIterator() }
        }
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: FailingBody()) }
        #expect(error?.isTransient == false && error?.message.contains("reading the message failed") == true, "\(String(describing: error))")
        #expect(conn.isOpen)
        let next = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(next.delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("SIZE over the server's limit is refused before MAIL; the connection stays usable")
    func sizeOverLimit() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["SIZE 1000"]) + [.expect("NOOP"), .send("250 ok\r\n")] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch {
            try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], size: 5000), body: WireBody(message))
        }
        #expect(error?.code == .unsupportedByServer && error?.stage == .mail && error?.isTransient == false)
        #expect(error?.description.contains("1000") == true)
        try await conn.noop()
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "NOOP", "QUIT"])
    }

    @Test("SMTPUTF8 needed but not offered is refused before MAIL; offered, it is sent")
    func smtpUTF8() async throws {
        let server = ScriptedSMTPPeer([
            WireScript.hello(["8BITMIME"]) + WireScript.quit,
            WireScript.hello(["SMTPUTF8"]) + [
                .expect("MAIL FROM:<jörg@x.test> SMTPUTF8"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .send("250 ok\r\n"),
            ] + WireScript.quit,
        ])
        let utf8Envelope = SMTPEnvelope(from: "jörg@x.test", recipients: ["b@x.test"], requiresSMTPUTF8: true)
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: utf8Envelope, body: WireBody(message)) }
        #expect(error?.code == .unsupportedByServer && error?.stage == .mail)
        await conn.quit()
        let conn2 = try await server.connect(configuration: .wire())
        #expect(try await conn2.send(envelope: utf8Envelope, body: WireBody(message)).delivered)
        await conn2.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript.prefix(2) == ["EHLO client.test", "QUIT"])
    }

    @Test("CR or LF in a recipient is refused before anything is written")
    func injectionInRecipient() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello(["PIPELINING"]) + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch {
            try await conn.send(
                envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test>\r\nRCPT TO:<evil@x.test"]),
                body: WireBody(message))
        }
        #expect(error?.code == .invalidArgument && error?.stage == .rcpt)
        let none = await wireCatch { try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: []), body: WireBody(message)) }
        #expect(none?.code == .invalidArgument)
        await conn.quit()
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "QUIT"])
    }

    @Test("DSN parameters only when announced")
    func dsn() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["DSN"]) + [
                .expect("MAIL FROM:<a@x.test> RET=HDRS"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test> NOTIFY=SUCCESS,FAILURE"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .send("250 ok\r\n"),
            ] + WireScript.quit)
        var config = SMTPClientConfiguration.wire()
        config.dsnNotify = "success,failure"
        config.dsnRet = "hdrs"
        let conn = try await server.connect(configuration: config)
        #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("EHLO refused: HELO fallback, then a transaction without extensions")
    func heloFallback() async throws {
        let server = ScriptedSMTPPeer(
            [
                .send("220 old.test SMTP\r\n"), .expect("EHLO client.test"), .send("502 5.5.2 Error: command not recognized\r\n"),
                .expect("HELO client.test"), .send("250 old.test\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        #expect(!conn.capabilities.isExtended)
        let result = try await conn.send(
            envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], eightBitMIME: true, size: 21),
            body: WireBody(message))
        #expect(result.delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }
}
