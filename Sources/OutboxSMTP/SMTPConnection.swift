import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// One SMTP session to one server: connected, greeted, secured and authenticated by `connect`,
/// then used for any number of transactions, one at a time.
///
/// A thin async front: the protocol is `SMTPClientStateMachine`'s, run on the connection's
/// event loop by `SMTPClientHandler`; this class turns calls into requests to it and awaits
/// their outcome (one wake-up per transaction when it goes as one pipelined exchange).
public final class SMTPConnection: Sendable {
    /// The configuration the connection was opened with.
    public let configuration: SMTPClientConfiguration
    /// The capabilities of the last EHLO (after STARTTLS: the second one).
    public let capabilities: SMTPCapabilities
    /// The server's greeting.
    public let greeting: SMTPReply
    /// The SASL mechanism used, when the connection authenticated.
    public let authMechanism: SASLMechanism?
    /// When the OAuth token used to authenticate expires (nil: no token).
    public let credentialExpiry: ContinuousClock.Instant?
    /// What TLS negotiated, when the connection is encrypted.
    public let tlsInfo: SMTPTLSInfo?
    /// The address connected to.
    public let remoteAddress: String?
    /// A number for logs (`smtp.connection_id`).
    public let id: Int
    /// How long each connection step took, in order (connect, tls, greeting, ehlo, starttls, auth).
    public let stepTimings: [(step: String, duration: Duration)]
    /// When `connect` started (wall clock): the first step's start, for traces.
    public let openedAt: Date
    /// Whether a delivery has used the connection yet (see ``claimFirstUse()``).
    private let used = NIOLockedValueBox(false)

    let channel: any Channel
    let logger: Logger
    let state: NIOLockedValueBox<State>

    enum State {
        case idle
        case busy
        case closed
    }

    private static let ids = NIOLockedValueBox(0)

    /// The connection's handler: requests go to it on the event loop.
    let handler: NIOLoopBound<SMTPClientHandler>
    /// What its transactions depend on (see `SMTPPreparedTransaction`).
    let profile: SMTPTransactionProfile

    private init(
        channel: any Channel, handler: NIOLoopBound<SMTPClientHandler>, facts: SMTPSessionFacts,
        configuration: SMTPClientConfiguration, logger: Logger, id: Int, timings: [(step: String, duration: Duration)],
        openedAt: Date
    ) {
        self.openedAt = openedAt
        self.channel = channel
        self.handler = handler
        self.configuration = configuration
        self.capabilities = facts.capabilities
        self.profile = SMTPTransactionProfile(capabilities: facts.capabilities, configuration: configuration)
        self.greeting = facts.greeting ?? SMTPReply(code: 220, lines: [])
        self.authMechanism = facts.authMechanism
        self.credentialExpiry = facts.credentialExpiry
        self.tlsInfo = facts.tlsInfo
        self.remoteAddress = channel.remoteAddress?.description
        self.logger = logger
        self.id = id
        self.stepTimings = timings
        self.state = NIOLockedValueBox(.idle)
    }

    /// True the first time it is called, false after: the first delivery on a connection reports
    /// its set-up (the connection's spans in a trace).
    public func claimFirstUse() -> Bool {
        used.withLockedValue { used in
            defer { used = true }
            return !used
        }
    }

    /// Whether the connection can take another command.
    public var isOpen: Bool { channel.isActive && state.withLockedValue { if case .closed = $0 { false } else { true } } }

    // MARK: connecting

    /// Connects, reads the greeting, says EHLO (HELO if refused), secures the connection as
    /// configured, and authenticates when credentials are given.
    public static func connect(
        configuration: SMTPClientConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger baseLogger: Logger = Logger(label: "outbox.smtp")
    ) async throws(SMTPError) -> SMTPConnection {
        let eventLoop = eventLoopGroup.next()
        return try await connect(configuration: configuration, eventLoop: eventLoop, logger: baseLogger) { initializer in
            try await ClientBootstrap(group: eventLoop)
                .connectTimeout(configuration.connectTimeout.timeAmount)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer(initializer)
                .connect(host: configuration.host, port: configuration.port).get()
        }
    }

