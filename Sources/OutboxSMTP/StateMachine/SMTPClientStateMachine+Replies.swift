import NIOCore

/// Transactions, continued: the replies to MAIL, RCPT and DATA, the decision to send the body
/// or not (RFC 2920: a lone `.` after an unwanted 354, then RSET), the body (written by the
/// event loop, or streamed by its sender), the reply to the final dot, and what comes next.
extension SMTPClientStateMachine {
    /// A reply for the first operation (the session is ready).
    ///
    /// A transaction is handled where it stands, first in `operations`: it is moved out of its
    /// operation (no copy), changed, and moved back, unless it ended. (Removing the operation and
    /// inserting it again copied the whole operation twice for every reply.)
    mutating func operationAnswered(_ reply: SMTPReply, now: NIODeadline) -> Action {
        guard !operations.isEmpty else { return closeUnexpected(reply) }
        guard var t = operations[0].transaction.take() else {
            if reply.code == 421 {
                return closeWithFailure(
                    SMTPError.reply(reply, stage: operations[0].stage, message: "the server is closing the connection: \(reply)"))
            }
            let completion = operations.removeFirst().completion
            advance(now: now)
            return .commandDone(completion!, reply)
        }
        switch transactionAnswered(reply, &t, now: now) {
        case .stay(let action):
            operations[0].transaction = consume t
            return action
        case .close(let error):
            operations[0].transaction = consume t
            return closeWithFailure(error)
        case .end(let ending, let acknowledgeAtOnce):
            let completion = operations.removeFirst().completion!
            let more = advance(now: now)
            switch ending {
            case .finish(let replies): return .transactionDone(completion, replies, acknowledgeAtOnce: acknowledgeAtOnce && more)
            case .fail(let error): return .fail(completion, error)
            }
        }
    }

    /// The first operation is over: the next one's wait starts now.
    @discardableResult
    mutating func advance(now: NIODeadline) -> Bool {
        guard !operations.isEmpty else {
            waitDeadline = nil
            return false
        }
        // (In place, through a mutating method of the element: reading the element's timeout
        // copied the whole operation, and a method of `self` given it copied the whole machine.)
        waitDeadline = operations[0].startWait(now: now, protocolTimeout: protocolTimeout)
        return true
    }

    /// The first operation waits until `deadline`.
    mutating func wait(until deadline: NIODeadline) {
        operations[0].deadline = deadline
        waitDeadline = deadline
    }

    /// What becomes of a transaction after a reply.
    enum Step {
        /// It stays first in line; the runner does `action`.
        case stay(Action)
        /// It stays first in line, and the connection closes with this error.
        indirect case close(SMTPError)
        /// It is over: its waiter gets the ending, and the next operation's wait starts.
        /// `acknowledgeAtOnce`: ask for a quick acknowledgement when another one is waiting.
        case end(Ending, acknowledgeAtOnce: Bool)
    }

    /// A reply for the transaction `t`, moved out of the first operation (whose other fields,
    /// the waiter and the deadline, are read and written in place).
    mutating func transactionAnswered(_ reply: SMTPReply, _ t: inout Transaction, now: NIODeadline) -> Step {
        if reply.code == 421 {
            // The server is closing: report its 421, not the closed connection after it.
            let stage = t.stage
            if case .commands = t.phase { t.replies.append(reply) }
            let message = (t.phase.isDot ? "the server refused the message: " : "the server is closing the connection: ") + "\(reply)"
            return .close(SMTPError.reply(reply, stage: stage == .rset ? .rset : stage, message: message))
        }
        switch t.phase {
        case .commands:
            t.replies.append(reply)
            if !t.unsent.isEmpty, t.replies[0].isPositiveCompletion {
                // Sequential: the next RCPT.
                let next = t.unsent.removeFirst()
                wait(until: now + protocolTimeout)
                return .stay(.write(next))
            }
            let expected = 1 + t.rcptCount + (t.dataIncluded ? 1 : 0)
            if t.replies.count < expected && (!t.sequential || t.replies[0].isPositiveCompletion) {
                return .stay(.none)
            }
            return decide(&t, now: now)
        case .data:
            t.replies.append(reply)
            guard reply.code == 354 else {
                return reset(&t, .fail(SMTPError.reply(reply, stage: .data, message: "the server refused DATA: \(reply)")), now: now)
            }
            return startBody(&t, now: now)
        case .streaming:
            return .close(unexpectedReplyError(reply))
        case .dot:
            var replies: [SMTPReply] = []
            swap(&replies, &t.replies)
            return .end(.finish(SMTPTransactionReplies(replies: replies, final: reply)), acknowledgeAtOnce: true)
        case .abortingData(let ending):
            return reset(&t, ending, now: now)
        case .resetting(let ending):
            guard reply.code == 250 else {
                switch ending {
                case .fail(let error): return .close(error)
                case .finish: return .close(SMTPError.reply(reply, stage: .rset))
                }
            }
            return .end(ending, acknowledgeAtOnce: false)
        }
    }

