import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("Wire: whole sessions against a scripted server", .timeLimit(.minutes(1)))
struct WireSessionTests {
    @Test("every stage without PIPELINING: greeting, EHLO, MAIL with SIZE and BODY, RCPT, DATA, NOOP, RSET, QUIT")
    func plainSession() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello(["SIZE 1000000", "8BITMIME", "ENHANCEDSTATUSCODES"]) + [
                .expect("MAIL FROM:<a@x.test> SIZE=21 BODY=8BITMIME"), .send("250 2.1.0 Ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 2.1.5 Ok\r\n"),
                .expect("DATA"), .send("354 End data with <CR><LF>.<CR><LF>\r\n"),
                .readData, .send("250 2.0.0 Ok: queued as ABC\r\n"),
                .expect("NOOP"), .send("250 2.0.0 Ok\r\n"),
                .expect("RSET"), .send("250 2.0.0 Ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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

    @Test("PIPELINING: MAIL, RCPT, RCPT and DATA all arrive before any reply is sent")
    func pipelining() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<c@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let result = try await conn.send(envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test"]), body: WireBody(message))
        #expect(result.delivered && result.acceptedRecipients.count == 2)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "RCPT TO:<c@x.test>", "DATA", "QUIT"])
    }

    @Test("partial acceptance: 2 of 3 recipients accepted, the message goes to 2, results per recipient")
    func partialAcceptance() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING", "ENHANCEDSTATUSCODES"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<bad@x.test>"),
                .expect("RCPT TO:<c@x.test>"), .expect("DATA"),
                .send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <bad@x.test>: user unknown\r\n250 2.1.5 ok\r\n354 go\r\n"),
                .readData, .send("250 2.0.0 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<c@x.test>"),
                .send("250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port, sendPartial: false))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("RCPT TO:<c@x.test>"), .expect("DATA"),
                .send("250 ok\r\n550 no\r\n550 no\r\n354 go\r\n"),
                .expect("."), .send("554 5.5.1 Error: no valid recipients\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("550 5.1.1 unknown\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let result = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(!result.delivered && result.refusedRecipients.count == 1)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(!server.transcript.contains("DATA"))
    }

    @Test("MAIL refused: a reply error at stage mail; RSET follows and the connection stays usable")
    func mailRefused() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("553 5.7.1 sender rejected\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.stage == .mail && error?.code == .reply && error?.replyCode == 553 && error?.isTransient == false)
        try await conn.noop()
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("the message refused after the final dot: a reply error, no RSET needed, the connection stays usable")
    func messageRefused() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"),
                .readData, .send("552 5.3.4 message too big\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let line = ".0123456789abcdefghijklmnopqrstuvwxyz\n"
        let chunks = (0..<40).map { _ in ByteBuffer(string: String(repeating: line, count: 200)) }
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        // Lines that need stuffing, in chunks that do not end at line ends.
        let line = ".0123456789abcdefghijklmnopqrstuvwxyz\n"
        let text = String(repeating: line, count: lines)
        let bytes = Array(text.utf8)
        let chunks = stride(from: 0, to: bytes.count, by: 10_007).map { ByteBuffer(bytes: bytes[$0..<min($0 + 10_007, bytes.count)]) }
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
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
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(WireScript.hello(["SIZE 1000"]) + [.expect("NOOP"), .send("250 ok\r\n")] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer([
            WireScript.hello(["8BITMIME"]) + WireScript.quit,
            WireScript.hello(["SMTPUTF8"]) + [
                .expect("MAIL FROM:<jörg@x.test> SMTPUTF8"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .send("250 ok\r\n"),
            ] + WireScript.quit,
        ])
        let utf8Envelope = SMTPEnvelope(from: "jörg@x.test", recipients: ["b@x.test"], requiresSMTPUTF8: true)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: utf8Envelope, body: WireBody(message)) }
        #expect(error?.code == .unsupportedByServer && error?.stage == .mail)
        await conn.quit()
        let conn2 = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        #expect(try await conn2.send(envelope: utf8Envelope, body: WireBody(message)).delivered)
        await conn2.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript.prefix(2) == ["EHLO client.test", "QUIT"])
    }

    @Test("CR or LF in a recipient is refused before anything is written")
    func injectionInRecipient() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING"]) + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello(["DSN"]) + [
                .expect("MAIL FROM:<a@x.test> RET=HDRS"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test> NOTIFY=SUCCESS,FAILURE"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .send("250 ok\r\n"),
            ] + WireScript.quit)
        var config = SMTPClientConfiguration.wire(port: server.port)
        config.dsnNotify = "success,failure"
        config.dsnRet = "hdrs"
        let conn = try await SMTPConnection.connect(configuration: config)
        #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("EHLO refused: HELO fallback, then a transaction without extensions")
    func heloFallback() async throws {
        let server = try ScriptedSMTPServer(
            [
                .send("220 old.test SMTP\r\n"), .expect("EHLO client.test"), .send("502 5.5.2 Error: command not recognized\r\n"),
                .expect("HELO client.test"), .send("250 old.test\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        #expect(!conn.capabilities.isExtended)
        let result = try await conn.send(
            envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], eightBitMIME: true, size: 21),
            body: WireBody(message))
        #expect(result.delivered)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("greeting 554: error at stage greeting, nothing sent")
    func greeting554() async throws {
        let server = try ScriptedSMTPServer([.send("554 5.7.1 no SMTP service here\r\n")])
        let error = await wireCatch { try await SMTPConnection.connect(configuration: .wire(port: server.port)) }
        #expect(error?.stage == .greeting && error?.code == .reply && error?.replyCode == 554 && error?.isTransient == false)
        await server.finished()
        #expect(server.transcript.isEmpty)
    }

    @Test("start-tls-required and no STARTTLS offered: tlsRequired, and nothing but EHLO was sent")
    func startTLSRequiredNotOffered() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["PIPELINING", "AUTH PLAIN"]))
        let error = await wireCatch {
            try await SMTPConnection.connect(
                configuration: .wire(
                    port: server.port, security: .startTLSRequired,
                    credentials: .password(user: "joe", password: SMTPSecret("s3cr3t"))))
        }
        #expect(error?.code == .tlsRequired && error?.stage == .starttls)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test"])
    }

