import NIOCore

/// What a transaction got back: the replies to MAIL, each RCPT and DATA (when DATA was sent),
/// and the reply to the final dot when the body was sent.
package struct SMTPTransactionReplies: Sendable {
    /// MAIL, the RCPTs, DATA: fewer when the transaction ended early.
    package var replies: [SMTPReply]
    /// The reply to the final dot, when the body was sent.
    package var final: SMTPReply?
}

/// One transaction for the state machine: its commands, already validated and encoded, and how
/// they go out.
package struct SMTPTransactionRequest: Sendable {
    /// How the commands are written.
    package enum Commands: Sendable {
        /// MAIL, the RCPTs and (when `dataIncluded`) DATA, in one write (RFC 2920).
        case pipelined(ByteBuffer, dataIncluded: Bool)
        /// MAIL, then each RCPT after the previous reply, then DATA (no PIPELINING).
        case sequential(mail: ByteBuffer, rcpts: [ByteBuffer])
    }

    package var commands: Commands
    /// The reverse path, for the message of a refused MAIL.
    package var sender: String
    package var rcptCount: Int
    /// The complete DATA stream (final dot included) when the message is small: written by the
    /// event loop after the 354. Nil: the sender streams it (`bodyChunk`, `bodyEnd`).
    package var body: ByteBuffer?
    /// `mail.smtp.sendpartial`: the body goes to the accepted recipients when others are refused.
    package var sendPartial: Bool
    /// Hand the connection back once the complete body is written (see `Action.writeBody`).
    package var handBack: Bool

    /// A request; see the properties.
    package init(commands: Commands, sender: String, rcptCount: Int, body: ByteBuffer?, sendPartial: Bool, handBack: Bool) {
        self.commands = commands
        self.sender = sender
        self.rcptCount = rcptCount
        self.body = body
        self.sendPartial = sendPartial
        self.handBack = handBack
    }
}

extension SMTPClientStateMachine {
    /// A transaction or a simple command, written (or about to be) and awaiting replies.
    struct Operation {
        var completion: Completion?
        /// A simple command's stage and timeout (nil for a transaction).
        var command: Command?
        /// A transaction's state (nil for a simple command). Moved out while a reply for it is
        /// handled, and back (see `operationAnswered`): an optional, because `take()` moves its
        /// value out where a pattern on an enum's payload copied it.
        var transaction: Transaction?
        /// What is written when it starts: the command, or MAIL (with the RCPTs and DATA when
        /// pipelined).
        var initialWrite: ByteBuffer
        /// When its wait ends, once it is the first operation.
        var deadline = NIODeadline.distantFuture
        /// The transaction's number (nil for a simple command).
        var transactionID: Int?
        /// The transaction's body (final dot included) was written: a failure now leaves the
        /// outcome unknown. (Kept here, not in the transaction, so that marking it is cheap.)
        var bodyWritten = false

        /// NOOP, RSET or QUIT: one command, one reply.
        struct Command {
            var stage: SMTPError.Stage
            var timeout: TimeAmount
        }

        /// A simple command.
        init(completion: Completion, command: Command, initialWrite: ByteBuffer) {
            self.completion = completion
            self.command = command
            self.initialWrite = initialWrite
        }

        /// A transaction.
        init(completion: Completion, transaction: consuming Transaction, initialWrite: ByteBuffer) {
            self.completion = completion
            self.transactionID = transaction.id
            self.transaction = consume transaction
            self.initialWrite = initialWrite
        }

        // (The queue's hot paths read stored properties of `operations[0]`: a computed one made
        // the compiler copy the whole element first.)

        /// Its wait starts at `now`: its deadline, set and returned.
        mutating func startWait(now: NIODeadline, protocolTimeout: TimeAmount) -> NIODeadline {
            deadline = now + (command?.timeout ?? protocolTimeout)
            return deadline
        }