    /// Every command reply is in (or MAIL was refused): send the body, or end the transaction.
    mutating func decide(_ t: inout Transaction, now: NIODeadline) -> Step {
        let mail = t.replies[0]
        let dataReply: SMTPReply? = t.dataIncluded && t.replies.count == t.rcptCount + 2 ? t.replies.last : nil
        guard mail.isPositiveCompletion else {
            return end(
                &t, .fail(SMTPError.reply(mail, stage: .mail, message: "the server refused the sender <\(t.sender)>: \(mail)")),
                dataAccepted: dataReply?.code == 354, now: now)
        }
        var accepted = 0
        for index in 1...t.rcptCount where t.replies[index].isPositiveCompletion { accepted += 1 }
        if accepted == 0 || (accepted < t.rcptCount && !t.sendPartial) {
            let replies = SMTPTransactionReplies(replies: t.replies, final: nil)
            return end(&t, .finish(replies), dataAccepted: dataReply?.code == 354, now: now)
        }
        if let dataReply {
            guard dataReply.code == 354 else {
                return reset(&t, .fail(SMTPError.reply(dataReply, stage: .data, message: "the server refused DATA: \(dataReply)")), now: now)
            }
            return startBody(&t, now: now)
        }
        t.phase = .data
        wait(until: now + protocolTimeout)
        return .stay(.write(encode(.data)))
    }

    /// No body: a lone `.` first when DATA was accepted, then RSET.
    mutating func end(_ t: inout Transaction, _ ending: Ending, dataAccepted: Bool, now: NIODeadline) -> Step {
        guard dataAccepted else { return reset(&t, ending, now: now) }
        if configuration.enableDebug { transcriptLines.append("C: .") }
        t.phase = .abortingData(ending)
        wait(until: now + protocolTimeout)
        return .stay(.write(ByteBuffer(staticString: ".\r\n")))
    }

    mutating func reset(_ t: inout Transaction, _ ending: Ending, now: NIODeadline) -> Step {
        t.phase = .resetting(ending)
        wait(until: now + protocolTimeout)
        return .stay(.write(encode(.rset)))
    }

    /// DATA got its 354: the body goes out.
    mutating func startBody(_ t: inout Transaction, now: NIODeadline) -> Step {
        if let body = t.body {
            t.body = nil
            t.phase = .dot
            let handBack = t.handBack ? operations[0].completion : nil
            wait(until: now + dataTerminationTimeout)
            return .stay(.writeBody(body, transaction: t.id, handBack: handBack))
        }
        t.phase = .streaming
        let completion = operations[0].completion!
        operations[0].completion = nil
        operations[0].deadline = .distantFuture
        waitDeadline = nil
        streaming = Streaming()
        return .stay(.sendBody(completion, SMTPTransactionReplies(replies: t.replies, final: nil)))
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
        guard case .ready = state, streaming != nil, !operations.isEmpty, operations[0].isStreaming else {
            return .fail(
                completion,
                SMTPClientStateMachine.afterDotError(
                    written: false, failure ?? SMTPError(stage: .data, code: .connectionClosed, message: "the connection is closed")))
        }
        streaming = nil
        operations[0].transaction!.phase = .dot
        let id = operations[0].transactionID!
        operations[0].completion = completion
        wait(until: now + dataTerminationTimeout)
        return .writeBody(last, transaction: id, handBack: nil)
    }
}

extension SMTPClientStateMachine.Transaction.Phase {
    var isDot: Bool {
        if case .dot = self { return true }
        return false
    }
}
