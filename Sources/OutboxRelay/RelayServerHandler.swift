import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// What the handler needs from the rest of the listener (checked credentials, the queue).
public protocol RelaySessionDelegate: Sendable {
    /// Checks credentials (bcrypt off the event loops, with failure throttling).
    func verify(user: String, password: String, client: SocketAddress?) async -> RelayStateMachine.AuthOutcome
    /// Checks and commits a complete message; returns its queue id once it is durable.
    func commit(envelope: RelayEnvelope, content: ByteBuffer, session: RelaySessionInfo, identity: ClientIdentityRef?,
                client: SocketAddress?) async -> Result<String, RelayReplyError>
    /// The session ended (for the log line and the metrics).
    func sessionEnded(_ summary: RelaySessionSummary)
}

/// The identity a session authenticated as, without its password hash (which stays in the
/// configuration and never travels with a message).
public struct ClientIdentityRef: Sendable {
    public var name: String
    public var user: String
    public var allowedSenders: [String]
}

/// One line in the log per session.
public struct RelaySessionSummary: Sendable {
    public var client: String
    public var user: String?
    public var tls: Bool
    public var messages: Int
    public var reason: String
}

/// Runs a `RelayStateMachine` on a channel: frames command lines (at most 512 octets, or
/// 12,288 in an AUTH exchange, RFC 4954 §4), feeds message bytes through a `MessageDecoder`,
/// writes replies (all replies to a pipelined batch in one write), starts TLS, and waits for
/// the delegate without reading further input (backpressure) while it checks or commits.
final class RelayServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Never
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    static let maxCommandLine = 512
    static let maxAuthLine = 12_288
    /// Pipelined input kept while a command waits for the delegate; beyond it, reads stop.
    static let maxBufferedInput = 64 * 1024

    private var machine: RelayStateMachine
    private let delegate: any RelaySessionDelegate
    private let logger: Logger
    private let commandTimeout: TimeAmount
    private let dataTimeout: TimeAmount
    private let sessionTimeout: TimeAmount
    private let tlsContext: NIOSSLContext?
    private var buffer: ByteBuffer
    private var out: ByteBuffer
    /// Waiting for the delegate (verify, commit) or the TLS handshake: input is not processed.
    private var paused = false
    private var readPending = false
    /// Skipping the rest of a too-long line.
    private var discardingLine = false
    private var decoder: MessageDecoder?
    private var body: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var sessionTimer: Scheduled<Void>?
    private var sessionExpired = false
    private var remote: SocketAddress?
    private var closeReason = "client closed the connection"
    private var ended = false
    private var context: ChannelHandlerContext?

    init(policy: RelaySessionPolicy, delegate: any RelaySessionDelegate, tlsContext: NIOSSLContext?, commandTimeout: TimeAmount,
         dataTimeout: TimeAmount, sessionTimeout: TimeAmount, logger: Logger) {
        self.machine = RelayStateMachine(policy: policy)
        self.delegate = delegate
        self.tlsContext = tlsContext
        self.commandTimeout = commandTimeout
        self.dataTimeout = dataTimeout
        self.sessionTimeout = sessionTimeout
        self.logger = logger
        self.buffer = ByteBuffer()
        self.out = ByteBuffer()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        buffer = context.channel.allocator.buffer(capacity: 1024)
        out = context.channel.allocator.buffer(capacity: 512)
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private var started = false

    private func start(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        remote = context.channel.remoteAddress
        if machine.policy.implicitTLS {
            // The greeting goes out once the handshake is done (RFC 8314 §3.3).
            paused = true
        } else {
            write(machine.greeting())
            flushReplies(context: context)
        }
        armTimer(context: context)
        sessionTimer = context.eventLoop.assumeIsolated().scheduleTask(in: sessionTimeout) { [weak self] in
            guard let self, let context = self.context else { return }
            self.sessionExpired = true
            self.closeReason = "session-timeout"
            self.perform(self.machine.sessionExpired(), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        end(context: context)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end(context: context)
        self.context = nil
    }

    private func end(context: ChannelHandlerContext) {
        guard !ended else { return }
        ended = true
        timer?.cancel()
        sessionTimer?.cancel()
        machine.closed()
        body = nil
        decoder = nil
        delegate.sessionEnded(RelaySessionSummary(client: remote.map(Self.describe) ?? "?", user: machine.info.authenticatedUser,
                                                  tls: machine.info.tls, messages: machine.accepted, reason: closeReason))
    }

    static func describe(_ address: SocketAddress) -> String {
        address.ipAddress.map { "\($0):\(address.port ?? 0)" } ?? "\(address)"
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            let version = try? context.channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).tlsVersion
            machine.tlsEstablished(description: version.map(Self.describe))
            if machine.policy.implicitTLS && !greeted {
                greeted = true
                write(machine.greeting())
            }
            paused = false
            armTimer(context: context)
            process(context: context)
            flushReplies(context: context)
            resumeReading(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private var greeted = false

    static func describe(_ version: TLSVersion?) -> String {
        switch version {
        case .tlsv13: "TLSv1.3"
        case .tlsv12: "TLSv1.2"
        case .tlsv11: "TLSv1.1"
        case .tlsv1: "TLSv1"
        case nil: "TLS"
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // TLS failures, resets: the session is over.
        closeReason = "error: \(error)"
        context.close(promise: nil)
    }

    // MARK: Input

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if machine.isClosed { return }
        buffer.writeBuffer(&bytes)
        armTimer(context: context)
        process(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushReplies(context: context)
    }

    func read(context: ChannelHandlerContext) {
        if paused && buffer.readableBytes >= Self.maxBufferedInput {
            readPending = true
            return
        }
        context.read()
    }

    private func resumeReading(context: ChannelHandlerContext) {
        if readPending {
            readPending = false
            context.read()
        }
    }

    /// Works through the buffered input until it needs more, or must wait.
    private func process(context: ChannelHandlerContext) {
        while !paused && !machine.isClosed {
            if machine.readsMessage {
                guard readMessageBytes(context: context) else { break }
            } else if machine.acceptsLines {
                guard let line = nextLine(context: context) else { break }
                perform(machine.line(line), context: context)
            } else {
                break
            }
        }
        if buffer.readerIndex > 4096 { buffer.discardReadBytes() }
    }

    /// Reads message bytes; true when the message (or chunk) ended and processing goes on.
    private func readMessageBytes(context: ChannelHandlerContext) -> Bool {
        // Taken out while it works, so its buffer is never shared (no copy on write per read).
        guard var decoder = self.decoder.take() else { return false }
        if let remaining = machine.chunkRemaining {
            let n = decoder.decodeChunk(&buffer, upTo: remaining)
            let complete = machine.chunkBytesRead(n)
            if complete && machine.chunkIsLast { decoder.finishChunks() }
            appendBody(&decoder)
            self.decoder = decoder
            guard complete else { return false }
            let last = machine.chunkIsLast
            let oversized = decoder.oversized
            if last { self.decoder = nil }
            perform(machine.messageEnded(oversized: oversized), context: context)
            return true
        }
        let ended = decoder.decodeDotTerminated(&buffer)
        appendBody(&decoder)
        self.decoder = decoder
        guard ended else { return false }
        self.decoder = nil
        perform(machine.messageEnded(oversized: decoder.oversized), context: context)
        return true
    }

    private func appendBody(_ decoder: inout MessageDecoder) {
        var chunk = decoder.take()
        if chunk.readableBytes > 0 { body?.writeBuffer(&chunk) }
    }

    /// The next command line without its line end (CRLF, or a bare LF), or nil when it has not
    /// all arrived. A line over the limit is answered with 500 and skipped.
    private func nextLine(context: ChannelHandlerContext) -> [UInt8]? {
        let limit = machine.expectsSecretLine ? Self.maxAuthLine : Self.maxCommandLine
        while true {
            let view = buffer.readableBytesView
            guard let lf = view.firstIndex(of: 10) else {
                if buffer.readableBytes > limit {
                    if !discardingLine {
                        discardingLine = true
                        perform(machine.lineTooLong(), context: context)
                    }
                    buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                }
                return nil
            }
            let length = lf - view.startIndex
            if discardingLine {
                discardingLine = false
                buffer.moveReaderIndex(forwardBy: length + 1)
                continue
            }
            if length + 1 > limit {
                buffer.moveReaderIndex(forwardBy: length + 1)
                perform(machine.lineTooLong(), context: context)
                if machine.isClosed || paused { return nil }
                continue
            }
            var line = buffer.readBytes(length: length) ?? []
            buffer.moveReaderIndex(forwardBy: 1)
            if line.last == 13 { line.removeLast() }
            return line
        }
    }

    // MARK: Actions

    private func perform(_ action: RelayStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .reply(let reply):
            write(reply)
        case .replyAndClose(let reply):
            write(reply)
            if reply.code == 421 && closeReason == "client closed the connection" { closeReason = reply.description }
            if reply.code == 221 { closeReason = "quit" }
            close(context: context)
        case .startTLS(let reply):
            write(reply)
            flushReplies(context: context)
            // Anything the client pipelined behind STARTTLS came in clear text: it is dropped
            // (CVE-2011-0411), never read as a command after the handshake.
            buffer.clear()
            paused = true
            guard let tlsContext else {
                closeReason = "TLS could not start"
                close(context: context)
                return
            }
            do {
                try context.channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
            } catch {
                closeReason = "TLS could not start: \(error)"
                close(context: context)
            }
        case .verify(let user, let password):
            paused = true
            flushReplies(context: context)
            let delegate = self.delegate
            let remote = self.remote
            let loop = context.eventLoop
            let promise = loop.makePromise(of: RelayStateMachine.AuthOutcome.self)
            promise.completeWithTask { await delegate.verify(user: user, password: password, client: remote) }
            promise.futureResult.assumeIsolated().whenSuccess { [weak self] outcome in
                guard let self, let context = self.context else { return }
                self.resume(self.machine.authVerified(outcome), context: context)
            }
        case .receiveData(let reply):
            write(reply)
            flushReplies(context: context)
            startMessage(context: context)
        case .receiveChunk:
            if decoder == nil { startMessage(context: context) }
        case .commit(let envelope):
            paused = true
            flushReplies(context: context)
            let content = body ?? ByteBuffer()
            body = nil
            let delegate = self.delegate
            let remote = self.remote
            let info = machine.info
            let identity = machine.identity.map { ClientIdentityRef(name: $0.name, user: $0.user, allowedSenders: $0.allowedSenders) }
            let promise = context.eventLoop.makePromise(of: Result<String, RelayReplyError>.self)
            promise.completeWithTask {
                await delegate.commit(envelope: envelope, content: content, session: info, identity: identity, client: remote)
            }
            promise.futureResult.assumeIsolated().whenSuccess { [weak self] result in
                guard let self, let context = self.context else { return }
                self.resume(self.machine.committed(result), context: context)
                if self.sessionExpired && !self.machine.isClosed {
                    self.perform(self.machine.sessionExpired(), context: context)
                    self.flushReplies(context: context)
                } else if self.machine.shuttingDown && !self.machine.isClosed {
                    self.perform(self.machine.shutdown(), context: context)
                    self.flushReplies(context: context)
                }
            }
        }
    }

    private func startMessage(context: ChannelHandlerContext) {
        decoder = MessageDecoder(limit: machine.policy.maxMessageSize, allocator: context.channel.allocator)
        body = context.channel.allocator.buffer(capacity: 16 * 1024)
    }

    /// The delegate answered: carry out what follows and go on with the buffered input.
    private func resume(_ action: RelayStateMachine.Action, context: ChannelHandlerContext) {
        paused = false
        perform(action, context: context)
        armTimer(context: context)
        process(context: context)
        flushReplies(context: context)
        resumeReading(context: context)
    }

    /// The daemon shuts down (called on the channel's event loop).
    func shutdown() {
        guard let context else { return }
        let action = machine.shutdown()
        if case .none = action { return }
        closeReason = "shutdown"
        perform(action, context: context)
        flushReplies(context: context)
    }

    /// The shutdown deadline passed: close whatever the session is doing.
    func forceClose() {
        guard let context else { return }
        closeReason = "shutdown deadline"
        close(context: context)
    }

    private func write(_ reply: RelayReply) {
        out.writeString(reply.wire)
    }

    private func flushReplies(context: ChannelHandlerContext) {
        guard out.readableBytes > 0 else { return }
        let bytes = out
        out = context.channel.allocator.buffer(capacity: 512)
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }

    private func close(context: ChannelHandlerContext) {
        paused = true
        timer?.cancel()
        flushReplies(context: context)
        context.close(promise: nil)
    }

    private func armTimer(context: ChannelHandlerContext) {
        timer?.cancel()
        if machine.isClosed { return }
        let timeout = machine.readsMessage ? dataTimeout : commandTimeout
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            guard let self, let context = self.context else { return }
            if self.paused && !self.machine.readsMessage && !self.machine.acceptsLines {
                // Waiting for ourselves (a check or a commit), not for the client.
                self.armTimer(context: context)
                return
            }
            self.closeReason = "timeout"
            self.perform(self.machine.timedOut(), context: context)
            self.flushReplies(context: context)
        }
    }
}
