import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("State machine: transactions (pipelining, partial refusal, streamed bodies), no sockets")
struct StateMachineTransactionTests {
    func feed(_ m: inout TestMachine, _ replies: [String], now: NIODeadline = at(2)) -> TestAction {
        var last: TestAction = .none
        for text in replies { last = m.replyReceived(reply(text), unprocessedBytes: 0, now: now) }
        return last
    }

    @Test("pipelined MAIL/RCPT/DATA in one write, the body after the 354, the reply to the dot ends it")
    func pipelinedExchange() {
        var m = readyMachine()
        let start = m.startTransaction(pipelinedRequest(rcpts: 2), completion: "t1", now: at(1))
        #expect(start.written == "MAIL FROM:<a@x.test>\r\nRCPT TO:<r0@x.test>\r\nRCPT TO:<r1@x.test>\r\nDATA\r\n")
        #expect(m.nextDeadline == at(31))
        #expect(feed(&m, ["250 ok", "250 ok", "250 ok"]).isNone)
        let body = feed(&m, ["354 go"], now: at(3))
        guard case .writeBody(let bytes, _, let handBack) = body else { Issue.record("\(body)"); return }
        #expect(String(buffer: bytes).hasSuffix("\r\n.\r\n") && handBack == nil)
        #expect(m.nextDeadline == at(603), "the dot waits max(protocol-timeout, 10 min)")
        guard case .transactionDone(let waiter, let replies, let ack) = feed(&m, ["250 2.0.0 queued"]) else { Issue.record("not done"); return }
        #expect(waiter == "t1" && replies.replies.map(\.code) == [250, 250, 250, 354] && replies.final?.code == 250 && !ack)
    }

