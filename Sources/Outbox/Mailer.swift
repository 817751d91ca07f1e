import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import OutboxConfig
import OutboxMIME
import OutboxSMTP
import OutboxTransports
import ServiceLifecycle

/// The library's front door: made from a configuration, run as a swift-service-lifecycle
/// `Service`, and asked to `send` messages from any number of tasks.
///
/// ```swift
/// let mailer = try Mailer(configuration: try OutboxConfiguration.load(file: "outbox.cfg", overrides: [], environment: [:]))
/// let group = ServiceGroup(services: [mailer], gracefulShutdownSignals: [.sigterm], logger: logger)
/// async let _ = group.run()
/// let report = try await mailer.send(message)
/// ```
///
/// `run()` keeps the connection pool's timers going (NOOP checks, idle closes, token
/// retirement); on graceful shutdown it stops taking new messages, lets in-flight ones finish
/// and QUITs every connection.
public final class Mailer: Service, Sendable {
    private let state: NIOLockedValueBox<State>
    /// The route this mailer sends for (`default` for a mailer of `[smtp-client]`).
    package let route: String
    private let logger: Logger
    /// The delivery log's lines of direct sends (the dispatcher writes those of the queue's), at
    /// the level of the logger the mailer was given: a mailer logging at `warning` writes none.
    public let deliveryLog: DeliveryLog
    private let metrics: MailerMetrics
    private let tokenSource: (@Sendable () async throws -> SMTPAccessToken)?
    /// Transports whose background work `run()` must start: the first one, then each one a
    /// reload puts in force.
    private let starts: (stream: AsyncStream<any MailTransport>, continuation: AsyncStream<any MailTransport>.Continuation)

    /// One transport and the sends that started on it. A reload that changes the transport
    /// retires the old slot: its sends finish on it, then it is shut down.
    private struct Slot {
        var transport: any MailTransport
        var inFlight = 0
        var retired = false
    }

    private struct State {
        var configuration: OutboxConfiguration
        var slots: [Int: Slot]
        var current: Int
        var nextSlot = 1
        var accepting = true
        /// How many times a reload put a new transport in force.
        var generation = 0

        var transport: any MailTransport { slots[current]!.transport }
    }

    /// A mailer for `configuration`'s transport (SMTP, file, Graph or EWS). `tokenSource` replaces
    /// the built-in OAuth2 tokens for SMTP's XOAUTH2. Throws `TransportFactory.Unavailable`
    /// when the transport cannot be built from the configuration.
    public convenience init(
        configuration: OutboxConfiguration, logger: Logger = Logger(label: "outbox.mailer"),
        tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil
    ) throws {
        try self.init(configuration: configuration, route: "default", logger: logger, tokenSource: tokenSource)
    }

    /// A mailer for one route: `configuration` as ``OutboxConfiguration/forRoute(_:)`` gives
    /// it (the route's options in `smtpClient`); `route` names it in logs and metrics.
    package init(
        configuration: OutboxConfiguration, route: String, logger: Logger = Logger(label: "outbox.mailer"),
        tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil
    ) throws {
        var logger = logger
        if route != "default" { logger[metadataKey: "outbox.route"] = "\(route)" }
        let transport = try TransportFactory.make(configuration: configuration, logger: logger, tokenSource: tokenSource, route: route)
        self.state = NIOLockedValueBox(State(configuration: configuration, slots: [0: Slot(transport: transport)], current: 0))
        self.route = route
        self.logger = logger
        self.metrics = MailerMetrics(route: route)
        self.tokenSource = tokenSource
        var deliveryLogger = Logger(label: DeliveryLog.label)
        deliveryLogger.logLevel = logger.logLevel
        self.deliveryLog = DeliveryLog(logger: deliveryLogger, format: configuration.outbox.logFormat)
        self.starts = AsyncStream.makeStream(of: (any MailTransport).self)
        starts.continuation.yield(transport)
    }

    /// The configuration in force.
    public var configuration: OutboxConfiguration { state.withLockedValue { $0.configuration } }

    /// The transport messages go through (`smtp`, `file`, `graph`, `ews`).
    public var transportName: String { state.withLockedValue { $0.transport.name } }

    /// The transport in force (a reload may replace it).
    package var transport: any MailTransport { state.withLockedValue { $0.transport } }

    /// How many times a reload has put a new transport in force (0 until then).
    public var transportGeneration: Int { state.withLockedValue { $0.generation } }

