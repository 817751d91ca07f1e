import NIOCore

/// Transactions, continued: the replies to MAIL, RCPT and DATA, the decision to send the body
/// or not (RFC 2920: a lone `.` after an unwanted 354, then RSET), the body (written by the
/// event loop, or streamed by its sender), the reply to the final dot, and what comes next.
extension SMTPClientStateMachine {
    /// A reply for the first operation (the session is ready).
    mutating func operationAnswered(_ reply: SMTPReply, now: NIODeadline) -> Action {
        guard !operations.isEmpty else { return closeUnexpected(reply) }
        var operation = operations.removeFirst()
        switch operation.kind {
        case .command(let stage, _):
            if reply.code == 421 {
                operations.insert(operation, at: 0)
                return closeWithFailure(SMTPError.reply(reply, stage: stage, message: "the server is closing the connection: \(reply)"))
            }
            advance(now: now)
            return .commandDone(operation.completion!, reply)
        case .transaction(var transaction):
            operation.kind = .command(.mail, timeout: .zero)  // (the transaction moved out: no copy on write)
            let action = transactionAnswered(reply, &transaction, &operation, now: now)
            return action
        }
    }

    /// The first operation is over: the next one's wait starts now.
    @discardableResult
    mutating func advance(now: NIODeadline) -> Bool {
        guard !operations.isEmpty else {
            waitDeadline = nil
            return false
        }
        let deadline = now + timeout(of: operations[0])
        operations[0].deadline = deadline
        waitDeadline = deadline
        return true
    }

    /// Puts the transaction back first in line, waiting until `deadline`.
    mutating func keep(_ transaction: Transaction, _ operation: Operation, deadline: NIODeadline?) {
        var operation = operation
        operation.kind = .transaction(transaction)
        if let deadline {
            operation.deadline = deadline
            waitDeadline = deadline
        }
        operations.insert(operation, at: 0)
    }

    mutating func transactionAnswered(
        _ reply: SMTPReply, _ t: inout Transaction, _ operation: inout Operation,
        now: NIODeadline
    ) -> Action {
        if reply.code == 421 {
            // The server is closing: report its 421, not the closed connection after it.
            let stage = t.stage
            if case .commands = t.phase { t.replies.append(reply) }
            keep(t, operation, deadline: nil)
            let message = (t.phase.isDot ? "the server refused the message: " : "the server is closing the connection: ") + "\(reply)"
            return closeWithFailure(SMTPError.reply(reply, stage: stage == .rset ? .rset : stage, message: message))
        }
        switch t.phase {
        case .commands:
            t.replies.append(reply)
            if !t.unsent.isEmpty, t.replies[0].isPositiveCompletion {
                // Sequential: the next RCPT.
                let next = t.unsent.removeFirst()
                keep(t, operation, deadline: now + protocolTimeout)
                return .write(next)
            }
            let expected = 1 + t.rcptCount + (t.dataIncluded ? 1 : 0)
            if t.replies.count < expected && (!t.sequential || t.replies[0].isPositiveCompletion) {
                keep(t, operation, deadline: operation.deadline)
                return .none
            }
            return decide(&t, operation, now: now)
        case .data:
            t.replies.append(reply)
            guard reply.code == 354 else {
                return reset(&t, operation, .fail(SMTPError.reply(reply, stage: .data, message: "the server refused DATA: \(reply)")), now: now)
            }
            return startBody(&t, operation, now: now)
        case .streaming:
            keep(t, operation, deadline: nil)
            return closeUnexpected(reply)
        case .dot:
            let acknowledge = advance(now: now)
            return .transactionDone(operation.completion!, SMTPTransactionReplies(replies: t.replies, final: reply), acknowledgeAtOnce: acknowledge)
        case .abortingData(let ending):
            return reset(&t, operation, ending, now: now)
        case .resetting(let ending):
            guard reply.code == 250 else {
                keep(t, operation, deadline: nil)
                switch ending {
                case .fail(let error): return closeWithFailure(error)
                case .finish: return closeWithFailure(SMTPError.reply(reply, stage: .rset))
                }
            }
            advance(now: now)
            switch ending {
            case .finish(let replies): return .transactionDone(operation.completion!, replies, acknowledgeAtOnce: false)
            case .fail(let error): return .fail(operation.completion!, error)
            }
        }
    }