        /// A transaction whose body its sender streams.
        var isStreaming: Bool {
            if case .streaming? = transaction?.phase { return true }
            return false
        }

        /// Awaiting the reply to its final dot.
        var awaitsDot: Bool {
            if case .dot? = transaction?.phase { return true }
            return false
        }

        /// Awaiting the reply to the final dot of a body written by the event loop, with the
        /// connection handed back: the next transaction's commands may follow.
        var handedBack: Bool {
            if let t = transaction, case .dot = t.phase, t.handBack { return true }
            return false
        }

        var stage: SMTPError.Stage {
            command?.stage ?? transaction?.stage ?? .data
        }

        /// What the connection's failure means for this operation.
        func error(for error: SMTPError, isHead: Bool) -> SMTPError {
            guard let t = transaction else {
                return isHead ? Self.lost(error, during: stage) : SMTPClientStateMachine.notSent(error)
            }
            if !isHead {
                // Its commands followed the previous message's dot and were never answered.
                if error.reply != nil {
                    var e = error
                    e.stage = .mail
                    return e
                }
                return SMTPError(
                    stage: .mail, code: .connectionClosed,
                    message: "the connection was lost before the message's commands were answered (\(error.message))",
                    isTransient: true)
            }
            if case .dot = t.phase, error.reply == nil {
                return SMTPClientStateMachine.afterDotError(written: bodyWritten, error)
            }
            if case .resetting(.fail(let original)) = t.phase { return original }
            return Self.lost(error, during: t.stage)
        }

        static func lost(_ error: SMTPError, during stage: SMTPError.Stage) -> SMTPError {
            guard error.code == .connectionClosed, error.stage != stage else { return error }
            var adjusted = error
            adjusted.stage = stage
            adjusted.message = "the connection was lost during \(stage.rawValue.uppercased()): \(error.message)"
            return adjusted
        }
    }

    /// How a transaction that will not send its body ends, once RSET was answered.
    enum Ending {
        /// Refused recipients: the replies are the result.
        case finish(SMTPTransactionReplies)
        /// MAIL or DATA refused: this error is the result. (Boxed: an error is large.)
        indirect case fail(SMTPError)
    }

    struct Transaction {
        let id: Int
        let rcptCount: Int
        let sendPartial: Bool
        let handBack: Bool
        let sender: String
        /// One command at a time (no PIPELINING).
        let sequential: Bool
        var dataIncluded: Bool
        /// RCPT commands not written yet (sequential).
        var unsent: [ByteBuffer]
        var body: ByteBuffer?
        var replies: [SMTPReply]
        var phase: Phase

        enum Phase {
            /// MAIL, RCPT (and DATA) replies awaited.
            case commands
            /// DATA sent alone.
            case data
            /// The sender streams the body; no reply is awaited.
            case streaming
            /// The body and the final dot written.
            case dot
            /// A lone `.` ends a DATA that was accepted but must not go on; RSET follows.
            /// (Boxed, as is `resetting`: the phases of the common path stay one word, and a
            /// transaction moves cheaply in and out of the queue for every reply.)
            indirect case abortingData(Ending)
            /// RSET sent after a refusal.
            indirect case resetting(Ending)
        }

        var stage: SMTPError.Stage {
            switch phase {
            case .commands:
                let index = replies.count
                return index == 0 ? .mail : (index <= rcptCount ? .rcpt : .data)
            case .data, .streaming, .dot, .abortingData: return .data
            case .resetting: return .rset
            }
        }
    }

    /// The body is being streamed by its sender.
    struct Streaming {
        var writesPending = 0
        var stallDeadline = NIODeadline.distantFuture
    }

    static func afterDotError(written: Bool, _ error: SMTPError) -> SMTPError {
        if !written {
            return SMTPError(
                stage: .data, code: .connectionClosed,
                message: "the connection was lost before the end of the message was sent (\(error.message)); the message was not accepted")
        }
        return SMTPError(
            stage: .data, code: .outcomeUnknown,
            message:
                "the connection failed after the whole message was sent and before the server confirmed it (\(error.message)): the message may or may not have been accepted",
            isTransient: true)
    }

