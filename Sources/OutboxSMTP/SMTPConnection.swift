import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// What TLS the connection negotiated.
public struct SMTPTLSInfo: Sendable {
    public var version: String
    public var peerSubject: String?
    public var peerNotValidAfter: Date?
}

/// One SMTP session to one server: connected, greeted, secured and authenticated by `connect`,
/// then used for any number of transactions, one at a time.
public final class SMTPConnection: Sendable {
    public let configuration: SMTPClientConfiguration
    /// The capabilities of the last EHLO (after STARTTLS: the second one).
    public let capabilities: SMTPCapabilities
    /// The server's greeting.
    public let greeting: SMTPReply
    /// The SASL mechanism used, when the connection authenticated.
    public let authMechanism: SASLMechanism?
    /// When the OAuth token used to authenticate expires (nil: no token).
    public let credentialExpiry: ContinuousClock.Instant?
    public let tlsInfo: SMTPTLSInfo?
    /// The address connected to.
    public let remoteAddress: String?
    public let id: Int
    /// How long each connection step took, in order (connect, tls, greeting, ehlo, starttls, auth).
    public let stepTimings: [(step: String, duration: Duration)]

    let channel: any Channel
    let logger: Logger
    let state: NIOLockedValueBox<State>

    enum State {
        case idle
        case busy
        case closed
    }

    private static let ids = NIOLockedValueBox(0)

    /// The connection's handler, for starting pipelined exchanges on the event loop.
    let handler: NIOLoopBound<SMTPClientHandler>
    /// What its transactions depend on (see `SMTPPreparedTransaction`).
    let profile: SMTPTransactionProfile

    private init(channel: any Channel, session: Session) {
        self.channel = channel
        self.handler = session.handler
        self.configuration = session.configuration
        self.capabilities = session.capabilities
        self.profile = SMTPTransactionProfile(capabilities: session.capabilities, configuration: session.configuration)
        self.greeting = session.greeting!
        self.authMechanism = session.authMechanism
        self.credentialExpiry = session.credentialExpiry
        self.tlsInfo = session.tlsInfo
        self.remoteAddress = channel.remoteAddress?.description
        self.logger = session.logger
        self.id = session.id
        self.stepTimings = session.timings
        self.state = NIOLockedValueBox(.idle)
    }

    public var isOpen: Bool { channel.isActive && state.withLockedValue { if case .closed = $0 { false } else { true } } }

    // MARK: connecting