    /// Opens the channel a connection runs on: runs `initializer` on the new channel (on
    /// its event loop, before or as it becomes active) and returns it once connected.
    package typealias ChannelOpener =
        @Sendable (
            _ initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
        ) async throws -> any Channel

    /// `connect` on a channel that `open` makes, on `eventLoop` (the channel's): the TCP
    /// bootstrap in production, an in-memory channel in tests. Everything after the channel
    /// exists (the pipeline, the greeting, EHLO, TLS, AUTH) is the same code.
    package static func connect(
        configuration: SMTPClientConfiguration, eventLoop: any EventLoop, logger baseLogger: Logger,
        open: ChannelOpener
    ) async throws(SMTPError) -> SMTPConnection {
        let id = ids.withLockedValue {
            $0 += 1; return $0
        }
        var logger = baseLogger
        logger[metadataKey: "smtp.connection_id"] = "\(id)"
        logger[metadataKey: "smtp.server"] = "\(configuration.host):\(configuration.port)"

        var sslContext: NIOSSLContext?
        if configuration.security != .none {
            if configuration.hostIsTrustedWithoutCA {
                logger.warning("mail.smtp.ssl.trust names this host: its certificate is accepted without checking who issued it")
            }
            do {
                sslContext = try configuration.tlsContexts.context(for: configuration.makeTLSConfiguration())
            } catch {
                throw SMTPError(
                    stage: .tls, code: .tlsHandshake,
                    message: "the TLS configuration is unusable (tls-ca-file \(configuration.tlsCAFile ?? "unset")): \(error)")
            }
        }
        let serverHostname: String? = (configuration.hostIsTrustedWithoutCA || isIPAddress(configuration.host)) ? nil : configuration.host
        let upgrade = sslContext.map { SMTPClientHandler.TLSUpgrade(context: $0, serverHostname: serverHostname) }
        let implicitTLS = configuration.security == .implicitTLS
        let helloName = configuration.localHostname ?? defaultHostname
        let handlerLogger = logger

        let session = eventLoop.makePromise(of: SMTPSessionFacts.self)
        let clock = ContinuousClock()
        let start = clock.now
        let openedAt = Date()

        // The handler, kept from the channel initializer (looking it up later fails once the
        // server has closed the connection).
        let handlerBox = NIOLockedValueBox<NIOLoopBound<SMTPClientHandler>?>(nil)
        let initializer: @Sendable (any Channel) -> EventLoopFuture<Void> = { channel in
            channel.eventLoop.makeCompletedFuture {
                if implicitTLS, let upgrade {
                    let tls = try NIOSSLClientHandler(context: upgrade.context, serverHostname: upgrade.serverHostname)
                    try channel.pipeline.syncOperations.addHandler(tls)
                }
                let handler = SMTPClientHandler(
                    configuration: configuration, helloName: helloName, session: session,
                    tlsUpgrade: upgrade, logger: handlerLogger)
                try channel.pipeline.syncOperations.addHandler(handler)
                handlerBox.withLockedValue { $0 = NIOLoopBound(handler, eventLoop: channel.eventLoop) }
            }
        }
        let channel: any Channel
        do {
            channel = try await open(initializer)
        } catch {
            session.fail(SMTPError(stage: .connect, code: .connectionClosed, message: "not connected"))
            let timedOut: Bool
            if case ChannelError.connectTimeout = error { timedOut = true } else { timedOut = false }
            throw SMTPError(
                stage: .connect, code: timedOut ? .timeout : .connectionClosed,
                message: "could not connect to \(configuration.host):\(configuration.port): \(error)", isTransient: true)
        }
        let connected = clock.now - start
        if configuration.enableDebug {
            logger.info("connected to \(channel.remoteAddress?.description ?? configuration.host)")
        }
        guard let handler = handlerBox.withLockedValue({ $0 }) else {
            // (Never: the initializer that sets it ran before the connect succeeded.)
            session.fail(SMTPError(stage: .connect, code: .connectionClosed, message: "no SMTP handler"))
            try? await channel.close()
            throw SMTPError(stage: .connect, code: .connectionClosed, message: "the connection has no SMTP handler", isTransient: true)
        }
        let facts: SMTPSessionFacts
        do {
            facts = try await session.futureResult.get()
        } catch {
            try? await channel.close()
            throw error as? SMTPError ?? SMTPError(stage: .greeting, code: .connectionClosed, message: "\(error)")
        }
        for notice in facts.notices { logger.notice("\(notice)") }
        return SMTPConnection(
            channel: channel, handler: handler, facts: facts, configuration: configuration, logger: logger, id: id,
            timings: [("connect", connected)] + facts.stepTimings, openedAt: openedAt)
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

    static let defaultHostname: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }()

