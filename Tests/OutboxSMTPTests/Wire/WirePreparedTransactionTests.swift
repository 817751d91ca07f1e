import Foundation
import NIOConcurrencyHelpers
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

/// A transaction prepared before a connection is at hand (`SMTPConnection.prepare`), started by
/// the event loop where the connection becomes free (`start`), concluded by `finish`.
@Suite("Wire: prepared transactions", .timeLimit(.minutes(1)), .abortPeersOnCancel)
struct WirePreparedTransactionTests {
    struct Declined: Error {}

    static func prepared(
        _ envelope: SMTPEnvelope = envelope1, _ body: String = message,
        for profile: SMTPTransactionProfile
    ) async throws -> SMTPPreparedTransaction? {
        var iterator = WireBody(body).makeAsyncIterator()
        let start = try await SMTPBodyStart.read(from: &iterator)
        return SMTPConnection.prepare(envelope: envelope, start: start, for: profile)
    }

    static func profile(_ extensions: [String: [String]], sendPartial: Bool = true, enableDebug: Bool = false) -> SMTPTransactionProfile {
        SMTPTransactionProfile(
            capabilities: SMTPCapabilities(extensions: extensions),
            configuration: .wire(port: 25, sendPartial: sendPartial, enableDebug: enableDebug))
    }