    @Test("partial refusal with sendpartial: the body goes to the accepted recipients")
    func partialRefusal() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 3), completion: "t1", now: at(1))
        guard case .writeBody = feed(&m, ["250 ok", "250 ok", "550 5.1.1 no such user", "250 ok", "354 go"]) else { Issue.record("no body"); return }
        guard case .transactionDone(_, let replies, _) = feed(&m, ["250 queued"]) else { Issue.record("not done"); return }
        #expect(replies.replies[2].code == 550 && replies.final?.code == 250)
    }

    @Test("every recipient refused, DATA accepted in the pipeline: a lone dot, RSET, and no body")
    func everyRecipientRefused() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 2), completion: "t1", now: at(1))
        #expect(feed(&m, ["250 ok", "550 no", "550 no", "354 go"]).written == ".\r\n")
        #expect(feed(&m, ["554 no valid recipients"]).written == "RSET\r\n")
        guard case .transactionDone(_, let replies, _) = feed(&m, ["250 flushed"]) else { Issue.record("not done"); return }
        #expect(replies.final == nil && replies.replies.count == 4)
    }

    @Test("MAIL refused in a pipeline: the other replies are read, RSET, then the refusal")
    func mailRefused() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 1), completion: "t1", now: at(1))
        #expect(feed(&m, ["553 5.1.8 bad sender", "503 need MAIL"]).isNone)
        #expect(feed(&m, ["503 need RCPT"]).written == "RSET\r\n")
        let done = feed(&m, ["250 ok"])
        let error = done.error(for: "t1")
        #expect(!done.closesConnection && error?.stage == .mail && error?.replyCode == 553 && error?.isTransient == false)
        #expect(error?.message.contains("<a@x.test>") == true)
    }

    @Test("DATA refused: RSET, then the refusal at DATA; a failing RSET closes but keeps the first error")
    func dataRefused() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 1), completion: "t1", now: at(1))
        #expect(feed(&m, ["250 ok", "250 ok", "451 4.3.0 try later"]).written == "RSET\r\n")
        let failed = feed(&m, ["500 what"])
        #expect(failed.closesConnection && failed.error(for: "t1")?.stage == .data && failed.error(for: "t1")?.replyCode == 451)
    }

    @Test("sendpartial off: one refused recipient ends the transaction with RSET (DATA never sent)")
    func sendPartialOff() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 2, body: nil, sendPartial: false, dataIncluded: false), completion: "t1", now: at(1))
        #expect(feed(&m, ["250 ok", "250 ok", "550 no"]).written == "RSET\r\n")
        guard case .transactionDone(_, let replies, _) = feed(&m, ["250 ok"]) else { Issue.record("not done"); return }
        #expect(replies.final == nil && replies.replies.map(\.code) == [250, 250, 550])
    }

    @Test("no PIPELINING: one command at a time, DATA, a streamed body, the dot")
    func sequentialStreamed() {
        var m = readyMachine([])
        let request = SMTPTransactionRequest(
            commands: .sequential(
                mail: ByteBuffer(string: "MAIL FROM:<a@x.test>\r\n"),
                rcpts: [ByteBuffer(string: "RCPT TO:<b@x.test>\r\n"), ByteBuffer(string: "RCPT TO:<c@x.test>\r\n")]),
            sender: "a@x.test", rcptCount: 2, body: nil, sendPartial: true, handBack: false)
        #expect(m.startTransaction(request, completion: "t1", now: at(1)).written == "MAIL FROM:<a@x.test>\r\n")
        #expect(feed(&m, ["250 ok"]).written == "RCPT TO:<b@x.test>\r\n")
        #expect(feed(&m, ["250 ok"]).written == "RCPT TO:<c@x.test>\r\n")
        #expect(feed(&m, ["550 no"]).written == "DATA\r\n")
        guard case .sendBody(let waiter, _) = feed(&m, ["354 go"]) else { Issue.record("no body wanted"); return }
        #expect(waiter == "t1" && m.nextDeadline == nil)
        #expect(m.bodyChunk(ByteBuffer(string: "chunk\r\n"), now: at(3)).written == "chunk\r\n")
        #expect(m.nextDeadline == at(33), "a stalled write is bounded by protocol-timeout")
        m.bodyChunkWritten(now: at(4))
        guard case .writeBody(let last, let id, nil) = m.bodyEnd(ByteBuffer(string: ".\r\n"), completion: "t1-dot", now: at(5)) else {
            Issue.record("no end"); return
        }
        #expect(String(buffer: last) == ".\r\n")
        m.bodyWritten(transaction: id)
        guard case .transactionDone(let done, let replies, _) = feed(&m, ["250 queued"]) else { Issue.record("not done"); return }
        #expect(done == "t1-dot" && replies.replies.map(\.code) == [250, 250, 550, 354])
    }

    @Test("a streamed body whose write stalls: timeout at DATA, the connection closed")
    func stalledWrite() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 1, body: nil), completion: "t1", now: at(1))
        _ = feed(&m, ["250 ok", "250 ok", "354 go"])
        _ = m.bodyChunk(ByteBuffer(string: "x"), now: at(10))
        #expect(m.timerFired(now: at(39)).isNone)
        let action = m.timerFired(now: at(40))
        #expect(action.closesConnection && m.failure?.code == .timeout && m.failure?.stage == .data)
    }

    @Test("QUIT, NOOP and RSET wait for the replies before them; 250 completes them")
    func simpleCommands() {
        var m = readyMachine()
        #expect(m.startCommand(.noop, stage: .noop, timeout: .seconds(30), completion: "noop", now: at(1)).written == "NOOP\r\n")
        guard case .commandDone(let waiter, let r) = feed(&m, ["250 ok"]) else { Issue.record("not done"); return }
        #expect(waiter == "noop" && r.code == 250)
        _ = m.startCommand(.quit, stage: .quit, timeout: .seconds(10), completion: "quit", now: at(2))
        let timedOut = m.timerFired(now: at(12))
        #expect(timedOut.error(for: "quit")?.code == .timeout && timedOut.error(for: "quit")?.stage == .quit)
    }

    @Test("a reply nobody asked for: 421 closes with the reply, anything else is a protocol violation")
    func unexpectedReplies() {
        var m = readyMachine()
        _ = feed(&m, ["421 4.4.2 idle too long"])
        #expect(m.failure?.replyCode == 421 && m.failure?.isTransient == true)
        var n = readyMachine()
        _ = feed(&n, ["250 surprise"])
        #expect(n.failure?.code == .protocolViolation)
        // Nothing starts on a closed connection, and it says the message was not sent.
        let refused = n.startTransaction(pipelinedRequest(), completion: "late", now: at(3))
        #expect(refused.error(for: "late")?.code == .connectionClosed && refused.error(for: "late")?.isTransient == true)
    }

    @Test(
        "421 at any point of a transaction: the reply is the error, at its stage",
        arguments: [
            (["421 bye"], SMTPError.Stage.mail), (["250 ok", "421 bye"], .rcpt), (["250 ok", "250 ok", "421 bye"], .data),
            (["250 ok", "250 ok", "354 go", "421 bye"], .data),
        ])
    func closingAnywhere(replies: [String], stage: SMTPError.Stage) {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 1), completion: "t1", now: at(1))
        let action = feed(&m, replies)
        let error = action.error(for: "t1")
        #expect(action.closesConnection && error?.replyCode == 421 && error?.stage == stage && error?.code == .reply)
    }

    @Test("timeouts at instants: a pipelined group's replies are due protocol-timeout after it was written")
    func commandTimeouts() {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(rcpts: 2), completion: "t1", now: at(1))
        #expect(m.timerFired(now: at(30)).isNone)
        let action = m.timerFired(now: at(31))
        let error = action.error(for: "t1")
        #expect(error?.code == .timeout && error?.stage == .mail && error?.isTransient == true)
        #expect(error?.message.contains("00:00:30") == true)
    }
}
