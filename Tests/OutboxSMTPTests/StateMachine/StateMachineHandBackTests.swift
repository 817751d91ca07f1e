import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("State machine: the hand-back at the final dot, pipelining across transactions, failures after the dot")
struct StateMachineHandBackTests {
    func feed(_ m: inout TestMachine, _ replies: [String], now: NIODeadline = at(2)) -> TestAction {
        var last: TestAction = .none
        for text in replies { last = m.replyReceived(reply(text), unprocessedBytes: 0, now: now) }
        return last
    }

    /// A machine whose transaction `t1` has its body written with the hand-back; returns its id.
    func handedBack() -> (TestMachine, Int) {
        var m = readyMachine()
        _ = m.startTransaction(pipelinedRequest(handBack: true), completion: "t1", now: at(1))
        let action = feed(&m, ["250 ok", "250 ok", "354 go"])
        guard case .writeBody(_, let id, let handBack) = action else {
            Issue.record("no body: \(action)")
            return (m, 0)
        }
        #expect(handBack == "t1", "the hand-back runs once the body is written")
        return (m, id)
    }

    @Test("the next transaction's commands follow the dot at once; its wait starts after the dot's reply")
    func pipeliningAcrossTransactions() {
        var (m, _) = handedBack()
        let next = m.startTransaction(pipelinedRequest(handBack: true), completion: "t2", now: at(3))
        #expect(next.written == "MAIL FROM:<a@x.test>\r\nRCPT TO:<r0@x.test>\r\nDATA\r\n", "written behind the dot, not deferred")
        #expect(m.nextDeadline == at(602), "only the dot's wait runs")
        guard case .transactionDone(let first, _, let acknowledge) = feed(&m, ["250 first queued"], now: at(4)) else {
            Issue.record("first not done"); return
        }
        #expect(first == "t1" && acknowledge, "the reply that ends t1 is acknowledged at once: t2's replies come next")
        #expect(m.nextDeadline == at(34), "t2's protocol-timeout starts when t1 is answered")
        guard case .writeBody(_, _, "t2") = feed(&m, ["250 ok", "250 ok", "354 go"]) else { Issue.record("no second body"); return }
        guard case .transactionDone("t2", let replies, false) = feed(&m, ["250 second queued"]) else { Issue.record("second not done"); return }
        #expect(replies.final?.text == "second queued")
    }

    @Test("a message that is not pipelined with its body waits until the dot is answered")
    func streamedWaitsForTheDot() {
        var (m, _) = handedBack()
        #expect(m.startTransaction(pipelinedRequest(body: nil), completion: "t2", now: at(3)).isNone)
        #expect(m.startCommand(.noop, stage: .noop, timeout: .seconds(30), completion: "noop", now: at(3)).isNone)
        _ = feed(&m, ["250 queued"], now: at(4))
        #expect(m.hasDeferredWork)
        #expect(m.startDeferred(now: at(4)).written == "MAIL FROM:<a@x.test>\r\nRCPT TO:<r0@x.test>\r\nDATA\r\n")
        #expect(!m.hasDeferredWork, "the NOOP waits for t2")
    }

    @Test("after the dot, the reply is a refusal (4xx/5xx): the transaction's result, the connection kept", arguments: [451, 554])
    func refusedAfterTheDot(code: Int) {
        var (m, _) = handedBack()
        guard case .transactionDone(_, let replies, _) = feed(&m, ["\(code) no"]) else { Issue.record("not done"); return }
        #expect(replies.final?.code == code && m.failure == nil)
    }

    @Test("after the dot, the body written and no reply in time: outcome unknown; the next message was not sent")
    func timeoutAfterTheDot() {
        var (m, id) = handedBack()
        m.bodyWritten(transaction: id)
        _ = m.startTransaction(pipelinedRequest(handBack: true), completion: "t2", now: at(3))
        #expect(m.timerFired(now: at(601)).isNone)
        let action = m.timerFired(now: at(602))
        let first = action.error(for: "t1")
        let second = action.error(for: "t2")
        #expect(action.closesConnection && first?.code == .outcomeUnknown && first?.stage == .data && first?.isTransient == true)
        #expect(second?.code == .connectionClosed && second?.stage == .mail && second?.isTransient == true)
    }

    @Test("after the dot, the connection closes: outcome unknown once the body was written, else not accepted")
    func closedAfterTheDot() {
        var (m, id) = handedBack()
        m.bodyWritten(transaction: id)
        #expect(m.channelInactive().error(for: "t1")?.code == .outcomeUnknown)
        var (n, _) = handedBack()
        let notWritten = n.channelInactive().error(for: "t1")
        #expect(notWritten?.code == .connectionClosed && notWritten?.message.contains("not accepted") == true)
    }

    @Test("after the dot, a 421: the reply is the error (not outcome unknown), the next message gets it too")
    func closingAfterTheDot() {
        var (m, id) = handedBack()
        m.bodyWritten(transaction: id)
        _ = m.startTransaction(pipelinedRequest(handBack: true), completion: "t2", now: at(3))
        let action = feed(&m, ["421 4.3.2 shutting down"])
        #expect(action.error(for: "t1")?.replyCode == 421 && action.error(for: "t1")?.stage == .data)
        #expect(action.error(for: "t2")?.replyCode == 421 && action.error(for: "t2")?.stage == .mail)
    }

    @Test("after the dot, garbage from the server: a protocol violation ends both transactions")
    func protocolErrorAfterTheDot() {
        var (m, id) = handedBack()
        m.bodyWritten(transaction: id)
        let action = m.errorCaught(SMTPError(stage: .protocol, code: .protocolViolation, message: "malformed"))
        #expect(action.error(for: "t1")?.code == .outcomeUnknown)
    }
}