    /// True when the caller supplied the XOAUTH2 token source (``credentialStates`` then has no
    /// token health).
    var hasCustomTokenSource: Bool { tokenSource != nil }
    /// Sends running now, on every transport (the one in force and retired ones).
    package var sendsInFlight: Int { state.withLockedValue { $0.slots.values.reduce(0) { $0 + $1.inFlight } } }

    /// The SMTP pool's counters, when the transport is SMTP.
    public var poolStatistics: PoolStatistics? { transport.poolStatistics }

    /// Messages whose SMTP transaction started where a connection became free (pipelined behind
    /// the previous message's final dot, see `SMTPTransport`), when the transport is SMTP.
    package var smtpStartedAtHandBack: Int? { (transport as? SMTPTransport)?.startedAtHandBack }

    /// The largest message the transport's destination takes, as far as it knows now.
    public var messageSizeLimit: Int? { transport.messageSizeLimit }

    /// Learns the destination's limits ahead of the first message (an SMTP server's SIZE).
    public func learnLimits() async {
        await transport.learnLimits()
    }

    /// Runs the transports' background work (the SMTP pool's timers), including that of each
    /// transport a reload puts in force, and samples the metrics' gauges until graceful
    /// shutdown; then stops taking messages and lets in-flight ones finish.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                let gauges = Task { await self.sampleGauges() }
                for await transport in starts.stream {
                    group.addTask { await transport.run() }
                }
                await group.waitForAll()
                gauges.cancel()
            }
        } onGracefulShutdown: {
            self.beginShutdown()
        }
    }

    /// Stops taking new messages, lets in-flight ones finish, QUITs every connection.
    public func shutdown() async {
        beginShutdown()
        await transport.shutdown()
    }

    private func beginShutdown() {
        let transport = state.withLockedValue { state -> any MailTransport in
            state.accepting = false
            return state.transport
        }
        starts.continuation.finish()
        transport.beginShutdown()
    }

    /// Sends one message; returns per-recipient results, the final reply, the message id and
    /// timings. Throws `DeliveryError` when the delivery failed as a whole. The message goes
    /// through the transport in force when the send starts, even if a reload replaces it
    /// meanwhile.
    public func send(_ content: any MailContent, envelope: Envelope? = nil) async throws(DeliveryError) -> DeliveryReport {
        let picked = state.withLockedValue { state -> (Int, any MailTransport)? in
            guard state.accepting else { return nil }
            state.slots[state.current]!.inFlight += 1
            return (state.current, state.transport)
        }
        guard let (slot, transport) = picked else {
            throw DeliveryError(kind: .transient, message: "the mailer is shutting down")
        }
        defer { finished(slot) }
        let start = ContinuousClock.now
        do {
            let report = try await transport.send(content, envelope: envelope)
            let elapsed = ContinuousClock.now - start
            metrics.record(report, duration: elapsed)
            if deliveryLog.isEnabled { logDirectSend(content, envelope: envelope, result: .success(report), duration: elapsed) }
            return report
        } catch {
            let elapsed = ContinuousClock.now - start
            metrics.record(error, transport: transport.name, duration: elapsed)
            if deliveryLog.isEnabled { logDirectSend(content, envelope: envelope, result: .failure(error), duration: elapsed) }
            throw error
        }
    }

    /// A send on `slot` ended: a retired transport whose last send this was is shut down.
    private func finished(_ slot: Int) {
        let done = state.withLockedValue { state -> (any MailTransport)? in
            state.slots[slot]!.inFlight -= 1
            guard let s = state.slots[slot], s.retired, s.inFlight == 0 else { return nil }
            state.slots[slot] = nil
            return s.transport
        }
        if let done { Task { await done.shutdown() } }
    }

    /// Why a reload was refused; the configuration in force stays whole.
    public struct ReloadRefused: Error, CustomStringConvertible, Sendable {
        /// A stable code: `reload_server_removed` or the transport factory's code.
        public var code: String
        /// What is wrong and what to fix.
        public var description: String
    }

    /// Applies a new configuration as the option reference's "Changes Take Effect" says
    /// (``OutboxConfiguration/planReload(to:)``): options that take effect immediately or at
    /// the next cycle are in force for the next message, those that take effect at restart
    /// keep their old values and are returned, for the caller to report.
    ///
    /// When a transport option changed (`server-type`, `server`, `port`, `user`, the timeouts,
    /// `enable-authentication`, `enable-debug`, `token-expiry-margin-time`, `exchange-version`),
    /// a new transport is built with them, for every server type: messages already in flight
    /// finish on the old one, which is then closed (an SMTP pool QUITs its connections); the
    /// next message goes through the new one, with its own token source and pool rules.
    ///
    /// Throws ``ReloadRefused``, and changes nothing, when the new transport cannot be built, or
    /// when `server` was removed from a configuration that sends to a server (Outbox would
    /// otherwise write every message to files: a typo must not "deliver" mail to disk).
    @discardableResult
    public func reload(_ new: OutboxConfiguration) throws(ReloadRefused) -> [ConfigurationChange] {
        commit(try prepareReload(new))
    }

    /// A reload checked and its transport built, not yet in force (``commit(_:)``), so that
    /// several mailers can be reloaded all or none.
    package struct PreparedReload: Sendable {
        let plan: ReloadPlan
        let replacement: (any MailTransport)?

        /// Whether it puts any change in force.
        package var changedAnything: Bool { !plan.applied.isEmpty }

        /// Gives up a prepared reload: its new transport is closed.
        package func discard() async { await replacement?.shutdown() }
    }

    /// The first half of ``reload(_:)``: plans it and builds the new transport; nothing changes.
    package func prepareReload(_ new: OutboxConfiguration) throws(ReloadRefused) -> PreparedReload {
        let old = configuration
        let plan = old.planReload(to: new)
        let merged = plan.configuration
        if !old.smtpClient.usesFileTransport && merged.smtpClient.usesFileTransport {
            throw ReloadRefused(
                code: "reload_server_removed",
                description:
                    "server is not set in the new configuration: Outbox would write messages to files instead of sending them to \(old.smtpClient.server ?? "the server"); set server (or remove the whole [smtp-client] transport configuration and restart to use the file transport)"
            )
        }
        // `senders` chooses the route of new messages; the transport does not use it.
        let transportChanged = plan.applied.contains {
            !$0.name.hasPrefix("outbox.") && !$0.name.hasPrefix("relay.") && !$0.name.hasPrefix("client-") && $0.name != "senders"
        }
        var replacement: (any MailTransport)?
        if transportChanged {
            do {
                replacement = try TransportFactory.make(configuration: merged, logger: logger, tokenSource: tokenSource, route: route)
            } catch let error as TransportFactory.Unavailable {
                throw ReloadRefused(code: error.code, description: "the new configuration's transport cannot be built: \(error.description)")
            } catch {
                throw ReloadRefused(code: "transport_unavailable", description: "the new configuration's transport cannot be built: \(error)")
            }
        }
        return PreparedReload(plan: plan, replacement: replacement)
    }

    /// The second half of ``reload(_:)``: puts a prepared reload in force; returns the changes
    /// that wait for a restart.
    @discardableResult
    package func commit(_ prepared: PreparedReload) -> [ConfigurationChange] {
        let (plan, replacement) = (prepared.plan, prepared.replacement)
        let merged = plan.configuration
        // The transport to close now: the old one when nothing is in flight on it, or the
        // replacement when the mailer is shutting down; `swapped` when the replacement is in force.
        let (toClose, swapped) = state.withLockedValue { state -> ((any MailTransport)?, Bool) in
            state.configuration = merged
            guard let replacement else { return (nil, false) }
            guard state.accepting else { return (replacement, false) }
            let old = state.current
            state.slots[old]!.retired = true
            state.current = state.nextSlot
            state.slots[state.nextSlot] = Slot(transport: replacement)
            state.nextSlot += 1
            state.generation += 1
            guard state.slots[old]!.inFlight == 0 else { return (nil, true) }
            defer { state.slots[old] = nil }
            return (state.slots[old]!.transport, true)
        }
        if swapped, let replacement {
            starts.continuation.yield(replacement)
            Task { await replacement.learnLimits() }
        }
        if let toClose { Task { await toClose.shutdown() } }
        deliveryLog.format = merged.outbox.logFormat
        if !plan.applied.isEmpty {
            logger.info(
                "configuration reloaded",
                metadata: [
                    "outbox.changed": "\(plan.applied.map(\.name).joined(separator: ","))",
                    "outbox.transport": "\(swapped ? "replaced" : "kept")",
                ])
        }
        for change in plan.waiting {
            logger.notice("\(change.name) changed; it takes effect at restart")
        }
        return plan.waiting
    }

    private func sampleGauges() async {
        while !Task.isCancelled {
            if let stats = poolStatistics { metrics.record(stats) }
            try? await Task.sleep(for: .seconds(1))
        }
    }
}
