import Foundation
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import OutboxSMTPGrammar

/// What the handler needs from the rest of the listener (checked credentials, the queue).
package protocol RelaySessionDelegate: Sendable {
    /// Checks credentials (bcrypt off the event loops, with failure throttling).
    func verify(user: String, password: String, client: SocketAddress?) async -> RelayStateMachine.AuthOutcome
    /// Checks and commits a complete message; returns its queue id once it is durable.
    /// `message.head` is its first bytes; `message.chunkCount` chunks written with
    /// `writeChunk` follow.
    func commit(
        envelope: RelayEnvelope, message: ReceivedMessage, session: RelaySessionInfo, identity: ClientIdentityRef?,
        client: SocketAddress?
    ) async -> Result<String, SMTPServerReplyError>
    /// Writes one chunk of a large message while it arrives (durable when it returns); false
    /// when the store failed.
    func writeChunk(messageID: String, index: Int, bytes: ByteBuffer) async -> Bool
    /// Removes the chunks of a message that will not be queued.
    func discardChunks(messageID: String) async
    /// What the queue may take now (cheap: read before each command).
    func intake() -> RelayIntake
    /// The `452 4.7.0` for a client over its `intake-limit-per-minute` (nil: it may submit).
    func intakeRefusal(client: String) -> SMTPServerReply?
    /// The session ended (for the log line and the metrics).
    func sessionEnded(_ summary: RelaySessionSummary)
}

/// A message as the handler received it: its first bytes in memory, the rest (a large message)
/// already written to the queue's store in chunks under `id`.
package struct ReceivedMessage: Sendable {
    package var id: String
    package var head: ByteBuffer
    package var chunkCount: Int
    package var chunkedSize: Int

    package init(id: String, head: ByteBuffer, chunkCount: Int = 0, chunkedSize: Int = 0) {
        self.id = id
        self.head = head
        self.chunkCount = chunkCount
        self.chunkedSize = chunkedSize
    }
}

/// The identity a session authenticated as, without its password hash (which stays in the
/// configuration and never travels with a message).
package struct ClientIdentityRef: Sendable {
    package var name: String
    package var user: String
    package var allowedSenders: [String]
}

