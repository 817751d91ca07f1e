import NIOCore

extension SMTPConnection {
    /// The size of the chunks a body is written in.
    static let chunkTarget = 64 * 1024
    /// The largest message (as sent) that goes as one pipelined exchange, held in memory
    /// whole while it is sent; a larger one is streamed chunk by chunk.
    static let exchangeLimit = 4 * chunkTarget

    /// Sends one message: MAIL, one RCPT per recipient, DATA for the accepted ones, the body
    /// (line ends repaired and dot-stuffed on the fly, written as the channel accepts it), and
    /// the final dot. With PIPELINING, MAIL, the RCPTs and DATA leave in one flush.
    ///
    /// Returns per-recipient results. Throws for failures of the whole transaction: MAIL or DATA
    /// refused, the message refused after the final dot, an extension the message needs, or a
    /// broken connection (`.connectionClosed` before the final dot: safe to retry;
    /// `.outcomeUnknown` after it: not).
    ///
    /// `handBack`, when given, runs on the connection's event loop as soon as the connection can
    /// take the next transaction: when a small pipelined message's body (final dot included)
    /// was handed to the channel, after the connection was marked free, while the reply to the
    /// dot is still awaited. A connection pool gives the connection to its next user there: that
    /// user's MAIL, RCPTs and DATA follow the dot on the wire (RFC 2920 §3.1: commands may follow
    /// the message content in a group) instead of waiting for the reply and this task's wake-up.
    /// The result then says `handedBack`: the caller must not touch the connection again, and
    /// on a failure it is not reset or closed here (the next user meets a dead connection as a
    /// failure before its own body was sent: safe to retry).
    public func send<Body: AsyncSequence>(
        envelope: SMTPEnvelope, body: Body,
        handBack: (@Sendable () -> Void)? = nil
    ) async throws(SMTPError) -> SMTPTransactionResult
    where Body.Element == ByteBuffer {
        var iterator = body.makeAsyncIterator()
        let start: SMTPBodyStart
        do {
            // Read and encode the start of the body before anything is sent: a message that
            // cannot be produced fails here, and a small one (most are) is then complete.
            start = try await SMTPBodyStart.read(from: &iterator)
        } catch {
            throw SMTPBodyStart.readError(error)
        }
        return try await send(envelope: envelope, start: start, rest: &iterator, handBack: handBack)
    }

    /// `send` with the start of the body already read (`SMTPBodyStart.read`) from `rest`.
    package func send<Iterator: AsyncIteratorProtocol>(
        envelope: SMTPEnvelope, start: SMTPBodyStart, rest: inout Iterator,
        handBack: (@Sendable () -> Void)? = nil
    ) async throws(SMTPError) -> SMTPTransactionResult
    where Iterator.Element == ByteBuffer {
        try acquire()
        let token = handBack.map { makeHandBack($0) }
        do {
            var result = try await transaction(envelope: envelope, start: start, rest: &rest, handBack: token)
            if token?.done == true { result.handedBack = true } else { release() }
            return result
        } catch {
            // (Once handed back the connection belongs to someone else: not touched again.)
            if token?.done != true { settle() }
            throw error
        }
    }

    /// One transaction; `start` holds the body's first bytes (the whole body when it is
    /// small), `rest` the rest.
    func transaction<Iterator: AsyncIteratorProtocol>(
        envelope: SMTPEnvelope, start: SMTPBodyStart, rest: inout Iterator,
        handBack: SMTPHandBack?
    ) async throws(SMTPError) -> SMTPTransactionResult
    where Iterator.Element == ByteBuffer {
        let (mail, rcpts) = try Self.plan(envelope: envelope, capabilities: capabilities, configuration: configuration)
        var start = start
        let pipelineData = capabilities.pipelining && configuration.sendPartial
        if pipelineData && !start.isComplete {
            // A message of up to a few chunks still goes as one exchange (one write of the
            // commands, the body after the 354, one wake-up): read on while it fits.
            do {
                try await start.read(from: &rest, upTo: Self.exchangeLimit)
            } catch {
                // Nothing was sent: the message is unusable, the connection is not.
                throw SMTPBodyStart.readError(error)
            }
        }
        let commands: SMTPTransactionRequest.Commands
        if capabilities.pipelining {
            var wire = ByteBufferAllocator().buffer(capacity: 128 * (rcpts.count + 2))
            mail.writeValidated(into: &wire)
            for rcpt in rcpts { rcpt.writeValidated(into: &wire) }
            if pipelineData { SMTPCommand.data.writeValidated(into: &wire) }
            commands = .pipelined(wire, dataIncluded: pipelineData)
        } else {
            commands = .sequential(mail: Self.encoded(mail), rcpts: rcpts.map(Self.encoded))
        }
        if configuration.enableDebug {
            for command in [mail] + rcpts + (pipelineData ? [.data] : []) { logger.info("C: \(command.redactedText)") }
        }
        let oneExchange = pipelineData && start.isComplete
        let request = SMTPTransactionRequest(
            commands: commands, sender: envelope.from, rcptCount: rcpts.count,
            body: oneExchange ? start.prefix : nil, sendPartial: configuration.sendPartial,
            handBack: oneExchange && handBack != nil)
        let waiter = SMTPTransactionWaiter(nil, handBack: oneExchange ? handBack : nil)
        switch try await run(request, waiter: waiter) {
        case .done(let replies):
            if oneExchange, configuration.enableDebug, replies.final != nil {
                logger.info("C: <\(start.encoder.bytesWritten) bytes of message data, ending with .>")
            }
            return try Self.conclude(replies, recipients: envelope.recipients, bytes: start.encoder.bytesWritten)
        case .sendBody:
            let (replies, bytes) = try await sendBody(start, rest: &rest)
            return try Self.conclude(replies, recipients: envelope.recipients, bytes: bytes)
        }
    }

