import Foundation
import NIOConcurrencyHelpers
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

/// The pipelined fast path (`SMTPPipelinedExchange`): a small message against a server with
/// PIPELINING runs its whole transaction inside the handler. These cover its failure paths.
@Suite("Wire: the pipelined exchange", .timeLimit(.minutes(1)), .abortPeersOnCancel)
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
        let server = ScriptedSMTPPeer(steps + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        for i in 0..<5 {
            let result = try await conn.send(
                envelope: SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test", "c@x.test"]),
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

    @Test("handBack runs once the body is on its way, refused or not; the connection is left free")
    func handBack() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("554 5.7.1 rejected by policy\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("550 5.1.0 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let calls = NIOLockedValueBox(0)
        let first = try await conn.send(envelope: envelope1, body: WireBody(message), handBack: { calls.withLockedValue { $0 += 1 } })
        #expect(first.delivered && first.handedBack)
        #expect(calls.withLockedValue { $0 } == 1)
        // Refused after the dot: the body had gone out, so the connection was handed back.
        let refused = await wireCatch {
            try await conn.send(envelope: envelope1, body: WireBody(message), handBack: { calls.withLockedValue { $0 += 1 } })
        }
        #expect(refused?.replyCode == 554 && refused?.stage == .data)
        #expect(calls.withLockedValue { $0 } == 2)
        // Refused before any body: not handed back; this call itself sends RSET.
        let noBody = await wireCatch {
            try await conn.send(envelope: envelope1, body: WireBody(message), handBack: { calls.withLockedValue { $0 += 1 } })
        }
        #expect(noBody?.replyCode == 550 && noBody?.stage == .mail)
        #expect(calls.withLockedValue { $0 } == 2)
        let last = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(last.delivered && !last.handedBack)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("the next transaction's commands follow the final dot before its reply (RFC 2920 §3.1)")
    func nextTransactionPipelinedBehindTheDot() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData,
                // The second message's commands arrive (in one write) while the first waits for its reply.
                .expectWrite(["MAIL FROM:<c@x.test>", "RCPT TO:<d@x.test>", "DATA"]),
                .send("250 2.0.0 first queued\r\n"), .send("250 ok\r\n250 ok\r\n354 go\r\n"),
                .readData, .send("250 2.0.0 second queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let second = WaitingStart<SMTPTransactionResult>()
        // The second send starts from handBack, while the first still waits for its reply.
        let nextTask = Task {
            try await second.task { try await conn.send(envelope: SMTPEnvelope(from: "c@x.test", recipients: ["d@x.test"]), body: WireBody(message)) }
        }
        let first = try await conn.send(envelope: envelope1, body: WireBody(message), handBack: { second.start() })
        second.abandon()  // (started by now, unless the hand-back never ran)
        let next = try await nextTask.value
        #expect(first.delivered && first.finalReply?.text == "first queued")
        #expect(next.delivered && next.finalReply?.text == "second queued")
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("the first message's connection dies after its dot: it is outcomeUnknown, the pipelined next one connectionClosed (safe to retry)")
    func pipelinedNextFailsSafely() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData,
                .expect("MAIL FROM:<c@x.test>"), .expect("RCPT TO:<d@x.test>"), .expect("DATA"), .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let second = WaitingStart<SMTPTransactionResult>()
        let nextTask = Task {
            try await second.task { try await conn.send(envelope: SMTPEnvelope(from: "c@x.test", recipients: ["d@x.test"]), body: WireBody(message)) }
        }
        let firstError = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message), handBack: { second.start() }) }
        second.abandon()  // (started by now, unless the hand-back never ran)
        let nextError = await wireCatch { try await nextTask.value }
        #expect(firstError?.code == .outcomeUnknown, "\(String(describing: firstError))")
        #expect(
            nextError?.code == .connectionClosed && nextError?.isTransient == true && nextError?.stage == .mail, "\(String(describing: nextError))")
        await server.finished()
    }

    @Test("the first message refused at its dot: the pipelined next one goes on normally")
    func firstRefusedNextDelivered() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData,
                .expect("MAIL FROM:<c@x.test>"), .expect("RCPT TO:<d@x.test>"), .expect("DATA"),
                .send("554 5.7.1 first rejected\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                .readData, .send("250 2.0.0 second queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let second = WaitingStart<SMTPTransactionResult>()
        let nextTask = Task {
            try await second.task { try await conn.send(envelope: SMTPEnvelope(from: "c@x.test", recipients: ["d@x.test"]), body: WireBody(message)) }
        }
        let firstError = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message), handBack: { second.start() }) }
        second.abandon()  // (started by now, unless the hand-back never ran)
        let next = try await nextTask.value
        #expect(firstError?.replyCode == 554 && firstError?.stage == .data && firstError?.isTransient == false)
        #expect(next.delivered && next.finalReply?.text == "second queued")
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("NOOP, RSET or QUIT after a hand-back wait for the reply to the dot: a slow filter is not cut off by their timeout")
    func checksWaitForTheDotsReply() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData,
                // The server "filters" for over twice protocol-timeout; the NOOP waits all along.
                .advance(.milliseconds(900)), .expectOpen(true),
                .send("250 2.0.0 queued after filtering\r\n"),
                .expect("NOOP"), .send("250 2.0.0 Ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire(protocolTimeout: .milliseconds(400)))
        // The pool's check, asked for on the event loop the moment the connection is handed back
        // (as `noop()` asks for it, without the task hop that would let the clock move first).
        let check = server.loop.makePromise(of: SMTPReply.self)
        let handler = conn.handler
        let protocolTimeout = conn.configuration.protocolTimeout
        let result = try await conn.send(
            envelope: envelope1, body: WireBody(message),
            handBack: { handler.value.startCommand(.noop, stage: .noop, timeout: protocolTimeout, reply: check) })
        #expect(result.delivered && result.finalReply?.text == "queued after filtering")
        #expect(result.handedBack)
        if !result.handedBack { check.fail(WaitingStart<Void>.NeverStarted()) }  // (never asked for)
        #expect(try await check.futureResult.get().code == 250)
        #expect(conn.isOpen)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript.suffix(2) == ["NOOP", "QUIT"])
    }

    @Test("silent after the pipelined group: timeout at stage mail, exactly at protocol-timeout, connection closed")
    func silentAfterGroup() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .advance(.milliseconds(299)), .expectOpen(true), .advance(.milliseconds(1)),
            ])
        let conn = try await server.connect(configuration: .wire(protocolTimeout: .milliseconds(300)))
        let start = server.now
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .timeout && error?.stage == .mail && error?.isTransient == true, "\(String(describing: error))")
        #expect(server.now - start == .milliseconds(300))
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("the timer armed for an earlier message still catches a later silent one (re-armed, not lost)")
    func timerReArmed() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n"),  // then silence: the RCPT's reply never comes
                // The first message's timer (due at 400 ms) fires early here and is armed again.
                .advance(.milliseconds(399)), .expectOpen(true), .advance(.milliseconds(1)),
            ])
        let conn = try await server.connect(configuration: .wire(protocolTimeout: .milliseconds(400)))
        #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
        await server.advanceTime(by: .milliseconds(250))  // the first timer fires during the second wait
        let start = server.now
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .timeout && error?.stage == .rcpt, "\(String(describing: error))")
        // The whole protocol-timeout of the second message, not what was left of the first one's.
        #expect(server.now - start == .milliseconds(400))
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("a slow but steady server is not cut off: each message gets its own protocol-timeout")
    func slowServer() async throws {
        var steps = WireScript.hello(["PIPELINING"])
        for _ in 0..<3 {
            steps += [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .advance(.milliseconds(300)),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .advance(.milliseconds(300)), .send("250 queued\r\n"),
            ]
        }
        let server = ScriptedSMTPPeer(steps + WireScript.quit)
        let conn = try await server.connect(configuration: .wire(protocolTimeout: .milliseconds(500)))
        for _ in 0..<3 {
            #expect(try await conn.send(envelope: envelope1, body: WireBody(message)).delivered)
            await server.advanceTime(by: .milliseconds(300))  // 3 x 900 ms: longer than one timeout in all
        }
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("closed after the dot, before the reply: outcomeUnknown (never a blind resend)")
    func closeAfterDot() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .outcomeUnknown && error?.stage == .data && error?.isTransient == true, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.dataStrings == [message + ".\r\n"])
    }

    @Test("closed after some of the group's replies: connectionClosed at the stage still waiting")
    func closeMidGroup() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n"), .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .connectionClosed && error?.stage == .rcpt && error?.isTransient == true, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
    }

    @Test("MAIL refused in the group (and so RCPT and DATA): the 451 is reported, RSET, the connection stays usable")
    func mailRefused() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("NOOP"), .send("250 ok\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
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
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
            ] + replies.utf8.map { ScriptedSMTPStep.sendBytes([$0]) } + [.readData, .send("25"), .send("0 2.0.0 Ok\r\n")] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let result = try await conn.send(envelope: envelope1, body: WireBody(message))
        #expect(result.delivered && result.finalReply?.enhancedCode?.description == "2.0.0")
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }
}

/// A task body started from a callback (here: `handBack`, on the event loop), awaited later.
final class WaitingStart<Success: Sendable>: @unchecked Sendable {
    struct NeverStarted: Error {}
    private let lock = NIOLock()
    private var started: Bool?
    private var waiter: CheckedContinuation<Bool, Never>?

    func start() { decide(true) }

    /// Ends the wait of a body that was not started by now: it throws `NeverStarted`.
    func abandon() { decide(false) }

    private func decide(_ start: Bool) {
        let waiter: CheckedContinuation<Bool, Never>? = lock.withLock {
            guard started == nil else { return nil }
            started = start
            defer { self.waiter = nil }
            return self.waiter
        }
        waiter?.resume(returning: start)
    }

    /// Waits for `start()`, then runs `body`.
    func task(_ body: @escaping @Sendable () async throws -> Success) async throws -> Success {
        let go = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let now = lock.withLock { () -> Bool? in
                if let started { return started }
                waiter = continuation
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
        guard go else { throw NeverStarted() }
        return try await body()
    }
}