/// One line in the log per session.
package struct RelaySessionSummary: Sendable {
    package var client: String
    package var user: String?
    package var tls: Bool
    package var messages: Int
    package var reason: String
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
    /// A message's first bytes kept in memory (its header section is read from them); the
    /// rest goes to the store in chunks as it arrives, so a large message is never held whole.
    static let headLimit = 1 << 20
    static let chunkSize = 512 * 1024

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
    /// The message being received: its id, its head, and its bytes past the head that are not
    /// written yet.
    private var messageID: String?
    private var body: ByteBuffer?
    private var tail: ByteBuffer?
    private var chunksWritten = 0
    private var chunkedBytes = 0
    /// The chunk writes so far, in order; false once one failed.
    private var chunkWrites: EventLoopFuture<Bool>?
    private var chunkWritesInFlight = 0
    private var timer: Scheduled<Void>?
    private var sessionTimer: Scheduled<Void>?
    private var sessionExpired = false
    private var remote: SocketAddress?
    private var closeReason = "client closed the connection"
    private var ended = false
    private var context: ChannelHandlerContext?

    init(
        policy: RelaySessionPolicy, delegate: any RelaySessionDelegate, tlsContext: NIOSSLContext?, commandTimeout: TimeAmount,
        dataTimeout: TimeAmount, sessionTimeout: TimeAmount, logger: Logger
    ) {
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
        abandonMessage()
        decoder = nil
        delegate.sessionEnded(
            RelaySessionSummary(
                client: remote.map(Self.describe) ?? "?", user: machine.info.authenticatedUser,
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
        if (paused && buffer.readableBytes >= Self.maxBufferedInput) || chunkWritesInFlight > 0 {
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
                machine.intake = delegate.intake()
                machine.clientIntakeRefusal = machine.identity.flatMap { delegate.intakeRefusal(client: $0.name) }
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
            messageEnded(oversized: oversized, last: last, context: context)
            return true
        }
        let ended = decoder.decodeDotTerminated(&buffer)
        appendBody(&decoder)
        self.decoder = decoder
        guard ended else { return false }
        self.decoder = nil
        messageEnded(oversized: decoder.oversized, last: true, context: context)
        return true
    }

    private func messageEnded(oversized: Bool, last: Bool, context: ChannelHandlerContext) {
        let action = machine.messageEnded(oversized: oversized)
        if last, case .commit = action {} else if last { abandonMessage() }
        perform(action, context: context)
    }

    private func appendBody(_ decoder: inout MessageDecoder) {
        var chunk = decoder.take()
        guard chunk.readableBytes > 0, body != nil else { return }
        if tail == nil {
            let room = Self.headLimit - body!.readableBytes
            if chunk.readableBytes <= room {
                body!.writeBuffer(&chunk)
                return
            }
            if var first = chunk.readSlice(length: room) { body!.writeBuffer(&first) }
            tail = ByteBufferAllocator().buffer(capacity: Self.chunkSize + 64 * 1024)
        }
        tail!.writeBuffer(&chunk)
        if tail!.readableBytes >= Self.chunkSize { writeTail() }
    }

    /// Writes the bytes past the head gathered so far as the next chunk (writes go one after
    /// another; reads stop while one is in flight, so at most a chunk and a read wait).
    private func writeTail() {
        guard let context, let id = messageID, let bytes = tail, bytes.readableBytes > 0 else { return }
        tail = ByteBufferAllocator().buffer(capacity: Self.chunkSize + 64 * 1024)
        let index = chunksWritten
        chunksWritten += 1
        chunkedBytes += bytes.readableBytes
        chunkWritesInFlight += 1
        let loop = context.eventLoop
        let delegate = self.delegate
        let previous = chunkWrites ?? loop.makeSucceededFuture(true)
        let write = previous.flatMap { ok -> EventLoopFuture<Bool> in
            guard ok else { return loop.makeSucceededFuture(false) }
            let promise = loop.makePromise(of: Bool.self)
            promise.completeWithTask { await delegate.writeChunk(messageID: id, index: index, bytes: bytes) }
            return promise.futureResult
        }
        chunkWrites = write
        write.assumeIsolated().whenComplete { [weak self] _ in
            guard let self else { return }
            self.chunkWritesInFlight -= 1
            if self.chunkWritesInFlight == 0, let context = self.context, !(self.paused && self.buffer.readableBytes >= Self.maxBufferedInput) {
                self.resumeReading(context: context)
            }
        }
    }

    /// The message being received will not be queued: its chunks go (after any write in flight).
    private func abandonMessage() {
        body = nil
        tail = nil
        let id = messageID
        let writes = chunkWrites
        let written = chunksWritten
        messageID = nil
        chunkWrites = nil
        chunksWritten = 0
        chunkedBytes = 0
        guard let id, written > 0, let writes else { return }
        let delegate = self.delegate
        writes.whenComplete { _ in
            Task { await delegate.discardChunks(messageID: id) }
        }
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
        case .receiveChunk(_, let first):
            if first || decoder == nil { startMessage(context: context) }
        case .commit(let envelope):
            paused = true
            flushReplies(context: context)
            // The last bytes past the head go as the last chunk; the commit waits for every write.
            writeTail()
            let loop = context.eventLoop
            let message = ReceivedMessage(
                id: messageID ?? Self.newMessageID(), head: body ?? ByteBuffer(),
                chunkCount: chunksWritten, chunkedSize: chunkedBytes)
            let writes = chunkWrites ?? loop.makeSucceededFuture(true)
            body = nil
            tail = nil
            messageID = nil
            chunkWrites = nil
            chunksWritten = 0
            chunkedBytes = 0
            let delegate = self.delegate
            let remote = self.remote
            let info = machine.info
            let identity = machine.identity.map { ClientIdentityRef(name: $0.name, user: $0.user, allowedSenders: $0.allowedSenders) }
            let committed = writes.flatMap { ok -> EventLoopFuture<Result<String, SMTPServerReplyError>> in
                let promise = loop.makePromise(of: Result<String, SMTPServerReplyError>.self)
                promise.completeWithTask {
                    guard ok else {
                        await delegate.discardChunks(messageID: message.id)
                        if delegate.intake() == .refused {
                            return .failure(SMTPServerReplyError(SMTPServerReply(452, "4.3.1", "Insufficient system storage, try again later")))
                        }
                        return .failure(SMTPServerReplyError(SMTPServerReply(451, "4.3.0", "Error: queue file write error, try again later")))
                    }
                    return await delegate.commit(envelope: envelope, message: message, session: info, identity: identity, client: remote)
                }
                return promise.futureResult
            }
            committed.assumeIsolated().whenSuccess { [weak self] result in
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
        abandonMessage()
        decoder = MessageDecoder(limit: machine.policy.maxMessageSize, allocator: context.channel.allocator)
        messageID = Self.newMessageID()
        body = context.channel.allocator.buffer(capacity: 16 * 1024)
    }

    static func newMessageID() -> String { UUID().uuidString.lowercased() }

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

    private func write(_ reply: SMTPServerReply) {
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
