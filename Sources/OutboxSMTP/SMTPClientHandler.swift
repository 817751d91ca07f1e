import Foundation
import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// Who waits for what the state machine decides: the connect (the session set-up), a simple
/// command's reply, or a transaction.
package enum SMTPWaiter {
    case session(EventLoopPromise<SMTPSessionFacts>)
    case reply(EventLoopPromise<SMTPReply>)
    case transaction(SMTPTransactionWaiter)
    /// A waiter that is only a name: what the state machine's tests pass (nothing to resume).
    case named(String)
}

/// Where a transaction stands when its waiter is resumed.
package enum SMTPTransactionStep: Sendable {
    /// MAIL, the RCPTs and DATA were accepted: the sender streams the body now.
    case sendBody(SMTPTransactionReplies)
    /// The transaction is over (the body sent and answered, or no body to send).
    case done(SMTPTransactionReplies)
}

/// A transaction's waiter: a task's continuation, or the completion of a transaction started on
/// the event loop at a hand-back (`SMTPConnection.start`). Resumed exactly once, on the event
/// loop; created by the sending task and from then on touched only by the event loop.
package final class SMTPTransactionWaiter: @unchecked Sendable {
    enum Resume {
        case task(UnsafeContinuation<SMTPTransactionStep, any Error>)
        /// A transaction started at a hand-back: its completion gets the result with the
        /// waiter's own `handBack` (no closure built to pair them).
        case prepared(@Sendable (SMTPPreparedOutcome) -> Void)
    }
    private var resumer: Resume?
    /// Run once the complete body is written (see `SMTPConnection.send`'s `handBack`).
    let handBack: SMTPHandBack?

    init(_ resume: Resume?, handBack: SMTPHandBack?) {
        self.resumer = resume
        self.handBack = handBack
    }

    func set(_ resume: Resume) { resumer = resume }

    func resume(_ result: Result<SMTPTransactionStep, any Error>) {
        guard let resumer else { return }
        self.resumer = nil
        switch resumer {
        case .task(let continuation): continuation.resume(with: result)
        case .prepared(let completion): completion(SMTPPreparedOutcome(result: result, handBack: handBack!))
        }
    }
}

