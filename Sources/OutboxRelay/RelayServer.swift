import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Outbox
import OutboxConfig
import OutboxSMTPGrammar
import ServiceLifecycle

/// The relay's settings in force: `[relay]`, the `[client-NAME]` identities and the TLS context
/// made from the certificate files. Replaced whole on reload; a session keeps the one it
/// started with, except for the identities, read at each AUTH.
package struct RelayRuntimeConfiguration: Sendable {
    package var settings: RelaySettings
    package var clients: [ClientIdentity]
    package var tlsContext: NIOSSLContext?
    /// The routes, to choose each message's (the client's route, its sender, default).
    package var routes: RouteTable = .single

    /// Builds it, loading the certificate and key when set; throws a message that names the file.
    package static func make(settings: RelaySettings, clients: [ClientIdentity], routes: RouteTable = .single) throws
        -> RelayRuntimeConfiguration
    {
        var context: NIOSSLContext?
        if let certificateFile = settings.tlsCertificateFile, let keyFile = settings.tlsKeyFile {
            let chain: [NIOSSLCertificate]
            do {
                chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
            } catch {
                throw RelayError("relay.tls-certificate-file \(certificateFile) is not a PEM certificate chain: \(error)")
            }
            guard !chain.isEmpty else { throw RelayError("relay.tls-certificate-file \(certificateFile) holds no certificate") }
            let key: NIOSSLPrivateKey
            do {
                key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
            } catch {
                throw RelayError("relay.tls-key-file \(keyFile) is not a PEM private key: \(error)")
            }
            var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            tls.minimumTLSVersion = .tlsv12
            do {
                context = try NIOSSLContext(configuration: tls)
            } catch {
                throw RelayError(
                    "relay.tls-certificate-file and relay.tls-key-file do not make a TLS context (does the key belong to the certificate?): \(error)")
            }
        }
        return RelayRuntimeConfiguration(settings: settings, clients: clients, tlsContext: context, routes: routes)
    }
}

package struct RelayError: Error, CustomStringConvertible, Sendable {
    package var description: String
    package init(_ description: String) { self.description = description }
}

/// Where accepted messages go: the durable queue.
package protocol RelayQueue: Sendable {
    /// Commits the message (fsync'd) and returns its id.
    func enqueue(_ message: NewMessage) async throws -> String
    /// Writes one chunk of a large message's content before its `enqueue` (committed when it
    /// returns).
    func writeChunk(messageID: String, index: Int, bytes: ByteBuffer) async throws
    /// Removes the chunks of a message that was not queued.
    func discardChunks(messageID: String) async throws
    /// What the store may take now (its disk's free space above `queue-min-free`).
    func intake() -> RelayIntake
    /// Whether an error thrown by `enqueue` or `writeChunk` means the store is out of space.
    func isInsufficientStorage(_ error: any Error) -> Bool
}

extension RelayQueue {
    /// Always open: no space is watched.
    package func intake() -> RelayIntake { .open(room: nil) }
    /// Never: no space is watched.
    package func isInsufficientStorage(_ error: any Error) -> Bool { false }
}

