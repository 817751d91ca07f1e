import NIOCore

/// What a pipelined transaction got back.
struct SMTPPipelinedOutcome: Sendable {
    /// MAIL, each RCPT, DATA (fewer when a 421 cut the exchange short).
    var replies: [SMTPReply]
    /// The reply to the final dot, when the body was sent.
    var finalReply: SMTPReply?
}

/// One whole pipelined transaction of a small message, run by `SMTPClientHandler` on the event
/// loop with no future or promise per command: MAIL, the RCPTs and DATA leave in one write; their
/// replies are collected here in order; when MAIL, at least one RCPT and DATA (354) were
/// accepted, the (complete, already dot-stuffed) body follows, and the reply to the final dot
/// ends the exchange. The waiting task is resumed exactly once, with the outcome or a `Failure`.
///
/// Created by the sending task, then handed to the event loop: from the write on, only the
/// channel's event loop touches it (hence `@unchecked Sendable`).
final class SMTPPipelinedExchange: @unchecked Sendable {
    enum Failure: Error {
        /// No reply within protocol-timeout while waiting for the command at `stage`.
        case timedOut(SMTPError.Stage, Duration)
        /// The connection failed while waiting for the reply to the command at `stage`.
        case failed(SMTPError.Stage, SMTPError)
        /// The connection failed (or the server did not answer in time) after the body was
        /// handed to the channel; `written` says whether all of it reached the socket.
        case afterDot(written: Bool, SMTPError)
    }

    enum Progress {
        case needMore
        /// The exchange is over (outcome delivered); its waiter goes.
        case done
        /// All command replies are in and positive: write this body; the final reply is next.
        case sendBody(ByteBuffer)
    }

    let commandCount: Int
    let rcptCount: Int
    let protocolTimeout: Duration
    let terminationTimeout: Duration
    private var body: ByteBuffer?
    private var replies: [SMTPReply] = []
    private var bodySent = false
    /// Set when the body's write completed.
    var bodyWritten = false
    /// When the current wait ends (set by the handler when the commands are written, moved
    /// when the body is).
    var deadline = NIODeadline.distantFuture
    /// Who learns the outcome: a task waiting in `pipelinedTransaction`, or the completion of a
    /// transaction prepared ahead and started by the event loop (`SMTPConnection.start`).
    enum Completion {
        case task(UnsafeContinuation<SMTPPipelinedOutcome, any Error>)
        case callback(@Sendable (Result<SMTPPipelinedOutcome, any Error>) -> Void)
    }
    private var completion: Completion?
    /// Run on the event loop once the body is handed to the channel (see `SMTPConnection.send`).
    private let handBack: SMTPHandBack?

    init(rcptCount: Int, body: ByteBuffer, protocolTimeout: Duration, terminationTimeout: Duration, handBack: SMTPHandBack? = nil) {
        self.handBack = handBack
        self.rcptCount = rcptCount
        self.commandCount = rcptCount + 2
        self.body = body
        self.protocolTimeout = protocolTimeout
        self.terminationTimeout = terminationTimeout
        self.replies.reserveCapacity(rcptCount + 2)
    }

    /// Set before the exchange is handed to the handler.
    func start(_ completion: Completion) {
        self.completion = completion
    }

    /// The stage of the command whose reply is awaited next.
    private var stage: SMTPError.Stage {
        if bodySent { return .data }
        let index = replies.count
        return index == 0 ? .mail : (index <= rcptCount ? .rcpt : .data)
    }

    func receive(_ reply: SMTPReply) -> Progress {
        if bodySent {
            resume(.success(SMTPPipelinedOutcome(replies: replies, finalReply: reply)))
            return .done
        }
        replies.append(reply)
        if reply.code == 421 {
            // The server is closing: report its 421, not the closed connection after it.
            resume(.success(SMTPPipelinedOutcome(replies: replies, finalReply: nil)))
            return .done
        }
        guard replies.count == commandCount else { return .needMore }
        var anyAccepted = false
        for index in 1...rcptCount where replies[index].isPositiveCompletion {
            anyAccepted = true
            break
        }
        guard replies[0].isPositiveCompletion, anyAccepted, replies[commandCount - 1].code == 354, let body else {
            resume(.success(SMTPPipelinedOutcome(replies: replies, finalReply: nil)))
            return .done
        }
        self.body = nil
        bodySent = true
        deadline = .now() + terminationTimeout.timeAmount
        return .sendBody(body)
    }

    /// The body (and so the final dot) was handed to the channel: the connection can take the
    /// next transaction, whose commands will be pipelined behind it.
    func didWriteBody() {
        handBack?.run()
    }

    /// Became the first waiter after the exchange before it ended: the server starts answering
    /// this one only now, so its protocol-timeout starts now.
    func becameFirst() {
        if !bodySent { deadline = .now() + protocolTimeout.timeAmount }
    }

    /// The connection failed: the waiting task learns where.
    func fail(_ error: SMTPError) {
        if bodySent {
            resume(.failure(Failure.afterDot(written: bodyWritten, error)))
        } else {
            resume(.failure(Failure.failed(stage, error)))
        }
    }

    /// The deadline passed: resumes the task and returns the error that closes the connection.
    func timedOut() -> SMTPError {
        if bodySent {
            let error = SMTPError(stage: .data, kind: .timeout,
                                  message: "no answer within \(SMTPConnection.format(terminationTimeout)) after the end of the message",
                                  isTransient: true)
            resume(.failure(Failure.afterDot(written: bodyWritten, error)))
            return error
        }
        let stage = self.stage
        resume(.failure(Failure.timedOut(stage, protocolTimeout)))
        return SMTPError(stage: stage, kind: .timeout,
                         message: "no answer from the server within \(SMTPConnection.format(protocolTimeout)) during \(stage.rawValue.uppercased())",
                         isTransient: true)
    }

    private func resume(_ result: Result<SMTPPipelinedOutcome, any Error>) {
        guard let completion else { return }
        self.completion = nil
        switch completion {
        case .task(let continuation): continuation.resume(with: result)
        case .callback(let callback): callback(result)
        }
    }
}

/// Gives a connection back as soon as a message's body is on its way, on the event loop, before
/// the sending task is even resumed: the pool can hand it to the next sender, whose commands
/// then follow the final dot in the pipeline. Run at most once, on the event loop; `done` is read
/// by the sending task after its continuation was resumed (which orders it after the run).
final class SMTPHandBack: @unchecked Sendable {
    private let action: @Sendable () -> Void
    private(set) var done = false

    init(_ action: @escaping @Sendable () -> Void) {
        self.action = action
    }

    func run() {
        guard !done else { return }
        done = true
        action()
    }
}