    @Test("start-tls-required and STARTTLS refused: an error, nothing else sent")
    func startTLSRefused() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["STARTTLS"]) + [.expect("STARTTLS"), .send("454 4.7.0 TLS not available\r\n")])
        let error = await wireCatch { try await SMTPConnection.connect(configuration: .wire(port: server.port, security: .startTLSRequired)) }
        #expect(error?.stage == .starttls && error?.replyCode == 454 && error?.isTransient == true)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "STARTTLS"])
    }

    @Test("STARTTLS injection: 220 and a clear-text reply in one write close the connection")
    func startTLSInjection() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello(["STARTTLS"]) + [.expect("STARTTLS"), .send("220 go ahead\r\n250 injected\r\n")])
        let error = await wireCatch { try await SMTPConnection.connect(configuration: .wire(port: server.port, security: .startTLSRequired)) }
        #expect(error?.code == .startTLSInjection && error?.stage == .starttls)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "STARTTLS"], "no TLS bytes and no command followed")
        #expect(server.data.isEmpty)
    }

    @Test("server silent at the greeting: timeout")
    func greetingTimeout() async throws {
        let server = try ScriptedSMTPServer([WireStep]())
        let start = ContinuousClock.now
        let error = await wireCatch { try await SMTPConnection.connect(configuration: .wire(port: server.port, protocolTimeout: .milliseconds(300))) }
        #expect(error?.code == .timeout && error?.stage == .greeting && error?.isTransient == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - start < .seconds(3))
        await server.finished()
    }

    @Test("server silent after MAIL: timeout at stage mail, connection closed")
    func mailTimeout() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello([]) + [.expect("MAIL FROM:<a@x.test>")])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port, protocolTimeout: .milliseconds(300)))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .timeout && error?.stage == .mail)
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>"])
    }

    @Test("an endless reply line (1 MiB without LF): protocolViolation, not a hang")
    func endlessLine() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .sendBytes([UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)),
            ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .protocolViolation)
        #expect(!conn.isOpen)
        await server.finished()
    }

    @Test("garbage instead of a greeting: protocolViolation")
    func garbage() async throws {
        let server = try ScriptedSMTPServer([.send("SSH-2.0-OpenSSH_9.6\r\n")])
        let error = await wireCatch { try await SMTPConnection.connect(configuration: .wire(port: server.port)) }
        #expect(error?.code == .protocolViolation && error?.stage == .protocol && error?.isTransient == false)
        await server.finished()
        #expect(server.transcript.isEmpty)
    }

    @Test("421 mid-transaction: a transient error, and the connection is closed")
    func reply421() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("421 4.7.0 mx.test closing connection\r\n"), .close,
            ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.replyCode == 421 && error?.isTransient == true && error?.stage == .rcpt)
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>"])
    }

    @Test("421 answering a pipelined group, then close: the 421 is reported, transient, connection closed")
    func reply421Pipelined() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n421 4.3.2 shutting down\r\n"), .close,
            ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
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
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"),
                .readBytes(1), .signal("closing"), .reset,
            ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let head = ByteBuffer(string: "Subject: t\r\n\r\n" + String(repeating: "0123456789012345678901234567890123456789\r\n", count: 2000))
        let tail = ByteBuffer(string: String(repeating: "t", count: tailSize))
        // The tail is held back until the client has seen the connection go.
        let body = WireBody([head, tail]) { index in
            guard index == 1 else { return }
            await server.waitForEvent("closing")
            await wireWait { !conn.isOpen }
        }
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: body) }
        #expect(error?.code == .connectionClosed && error?.stage == .data && error?.isTransient == true)
        await server.finished()
    }

    @Test("the server closes after the dot, before its reply: outcomeUnknown")
    func closeAfterDot() async throws {
        let server = try ScriptedSMTPServer(
            WireScript.hello([]) + [
                .expect("MAIL FROM:<a@x.test>"), .send("250 ok\r\n"),
                .expect("RCPT TO:<b@x.test>"), .send("250 ok\r\n"),
                .expect("DATA"), .send("354 go\r\n"), .readData, .close,
            ])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .outcomeUnknown && error?.stage == .data)
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("the server closed an idle connection: the next send fails fast")
    func idleClose() async throws {
        let server = try ScriptedSMTPServer(WireScript.hello([]) + [.send("421 4.4.2 idle timeout\r\n"), .close])
        let conn = try await SMTPConnection.connect(configuration: .wire(port: server.port))
        await server.finished()
        await wireWait { !conn.isOpen }
        #expect(!conn.isOpen)
        let start = ContinuousClock.now
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error != nil && error?.isTransient == true)
        #expect(ContinuousClock.now - start < .seconds(2))
    }
}