/// The SMTP submission listener: binds `listen` and `listen-tls`, runs one `RelayServerHandler`
/// per connection, checks AUTH, and commits each message to the queue before it answers 250.
/// A `Service`: on graceful shutdown it stops accepting, answers new commands with 421, lets a
/// message being received finish and be committed (up to `drainDeadline`), then closes.
package final class RelayServer: Service, Sendable {
    private let configuration: NIOLockedValueBox<RelayRuntimeConfiguration>
    private let queue: any RelayQueue
    private let authenticator: RelayAuthenticator
    private let logger: Logger
    private let group: any EventLoopGroup
    private let connections = NIOLockedValueBox(Connections())
    private let boundBox = NIOLockedValueBox<[String]>([])
    private let listenDefaulted: Bool
    private let drainDeadline: Duration
    private let onListening: @Sendable (String) -> Void
    let metrics: RelayMetrics
    /// Each client's submissions against its `intake-limit-per-minute`.
    let intakeLimiter = IntakeLimiter.shared

    struct Connections {
        var open: [ObjectIdentifier: NIOLoopBound<RelayServerHandler>] = [:]
        var perAddress: [String: Int] = [:]
        var total = 0
        var stopping = false
    }

    /// `listenDefaulted`: `listen` is the built-in default (a taken default address is a
    /// warning, not an error).
    package init(
        configuration: RelayRuntimeConfiguration, queue: any RelayQueue, listenDefaulted: Bool = false,
        drainDeadline: Duration = .seconds(20), metricsFactory: (any MetricsFactory)? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger = Logger(label: "outbox.relay"),
        authenticator: RelayAuthenticator? = nil, transportSizeLimit: @escaping @Sendable () -> Int? = { nil },
        onListening: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.transportSizeLimit = transportSizeLimit
        self.configuration = NIOLockedValueBox(configuration)
        self.queue = queue
        self.listenDefaulted = listenDefaulted
        self.drainDeadline = drainDeadline
        self.group = group
        self.logger = logger
        self.authenticator = authenticator ?? RelayAuthenticator(logger: logger)
        self.metrics = RelayMetrics(factory: metricsFactory ?? MetricsSystem.factory)
        self.onListening = onListening
    }

    package var current: RelayRuntimeConfiguration { configuration.withLockedValue { $0 } }
    /// What the transport's destination takes now (an SMTP server's SIZE, learnt from its
    /// EHLO), asked at each session: SIZE advertises the smaller of it and `max-message-size`,
    /// so that an oversized message is refused at MAIL, not failed after its 250.
    private let transportSizeLimit: @Sendable () -> Int?

    /// The addresses bound, as `smtp://host:port` / `smtps://host:port`.
    package var boundAddresses: [String] { boundBox.withLockedValue { $0 } }

    /// Applies a reloaded `[relay]` and `[client-*]` (not the listen addresses): new sessions
    /// use it; open ones keep their TLS context and limits.
    package func update(_ new: RelayRuntimeConfiguration) {
        configuration.withLockedValue { $0 = new }
    }

    /// Sessions open now.
    package var openSessions: Int { connections.withLockedValue { $0.total } }

    package func run() async throws {
        let settings = current.settings
        var channels: [any Channel] = []
        do {
            for address in settings.listen {
                if let channel = try await bind(address, implicitTLS: false) { channels.append(channel) }
            }
            for address in settings.listenTLS {
                if let channel = try await bind(address, implicitTLS: true) { channels.append(channel) }
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        if channels.isEmpty {
            try? await gracefulShutdown()
            await authenticator.shutdown()
            return
        }
        try? await gracefulShutdown()
        // Stop accepting; then tell every session.
        for channel in channels { try? await channel.close() }
        let open = connections.withLockedValue { c -> [NIOLoopBound<RelayServerHandler>] in
            c.stopping = true
            return Array(c.open.values)
        }
        for handler in open {
            handler.eventLoop.execute { handler.value.shutdown() }
        }
        let deadline = ContinuousClock.now + drainDeadline
        while openSessions > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        if openSessions > 0 {
            logger.warning("relay: \(openSessions) sessions still open after the shutdown deadline; closing them")
            let rest = connections.withLockedValue { Array($0.open.values) }
            for handler in rest {
                handler.eventLoop.execute { handler.value.forceClose() }
            }
        }
        await authenticator.shutdown()
    }

    private func bind(_ address: String, implicitTLS: Bool) async throws -> (any Channel)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw RelayError("relay.listen \(address) is not host:port")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try self.initialize(channel, implicitTLS: implicitTLS) }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            let name = implicitTLS ? "relay.listen-tls" : "relay.listen"
            if listenDefaulted && !implicitTLS {
                logger.warning(
                    "\(name) \(address) cannot be bound (\(error)); running without the SMTP listener (set [relay] listen to another address, or empty to silence this)"
                )
                return nil
            }
            throw RelayError("\(name) \(address) cannot be bound: \(error)")
        }
        let bound = "\(implicitTLS ? "smtps" : "smtp")://\(host.contains(":") ? "[\(host)]" : host):\(channel.localAddress?.port ?? port)"
        boundBox.withLockedValue { $0.append(bound) }
        logger.info("relay listening on \(bound)")
        onListening(bound)
        return channel
    }

    /// Sets up one accepted connection (on its event loop).
    private func initialize(_ channel: any Channel, implicitTLS: Bool) throws {
        let config = current
        let settings = config.settings
        let remote = channel.remoteAddress
        let ip = remote?.ipAddress ?? "?"
        let trusted = remote.flatMap(Self.addressBytes).map { bytes in settings.allowedNetworks.contains { $0.contains(bytes) } } ?? false
        let admitted = connections.withLockedValue { c -> String? in
            if c.stopping { return "421 4.3.2 Service shutting down" }
            if c.total >= settings.maxConnections { return "421 4.7.0 Too many connections, try again later" }
            // As Postfix exempts $mynetworks: allowed-networks are not limited per address.
            if !trusted && c.perAddress[ip, default: 0] >= settings.maxConnectionsPerClient {
                return "421 4.7.0 Too many connections from your address, try again later"
            }
            c.total += 1
            c.perAddress[ip, default: 0] += 1
            return nil
        }
        if let refusal = admitted {
            metrics.sessionsRefused.increment()
            logger.notice("relay connection refused", metadata: ["relay.client": "\(ip)", "relay.reason": "\(refusal)"])
            let hostname = settings.effectiveHostname
            if !implicitTLS {
                channel.writeAndFlush(ByteBuffer(string: "\(refusal) (\(hostname))\r\n"))
                    .whenComplete { _ in channel.close(promise: nil) }
            } else {
                channel.close(promise: nil)
            }
            return
        }
        metrics.sessions.increment()
        let policy = RelaySessionPolicy(
            hostname: settings.effectiveHostname, trustedNetwork: trusted, canStartTLS: config.tlsContext != nil,
            implicitTLS: implicitTLS, requireTLSForAuth: settings.requireTLSForAuth,
            // The SIZE advertised: the smaller of max-message-size and what the transport takes
            // (Graph's 150 MB, the SMTP server's own SIZE).
            maxMessageSize: min(config.settings.maxMessageSize, transportSizeLimit() ?? Int.max),
            maxRecipients: settings.maxRecipients)
        if implicitTLS {
            guard let context = config.tlsContext else { throw RelayError("no TLS context") }
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
        }
        let handler = RelayServerHandler(
            policy: policy, delegate: RelaySession(server: self, configuration: config), tlsContext: config.tlsContext,
            commandTimeout: Self.timeAmount(settings.commandTimeout), dataTimeout: Self.timeAmount(settings.dataTimeout),
            sessionTimeout: Self.timeAmount(settings.sessionTimeout), logger: logger)
        try channel.pipeline.syncOperations.addHandler(handler)
        let key = ObjectIdentifier(channel)
        let bound = NIOLoopBound(handler, eventLoop: channel.eventLoop)
        connections.withLockedValue { $0.open[key] = bound }
        channel.closeFuture.whenComplete { [self] _ in
            connections.withLockedValue { c in
                c.open[key] = nil
                c.total -= 1
                c.perAddress[ip, default: 1] -= 1
                if c.perAddress[ip] == 0 { c.perAddress[ip] = nil }
            }
        }
    }

    static func timeAmount(_ d: Duration) -> TimeAmount {
        .nanoseconds(Int64(d.components.seconds) * 1_000_000_000 + Int64(d.components.attoseconds / 1_000_000_000))
    }

    static func addressBytes(_ address: SocketAddress) -> [UInt8]? {
        guard let ip = address.ipAddress else { return nil }
        return CIDR.parse(address: ip)
    }

    // MARK: Delegate work

    func verify(user: String, password: String, client: SocketAddress?) async -> RelayStateMachine.AuthOutcome {
        let config = current
        let outcome = await authenticator.verify(
            user: user, password: password, client: client?.ipAddress ?? "?", clients: config.clients,
            limit: config.settings.authFailureLimit, window: config.settings.authLockoutTime)
        switch outcome {
        case .success: metrics.authSuccesses.increment()
        case .invalid: metrics.authFailures(reason: "invalid").increment()
        case .lockedOut: metrics.authFailures(reason: "locked_out").increment()
        case .temporaryFailure: metrics.authFailures(reason: "busy").increment()
        }
        return outcome
    }

    func commit(
        envelope: RelayEnvelope, message received: ReceivedMessage, session: RelaySessionInfo, identity: ClientIdentityRef?,
        client: SocketAddress?, settings: RelaySettings
    ) async -> Result<String, SMTPServerReplyError> {
        let content = received.head
        let facts = RelayMessage.headerFacts(content)
        let clientText = client?.ipAddress ?? "unknown"
        if let problem = RelayMessage.senderProblem(facts, identity: identity) {
            await discardChunks(messageID: received.id, count: received.chunkCount)
            metrics.messages(result: "refused", reason: "sender_not_allowed").increment()
            logger.notice(
                "relay message refused",
                metadata: messageMetadata(
                    client: clientText, session: session, envelope: envelope,
                    result: "refused: \(problem.description)"))
            return .failure(SMTPServerReplyError(problem))
        }
        let id = received.id
        let hostname = settings.effectiveHostname
        let added = RelayMessage.addedHeaders(
            facts: facts, settings: settings, session: session, envelope: envelope, client: clientText,
            id: id, hostname: hostname, now: Date())
        var bytes = [UInt8]()
        bytes.reserveCapacity(added.utf8.count + content.readableBytes)
        bytes.append(contentsOf: added.utf8)
        bytes.append(contentsOf: content.readableBytesView)
        let messageID = facts.messageID ?? (settings.addMessageID ? "<\(id)@\(hostname)>" : nil)
        var message = NewMessage(from: envelope.sender, recipients: envelope.recipients.map(\.address), content: bytes, messageID: messageID)
        message.id = id
        message.chunkCount = received.chunkCount
        message.chunkedSize = received.chunkedSize
        let size = bytes.count + received.chunkedSize
        message.origin = MessageOrigin(
            kind: "relay", client: identity?.name ?? clientText, ret: envelope.ret, envid: envelope.envid,
            notify: envelope.recipients.map { $0.notify ?? "" }, orcpt: envelope.recipients.map { $0.orcpt ?? "" })
        // The route: the authenticated client's, else by sender, else default (the routes now in force).
        let routing = current
        let account = identity.flatMap { ref in routing.clients.first { $0.name == ref.name } }
        message.client = identity?.name
        message.route = (try? routing.routes.choose(client: account, requested: nil, sender: envelope.sender).get()) ?? RouteName.defaultRoute
        /// `452 4.3.1`: the queue's disk has no room for the message now.
        func insufficientStorage(_ why: String) async -> Result<String, SMTPServerReplyError> {
            await discardChunks(messageID: id, count: received.chunkCount)
            metrics.messages(result: "refused", reason: "insufficient_storage").increment()
            logger.warning(
                "relay message not queued: \(why)",
                metadata: messageMetadata(client: clientText, session: session, envelope: envelope, result: "deferred (452 4.3.1)"))
            return .failure(SMTPServerReplyError(SMTPServerReply(452, "4.3.1", "Insufficient system storage, try again later")))
        }
        // The disk fell below queue-min-free while the message arrived: refuse it now.
        if queue.intake() == .refused { return await insufficientStorage("the queue's disk is below queue-min-free") }
        do {
            let stored = try await queue.enqueue(message)
            if let identity { noteIntake(client: identity.name) }
            metrics.messages(result: "accepted", reason: "ok").increment()
            logger.info(
                "relay message queued",
                metadata: messageMetadata(
                    client: clientText, session: session, envelope: envelope,
                    result: "queued as \(stored)", size: size))
            return .success(stored)
        } catch  where queue.isInsufficientStorage(error) {
            return await insufficientStorage("the queue's disk is full")
        } catch {
            await discardChunks(messageID: id, count: received.chunkCount)
            metrics.messages(result: "refused", reason: "queue_unavailable").increment()
            // An outage is logged once by the store's health; this is the message's own line.
            logger.warning(
                "relay message not queued: \(StoreFailure.describe(error))",
                metadata: messageMetadata(client: clientText, session: session, envelope: envelope, result: "deferred (451 4.3.0)"))
            return .failure(SMTPServerReplyError(Self.storeReply(StoreFailure.classify(error))))
        }
    }

    /// What the store may take now.
    func intake() -> RelayIntake { queue.intake() }

    /// The temporary refusal at the end of DATA for a store failure other than a full disk.
    static func storeReply(_ failure: StoreFailure) -> SMTPServerReply {
        switch failure {
        case .insufficientStorage: SMTPServerReply(452, "4.3.1", "Insufficient system storage, try again later")
        case .unavailable: SMTPServerReply(451, "4.3.0", "Queue unavailable: the queue's database does not answer, try again later")
        case .schemaMissing: SMTPServerReply(451, "4.3.0", "Queue unavailable: the queue's database is not set up, try again later")
        case .other: SMTPServerReply(451, "4.3.0", "Error: queue file write error, try again later")
        }
    }

    func writeChunk(messageID: String, index: Int, bytes: ByteBuffer) async -> Bool {
        do {
            try await queue.writeChunk(messageID: messageID, index: index, bytes: bytes)
            return true
        } catch {
            logger.warning("relay: a chunk of message \(messageID) could not be written to the queue store: \(StoreFailure.describe(error))")
            return false
        }
    }

    func discardChunks(messageID: String, count: Int = 1) async {
        guard count > 0 else { return }
        do { try await queue.discardChunks(messageID: messageID) } catch {
            logger.warning(
                "relay: the chunks of message \(messageID), which was not queued, could not be removed now (they go at the next start): \(StoreFailure.describe(error))"
            )
        }
    }

    private func messageMetadata(client: String, session: RelaySessionInfo, envelope: RelayEnvelope, result: String, size: Int? = nil)
        -> Logger.Metadata
    {
        var m: Logger.Metadata = [
            "relay.client": "\(client)", "relay.tls": "\(session.tls)", "relay.from": "\(envelope.sender.isEmpty ? "<>" : envelope.sender)",
            "relay.recipients": "\(envelope.recipients.count)", "relay.result": "\(result)",
        ]
        if let user = session.authenticatedUser { m["relay.user"] = "\(user)" }
        if let size { m["relay.size"] = "\(size)" }
        return m
    }

    func sessionEnded(_ summary: RelaySessionSummary) {
        logger.info(
            "relay session ended",
            metadata: [
                "relay.client": "\(summary.client)", "relay.user": "\(summary.user ?? "-")", "relay.tls": "\(summary.tls)",
                "relay.messages": "\(summary.messages)", "relay.reason": "\(summary.reason)",
            ])
    }
}