    /// Starts `prepared` on the connection's event loop and waits for its outcome.
    static func startOnLoop(
        _ conn: SMTPConnection, _ prepared: SMTPPreparedTransaction,
        handBack: @escaping @Sendable () -> Void = {}
    ) async throws -> SMTPPreparedOutcome {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<SMTPPreparedOutcome, any Error>) in
            conn.channel.eventLoop.execute {
                let started = conn.start(prepared, handBack: handBack, completion: { continuation.resume(returning: $0) })
                if !started { continuation.resume(throwing: Declined()) }
            }
        }
    }

    @Test("prepared only when it can go as one exchange: PIPELINING, sendpartial, no debug, a body of one chunk, valid commands")
    func preparedOnlyWhenPossible() async throws {
        let pipelining = Self.profile(["PIPELINING": []])
        let ready = try #require(try await Self.prepared(for: pipelining))
        #expect(String(buffer: ready.commands) == "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        #expect(String(buffer: ready.body) == message + ".\r\n")
        #expect(try await Self.prepared(for: Self.profile([:])) == nil)
        #expect(try await Self.prepared(for: Self.profile(["PIPELINING": []], sendPartial: false)) == nil)
        #expect(try await Self.prepared(for: Self.profile(["PIPELINING": []], enableDebug: true)) == nil)
        let big = "Subject: big\r\n\r\n" + String(repeating: String(repeating: "x", count: 998) + "\r\n", count: 70)
        #expect(try await Self.prepared(SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"]), big, for: pipelining) == nil)
        #expect(try await Self.prepared(SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test\r\nRSET"]), for: pipelining) == nil)
        #expect(try await Self.prepared(SMTPEnvelope(from: "a@x.test", recipients: []), for: pipelining) == nil)
        // SMTPUTF8 needed but not offered, or over the SIZE limit: left to send, which says why.
        #expect(try await Self.prepared(SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], requiresSMTPUTF8: true), for: pipelining) == nil)
        let sized = Self.profile(["PIPELINING": [], "SIZE": ["100"]])
        #expect(try await Self.prepared(SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], size: 101), for: sized) == nil)
        let withSize = try #require(try await Self.prepared(SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"], size: 30), for: sized))
        #expect(String(buffer: withSize.commands).hasPrefix("MAIL FROM:<a@x.test> SIZE=30\r\n"))
    }

    @Test("started at the hand-back: the next transaction's commands follow the dot, and finish reports it")
    func startedAtTheHandBack() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData,
                // The prepared message's commands arrive while the first one waits for its reply.
                .expect("MAIL FROM:<c@x.test>"), .expect("RCPT TO:<d@x.test>"), .expect("RCPT TO:<e@x.test>"), .expect("DATA"),
                .send("250 2.0.0 first queued\r\n"), .send("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n"),
                .readData, .send("250 2.0.0 second queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let next = try #require(
            try await Self.prepared(
                SMTPEnvelope(from: "c@x.test", recipients: ["d@x.test", "e@x.test"]),
                "Subject: two\r\n\r\n.dot\r\n", for: conn.transactionProfile))
        let started = NIOLockedValueBox<Bool?>(nil)
        let outcome = AsyncValues<SMTPPreparedOutcome>()
        let freed = NIOLockedValueBox(0)
        let first = try await conn.send(
            envelope: envelope1, body: WireBody(message),
            handBack: {
                started.withLockedValue {
                    $0 = conn.start(next, handBack: { freed.withLockedValue { $0 += 1 } }, completion: { result in outcome.append(result) })
                }
            })
        #expect(first.delivered && first.handedBack && first.finalReply?.text == "first queued")
        #expect(started.withLockedValue { $0 } == true)
        let outcomes = await outcome.wait()
        #expect(outcomes.count == 1)
        let result = try await conn.finish(next, try #require(outcomes.first))
        #expect(result.delivered && result.finalReply?.text == "second queued")
        #expect(result.recipients.map(\.accepted) == [true, false])
        #expect(result.recipients[1].reply?.enhancedCode?.description == "5.1.1")
        #expect(result.handedBack && freed.withLockedValue { $0 } == 1)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [message + ".\r\n", "Subject: two\r\n\r\n..dot\r\n.\r\n"])
    }

    @Test("start declines, sending nothing, off the event loop, on a busy connection, or for another profile")
    func startDeclines() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let ready = try #require(try await Self.prepared(for: conn.transactionProfile))
        // Off the event loop.
        let offLoop = conn.start(ready, handBack: {}, completion: { _ in Issue.record("declined start completed") })
        #expect(!offLoop)
        // Another profile: prepared for a server with 8BITMIME.
        let other = try #require(try await Self.prepared(for: Self.profile(["PIPELINING": [], "8BITMIME": []])))
        await #expect(throws: Declined.self) { _ = try await Self.startOnLoop(conn, other) }
        // Busy: the second start while the first runs.
        let outcomes = AsyncValues<SMTPPreparedOutcome>()
        let both = try await conn.channel.eventLoop.submit { () -> [Bool] in
            let record: @Sendable (SMTPPreparedOutcome) -> Void = { outcome in outcomes.append(outcome) }
            return [conn.start(ready, handBack: {}, completion: record), conn.start(ready, handBack: {}, completion: record)]
        }.get()
        #expect(both == [true, false])
        let completed = await outcomes.wait()
        let result = try await conn.finish(ready, try #require(completed.first))
        #expect(result.delivered)
        await conn.quit()
        await server.finished()
        #expect(outcomes.current.count == 1, "the declined start never completes")
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings.count == 1)
    }

    @Test("finish reports failures as send does: MAIL refused throws and RSET follows, every RCPT refused, the connection lost after the dot")
    func finishReportsFailures() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("550 5.1.0 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n"),
                .expect("RSET"), .send("250 ok\r\n"),
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .close,
            ])
        let conn = try await server.connect(configuration: .wire())
        let ready = try #require(try await Self.prepared(for: conn.transactionProfile))

        let mailRefused = await wireCatch { try await conn.finish(ready, try await Self.startOnLoop(conn, ready)) }
        #expect(mailRefused?.replyCode == 550 && mailRefused?.stage == .mail)
        #expect(conn.isOpen)

        let noRecipient = try await conn.finish(ready, try await Self.startOnLoop(conn, ready))
        #expect(!noRecipient.delivered && noRecipient.finalReply == nil)
        #expect(noRecipient.recipients.map { $0.reply?.code } == [550])

        let lost = await wireCatch { try await conn.finish(ready, try await Self.startOnLoop(conn, ready)) }
        #expect(lost?.code == .outcomeUnknown, "\(String(describing: lost))")
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("a prepared transaction sent from a task; nil and nothing sent when the profile differs")
    func sentFromATask() async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello(["PIPELINING", "8BITMIME"]) + [
                .expect("MAIL FROM:<a@x.test>"), .expect("RCPT TO:<b@x.test>"), .expect("DATA"),
                .send("250 ok\r\n250 ok\r\n354 go\r\n"), .readData, .send("250 queued\r\n"),
            ] + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        let other = try #require(try await Self.prepared(for: Self.profile(["PIPELINING": []])))
        #expect(try await conn.send(other) == nil)
        let ready = try #require(try await Self.prepared(for: conn.transactionProfile))
        let result = try #require(try await conn.send(ready))
        #expect(result.delivered && result.finalReply?.text == "queued" && !result.handedBack)
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.dataStrings == [message + ".\r\n"])
    }
}
