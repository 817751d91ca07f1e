import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Outbox
import OutboxConfig
import OutboxRelay
import OutboxTransports
import Prometheus
import ServiceLifecycle
import UnixSignals

/// `outbox serve`: the store, the mailer, the dispatcher and the HTTP API, as services of one
/// `ServiceGroup`. SIGTERM/SIGINT shut down gracefully (the HTTP server stops accepting, the
/// dispatcher finishes in-flight deliveries up to the deadline and releases the rest, the mailer
/// QUITs every connection); SIGHUP reloads the configuration file.
package final class Daemon: DaemonStatusProvider, Sendable {
    package let store: any OutboxStore
    /// One mailer per route (`[smtp-client]` is `default`, `[smtp-client-NAME]` is NAME).
    package let routes: MailerRoutes
    /// The default route's mailer.
    package var mailer: Mailer { routes.defaultMailer }
    package let dispatcher: Dispatcher
    package let api: OutboxAPI
    /// Keeps `queue-min-free` on the queue's disk and applies retention.
    package let storage: StorageGuard
    /// The SMTP submission listener; nil when `[relay] listen` and `listen-tls` are empty.
    package let relay: RelayServer?
    private let relayListening: NIOLockedValueBox<@Sendable (String) -> Void>
    /// The trace exporter (`[outbox] otel-endpoint`), when tracing is on.
    private let tracing: (any Service)?
    private let logger: Logger
    private let file: String?
    private let overrides: [String]
    private let environment: [String: String]
    private let state: NIOLockedValueBox<State>

    private struct State {
        /// The configuration the process started with (restart-only options stay as they were).
        var started: OutboxConfiguration
        /// The last valid configuration loaded.
        var current: OutboxConfiguration
        var pendingRestart: [String] = []
        var lastReload: Double?
        var lastReloadError: String?
    }

    /// Opens the store named by `[outbox] store` (running migrations) and builds the services.
    package static func make(
        file: String?, overrides: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger = Logger(label: "outbox")
    ) async throws -> Daemon {
        let configuration = try OutboxConfiguration.load(file: file, overrides: overrides, environment: environment)
        let settings = configuration.outbox
        if !APISettings.isLoopback(listen: settings.httpListen) && settings.apiTokenList.isEmpty {
            throw DaemonError(
                .openAPI, "http-listen \(settings.httpListen) is not a loopback address: set [outbox] api-tokens so the API is not open to anyone")
        }
        // The HTTPS pair is checked before anything starts (run() reads it again).
        _ = try HTTPListenerTLS.configuration(settings)
        let store = try await openStore(settings, logger: logger)
        return try Daemon(configuration: configuration, store: store, file: file, overrides: overrides, environment: environment, logger: logger)
    }

    package static func openStore(_ settings: OutboxSettings, logger: Logger) async throws -> any OutboxStore {
        let store: any OutboxStore
        let lower = settings.store.lowercased()
        if lower.hasPrefix("postgres://") || lower.hasPrefix("postgresql://") {
            store = try await PostgresOutboxStore.open(url: settings.store, logger: logger)
        } else if lower == "memory" {
            store = try await SQLiteOutboxStore.open(path: ":memory:", logger: logger)
        } else {
            store = try await SQLiteOutboxStore.open(path: settings.dataDirectory + "/outbox.sqlite", logger: logger)
        }
        try await store.migrate()
        if let sqlite = store as? SQLiteOutboxStore {
            // One process per SQLite file: claims left in it belong to a process that died.
            let recovered = try await sqlite.recoverAbandoned(now: Date().timeIntervalSince1970)
            if recovered > 0 {
                logger.warning(
                    "\(recovered) messages were being sent when Outbox last stopped; they will be sent again and are marked as possible duplicates")
            }
        }
        // Chunks of large messages whose sessions died with a process. SQLite has one process;
        // instances that share PostgreSQL may be receiving now: only chunks older than a day.
        let now = Date().timeIntervalSince1970
        let purged = try await store.purgeOrphanChunks(before: store.kind == "sqlite" ? now : now - 86_400)
        if purged > 0 { logger.notice("removed \(purged) chunks of messages that were being received when Outbox last stopped") }
        return store
    }

    package init(
        configuration: OutboxConfiguration, store: any OutboxStore, file: String? = nil, overrides: [String] = [],
        environment: [String: String] = [:], logger: Logger = Logger(label: "outbox")
    ) throws {
        self.store = store
        self.logger = logger
        self.file = file
        self.overrides = overrides
        self.environment = environment
        let routes = try MailerRoutes(configuration: configuration, logger: logger)
        self.routes = routes
        let dispatcher = Dispatcher(store: store, sender: routes, settings: Daemon.dispatcherSettings(configuration), logger: logger)
        dispatcher.setRoutes(configuration.routeNames)
        self.dispatcher = dispatcher
        self.tracing = try TraceExport.start(endpoint: configuration.outbox.otelEndpoint, logger: logger)
        self.state = NIOLockedValueBox(State(started: configuration, current: configuration))
        self.api = OutboxAPI(store: store, settings: APISettings(configuration), logger: logger)
        self.storage = StorageGuard(
            store: store, directory: store.kind == "sqlite" ? configuration.outbox.dataDirectory : nil,
            settings: StorageGuard.Settings(configuration.outbox), logger: logger,
            metricsFactory: PrometheusMetricsFactory(registry: api.registry))
        api.attach(storage: storage)
        dispatcher.storeHealth.wait = configuration.outbox.storeUnavailableWait
        dispatcher.deliveryLog.format = configuration.outbox.logFormat
        api.attach(health: dispatcher.storeHealth)
        let relaySettings = configuration.relay
        let listening = NIOLockedValueBox<@Sendable (String) -> Void>({ _ in })
        self.relayListening = listening
        if relaySettings.listen.isEmpty && relaySettings.listenTLS.isEmpty {
            self.relay = nil
        } else {
            let runtime: RelayRuntimeConfiguration
            do {
                runtime = try RelayRuntimeConfiguration.make(
                    settings: relaySettings, clients: configuration.clients, routes: RouteTable(configuration))
            } catch let error as RelayError {
                throw DaemonError(.relay, error.description)
            }
            self.relay = RelayServer(
                configuration: runtime, queue: StoreRelayQueue(store: store, storage: storage, health: dispatcher.storeHealth),
                listenDefaulted: configuration.source(of: "relay.listen") == .default,
                drainDeadline: configuration.outbox.shutdownDeadline,
                metricsFactory: PrometheusMetricsFactory(registry: api.registry), logger: logger,
                // SIZE is offered before the route is known: the smallest of the routes' limits.
                transportSizeLimit: { [routes] in routes.names.compactMap { routes.mailer($0)?.messageSizeLimit }.min() },
                onListening: { address in listening.withLockedValue { $0 }(address) })
        }
        api.attach(self)
    }

    package static func dispatcherSettings(_ s: OutboxSettings) -> DispatcherSettings {
        DispatcherSettings(
            concurrency: s.deliveryConcurrency, lease: s.leaseTime, shutdownDeadline: s.shutdownDeadline,
            retry: RetryPolicy(
                initialDelay: s.retryInitialDelay, maxDelay: s.retryMaxDelay,
                maxAge: s.retryMaxAge, unknownOutcomeRetries: s.unknownOutcomeRetries),
            ratePerMinute: s.rateLimitPerMinute > 0 ? s.rateLimitPerMinute : nil,
            concurrencyPerMailbox: s.mailboxConcurrency > 0 ? s.mailboxConcurrency : nil)
    }

    /// The dispatcher's settings, with bounces for relayed messages when the relay is on.
    package static func dispatcherSettings(_ c: OutboxConfiguration) -> DispatcherSettings {
        var settings = dispatcherSettings(c.outbox)
        settings.bounce = BounceSettings(hostname: c.relay.effectiveHostname, copyTo: c.relay.bounceCopyTo)
        settings.routeLimits = Dictionary(
            uniqueKeysWithValues: c.routeNames.compactMap { name in c.options(forRoute: name).map { (name, $0.routeLimits) } })
        return settings
    }

    package var configuration: OutboxConfiguration { state.withLockedValue { $0.current } }
    package var pendingRestart: [String] { state.withLockedValue { $0.pendingRestart } }

    /// What the daemon listens on and sends to, for the start-up line.
    package var banner: String {
        let c = configuration
        let target: String
        if c.smtpClient.usesFileTransport {
            target = "the file transport (messages written to \(c.outbox.dataDirectory)/sent/)"
        } else {
            target = "\(mailer.transportName) \(c.smtpClient.server ?? ""):\(c.smtpClient.port)"
        }
        return
            "outbox: listening on \(c.outbox.httpTLSCertificateFile != nil ? "https" : "http")://\(c.outbox.httpListen), queue \(store.kind) (\(c.outbox.store == "sqlite" ? c.outbox.dataDirectory + "/outbox.sqlite" : c.outbox.store.hasPrefix("postgres") ? "postgres" : c.outbox.store)), sending through \(target)"
    }

    /// Re-reads the configuration file. An invalid file is refused whole (its errors logged);
    /// the old configuration stays. Returns the changes that wait for a restart.
    @discardableResult
    package func reload() -> Result<[String], ConfigurationError> {
        let new: OutboxConfiguration
        do {
            new = try OutboxConfiguration.load(file: file, overrides: overrides, environment: environment)
        } catch {
            logger.error("the new configuration is invalid; keeping the old one: \(error)")
            state.withLockedValue {
                $0.lastReloadError = "\(error)"
                $0.lastReload = Date().timeIntervalSince1970
            }
            return .failure(error)
        }
        // The relay first: a certificate that does not load refuses the whole reload.
        var relayRuntime: RelayRuntimeConfiguration?
        if relay != nil {
            do {
                relayRuntime = try RelayRuntimeConfiguration.make(
                    settings: new.relay, clients: new.clients, routes: RouteTable(new))
            } catch {
                let problem = ConfigurationProblem(
                    code: "relay_tls", file: file ?? "-", line: nil, option: "relay.tls-certificate-file", value: nil, message: "\(error)")
                logger.error("the new configuration is invalid; keeping the old one: \(error)")
                state.withLockedValue {
                    $0.lastReloadError = "\(error)"
                    $0.lastReload = Date().timeIntervalSince1970
                }
                return .failure(ConfigurationError(problems: [problem]))
            }
        }
        // The transports next: a configuration one of them cannot be built from (or one that
        // removed `server`) is refused whole, before anything else changes.
        let reloaded: MailerRoutes.ReloadResult
        do {
            reloaded = try routes.reload(new)
        } catch {
            let problem = ConfigurationProblem(
                code: error.code, file: file ?? "-", line: nil, option: error.code == "reload_server_removed" ? "server" : nil, value: nil,
                message: error.description)
            logger.error("the new configuration is refused; keeping the old one: \(error.description)")
            state.withLockedValue {
                $0.lastReloadError = error.description
                $0.lastReload = Date().timeIntervalSince1970
            }
            return .failure(ConfigurationError(problems: [problem]))
        }
        if let relay, let relayRuntime { relay.update(relayRuntime) }
        dispatcher.update(Daemon.dispatcherSettings(new))
        dispatcher.setRoutes(new.routeNames)
        dispatcher.routeConfigurationChanged(reloaded.changed + reloaded.added)
        storage.update(StorageGuard.Settings(new.outbox))
        dispatcher.storeHealth.wait = new.outbox.storeUnavailableWait
        dispatcher.deliveryLog.format = new.outbox.logFormat
        var apiSettings = APISettings(new)
        let started = state.withLockedValue { $0.started }
        // Whether tokens are required depends on where it listens now, not on a pending http-listen.
        apiSettings.requireToken = new.outbox.requireAPIToken || !APISettings.isLoopback(listen: started.outbox.httpListen)
        api.update(apiSettings)
        let pending = new.changes(from: started).filter { $0.effect == .atRestart }.map(\.name)
        state.withLockedValue {
            $0.current = new
            $0.pendingRestart = pending
            $0.lastReload = Date().timeIntervalSince1970
            $0.lastReloadError = nil
        }
        for name in pending { logger.notice("\(name) changed; it takes effect when Outbox restarts") }
        logger.info("configuration reloaded", metadata: ["outbox.pending_restart": "\(pending.joined(separator: ","))"])
        return .success(pending)
    }

    package func status() async -> [String: any Sendable] {
        let s = state.withLockedValue { $0 }
        let options: [[String: String]] = s.current.effectiveOptions().map {
            ["name": $0.name, "value": $0.value, "source": $0.source.description, "effect": $0.effect.rawValue]
        }
        let counters = dispatcher.counters
        return [
            "instance": dispatcher.instanceID,
            "transport": mailer.transportName,
            "transport_generation": mailer.transportGeneration,
            "route_transports": routeTransports(s.current),
            "listen": s.started.outbox.httpListen,
            "configuration": options,
            "pending_restart": s.pendingRestart,
            "last_reload": s.lastReload.map { JSON.iso($0) as? String ?? "" } ?? "",
            "last_reload_error": s.lastReloadError ?? "",
            "dispatcher": ["attempts": counters.attempts, "delivered": counters.delivered],
        ]
    }

    /// Each route's transport and destination, by route, for `/v1/status`.
    private func routeTransports(_ c: OutboxConfiguration) -> [String: [String: any Sendable]] {
        var out: [String: [String: any Sendable]] = [:]
        for name in routes.names {
            guard let mailer = routes.mailer(name), let o = c.options(forRoute: name) else { continue }
            let destination: String =
                switch o.serverType {
                case .graph: c.outbox.graphURL + (o.user.map { "/users/\($0)" } ?? "")
                case .ews: o.server ?? ""
                case .smtp: o.usesFileTransport ? c.outbox.dataDirectory + "/sent" : "\(o.server ?? ""):\(o.port)"
                }
            out[name] = [
                "transport": mailer.transportName, "destination": destination, "transport_generation": mailer.transportGeneration,
                "senders": o.senders,
            ]
        }
        return out
    }

    package func transportProblem() async -> String? {
        let c = mailer.configuration
        guard !c.smtpClient.usesFileTransport, let server = c.smtpClient.server else {
            let dir = c.outbox.dataDirectory + "/sent"
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            return FileManager.default.isWritableFile(atPath: dir) ? nil : "the file transport cannot write to \(dir)"
        }
        var (host, port) = (server, c.smtpClient.port)
        // EWS's server and Graph's graph-url are URLs: their host and port are checked.
        let url: String? =
            switch c.smtpClient.serverType {
            case .ews: host
            case .graph: c.outbox.graphURL
            case .smtp: nil
            }
        if let url, let parsed = URL(string: url), let urlHost = parsed.host {
            host = urlHost
            port = parsed.port ?? (parsed.scheme?.lowercased() == "http" ? 80 : 443)
        }
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(3))
                .connect(host: host, port: port).get()
            try? await channel.close()
            return nil
        } catch {
            return "the mail server \(host):\(port) cannot be reached: \(error)"
        }
    }

    /// Runs until SIGTERM/SIGINT; SIGHUP reloads.
    /// `onRelayListening` gets `smtp://host:port` (or `smtps://`) for each relay address bound.
    package func run(
        onListening: @escaping @Sendable (String) -> Void = { _ in },
        onRelayListening: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws {
        relayListening.withLockedValue { $0 = onRelayListening }
        let listen = configuration.outbox.httpListen
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
            throw DaemonError(.invalidListen, "http-listen \(listen) is not host:port")
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        // HTTPS when [outbox] http-tls-certificate-file and http-tls-key-file are set (HTTPListenerTLS.swift).
        let tls = try HTTPListenerTLS.configuration(configuration.outbox)
        api.secureCookies = tls != nil
        let router = api.makeRouter()
        let app = Application(
            router: router, server: try tls.map { try HTTPServerBuilder.tls(.http1(), tlsConfiguration: $0) } ?? HTTPServerBuilder.http1(),
            configuration: .init(address: .hostname(host, port: port), serverName: "outbox"),
            services: [api.sessionDriver],
            onServerRunning: { channel in onListening("\(host):\(channel.localAddress?.port ?? port)") },
            logger: logger)
        let reloader = ReloadService(daemon: self)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: routes, successTerminationBehavior: .ignore),
            .init(service: dispatcher, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: storage, successTerminationBehavior: .ignore),
            .init(service: reloader, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: app, successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        // The relay stops accepting first and lets a message being received be committed
        // before the dispatcher and the store go.
        if let relay { services.append(.init(service: relay, successTerminationBehavior: .ignore)) }
        // The exporter stops last (services stop in reverse order): the last spans are flushed.
        if let tracing { services.insert(.init(service: tracing, successTerminationBehavior: .ignore), at: 0) }
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        // The relay advertises the SMTP server's SIZE when it is smaller than max-message-size:
        // one connection is opened at start to read it (and stays in the pool).
        let learner =
            relay == nil
            ? nil
            : Task { [routes] in
                for name in routes.names { await routes.mailer(name)?.learnLimits() }
            }
        defer { learner?.cancel() }
        try await group.run()
        try? await store.close()
    }
}