/// One session's view of the server (the settings it started with).
struct RelaySession: RelaySessionDelegate {
    let server: RelayServer
    let configuration: RelayRuntimeConfiguration

    func verify(user: String, password: String, client: SocketAddress?) async -> RelayStateMachine.AuthOutcome {
        await server.verify(user: user, password: password, client: client)
    }

    func commit(
        envelope: RelayEnvelope, message: ReceivedMessage, session: RelaySessionInfo, identity: ClientIdentityRef?,
        client: SocketAddress?
    ) async -> Result<String, SMTPServerReplyError> {
        await server.commit(
            envelope: envelope, message: message, session: session, identity: identity, client: client,
            settings: configuration.settings)
    }

    func writeChunk(messageID: String, index: Int, bytes: ByteBuffer) async -> Bool {
        await server.writeChunk(messageID: messageID, index: index, bytes: bytes)
    }

    func discardChunks(messageID: String) async {
        await server.discardChunks(messageID: messageID)
    }

    func intake() -> RelayIntake { server.intake() }

    func intakeRefusal(client: String) -> SMTPServerReply? { server.intakeRefusal(client: client) }

    func sessionEnded(_ summary: RelaySessionSummary) {
        server.sessionEnded(summary)
    }
}

/// The relay's counters (sessions, AUTH failures, messages by result and reason).
struct RelayMetrics: Sendable {
    let factory: any MetricsFactory
    let sessions: Counter
    let sessionsRefused: Counter
    let authSuccesses: Counter
    private let cache = NIOLockedValueBox([String: Counter]())

    init(factory: any MetricsFactory) {
        self.factory = factory
        sessions = Counter(label: "outbox_relay_sessions_total", dimensions: [("result", "accepted")], factory: factory)
        sessionsRefused = Counter(label: "outbox_relay_sessions_total", dimensions: [("result", "refused")], factory: factory)
        authSuccesses = Counter(label: "outbox_relay_auth_total", dimensions: [("result", "success")], factory: factory)
    }

    func authFailures(reason: String) -> Counter {
        counter("outbox_relay_auth_total", [("result", "failure"), ("reason", reason)])
    }

    func messages(result: String, reason: String) -> Counter {
        counter("outbox_relay_messages_total", [("result", result), ("reason", reason)])
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        return cache.withLockedValue { cache in
            if let c = cache[key] { return c }
            let c = Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = c
            return c
        }
    }
}