/// The thin I/O half of the client: parses replies, feeds every event to the
/// `SMTPClientStateMachine` and runs the actions it returns (write, add TLS, fetch a token,
/// complete or fail a waiter, close). It decides nothing about the protocol.
final class SMTPClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct TLSUpgrade {
        var context: NIOSSLContext
        var serverHostname: String?
    }

    private var machine: SMTPClientStateMachine
    private var parser = SMTPReplyParser()
    private var buffer: ByteBuffer?
    private let tlsUpgrade: TLSUpgrade?
    private let logger: Logger
    private let debug: Bool
    /// TLS is (or is being) set up in the pipeline.
    private var encrypted: Bool
    private var tlsInfo: SMTPTLSInfo?
    /// The one timer: armed for the machine's next deadline, and not moved for a later one
    /// (when it fires early the machine says so and it is armed again).
    private var timer: Scheduled<Void>?
    private var timerDeadline = NIODeadline.distantFuture
    /// Set while the handler is in the pipeline.
    private var context: ChannelHandlerContext?
    /// Set when a reply ended a transaction that another one is pipelined behind (see
    /// `acknowledgeAtOnce`).
    private var acknowledgeAfterRead = false
    /// Set while `channelRead` handles the replies of one read.
    private var reading = false
    /// Transactions that ended during the current read: their senders are resumed once the
    /// read's replies are handled and what they called for was written (see `channelRead`).
    private var finished: [(SMTPTransactionWaiter, SMTPTransactionReplies)] = []
    /// The transactions whose body (final dot included) was written and whose write has not
    /// completed yet, in the order of the writes.
    private var bodiesInFlight: [Int] = []

    init(
        configuration: SMTPClientConfiguration, helloName: String, session: EventLoopPromise<SMTPSessionFacts>,
        tlsUpgrade: TLSUpgrade?, logger: Logger
    ) {
        self.machine = SMTPClientStateMachine(configuration: configuration, helloName: helloName, session: .session(session))
        self.tlsUpgrade = tlsUpgrade
        self.logger = logger
        self.debug = configuration.enableDebug
        self.encrypted = configuration.security == .implicitTLS
    }

    /// The event loop's time (a real loop's is the clock's; a testing loop's is advanced by the
    /// test). Every instant the state machine gets is read here.
    private var now: NIODeadline { context?.eventLoop.now ?? .now() }

    /// The failure that ended the connection, if any.
    var failure: SMTPError? { machine.failure }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { run(machine.channelActive(now: now)) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        run(machine.channelActive(now: now))
        context.fireChannelActive()
    }

    // MARK: requests from SMTPConnection (on the event loop)

    /// Starts a transaction (see `SMTPClientStateMachine.startTransaction`).
    func startTransaction(_ request: SMTPTransactionRequest, waiter: SMTPTransactionWaiter) {
        run(machine.startTransaction(request, completion: .transaction(waiter), now: now))
    }

    /// Sends NOOP, RSET or QUIT once nothing else is awaited.
    func startCommand(_ command: SMTPCommand, stage: SMTPError.Stage, timeout: Duration, reply: EventLoopPromise<SMTPReply>) {
        run(machine.startCommand(command, stage: stage, timeout: timeout.timeAmount, completion: .reply(reply), now: now))
    }

    /// Writes a chunk of a streamed body; `written` completes when the write did.
    func bodyChunk(_ chunk: ByteBuffer, written: EventLoopPromise<Void>) {
        guard let context, case .writeBodyChunk(let bytes) = machine.bodyChunk(chunk, now: now) else {
            written.fail(machine.failure ?? SMTPError(stage: .data, code: .connectionClosed, message: "the connection is closed"))
            return
        }
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success:
                machine.bodyChunkWritten(now: now)
                written.succeed(())
            case .failure(let error):
                written.fail(
                    machine.failure ?? SMTPError(stage: .data, code: .connectionClosed, message: "the connection was lost during DATA: \(error)"))
            }
        }
        context.writeAndFlush(wrapOutboundOut(bytes), promise: promise)
        armTimer()
    }

    /// Writes the last bytes of a streamed body (the final dot included).
    func bodyEnd(_ last: ByteBuffer, waiter: SMTPTransactionWaiter) {
        run(machine.bodyEnd(last, completion: .transaction(waiter), now: now))
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if machine.hasFailed { return }
        if buffer == nil || buffer!.readableBytes == 0 {
            buffer = incoming
        } else {
            buffer!.writeBuffer(&incoming)
        }
        // One instant for every reply of this read (a clock read per reply costs for nothing).
        let now = context.eventLoop.now
        reading = true
        while !machine.hasFailed, var current = buffer {
            let reply: SMTPReply?
            do {
                reply = try parser.parse(&current)
            } catch {
                buffer = current
                run(machine.errorCaught(error))
                reading = false
                resumeFinished()
                return
            }
            buffer = current
            guard let reply else { break }
            if debug { logger.info("S: \(reply)") }
            run(machine.replyReceived(reply, unprocessedBytes: current.readableBytes, now: now))
        }
        if let b = buffer, b.readableBytes == 0 { buffer = nil } else { buffer?.discardReadBytes() }
        if acknowledgeAfterRead {
            acknowledgeAfterRead = false
            acknowledgeAtOnce(context: context)
        }
        while !machine.deferred.isEmpty && machine.hasDeferredWork { run(machine.startDeferred(now: now)) }
        reading = false
        resumeFinished()
    }

    /// Resumes the senders of the transactions that ended during the read. Last: resuming a
    /// task wakes a thread of its executor, and on a busy machine the woken thread can take the
    /// event loop's core at once; the next message's body and the commands pipelined behind it
    /// (written while the same read was handled) are on their way to the server by then, instead
    /// of waiting for the event loop to be scheduled again.
    private func resumeFinished() {
        guard !finished.isEmpty else { return }
        for (waiter, replies) in finished { waiter.resume(.success(.done(replies))) }
        finished.removeAll(keepingCapacity: true)
    }

    /// The next transaction's commands went out behind the previous message's dot, before its
    /// reply came: the server's replies to them are its second write in a row, which a server
    /// without TCP_NODELAY (smtp-sink, many daemons) holds back until its first one is
    /// acknowledged, and Linux delays an acknowledgement without data by up to 40 ms. So the
    /// reply just read is acknowledged at once.
    private func acknowledgeAtOnce(context: ChannelHandlerContext) {
        #if os(Linux)
        _ = try? context.channel.syncOptions?.setOption(Self.quickAck, value: 1)
        #endif
    }

    #if os(Linux)
    private static let quickAck = ChannelOptions.Types.SocketOption(
        level: .init(rawValue: CInt(IPPROTO_TCP)),
        name: .init(rawValue: CInt(TCP_QUICKACK)))
    #endif

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            tlsInfo = Self.readTLSInfo(context.pipeline)
            if debug { logger.info("TLS established: \(tlsInfo?.version ?? "?")") }
            run(machine.tlsHandshakeCompleted(now: now))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let smtp = error as? SMTPError {
            run(machine.errorCaught(smtp))
        } else if encrypted && machine.facts.tlsEstablished == false || Self.isTLSError(error) {
            run(machine.tlsFailed("the TLS handshake failed: \(Self.describeTLS(error))"))
        } else {
            run(machine.errorCaught(SMTPError(stage: machine.currentStage, code: .connectionClosed, message: "the connection failed: \(error)")))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        run(machine.channelInactive())
        context.fireChannelInactive()
    }

    // MARK: running actions

    private func run(_ action: consuming SMTPClientStateMachine.Action) {
        if debug { for line in machine.takeTranscript() { logger.info("\(line)") } }
        // (Consumed: the payloads move out of the action instead of being copied.)
        switch consume action {
        case .none:
            break
        case .write(let bytes):
            context?.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .addTLSHandler:
            addTLSHandler()
        case .fetchToken:
            fetchToken()
        case .sessionReady(let waiter, var facts):
            facts.tlsInfo = tlsInfo
            if case .session(let promise) = waiter { promise.succeed(facts) }
        case .writeBody(let body, let id, let handBack):
            writeBody(body, id: id, handBack: handBack)
        case .writeBodyChunk(let bytes):
            context?.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .transactionDone(let waiter, let replies, let acknowledge):
            if acknowledge { acknowledgeAfterRead = true }
            if case .transaction(let w) = waiter {
                if reading { finished.append((w, replies)) } else { w.resume(.success(.done(replies))) }
            }
        case .sendBody(let waiter, let replies):
            if case .transaction(let w) = waiter { w.resume(.success(.sendBody(replies))) }
        case .commandDone(let waiter, let reply):
            if case .reply(let promise) = waiter { promise.succeed(reply) }
        case .fail(let waiter, let error):
            Self.fail(waiter, error)
        case .close(_, let failures):
            timer?.cancel()
            timer = nil
            timerDeadline = .distantFuture
            // Closed first: a waiter resumed below finds the connection closed.
            context?.close(promise: nil)
            for (waiter, error) in failures { Self.fail(waiter, error) }
        }
        armTimer()
    }

    private static func fail(_ waiter: SMTPWaiter, _ error: SMTPError) {
        switch waiter {
        case .session(let promise): promise.fail(error)
        case .reply(let promise): promise.fail(error)
        case .transaction(let w): w.resume(.failure(error))
        case .named: break
        }
    }

    private func writeBody(_ body: ByteBuffer, id: Int, handBack: SMTPWaiter?) {
        guard let context else { return }
        let written = context.eventLoop.makePromise(of: Void.self)
        bodiesInFlight.append(id)
        // The callback captures the handler alone (no context of its own to allocate); the
        // transaction it is for is the first in `bodiesInFlight`.
        written.futureResult.assumeIsolated().whenComplete { [self] result in bodyWriteCompleted(result) }
        var handBackRun: SMTPHandBack?
        if case .transaction(let waiter)? = handBack { handBackRun = waiter.handBack }
        // The hand-back may start the next transaction right here (a prepared one, see
        // SMTPConnection.start). In clear text its commands then leave in the same write as this
        // body. Under TLS the body is flushed alone first: NIOSSL completes all writes of one
        // flush with one promise, so the body's `written` would wait for the next message's
        // commands, and a connection lost in between would call a message whose dot had left
        // "not sent" (retried: a possible duplicate).
        if encrypted {
            context.writeAndFlush(wrapOutboundOut(body), promise: written)
            if !machine.hasFailed { handBackRun?.run() }
        } else {
            context.write(wrapOutboundOut(body), promise: written)
            if !machine.hasFailed { handBackRun?.run() }
            context.flush()
        }
    }

    /// The write of the first body in `bodiesInFlight` completed (NIO completes writes in the
    /// order they were issued).
    private func bodyWriteCompleted(_ result: Result<Void, any Error>) {
        guard !bodiesInFlight.isEmpty else { return }
        let id = bodiesInFlight.removeFirst()
        if case .success = result { machine.bodyWritten(transaction: id) }
    }

    private func addTLSHandler() {
        guard let context, let tlsUpgrade else {
            run(machine.tlsFailed("no TLS configuration"))
            return
        }
        do {
            let tls = try NIOSSLClientHandler(context: tlsUpgrade.context, serverHostname: tlsUpgrade.serverHostname)
            try context.pipeline.syncOperations.addHandler(tls, position: .first)
            encrypted = true
        } catch {
            run(machine.tlsFailed("TLS could not start: \(error)"))
        }
    }

    private func fetchToken() {
        guard let context, case .oauth2(_, let source)? = machine.configuration.credentials else {
            run(machine.tokenFailed(SMTPError(stage: .auth, code: .credentialsUnavailable, message: "no OAuth 2.0 token source")))
            return
        }
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        Task {
            let result: Result<SMTPAccessToken, any Error>
            do { result = .success(try await source()) } catch { result = .failure(error) }
            loop.execute {
                let handler = handler.value
                switch result {
                case .success(let token): handler.run(handler.machine.tokenReceived(token, now: handler.now))
                case .failure(let error): handler.run(handler.machine.tokenFailed(error))
                }
            }
        }
    }

    // MARK: the timer

    private func armTimer() {
        guard let context, let deadline = machine.nextDeadline else { return }
        if timer != nil && timerDeadline <= deadline { return }
        timer?.cancel()
        timerDeadline = deadline
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            timer = nil
            timerDeadline = .distantFuture
            run(machine.timerFired(now: now))
        }
    }
}