    /// Every command reply is in (or MAIL was refused): send the body, or end the transaction.
    mutating func decide(_ t: inout Transaction, _ operation: Operation, now: NIODeadline) -> Action {
        let mail = t.replies[0]
        let dataReply: SMTPReply? = t.dataIncluded && t.replies.count == t.rcptCount + 2 ? t.replies.last : nil
        guard mail.isPositiveCompletion else {
            return end(
                &t, operation, .fail(SMTPError.reply(mail, stage: .mail, message: "the server refused the sender <\(t.sender)>: \(mail)")),
                dataAccepted: dataReply?.code == 354, now: now)
        }
        var accepted = 0
        for index in 1...t.rcptCount where t.replies[index].isPositiveCompletion { accepted += 1 }
        if accepted == 0 || (accepted < t.rcptCount && !t.sendPartial) {
            let replies = SMTPTransactionReplies(replies: t.replies, final: nil)
            return end(&t, operation, .finish(replies), dataAccepted: dataReply?.code == 354, now: now)
        }
        if let dataReply {
            guard dataReply.code == 354 else {
                return reset(
                    &t, operation, .fail(SMTPError.reply(dataReply, stage: .data, message: "the server refused DATA: \(dataReply)")), now: now)
            }
            return startBody(&t, operation, now: now)
        }
        t.phase = .data
        keep(t, operation, deadline: now + protocolTimeout)
        return .write(encode(.data))
    }

    /// No body: a lone `.` first when DATA was accepted, then RSET.
    mutating func end(_ t: inout Transaction, _ operation: Operation, _ ending: Ending, dataAccepted: Bool, now: NIODeadline) -> Action {
        guard dataAccepted else { return reset(&t, operation, ending, now: now) }
        if configuration.enableDebug { transcriptLines.append("C: .") }
        t.phase = .abortingData(ending)
        keep(t, operation, deadline: now + protocolTimeout)
        return .write(ByteBuffer(staticString: ".\r\n"))
    }

    mutating func reset(_ t: inout Transaction, _ operation: Operation, _ ending: Ending, now: NIODeadline) -> Action {
        t.phase = .resetting(ending)
        keep(t, operation, deadline: now + protocolTimeout)
        return .write(encode(.rset))
    }

    /// DATA got its 354: the body goes out.
    mutating func startBody(_ t: inout Transaction, _ operation: Operation, now: NIODeadline) -> Action {
        var operation = operation
        if let body = t.body {
            t.body = nil
            t.phase = .dot
            let handBack = t.handBack ? operation.completion : nil
            let id = t.id
            keep(t, operation, deadline: now + configuration.dataTerminationTimeout.timeAmount)
            return .writeBody(body, transaction: id, handBack: handBack)
        }
        t.phase = .streaming
        let completion = operation.completion!
        operation.completion = nil
        keep(t, operation, deadline: .distantFuture)
        waitDeadline = nil
        streaming = Streaming()
        return .sendBody(completion, SMTPTransactionReplies(replies: t.replies, final: nil))
    }

    // MARK: the body

    /// The body (or its end) was written: a failure after it means the outcome is unknown.
    package mutating func bodyWritten(transaction id: Int) {
        guard let index = operations.firstIndex(where: { $0.transactionID == id }) else { return }
        operations[index].bodyWritten = true
    }

    /// The sender of a streamed body has a chunk (dot-stuffed) ready.
    package mutating func bodyChunk(_ chunk: ByteBuffer, now: NIODeadline) -> Action {
        guard case .ready = state, var streaming else { return .none }
        streaming.writesPending += 1
        streaming.stallDeadline = now + protocolTimeout
        self.streaming = streaming
        return .writeBodyChunk(chunk)
    }

    /// A chunk's write completed.
    package mutating func bodyChunkWritten(now: NIODeadline) {
        guard var streaming else { return }
        streaming.writesPending -= 1
        streaming.stallDeadline = now + protocolTimeout
        self.streaming = streaming
    }

    /// The sender wrote the last bytes of a streamed body (the final dot included): the reply
    /// to the dot goes to `completion`.
    package mutating func bodyEnd(_ last: ByteBuffer, completion: Completion, now: NIODeadline) -> Action {
        guard case .ready = state, streaming != nil, !operations.isEmpty,
            case .transaction(var t) = operations[0].kind, case .streaming = t.phase
        else {
            return .fail(
                completion,
                SMTPClientStateMachine.afterDotError(
                    written: false, failure ?? SMTPError(stage: .data, code: .connectionClosed, message: "the connection is closed")))
        }
        var operation = operations.removeFirst()
        streaming = nil
        operation.completion = completion
        t.phase = .dot
        let id = t.id
        keep(t, operation, deadline: now + configuration.dataTerminationTimeout.timeAmount)
        return .writeBody(last, transaction: id, handBack: nil)
    }
}

extension SMTPClientStateMachine.Transaction.Phase {
    var isDot: Bool {
        if case .dot = self { return true }
        return false
    }
}