    /// Connects, reads the greeting, says EHLO (HELO if refused), secures the connection as
    /// configured, and authenticates when credentials are given.
    public static func connect(
        configuration: SMTPClientConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger baseLogger: Logger = Logger(label: "outbox.smtp")
    ) async throws(SMTPError) -> SMTPConnection {
        let id = ids.withLockedValue { $0 += 1; return $0 }
        var logger = baseLogger
        logger[metadataKey: "smtp.connection_id"] = "\(id)"
        logger[metadataKey: "smtp.server"] = "\(configuration.host):\(configuration.port)"

        let needsTLS = configuration.security != .none
        var sslContext: NIOSSLContext?
        if needsTLS {
            if configuration.hostIsTrustedWithoutCA {
                logger.warning("mail.smtp.ssl.trust names this host: its certificate is accepted without checking who issued it")
            }
            do {
                sslContext = try NIOSSLContext(configuration: configuration.makeTLSConfiguration())
            } catch {
                throw SMTPError(stage: .tls, kind: .tlsHandshake,
                                message: "the TLS configuration is unusable (tls-ca-file \(configuration.tlsCAFile ?? "unset")): \(error)")
            }
        }
        let serverHostname: String? = (configuration.hostIsTrustedWithoutCA || isIPAddress(configuration.host)) ? nil : configuration.host
        let upgrade = sslContext.map { SMTPClientHandler.TLSUpgrade(context: $0, serverHostname: serverHostname) }
        let implicitTLS = configuration.security == .implicitTLS

        let eventLoop = eventLoopGroup.next()
        let greetingPromise = eventLoop.makePromise(of: SMTPReply.self)
        let handshakePromise: EventLoopPromise<Void>? = implicitTLS ? eventLoop.makePromise() : nil
        let clock = ContinuousClock()
        var timings: [(String, Duration)] = []
        var start = clock.now

        // The handler, kept from the channel initializer (looking it up later fails once the
        // server has closed the connection, and a closed connection must still come back, to
        // fail its first send).
        let handlerBox = NIOLockedValueBox<NIOLoopBound<SMTPClientHandler>?>(nil)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout.timeAmount)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if implicitTLS, let upgrade {
                        let tls = try NIOSSLClientHandler(context: upgrade.context, serverHostname: upgrade.serverHostname)
                        try channel.pipeline.syncOperations.addHandler(tls)
                    }
                    let handler = SMTPClientHandler(greeting: greetingPromise, tlsUpgrade: upgrade, implicitTLSHandshake: handshakePromise)
                    try channel.pipeline.syncOperations.addHandler(handler)
                    handlerBox.withLockedValue { $0 = NIOLoopBound(handler, eventLoop: channel.eventLoop) }
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            greetingPromise.fail(SMTPError(stage: .connect, kind: .connectionClosed, message: "not connected"))
            handshakePromise?.fail(SMTPError(stage: .connect, kind: .connectionClosed, message: "not connected"))
            throw SMTPError(stage: .connect, kind: error is ChannelError && "\(error)".contains("connectTimeout") ? .timeout : .connectionClosed,
                            message: "could not connect to \(configuration.host):\(configuration.port): \(error)", isTransient: true)
        }
        timings.append(("connect", clock.now - start))
        if configuration.enableDebug {
            logger.info("connected to \(channel.remoteAddress?.description ?? configuration.host)")
        }

        guard let handler = handlerBox.withLockedValue({ $0 }) else {
            // (Never: the initializer that sets it ran before the connect succeeded.)
            greetingPromise.fail(SMTPError(stage: .connect, kind: .connectionClosed, message: "no SMTP handler"))
            handshakePromise?.fail(SMTPError(stage: .connect, kind: .connectionClosed, message: "no SMTP handler"))
            try? await channel.close()
            throw SMTPError(stage: .connect, kind: .connectionClosed, message: "the connection has no SMTP handler", isTransient: true)
        }
        var session = Session(configuration: configuration, channel: channel, handler: handler, logger: logger, id: id)
        do {
            if let handshakePromise {
                start = clock.now
                try await session.await(handshakePromise.futureResult, timeout: configuration.connectTimeout, stage: .tls)
                session.tlsInfo = try await session.readTLSInfo()
                timings.append(("tls", clock.now - start))
            }
            start = clock.now
            let greeting = try await session.await(greetingPromise.futureResult, timeout: configuration.protocolTimeout, stage: .greeting)
            session.trace(greeting)
            session.greeting = greeting
            timings.append(("greeting", clock.now - start))
            guard greeting.code == 220 else {
                throw SMTPError.reply(greeting, stage: .greeting,
                                      message: "the server refused the session in its greeting: \(greeting)")
            }
            start = clock.now
            try await session.hello()
            timings.append(("ehlo", clock.now - start))

            switch configuration.security {
            case .none, .implicitTLS:
                break
            case .startTLS, .startTLSRequired:
                start = clock.now
                try await session.startTLS(required: configuration.security == .startTLSRequired)
                if session.tlsInfo != nil { timings.append(("starttls", clock.now - start)) }
            }
            if let credentials = configuration.credentials {
                start = clock.now
                try await session.authenticate(credentials)
                timings.append(("auth", clock.now - start))
            }
        } catch let error as SMTPError {
            await session.abandon()
            throw error
        } catch {
            await session.abandon()
            throw SMTPError(stage: session.stage, kind: .connectionClosed, message: "\(error)")
        }
        session.timings = timings
        return SMTPConnection(channel: channel, session: session)
    }

    /// A duration as the configuration writes it, `hh:mm:ss`.
    static func format(_ d: Duration) -> String {
        let s = d.components.seconds
        return String(format: "%02lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60)
    }

    static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    // MARK: transactions

    /// Sends one message: MAIL, one RCPT per recipient, DATA for the accepted ones, the body
    /// (line ends repaired and dot-stuffed on the fly, written as the channel accepts it), and
    /// the final dot. With PIPELINING, MAIL, the RCPTs and DATA leave in one flush.
    ///
    /// Returns per-recipient results. Throws for failures of the whole transaction: MAIL or DATA
    /// refused, the message refused after the final dot, an extension the message needs, or a
    /// broken connection (`.connectionClosed` before the final dot: safe to retry;
    /// `.outcomeUnknown` after it: not).
    ///
    /// `whenFree`, when given, runs on the connection's event loop as soon as the connection can
    /// take the next transaction: when a small pipelined message's body (final dot included)
    /// was handed to the channel, after the connection was marked free, while the reply to the
    /// dot is still awaited. A connection pool gives the connection to its next user there: that
    /// user's MAIL, RCPTs and DATA follow the dot on the wire (RFC 2920 §3.1: commands may follow
    /// the message content in a group) instead of waiting for the reply and this task's wake-up.
    /// The result then says `connectionHandedBack`: the caller must not touch the connection
    /// again, and on a failure it is not reset or closed here (the next user meets a dead
    /// connection as a failure before its own body was sent: safe to retry).
    public func send<Body: AsyncSequence>(envelope: SMTPEnvelope, body: Body,
                                          whenFree: (@Sendable () -> Void)? = nil) async throws(SMTPError) -> SMTPTransactionResult
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
        return try await send(envelope: envelope, start: start, rest: &iterator, whenFree: whenFree)
    }

    /// `send` with the start of the body already read (`SMTPBodyStart.read`) from `rest`.
    public func send<Iterator: AsyncIteratorProtocol>(envelope: SMTPEnvelope, start: SMTPBodyStart, rest: inout Iterator,
                                                      whenFree: (@Sendable () -> Void)? = nil) async throws(SMTPError) -> SMTPTransactionResult
    where Iterator.Element == ByteBuffer {
        try acquire()
        return try await transact(whenFree: whenFree) { session throws in
            try await session.transaction(envelope: envelope, start: start, rest: &rest)
        }
    }

    /// Runs a transaction on the acquired connection: gives the connection back to the caller
    /// (or, with `whenFree`, to whoever takes it at the hand-back), and after a failure resets or
    /// closes it.
    func transact(whenFree: (@Sendable () -> Void)?, handBack given: SMTPHandBack? = nil, started: Bool = false,
                  _ body: (inout Session) async throws -> SMTPTransactionResult) async throws(SMTPError) -> SMTPTransactionResult {
        var session = Session(connection: self)
        session.transactionStarted = started
        if let given {
            session.handBack = given
        } else if let whenFree {
            session.handBack = makeHandBack(whenFree)
        }
        do {
            var result = try await body(&session)
            if session.handBack?.done == true {
                result.connectionHandedBack = true
            } else {
                release()
            }
            return result
        } catch let error as SMTPError {
            // (Once handed back the connection belongs to someone else: not touched again.)
            if session.handBack?.done != true { await afterFailure(session: &session, error: error) }
            throw error
        } catch {
            let wrapped = SMTPError(stage: session.stage, kind: .connectionClosed, message: "reading the message failed: \(error)", isTransient: false)
            if session.handBack?.done != true { await afterFailure(session: &session, error: wrapped) }
            throw wrapped
        }
    }

    /// Marks the connection free, then calls `whenFree` (on the event loop, at most once).
    func makeHandBack(_ whenFree: @escaping @Sendable () -> Void) -> SMTPHandBack {
        let state = self.state
        return SMTPHandBack {
            state.withLockedValue { if case .busy = $0 { $0 = .idle } }
            whenFree()
        }
    }

    /// Sends NOOP and expects 250: is the connection still alive?
    public func noop() async throws(SMTPError) {
        try await simple(.noop, stage: .noop)
    }

    /// Sends RSET: abandons a half-done transaction.
    public func reset() async throws(SMTPError) {
        try await simple(.rset, stage: .rset)
    }

    /// Sends QUIT, waits briefly for 221, and closes. Never throws.
    public func quit() async {
        let wasOpen = state.withLockedValue { state -> Bool in
            if case .closed = state { return false }
            state = .closed
            return true
        }
        guard wasOpen else { return }
        var session = Session(connection: self)
        // A message handed back at its dot may still await its reply: QUIT's short wait starts after it.
        await session.waitUntilAnswered()
        if channel.isActive {
            _ = try? await session.command(.quit, stage: .quit, timeout: min(configuration.protocolTimeout, .seconds(10)))
        }
        try? await channel.close()
    }

    /// Closes without QUIT.
    public func abort() async {
        state.withLockedValue { $0 = .closed }
        try? await channel.close()
    }

    private func simple(_ command: SMTPCommand, stage: SMTPError.Stage) async throws(SMTPError) {
        try acquire()
        var session = Session(connection: self)
        // (NOOP and RSET wait with protocol-timeout: not behind a reply to a dot that may take longer.)
        await session.waitUntilAnswered()
        do throws(SMTPError) {
            let reply = try await session.command(command, stage: stage)
            guard reply.code == 250 else {
                throw SMTPError.reply(reply, stage: stage)
            }
            release()
        } catch {
            await afterFailure(session: &session, error: error)
            throw error
        }
    }

    func acquire() throws(SMTPError) {
        let error: SMTPError? = state.withLockedValue { state in
            switch state {
            case .idle:
                state = .busy
                return nil
            case .busy: return SMTPError(stage: .mail, kind: .connectionUnusable, message: "the connection is already in use")
            case .closed: return SMTPError(stage: .mail, kind: .connectionUnusable, message: "the connection is closed", isTransient: true)
            }
        }
        if let error { throw error }
    }

    func release() {
        state.withLockedValue { state in
            if case .busy = state { state = .idle }
        }
    }

    func afterFailure(session: inout Session, error: SMTPError) async {
        // A 421, a broken connection or a protocol error ends the session; a refused command
        // leaves it usable once RSET has cleared the transaction.
        let refusedLocally = error.kind == .unsupportedByServer || error.kind == .invalidArgument
        let fatal = error.reply?.code == 421 || (error.kind != .reply && !refusedLocally) || !channel.isActive
        if fatal {
            state.withLockedValue { $0 = .closed }
            try? await channel.close()
            return
        }
        if session.transactionStarted {
            do {
                let reply = try await session.command(.rset, stage: .rset)
                if reply.code != 250 { throw SMTPError.reply(reply, stage: .rset) }
            } catch {
                state.withLockedValue { $0 = .closed }
                try? await channel.close()
                return
            }
        }
        release()
    }

    // MARK: the session's steps

    /// The steps of a session; a value type used by one task at a time.
    struct Session {
        let configuration: SMTPClientConfiguration
        let channel: any Channel
        let logger: Logger
        let id: Int
        var capabilities = SMTPCapabilities(extensions: [:], isExtended: false)
        var greeting: SMTPReply?
        var authMechanism: SASLMechanism?
        var credentialExpiry: ContinuousClock.Instant?
        var tlsInfo: SMTPTLSInfo?
        var timings: [(step: String, duration: Duration)] = []
        var stage: SMTPError.Stage = .greeting
        var transactionStarted = false
        /// Given to a pipelined exchange: gives the connection back when the message is accepted.
        var handBack: SMTPHandBack?
        /// The connection's handler (pipelined exchanges start through it).
        let handler: NIOLoopBound<SMTPClientHandler>

        init(configuration: SMTPClientConfiguration, channel: any Channel, handler: NIOLoopBound<SMTPClientHandler>, logger: Logger, id: Int) {
            self.configuration = configuration
            self.channel = channel
            self.handler = handler
            self.logger = logger
            self.id = id
        }

        init(connection: SMTPConnection) {
            self.init(configuration: connection.configuration, channel: connection.channel, handler: connection.handler,
                      logger: connection.logger, id: connection.id)
            self.capabilities = connection.capabilities
        }

        var debug: Bool { configuration.enableDebug }

        func trace(_ reply: SMTPReply) {
            guard debug else { return }
            logger.info("S: \(reply)")
        }

        func trace(sent text: String) {
            guard debug else { return }
            logger.info("C: \(text)")
        }

        /// Waits for a future, closing the connection when `timeout` passes first.
        func await<T: Sendable>(_ future: EventLoopFuture<T>, timeout: Duration, stage: SMTPError.Stage) async throws(SMTPError) -> T {
            let timedOut = NIOLockedValueBox(false)
            let channel = self.channel
            do {
                // One hop to the event loop arms the timer and subscribes to the future; the timer
                // is cancelled there when the future completes. (scheduleTask, get() and cancel()
                // called from this task each cost a cross-thread wake-up: three per reply.)
                return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                    let eventLoop = future.eventLoop
                    eventLoop.execute {
                        let task = eventLoop.scheduleTask(in: timeout.timeAmount) {
                            timedOut.withLockedValue { $0 = true }
                            channel.close(promise: nil)
                        }
                        future.whenComplete { result in
                            task.cancel()
                            continuation.resume(with: result)
                        }
                    }
                }
            } catch {
                if timedOut.withLockedValue({ $0 }) {
                    throw SMTPError(stage: stage, kind: .timeout,
                                    message: "no answer from the server within \(Self.format(timeout)) during \(stage.rawValue.uppercased())", isTransient: true)
                }
                if let smtp = error as? SMTPError {
                    if smtp.kind == .connectionClosed && smtp.stage != stage {
                        var adjusted = smtp
                        adjusted.stage = stage
                        adjusted.message = "the connection was lost during \(stage.rawValue.uppercased()): \(smtp.message)"
                        throw adjusted
                    }
                    throw smtp
                }
                throw SMTPError(stage: stage, kind: .connectionClosed, message: "the connection was lost during \(stage.rawValue.uppercased()): \(error)")
            }
        }

        static func format(_ d: Duration) -> String { SMTPConnection.format(d) }

        /// Encodes and writes commands in one flush; returns the futures of their replies.
        /// Encodes (and so validates) commands before anything is written.
        func encode(_ commands: [SMTPCommand]) throws(SMTPError) -> [ByteBuffer] {
            var buffers: [ByteBuffer] = []
            buffers.reserveCapacity(commands.count)
            for command in commands {
                var buffer = channel.allocator.buffer(capacity: 64)
                try command.encode(into: &buffer)
                buffers.append(buffer)
                if debug { trace(sent: command.redactedText) }  // redactedText re-encodes: only when tracing
            }
            return buffers
        }

        /// Encodes and writes commands in one flush; returns the futures of their replies. The
        /// writes happen in one hop to the event loop, however many commands there are.
        func write(_ commands: [SMTPCommand], tlsHandshake: EventLoopPromise<Void>? = nil) throws(SMTPError) -> [EventLoopFuture<SMTPReply>] {
            let buffers = try encode(commands)
            let channel = self.channel
            let eventLoop = channel.eventLoop
            let promises = buffers.map { _ in eventLoop.makePromise(of: SMTPReply.self) }
            if eventLoop.inEventLoop {
                Self.writeOnLoop(channel, buffers, promises, tlsHandshake: tlsHandshake)
            } else {
                eventLoop.execute { Self.writeOnLoop(channel, buffers, promises, tlsHandshake: tlsHandshake) }
            }
            return promises.map(\.futureResult)
        }

        /// On the event loop: writes each command with its reply promise, then flushes. A failed
        /// write fails its reply (and a pending STARTTLS handshake): a closed channel drops writes.
        static func writeOnLoop(_ channel: any Channel, _ buffers: [ByteBuffer], _ replies: [EventLoopPromise<SMTPReply>],
                                tlsHandshake: EventLoopPromise<Void>? = nil) {
            for (buffer, reply) in zip(buffers, replies) {
                channel.write(SMTPOutbound(bytes: buffer, reply: reply, tlsHandshake: tlsHandshake),
                              promise: failingReply(on: channel.eventLoop, reply, handshake: tlsHandshake))
            }
            channel.flush()
        }

        func failingReply(_ reply: EventLoopPromise<SMTPReply>, handshake: EventLoopPromise<Void>? = nil) -> EventLoopPromise<Void> {
            Self.failingReply(on: channel.eventLoop, reply, handshake: handshake)
        }

        static func failingReply(on eventLoop: any EventLoop, _ reply: EventLoopPromise<SMTPReply>, handshake: EventLoopPromise<Void>? = nil) -> EventLoopPromise<Void> {
            let written = eventLoop.makePromise(of: Void.self)
            written.futureResult.whenFailure { error in
                let smtpError = error as? SMTPError ?? SMTPError(stage: .protocol, kind: .connectionClosed, message: "the connection is closed: \(error)")
                reply.fail(smtpError)
                handshake?.fail(smtpError)
            }
            return written
        }

        mutating func command(_ command: SMTPCommand, stage: SMTPError.Stage, timeout: Duration? = nil,
                              tlsHandshake: EventLoopPromise<Void>? = nil) async throws(SMTPError) -> SMTPReply {
            self.stage = stage
            let future = try write([command], tlsHandshake: tlsHandshake)[0]
            let reply = try await self.await(future, timeout: timeout ?? configuration.protocolTimeout, stage: stage)
            trace(reply)
            if reply.code == 421 {
                throw SMTPError.reply(reply, stage: stage, message: "the server is closing the connection: \(reply)")
            }
            return reply
        }

        // EHLO, or HELO when EHLO is not understood.
        mutating func hello() async throws(SMTPError) {
            let name = configuration.localHostname ?? Self.defaultHostname
            let reply = try await command(.ehlo(name), stage: .ehlo)
            if reply.code == 250 {
                capabilities = SMTPCapabilities(ehloReply: reply)
                return
            }
            guard [500, 501, 502, 504, 550].contains(reply.code) else {
                throw SMTPError.reply(reply, stage: .ehlo)
            }
            let helo = try await command(.helo(name), stage: .ehlo)
            guard helo.code == 250 else { throw SMTPError.reply(helo, stage: .ehlo) }
            capabilities = SMTPCapabilities(extensions: [:], isExtended: false)
        }

        static let defaultHostname: String = {
            var buffer = [CChar](repeating: 0, count: 256)
            guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
            let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return name.isEmpty ? "localhost" : name
        }()

        mutating func startTLS(required: Bool) async throws(SMTPError) {
            guard capabilities.startTLS else {
                if required {
                    throw SMTPError(stage: .starttls, kind: .tlsRequired,
                                    message: "smtp-connection-security = start-tls-required, but \(configuration.host):\(configuration.port) does not offer STARTTLS; nothing was sent in clear text")
                }
                logger.notice("the server does not offer STARTTLS: continuing in clear text (smtp-connection-security = start-tls)")
                return
            }
            let handshake = channel.eventLoop.makePromise(of: Void.self)
            let reply = try await command(.startTLS, stage: .starttls, tlsHandshake: handshake)
            guard reply.code == 220 else {
                if required {
                    throw SMTPError.reply(reply, stage: .starttls,
                                          message: "the server refused STARTTLS (\(reply)) and smtp-connection-security = start-tls-required; nothing was sent in clear text")
                }
                logger.notice("the server refused STARTTLS (\(reply)): continuing in clear text (smtp-connection-security = start-tls)")
                return
            }
            stage = .tls
            try await self.await(handshake.futureResult, timeout: configuration.connectTimeout, stage: .tls)
            tlsInfo = try await readTLSInfo()
            if debug { logger.info("TLS established: \(tlsInfo?.version ?? "?")") }
            // RFC 3207 §4.2: forget everything learned before TLS and say EHLO again.
            capabilities = SMTPCapabilities(extensions: [:], isExtended: false)
            try await hello()
        }

        func readTLSInfo() async throws(SMTPError) -> SMTPTLSInfo? {
            let channel = self.channel
            do {
                return try await channel.eventLoop.submit { () -> SMTPTLSInfo? in
                    guard let handler = try? channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self) else { return nil }
                    let version: String
                    switch handler.tlsVersion {
                    case .tlsv13: version = "TLSv1.3"
                    case .tlsv12: version = "TLSv1.2"
                    case .tlsv11: version = "TLSv1.1"
                    case .tlsv1: version = "TLSv1"
                    case .none: version = "unknown"
                    }
                    let cert = handler.peerCertificate
                    return SMTPTLSInfo(
                        version: version,
                        peerSubject: cert.map { Self.commonName(of: $0) },
                        peerNotValidAfter: cert.map { Date(timeIntervalSince1970: TimeInterval($0.notValidAfter)) }
                    )
                }.get()
            } catch {
                throw SMTPError(stage: .tls, kind: .connectionClosed, message: "the connection closed after the TLS handshake")
            }
        }

        static func commonName(of cert: NIOSSLCertificate) -> String {
            // NIOSSLCertificate's description: <NIOSSLCertificate;serial_number=..;common_name=..;alternative_names=..>
            let text = cert.description
            var parts: [String] = []
            for key in ["common_name=", "alternative_names="] {
                if let range = text.range(of: key) {
                    parts.append((key == "common_name=" ? "CN=" : "SAN=") + String(text[range.upperBound...].prefix { $0 != ";" && $0 != ">" }))
                }
            }
            return parts.isEmpty ? text : parts.joined(separator: " ")
        }

        mutating func authenticate(_ credentials: SMTPCredentials) async throws(SMTPError) {
            stage = .auth
            let offered = capabilities.authMechanisms
            guard !offered.isEmpty else {
                throw SMTPError(stage: .auth, kind: .noCommonAuthMechanism,
                                message: "enable-authentication = true, but \(configuration.host):\(configuration.port) offers no AUTH"
                                    + (tlsInfo == nil ? " in clear text (many servers offer it only after STARTTLS: set smtp-connection-security)" : ""))
            }
            guard let mechanism = SASLMechanism.choose(preference: configuration.authMechanisms, serverOffers: offered) else {
                throw SMTPError(stage: .auth, kind: .noCommonAuthMechanism,
                                message: "No authentication mechanisms supported by both server and client: the server offers \(offered.joined(separator: " ")), mail.smtp.auth.mechanisms allows \(configuration.authMechanisms.joined(separator: " "))")
            }
            authMechanism = mechanism
            let user = credentials.user
            var reply: SMTPReply
            switch (mechanism, credentials) {
            case (.plain, .password(_, let password)):
                reply = try await sendInitialResponse(mechanism: "PLAIN", response: SASLMechanism.plainResponse(user: user, password: password.value))
            case (.login, .password(_, let password)):
                reply = try await command(.auth(mechanism: "LOGIN", initialResponse: nil), stage: .auth)
                if reply.code == 334 {
                    reply = try await command(.authResponse(SASLMechanism.base64(user)), stage: .auth)
                }
                if reply.code == 334 {
                    reply = try await command(.authResponse(SASLMechanism.base64(password.value)), stage: .auth)
                }
            case (.xoauth2, .oauth2(_, let tokenSource)):
                let token: SMTPAccessToken
                do {
                    token = try await tokenSource()
                } catch {
                    throw SMTPError(stage: .auth, kind: .reply, message: "could not obtain an OAuth 2.0 access token: \(error)", isTransient: true)
                }
                credentialExpiry = token.expiresAt
                reply = try await sendInitialResponse(mechanism: "XOAUTH2", response: SASLMechanism.xoauth2Response(user: user, token: token.token.value))
                if reply.code == 334 {
                    // The error challenge: base64 JSON with the status; answer with an empty line.
                    let detail = SASLMechanism.decodeXOAUTH2Challenge(reply.text) ?? reply.text
                    if debug { logger.info("XOAUTH2 error challenge: \(detail)") }
                    var final = try await command(.authResponse(""), stage: .auth)
                    final.lines.append("(XOAUTH2 status: \(detail))")
                    reply = final
                }
            case (.plain, .oauth2), (.login, .oauth2):
                throw SMTPError(stage: .auth, kind: .noCommonAuthMechanism,
                                message: "mail.smtp.auth.mechanisms chose \(mechanism.rawValue), but the credentials are an OAuth 2.0 token: list XOAUTH2")
            case (.xoauth2, .password):
                throw SMTPError(stage: .auth, kind: .noCommonAuthMechanism,
                                message: "mail.smtp.auth.mechanisms chose XOAUTH2, but no OAuth 2.0 token source is configured")
            }
            if reply.code == 334 {
                // A challenge we cannot answer: cancel the exchange.
                _ = try? await command(.authResponse("*"), stage: .auth)
                throw SMTPError.reply(reply, stage: .auth, message: "the server sent an unexpected AUTH \(mechanism.rawValue) challenge; the exchange was cancelled")
            }
            guard reply.code == 235 else { throw Self.authError(reply, mechanism: mechanism) }
        }

        /// RFC 4954 §4: the initial response goes on the AUTH line unless the line would pass
        /// 512 octets; then AUTH is sent alone and the response follows the empty 334.
        mutating func sendInitialResponse(mechanism: String, response: String) async throws(SMTPError) -> SMTPReply {
            if ("AUTH \(mechanism) ".utf8.count + response.utf8.count + 2) <= 512 {
                return try await command(.auth(mechanism: mechanism, initialResponse: response), stage: .auth)
            }
            let first = try await command(.auth(mechanism: mechanism, initialResponse: nil), stage: .auth)
            guard first.code == 334 else { return first }
            return try await command(.authResponse(response), stage: .auth)
        }

        static func authError(_ reply: SMTPReply, mechanism: SASLMechanism) -> SMTPError {
            let hint: String
            switch reply.code {
            case 535:
                hint = mechanism == .xoauth2
                    ? "the server rejected the OAuth 2.0 token (check client-id, scope and the grant)"
                    : "the server rejected the user name or password (check user and password)"
            case 534: hint = "the server considers AUTH \(mechanism.rawValue) too weak for this account (list another in mail.smtp.auth.mechanisms)"
            case 538: hint = "the server requires encryption for AUTH \(mechanism.rawValue) (set smtp-connection-security to start-tls-required or ssl-tls)"
            case 454: hint = "the server could not authenticate now (temporary failure)"
            case 530: hint = "the server requires authentication"
            default: hint = "authentication failed"
            }
            return SMTPError.reply(reply, stage: .auth, message: "\(hint): \(reply)")
        }

        // MARK: the transaction

        /// One transaction; `start` holds the body's first bytes (the whole body when it is
        /// small), `iterator` the rest.
        mutating func transaction<Iterator: AsyncIteratorProtocol>(envelope: SMTPEnvelope, start: SMTPBodyStart,
                                                                   rest iterator: inout Iterator) async throws -> SMTPTransactionResult
        where Iterator.Element == ByteBuffer {
            stage = .mail
            let (mail, rcpts) = try SMTPConnection.plan(envelope: envelope, capabilities: capabilities, configuration: configuration)
            var start = start
            let pipelineData = capabilities.pipelining && configuration.sendPartial
            if pipelineData && !start.isComplete {
                // A message of up to a few chunks still goes as one exchange (one write of the
                // commands, the body after the 354, one wake-up): read on while it fits.
                do {
                    try await start.read(from: &iterator, upTo: Self.exchangeLimit)
                } catch {
                    // Nothing was sent: the message is unusable, the connection is not.
                    throw SMTPBodyStart.readError(error)
                }
            }

            transactionStarted = true
            var mailReply: SMTPReply
            var rcptReplies: [SMTPReply] = []
            var dataReply: SMTPReply?
            if pipelineData && start.isComplete {
                // The whole transaction runs on the event loop: MAIL, RCPTs and DATA in one flush,
                // the body right after the 354, one wake-up of this task at the end.
                let outcome = try await pipelinedTransaction([mail] + rcpts + [SMTPCommand.data], body: start.prefix)
                return try await conclude(outcome, recipients: envelope.recipients, from: envelope.from, bytes: start.encoder.bytesWritten)
            } else if capabilities.pipelining {
                // The previous message may still await the reply to its dot (see whenFree): these
                // commands' protocol-timeout must not run while the server is still on that one.
                await waitUntilAnswered()
                let commands = [mail] + rcpts + (pipelineData ? [SMTPCommand.data] : [])
                let futures = try write(commands)
                var replies: [SMTPReply] = []
                replies.reserveCapacity(futures.count)
                for (index, future) in futures.enumerated() {
                    let stage: SMTPError.Stage = index == 0 ? .mail : (index <= rcpts.count ? .rcpt : .data)
                    self.stage = stage
                    let reply = try await self.await(future, timeout: configuration.protocolTimeout, stage: stage)
                    trace(reply)
                    if reply.code == 421 {
                        throw SMTPError.reply(reply, stage: stage, message: "the server is closing the connection: \(reply)")
                    }
                    replies.append(reply)
                }
                mailReply = replies[0]
                rcptReplies = Array(replies[1...rcpts.count])
                if pipelineData { dataReply = replies.last }
            } else {
                mailReply = try await command(mail, stage: .mail)
                if mailReply.isPositiveCompletion {
                    for rcpt in rcpts { rcptReplies.append(try await command(rcpt, stage: .rcpt)) }
                }
            }
            let results: [RecipientResult]
            switch try await beforeBody(mailReply: mailReply, rcptReplies: rcptReplies, dataReply: dataReply,
                                        recipients: envelope.recipients, from: envelope.from) {
            case .finished(let result): return result
            case .sendBody(let accepted): results = accepted
            }
            if dataReply == nil {
                dataReply = try await command(.data, stage: .data)
            }
            guard let dataReply, dataReply.code == 354 else {
                throw SMTPError.reply(dataReply!, stage: .data, message: "the server refused DATA: \(dataReply!)")
            }
            stage = .data
            let (finalReply, bytes) = try await sendBody(start, rest: &iterator)
            transactionStarted = false
            guard finalReply.isPositiveCompletion else {
                throw SMTPError.reply(finalReply, stage: .data, message: "the server refused the message: \(finalReply)")
            }
            return SMTPTransactionResult(recipients: results, finalReply: finalReply, abortedForPartialRefusal: false, bytesSent: bytes)
        }

        enum BeforeBody {
            /// Nothing to send (every recipient refused, or one refused with sendpartial off).
            case finished(SMTPTransactionResult)
            /// MAIL and enough recipients were accepted: the body goes next.
            case sendBody([RecipientResult])
        }

        /// Decides from the replies to MAIL and the RCPTs (and DATA, when it was pipelined) whether
        /// the body goes out. A refused MAIL throws; refused recipients end the transaction with
        /// RSET (after an empty body, when DATA was already accepted in the pipeline).
        mutating func beforeBody(mailReply: SMTPReply, rcptReplies: [SMTPReply], dataReply: SMTPReply?,
                                 recipients: [String], from: String) async throws(SMTPError) -> BeforeBody {
            guard mailReply.isPositiveCompletion else {
                if dataReply?.code == 354 { try await abortData() }
                throw SMTPError.reply(mailReply, stage: .mail, message: "the server refused the sender <\(from)>: \(mailReply)")
            }
            let results = zip(recipients, rcptReplies).map { RecipientResult(address: $0, reply: $1) }
            let accepted = results.filter(\.accepted).count
            if accepted == 0 || (accepted < results.count && !configuration.sendPartial) {
                if dataReply?.code == 354 { try await abortData() }
                try await resetAfterRefusal()
                return .finished(SMTPTransactionResult(recipients: results, finalReply: nil,
                                                       abortedForPartialRefusal: accepted > 0, bytesSent: 0))
            }
            return .sendBody(results)
        }

        /// What a pipelined exchange's outcome means: the result when the body was sent, else the
        /// refusals decide (see `beforeBody`).
        mutating func conclude(_ outcome: PipelinedOutcome, recipients: [String], from: String, bytes: Int) async throws(SMTPError) -> SMTPTransactionResult {
            let rcptCount = recipients.count
            for reply in outcome.replies { trace(reply) }
            if let closing = outcome.replies.first(where: { $0.code == 421 }) {
                let index = outcome.replies.count - 1
                let stage: SMTPError.Stage = index == 0 ? .mail : (index <= rcptCount ? .rcpt : .data)
                throw SMTPError.reply(closing, stage: stage, message: "the server is closing the connection: \(closing)")
            }
            if let finalReply = outcome.finalReply {
                if debug { logger.info("C: <\(bytes) bytes of message data, ending with .>") }
                trace(finalReply)
                transactionStarted = false
                stage = .data
                let results = zip(recipients, outcome.replies[1...rcptCount]).map { RecipientResult(address: $0, reply: $1) }
                guard finalReply.isPositiveCompletion else {
                    throw SMTPError.reply(finalReply, stage: .data, message: "the server refused the message: \(finalReply)")
                }
                return SMTPTransactionResult(recipients: results, finalReply: finalReply, abortedForPartialRefusal: false, bytesSent: bytes)
            }
            // No body was sent: MAIL, every RCPT or DATA refused.
            let dataReply = outcome.replies.last!
            switch try await beforeBody(mailReply: outcome.replies[0], rcptReplies: Array(outcome.replies[1...rcptCount]),
                                        dataReply: dataReply, recipients: recipients, from: from) {
            case .finished(let result):
                return result
            case .sendBody:
                stage = .data
                throw SMTPError.reply(dataReply, stage: .data, message: "the server refused DATA: \(dataReply)")
            }
        }

        typealias PipelinedOutcome = SMTPPipelinedOutcome

        /// MAIL, the RCPTs and DATA in one write; on the event loop, when their replies are in and
        /// MAIL was accepted, at least one RCPT too, and DATA got 354, the (complete, already
        /// stuffed) body goes out with the final dot (see `SMTPPipelinedExchange`).
        /// `protocol-timeout` bounds the wait for the command replies, the DATA termination
        /// timeout the wait after the dot. Commands must be validated already.
        func pipelinedTransaction(_ commands: [SMTPCommand], body: ByteBuffer) async throws(SMTPError) -> PipelinedOutcome {
            var wire = channel.allocator.buffer(capacity: 128 * commands.count)
            for command in commands {
                command.writeValidated(into: &wire)
                if debug { trace(sent: command.redactedText) }
            }
            return try await pipelinedTransaction(wire: wire, rcptCount: commands.count - 2, body: body)
        }

        /// The same with the commands already encoded (a prepared transaction's).
        func pipelinedTransaction(wire: ByteBuffer, rcptCount: Int, body: ByteBuffer) async throws(SMTPError) -> PipelinedOutcome {
            let exchange = SMTPPipelinedExchange(rcptCount: rcptCount, body: body,
                                                 protocolTimeout: configuration.protocolTimeout,
                                                 terminationTimeout: configuration.dataTerminationTimeout,
                                                 handBack: handBack)
            let channel = self.channel
            let handler = self.handler
            do {
                return try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<PipelinedOutcome, any Error>) in
                    exchange.start(.task(continuation))
                    if channel.eventLoop.inEventLoop {
                        handler.value.startExchange(exchange, commands: wire)
                    } else {
                        channel.eventLoop.execute { handler.value.startExchange(exchange, commands: wire) }
                    }
                }
            } catch {
                throw Self.exchangeError(error)
            }
        }

        /// What a pipelined exchange's failure means for the caller.
        static func exchangeError(_ error: any Error) -> SMTPError {
            guard let failure = error as? SMTPPipelinedExchange.Failure else {
                return SMTPError(stage: .data, kind: .connectionClosed, message: "\(error)")
            }
            switch failure {
            case .timedOut(let stage, let timeout):
                return SMTPError(stage: stage, kind: .timeout,
                                 message: "no answer from the server within \(Self.format(timeout)) during \(stage.rawValue.uppercased())", isTransient: true)
            case .failed(let stage, var smtp):
                if smtp.kind == .connectionClosed && smtp.stage != stage {
                    smtp.message = "the connection was lost during \(stage.rawValue.uppercased()): \(smtp.message)"
                    smtp.stage = stage
                }
                return smtp
            case .afterDot(let written, let error):
                return afterDotError(written: written, error)
            }
        }

        /// The connection failed once the end of the message was handed to the channel: when it
        /// never reached the socket the server cannot have accepted it (safe to retry); else the
        /// outcome is unknown.
        static func afterDotError(written: Bool, _ error: SMTPError) -> SMTPError {
            if !written {
                return SMTPError(stage: .data, kind: .connectionClosed,
                                 message: "the connection was lost before the end of the message was sent (\(error.message)); the message was not accepted")
            }
            return SMTPError(stage: .data, kind: .outcomeUnknown,
                             message: "the connection failed after the whole message was sent and before the server confirmed it (\(error.message)): the message may or may not have been accepted",
                             isTransient: true)
        }

        /// Returns when every reply the connection awaits has come (or the connection failed):
        /// after a message handed back at its dot (see `SMTPConnection.send`'s `whenFree`).
        func waitUntilAnswered() async {
            let handler = self.handler
            let eventLoop = channel.eventLoop
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                eventLoop.execute { handler.value.whenAnswered { continuation.resume() } }
            }
        }

        /// DATA was accepted in a pipeline but must not go on: an empty body ends it. With no
        /// accepted recipient nothing is delivered; the RSET that follows discards the rest.
        mutating func abortData() async throws(SMTPError) {
            var buffer = channel.allocator.buffer(capacity: 3)
            buffer.writeString(".\r\n")
            trace(sent: ".")
            let promise = channel.eventLoop.makePromise(of: SMTPReply.self)
            channel.writeAndFlush(SMTPOutbound(bytes: buffer, reply: promise), promise: failingReply(promise))
            let reply = try await self.await(promise.futureResult, timeout: configuration.protocolTimeout, stage: .data)
            trace(reply)
        }

        mutating func resetAfterRefusal() async throws(SMTPError) {
            let reply = try await command(.rset, stage: .rset)
            guard reply.code == 250 else { throw SMTPError.reply(reply, stage: .rset) }
            transactionStarted = false
        }

        /// The size of the chunks a body is written in.
        static let chunkTarget = 64 * 1024
        /// The largest message (as sent) that goes as one pipelined exchange, held in memory
        /// whole while it is sent; a larger one is streamed chunk by chunk.
        static let exchangeLimit = 4 * chunkTarget

        /// Streams the body from `start` on: at most two chunks in flight, each write awaited
        /// with the protocol timeout (a stalled write fails), then the final dot, whose reply is
        /// awaited with the DATA termination timeout.
        mutating func sendBody<Iterator: AsyncIteratorProtocol>(_ start: SMTPBodyStart, rest: inout Iterator) async throws -> (SMTPReply, Int)
        where Iterator.Element == ByteBuffer {
            var encoder = start.encoder
            let chunkTarget = Self.chunkTarget
            var out = start.prefix
            var previousWrite: EventLoopFuture<Void>?
            if !start.isComplete {
                while let chunk = try await rest.next() {
                    if out.readableBytes >= chunkTarget {
                        if let previousWrite {
                            try await self.await(previousWrite, timeout: configuration.protocolTimeout, stage: .data)
                        }
                        previousWrite = channel.writeAndFlush(SMTPOutbound(bytes: out, reply: nil))
                        out = channel.allocator.buffer(capacity: chunkTarget + 1024)
                    }
                    encoder.encode(chunk, into: &out)
                }
                encoder.finish(into: &out)
            }
            if let previousWrite {
                try await self.await(previousWrite, timeout: configuration.protocolTimeout, stage: .data)
            }
            if debug { logger.info("C: <\(encoder.bytesWritten) bytes of message data, ending with .>") }
            let promise = channel.eventLoop.makePromise(of: SMTPReply.self)
            let written = failingReply(promise)
            channel.writeAndFlush(SMTPOutbound(bytes: out, reply: promise), promise: written)
            do {
                let reply = try await self.await(promise.futureResult, timeout: configuration.dataTerminationTimeout, stage: .data)
                trace(reply)
                return (reply, encoder.bytesWritten)
            } catch {
                throw Self.afterDotError(written: (try? await written.futureResult.get()) != nil, error)
            }
        }

        func abandon() async {
            try? await channel.close()
        }
    }
}
