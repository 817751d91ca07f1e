import Foundation
import NIOCore
import NIOSSL
import NIOTLS

/// What the connection writes: bytes already encoded, and optionally the promise of the reply
/// they will get. Replies are matched to promises in write order (RFC 2920 pipelining).
struct SMTPOutbound {
    var bytes: ByteBuffer
    var reply: EventLoopPromise<SMTPReply>?
    /// Set on STARTTLS: when its 220 arrives, clear-text bytes after it close the connection and
    /// the TLS handler is inserted before the reply promise completes; this promise completes
    /// when the handshake does.
    var tlsHandshake: EventLoopPromise<Void>? = nil
}

/// The thin I/O half of the client: parses replies, completes promises in order, inserts TLS
/// after STARTTLS, and fails every waiter with a typed error when anything goes wrong.
final class SMTPClientHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = SMTPOutbound
    typealias OutboundOut = ByteBuffer

    struct TLSUpgrade {
        var context: NIOSSLContext
        var serverHostname: String?
    }

    private var parser = SMTPReplyParser()
    private var buffer: ByteBuffer?
    private enum Waiter {
        case reply(EventLoopPromise<SMTPReply>, tlsHandshake: EventLoopPromise<Void>?)
        case exchange(SMTPPipelinedExchange)
    }
    private var waiters = CircularBuffer<Waiter>()
    /// The one timer that bounds an exchange's waits. It is not re-armed for every message: when
    /// it fires before the current exchange's deadline it is scheduled again for that deadline.
    private var watchdog: Scheduled<Void>?
    private var watchdogDeadline = NIODeadline.distantFuture
    private let tlsUpgrade: TLSUpgrade?
    private var failure: SMTPError?
    private let greetingPromise: EventLoopPromise<SMTPReply>
    /// The handshake in progress, if any (implicit TLS from the start, or after STARTTLS).
    private var handshakePromise: EventLoopPromise<Void>?
    /// TLS is (or is being) set up in the pipeline.
    private var encrypted: Bool
    /// The stage named in a failure nobody waits for (a waiter names its own stage).
    var currentStage: SMTPError.Stage = .greeting

    init(greeting: EventLoopPromise<SMTPReply>, tlsUpgrade: TLSUpgrade?, implicitTLSHandshake: EventLoopPromise<Void>?) {
        self.tlsUpgrade = tlsUpgrade
        self.greetingPromise = greeting
        self.handshakePromise = implicitTLSHandshake
        self.encrypted = implicitTLSHandshake != nil
        self.waiters.append(.reply(greeting, tlsHandshake: nil))
    }

    /// Set while the handler is in the pipeline: `startExchange` writes through it.
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// On the event loop: starts a pipelined exchange, its commands written and flushed at once
    /// (directly, not as an `SMTPOutbound` boxed in a `NIOAny` and cast back for every message).
    func startExchange(_ exchange: SMTPPipelinedExchange, commands: ByteBuffer) {
        guard failure == nil, let context, context.channel.isActive else {
            // Nothing of this message was written: whatever ended the connection (a 421 while it
            // sat idle, a reset), the message can go out on a fresh one.
            let reason = failure.map { ": \($0.message)" } ?? ""
            exchange.fail(SMTPError(stage: .mail, kind: .connectionClosed,
                                    message: "the connection had closed before the message was sent\(reason)", isTransient: true))
            return
        }
        waiters.append(.exchange(exchange))
        exchange.deadline = .now() + exchange.protocolTimeout.timeAmount
        armWatchdog(context: context, deadline: exchange.deadline)
        context.writeAndFlush(wrapOutboundOut(commands), promise: nil)
    }

    /// Called once nothing is awaited any more (see `whenAnswered`).
    private var answeredCallbacks: [() -> Void] = []

    /// On the event loop: runs `callback` when no reply is awaited any more, at once if none is
    /// (or the connection failed).
    func whenAnswered(_ callback: @escaping () -> Void) {
        if waiters.isEmpty || failure != nil {
            callback()
        } else {
            answeredCallbacks.append(callback)
        }
    }

    private func runAnsweredCallbacks() {
        guard !answeredCallbacks.isEmpty, waiters.isEmpty || failure != nil else { return }
        let callbacks = answeredCallbacks
        answeredCallbacks = []
        for callback in callbacks { callback() }
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if failure != nil { return }
        if buffer == nil || buffer!.readableBytes == 0 {
            buffer = incoming
        } else {
            buffer!.writeBuffer(&incoming)
        }
        while failure == nil, var current = buffer {
            let reply: SMTPReply?
            do {
                reply = try parser.parse(&current)
            } catch {
                buffer = current
                fail(context: context, error)
                return
            }
            buffer = current
            guard let reply else { break }
            deliver(reply, context: context)
        }
        if let b = buffer, b.readableBytes == 0 { buffer = nil } else { buffer?.discardReadBytes() }
        if acknowledgeNow {
            acknowledgeNow = false
            acknowledgeAtOnce(context: context)
        }
        runAnsweredCallbacks()
    }

    /// Set when a read ended an exchange that another one is pipelined behind.
    private var acknowledgeNow = false

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
    private static let quickAck = ChannelOptions.Types.SocketOption(level: .init(rawValue: CInt(IPPROTO_TCP)),
                                                                    name: .init(rawValue: CInt(TCP_QUICKACK)))
    #endif

    /// Set by the first reply (the greeting).
    private var greeted = false

    private func deliver(_ reply: SMTPReply, context: ChannelHandlerContext) {
        greeted = true
        guard let head = waiters.first else {
            // A reply nobody asked for: a 421 shutdown notice, or a broken server.
            let error = reply.code == 421
                ? SMTPError(stage: currentStage, kind: .reply, reply: reply, message: "the server is closing the connection: \(reply)")
                : SMTPError(stage: .protocol, kind: .protocolViolation, reply: reply,
                            message: "the server sent a reply nobody asked for: \(reply)")
            fail(context: context, error)
            return
        }
        let waiter: (promise: EventLoopPromise<SMTPReply>, tlsHandshake: EventLoopPromise<Void>?)
        switch head {
        case .exchange(let exchange):
            switch exchange.receive(reply) {
            case .needMore:
                break
            case .done:
                waiters.removeFirst()
                // A transaction pipelined behind this one (see SMTPConnection.send's whenFree)
                // is answered from now on: its protocol-timeout starts now.
                if case .exchange(let next)? = waiters.first {
                    next.becameFirst()
                    armWatchdog(context: context, deadline: next.deadline)
                    acknowledgeNow = true
                }
            case .sendBody(let body):
                armWatchdog(context: context, deadline: exchange.deadline)
                let written = context.eventLoop.makePromise(of: Void.self)
                written.futureResult.assumeIsolated().whenSuccess { exchange.bodyWritten = true }
                // The hand-back may start the next transaction right here (a prepared one, see
                // SMTPConnection.start). In clear text its commands then leave in the same write
                // as this body. Under TLS the body is flushed alone first: NIOSSL completes all
                // writes of one flush with one promise, so the body's `written` would wait for
                // the next message's commands, and a connection lost in between would call a
                // message whose dot had left "not sent" (retried: a possible duplicate).
                if encrypted {
                    context.writeAndFlush(wrapOutboundOut(body), promise: written)
                    if failure == nil { exchange.didWriteBody() }
                } else {
                    context.write(wrapOutboundOut(body), promise: written)
                    if failure == nil { exchange.didWriteBody() }
                    context.flush()
                }
            }
            return
        case .reply(let promise, let tlsHandshake):
            waiters.removeFirst()
            waiter = (promise, tlsHandshake)
        }
        if let handshake = waiter.tlsHandshake, reply.code == 220 {
            if let rest = buffer, rest.readableBytes > 0 {
                let error = SMTPError(stage: .starttls, kind: .startTLSInjection,
                                      message: "the server sent \(rest.readableBytes) bytes of clear text after agreeing to STARTTLS (possible command injection); the connection was closed")
                waiter.promise.fail(error)
                handshake.fail(error)
                fail(context: context, error)
                return
            }
            guard let tlsUpgrade else {
                let error = SMTPError(stage: .starttls, kind: .tlsHandshake, message: "no TLS configuration")
                waiter.promise.fail(error)
                handshake.fail(error)
                return
            }
            do {
                let tls = try NIOSSLClientHandler(context: tlsUpgrade.context, serverHostname: tlsUpgrade.serverHostname)
                handshakePromise = handshake
                try context.pipeline.syncOperations.addHandler(tls, position: .first)
                encrypted = true
            } catch {
                let smtpError = SMTPError(stage: .tls, kind: .tlsHandshake, message: "TLS could not start: \(error)")
                waiter.promise.fail(smtpError)
                fail(context: context, smtpError)
                return
            }
        }
        if let handshake = waiter.tlsHandshake, reply.code != 220 {
            handshake.fail(SMTPError.reply(reply, stage: .starttls))
        }
        waiter.promise.succeed(reply)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, let handshake = handshakePromise {
            handshakePromise = nil
            handshake.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let smtp = error as? SMTPError {
            fail(context: context, smtp)
        } else if handshakePromise != nil || error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            fail(context: context, SMTPError(stage: .tls, kind: .tlsHandshake,
                                             message: "the TLS handshake failed: \(Self.describeTLS(error))"))
        } else {
            fail(context: context, SMTPError(stage: currentStage, kind: .connectionClosed,
                                             message: "the connection failed: \(error)"))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // (Whoever waits names its own stage; before the greeting there is only one.)
        let stage = currentStage
        failAll(failure ?? SMTPError(stage: stage, kind: .connectionClosed,
                                     message: greeted ? "the server closed the connection" : "the server closed the connection before its greeting"))
        context.fireChannelInactive()
    }

    // MARK: outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.reply?.fail(failure)
            request.tlsHandshake?.fail(failure)
            promise?.fail(failure)
            return
        }
        if let reply = request.reply {
            waiters.append(.reply(reply, tlsHandshake: request.tlsHandshake))
        }
        context.write(wrapOutboundOut(request.bytes), promise: promise)
    }

    // MARK: the exchange's timer

    private func armWatchdog(context: ChannelHandlerContext, deadline: NIODeadline) {
        if watchdog != nil && watchdogDeadline <= deadline { return }
        watchdog?.cancel()
        watchdogDeadline = deadline
        watchdog = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            self.watchdogFired(context: context)
        }
    }

    private func watchdogFired(context: ChannelHandlerContext) {
        watchdog = nil
        watchdogDeadline = .distantFuture
        guard failure == nil, case .exchange(let exchange)? = waiters.first else { return }
        if NIODeadline.now() < exchange.deadline {
            armWatchdog(context: context, deadline: exchange.deadline)
            return
        }
        let error = exchange.timedOut()
        waiters.removeFirst()
        fail(context: context, error)
    }

    // MARK: failure

    private func fail(context: ChannelHandlerContext, _ error: SMTPError) {
        if failure == nil { failure = error }
        failAll(error)
        context.close(promise: nil)
    }

    private func failAll(_ error: SMTPError) {
        if failure == nil { failure = error }
        while let waiter = waiters.popFirst() {
            switch waiter {
            case .reply(let promise, let tlsHandshake):
                promise.fail(error)
                tlsHandshake?.fail(error)
            case .exchange(let exchange):
                exchange.fail(error)
            }
        }
        watchdog?.cancel()
        watchdog = nil
        runAnsweredCallbacks()
        if let handshake = handshakePromise {
            handshakePromise = nil
            handshake.fail(error)
        }
    }

    static func describeTLS(_ error: any Error) -> String {
        let text = String(describing: error)
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
            return "the server's certificate is not trusted (\(text)); add its CA with [outbox] tls-ca-file"
        }
        if text.contains("failedToValidateHostname") {
            return "the server's certificate does not match the host name (\(text))"
        }
        return text
    }
}