/// The relay's queue: the daemon's store (an enqueue returns once committed with fsync). Each
/// call is bounded by `store-unavailable-wait` (the listener answers 451 4.3.0 past it).
struct StoreRelayQueue: RelayQueue {
    let store: any OutboxStore
    let storage: StorageGuard
    let health: StoreHealth

    func intake() -> RelayIntake {
        switch storage.intake {
        case .open(let room): .open(room: room)
        case .refused: .refused
        }
    }

    func isInsufficientStorage(_ error: any Error) -> Bool {
        StoreFailure.classify(error) == .insufficientStorage
    }

    func enqueue(_ message: NewMessage) async throws -> String {
        try await health.call { [store] in try await store.enqueue(message, now: Date().timeIntervalSince1970).id }
    }

    func writeChunk(messageID: String, index: Int, bytes: ByteBuffer) async throws {
        try await health.call { [store] in
            try await store.writeChunk(messageID: messageID, index: index, bytes: bytes, now: Date().timeIntervalSince1970)
        }
    }

    func discardChunks(messageID: String) async throws {
        try await health.call { [store] in try await store.discardChunks(messageID: messageID) }
    }
}

/// Reloads on SIGHUP until graceful shutdown.
struct ReloadService: Service {
    let daemon: Daemon

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            daemon.reload()
        }
    }
}

/// Why the daemon cannot start or reload: a stable code and a message naming the option.
package struct DaemonError: Error, CustomStringConvertible, Sendable {
    /// Stable codes (snake_case); extensible.
    package struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        package var rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        package var description: String { rawValue }

        /// `http-listen` is not a loopback address and no API token is set.
        package static let openAPI = Code(rawValue: "daemon_open_api")
        /// An address option is not `host:port`.
        package static let invalidListen = Code(rawValue: "daemon_invalid_listen")
        /// The HTTP listener's certificate or key cannot be read, or they do not match.
        package static let httpTLS = Code(rawValue: "daemon_http_tls")
        /// The `[relay]` section cannot be put in force (certificate files, the open-relay rule).
        package static let relay = Code(rawValue: "daemon_relay")
    }

    package var code: Code
    package var description: String
    package init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}