    // MARK: simple commands

    /// Sends NOOP and expects 250: is the connection still alive?
    public func noop() async throws(SMTPError) {
        try await simple(.noop, stage: .noop)
    }

    /// Sends RSET: abandons a half-done transaction.
    public func reset() async throws(SMTPError) {
        try await simple(.rset, stage: .rset)
    }

    /// Sends QUIT, waits briefly for 221, and closes. Never throws. A message handed back at its
    /// dot may still await its reply: QUIT's short wait starts after it.
    public func quit() async {
        let wasOpen = state.withLockedValue { state -> Bool in
            if case .closed = state { return false }
            state = .closed
            return true
        }
        guard wasOpen else { return }
        if channel.isActive {
            _ = try? await command(.quit, stage: .quit, timeout: min(configuration.protocolTimeout, .seconds(10)))
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
        do throws(SMTPError) {
            let reply = try await self.command(command, stage: stage, timeout: configuration.protocolTimeout)
            guard reply.code == 250 else { throw SMTPError.reply(reply, stage: stage) }
            release()
        } catch {
            settle()
            throw error
        }
    }

    /// Sends a simple command once every reply before it is in; returns its reply.
    func command(_ command: SMTPCommand, stage: SMTPError.Stage, timeout: Duration) async throws(SMTPError) -> SMTPReply {
        let promise = channel.eventLoop.makePromise(of: SMTPReply.self)
        let handler = self.handler
        channel.eventLoop.execute { handler.value.startCommand(command, stage: stage, timeout: timeout, reply: promise) }
        do {
            let reply = try await promise.futureResult.get()
            if reply.code == 421 {
                throw SMTPError.reply(reply, stage: stage, message: "the server is closing the connection: \(reply)")
            }
            return reply
        } catch {
            throw error as? SMTPError ?? SMTPError(stage: stage, code: .connectionClosed, message: "\(error)")
        }
    }

    // MARK: the connection's state

    func acquire() throws(SMTPError) {
        let error: SMTPError? = state.withLockedValue { state in
            switch state {
            case .idle:
                state = .busy
                return nil
            case .busy: return SMTPError(stage: .mail, code: .connectionUnusable, message: "the connection is already in use")
            case .closed: return SMTPError(stage: .mail, code: .connectionUnusable, message: "the connection is closed", isTransient: true)
            }
        }
        if let error { throw error }
    }

    func release() {
        state.withLockedValue { state in
            if case .busy = state { state = .idle }
        }
    }

    /// After a failure: the state machine already reset the transaction (RSET) or closed the
    /// connection; this marks it free or closed accordingly.
    func settle() {
        if channel.isActive {
            release()
        } else {
            state.withLockedValue { $0 = .closed }
        }
    }

    /// Marks the connection free, then calls `handBack` (on the event loop, at most once).
    func makeHandBack(_ handBack: @escaping @Sendable () -> Void) -> SMTPHandBack {
        SMTPHandBack(connectionState: state, action: handBack)
    }
}

/// The hand-back: gives a connection back as soon as a message's body is on its way, on the
/// event loop, before the sending task is even resumed; the pool can hand it to the next
/// sender, whose commands then follow the final dot in the pipeline. Run at most once, on the
/// event loop; `done` is read by the sending task after its continuation was resumed (which
/// orders it after the run).
final class SMTPHandBack: @unchecked Sendable {
    /// The connection's state: busy until the hand-back, idle after it.
    private let connectionState: NIOLockedValueBox<SMTPConnection.State>
    private let action: @Sendable () -> Void
    private(set) var done = false

    init(connectionState: NIOLockedValueBox<SMTPConnection.State>, action: @escaping @Sendable () -> Void) {
        self.connectionState = connectionState
        self.action = action
    }

    func run() {
        guard !done else { return }
        done = true
        connectionState.withLockedValue { if case .busy = $0 { $0 = .idle } }
        action()
    }
}