    static func encoded(_ command: SMTPCommand) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        command.writeValidated(into: &buffer)
        return buffer
    }

    /// Hands a transaction to the event loop and waits until it is over, or its body is wanted.
    func run(_ request: SMTPTransactionRequest, waiter: SMTPTransactionWaiter) async throws(SMTPError) -> SMTPTransactionStep {
        let handler = self.handler
        let eventLoop = channel.eventLoop
        do {
            return try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<SMTPTransactionStep, any Error>) in
                waiter.set(.task(continuation))
                if eventLoop.inEventLoop {
                    handler.value.startTransaction(request, waiter: waiter)
                } else {
                    eventLoop.execute { handler.value.startTransaction(request, waiter: waiter) }
                }
            }
        } catch {
            throw error as? SMTPError ?? SMTPError(stage: .mail, code: .connectionClosed, message: "\(error)")
        }
    }

    /// The result from a transaction's replies: the body sent and answered, or recipients refused.
    static func conclude(_ replies: SMTPTransactionReplies, recipients: [String], bytes: Int) throws(SMTPError) -> SMTPTransactionResult {
        let rcptReplies = replies.replies.dropFirst().prefix(recipients.count)
        let results = zip(recipients, rcptReplies).map { RecipientResult(address: $0, reply: $1) }
        guard let final = replies.final else {
            let accepted = results.filter(\.accepted).count
            return SMTPTransactionResult(recipients: results, finalReply: nil, abortedForPartialRefusal: accepted > 0, bytesSent: 0)
        }
        guard final.isPositiveCompletion else {
            throw SMTPError.reply(final, stage: .data, message: "the server refused the message: \(final)")
        }
        return SMTPTransactionResult(recipients: results, finalReply: final, abortedForPartialRefusal: false, bytesSent: bytes)
    }

    /// Streams the body from `start` on: at most two chunks in flight (a stalled write fails
    /// the connection after protocol-timeout), then the final dot, whose reply is awaited with
    /// the DATA termination timeout.
    func sendBody<Iterator: AsyncIteratorProtocol>(_ start: SMTPBodyStart, rest: inout Iterator) async throws(SMTPError) -> (
        SMTPTransactionReplies, Int
    )
    where Iterator.Element == ByteBuffer {
        var encoder = start.encoder
        var out = start.prefix
        var previousWrite: EventLoopFuture<Void>?
        if !start.isComplete {
            while true {
                let next: ByteBuffer?
                do {
                    next = try await rest.next()
                } catch {
                    // Half a message went out: the connection cannot be used any more.
                    await abort()
                    throw SMTPError(stage: .data, code: .connectionClosed, message: "reading the message failed: \(error)", isTransient: false)
                }
                guard let chunk = next else { break }
                if out.readableBytes >= Self.chunkTarget {
                    if let previousWrite { try await Self.written(previousWrite) }
                    previousWrite = writeChunk(out)
                    out = ByteBufferAllocator().buffer(capacity: Self.chunkTarget + 1024)
                }
                encoder.encode(chunk, into: &out)
            }
            encoder.finish(into: &out)
        }
        if let previousWrite { try await Self.written(previousWrite) }
        if configuration.enableDebug { logger.info("C: <\(encoder.bytesWritten) bytes of message data, ending with .>") }
        let handler = self.handler
        let last = out
        let waiter = SMTPTransactionWaiter(nil, handBack: nil)
        let eventLoop = channel.eventLoop
        let step: SMTPTransactionStep
        do {
            step = try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<SMTPTransactionStep, any Error>) in
                waiter.set(.task(continuation))
                eventLoop.execute { handler.value.bodyEnd(last, waiter: waiter) }
            }
        } catch {
            throw error as? SMTPError ?? SMTPError(stage: .data, code: .connectionClosed, message: "\(error)")
        }
        guard case .done(let replies) = step else {
            throw SMTPError(stage: .data, code: .protocolViolation, message: "the transaction asked for its body twice")
        }
        return (replies, encoder.bytesWritten)
    }

    private func writeChunk(_ chunk: ByteBuffer) -> EventLoopFuture<Void> {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        let handler = self.handler
        channel.eventLoop.execute { handler.value.bodyChunk(chunk, written: promise) }
        return promise.futureResult
    }

    private static func written(_ future: EventLoopFuture<Void>) async throws(SMTPError) {
        do {
            try await future.get()
        } catch {
            throw error as? SMTPError ?? SMTPError(stage: .data, code: .connectionClosed, message: "the connection was lost during DATA: \(error)")
        }
    }
}