    // MARK: starting

    /// Starts a transaction: at once when nothing is awaited, right behind a message handed back
    /// at its dot when it is pipelined with its body, else once every reply is in.
    package mutating func startTransaction(_ request: SMTPTransactionRequest, completion: Completion, now: NIODeadline) -> Action {
        guard case .ready = state else {
            return .fail(
                completion, Self.notSent(failure ?? SMTPError(stage: .mail, code: .connectionClosed, message: "the connection is not ready")))
        }
        nextTransactionID += 1
        let dataIncluded: Bool
        let unsent: [ByteBuffer]
        let first: ByteBuffer
        let sequential: Bool
        switch request.commands {
        case .pipelined(let wire, let data):
            sequential = false
            dataIncluded = data
            unsent = []
            first = wire
        case .sequential(let mail, let rcpts):
            sequential = true
            dataIncluded = false
            unsent = rcpts
            first = mail
        }
        var replies: [SMTPReply] = []
        replies.reserveCapacity(request.rcptCount + 2)
        let transaction = Transaction(
            id: nextTransactionID, rcptCount: request.rcptCount, sendPartial: request.sendPartial,
            handBack: request.handBack, sender: request.sender, sequential: sequential,
            dataIncluded: dataIncluded, unsent: unsent,
            body: request.body, replies: replies, phase: .commands)
        let operation = Operation(completion: completion, transaction: transaction, initialWrite: first)
        let behindDot =
            request.body != nil && dataIncluded && streaming == nil && deferred.isEmpty
            && !operations.isEmpty && operations.allSatisfy { $0.handedBack }
        if behindDot {
            // RFC 2920 §3.1: commands may follow the message content in a group. Its wait
            // starts when the server answers it, after the reply to the dot.
            operations.append(operation)
            return .write(first)
        }
        return enqueue(operation, now: now)
    }

    /// Sends NOOP, RSET or QUIT once nothing else is awaited.
    package mutating func startCommand(
        _ command: SMTPCommand, stage: SMTPError.Stage, timeout: TimeAmount,
        completion: Completion, now: NIODeadline
    ) -> Action {
        guard case .ready = state else {
            return .fail(
                completion,
                SMTPError(
                    stage: stage, code: .connectionClosed,
                    message: "the connection is closed" + (failure.map { ": \($0.message)" } ?? ""),
                    isTransient: true))
        }
        transcript(command)
        var wire = ByteBufferAllocator().buffer(capacity: 8)
        command.writeValidated(into: &wire)
        return enqueue(Operation(completion: completion, command: .init(stage: stage, timeout: timeout), initialWrite: wire), now: now)
    }

    /// Writes `operation` now when nothing is awaited, else keeps it for later.
    mutating func enqueue(_ operation: consuming Operation, now: NIODeadline) -> Action {
        guard operations.isEmpty, streaming == nil, deferred.isEmpty else {
            deferred.append(operation)
            return .none
        }
        operation.deadline = now + (operation.command?.timeout ?? protocolTimeout)
        waitDeadline = operation.deadline
        let write = operation.initialWrite
        operations.append(operation)
        return .write(write)
    }

    /// True when an operation waits for the replies before it to come in.
    package var hasDeferredWork: Bool { !deferred.isEmpty && operations.isEmpty && streaming == nil }

    /// Starts the operation that waited for every reply to come in (call when `hasDeferredWork`).
    package mutating func startDeferred(now: NIODeadline) -> Action {
        guard case .ready = state, operations.isEmpty, streaming == nil, !deferred.isEmpty else { return .none }
        var operation = deferred.removeFirst()
        operation.deadline = now + (operation.command?.timeout ?? protocolTimeout)
        waitDeadline = operation.deadline
        operations.append(operation)
        return .write(operation.initialWrite)
    }
}
