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
    private let logger: Logger
    private let metrics: MailerMetrics

    private struct State {
        var configuration: OutboxConfiguration
        var transport: any MailTransport
        var accepting = true
    }

    /// A mailer for `configuration`'s transport (SMTP, file, Graph or EWS). `tokenSource` replaces
    /// the built-in OAuth2 tokens for SMTP's XOAUTH2. Throws `TransportFactory.Unavailable`
    /// when the transport cannot be built from the configuration.
    public init(
        configuration: OutboxConfiguration, logger: Logger = Logger(label: "outbox.mailer"),
        tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil
    ) throws {
        let transport = try TransportFactory.make(configuration: configuration, logger: logger, tokenSource: tokenSource)
        self.state = NIOLockedValueBox(State(configuration: configuration, transport: transport))
        self.logger = logger
        self.metrics = MailerMetrics()
    }

    /// The configuration in force.
    public var configuration: OutboxConfiguration { state.withLockedValue { $0.configuration } }

    /// The transport messages go through (`smtp`, `file`).
    public var transportName: String { state.withLockedValue { $0.transport.name } }

    /// The SMTP pool's counters, when the transport is SMTP.
    public var poolStatistics: PoolStatistics? {
        state.withLockedValue { $0.transport }.poolStatistics
    }

    /// Messages whose SMTP transaction started where a connection became free (pipelined behind
    /// the previous message's final dot, see `SMTPTransport`), when the transport is SMTP.
    package var smtpStartedAtHandBack: Int? {
        (state.withLockedValue { $0.transport } as? SMTPTransport)?.startedAtHandBack
    }

    /// The largest message the transport's destination takes, as far as it knows now.
    public var messageSizeLimit: Int? { state.withLockedValue { $0.transport }.messageSizeLimit }

    /// Learns the destination's limits ahead of the first message (an SMTP server's SIZE).
    public func learnLimits() async {
        await state.withLockedValue { $0.transport }.learnLimits()
    }

    /// Runs the transport's background work (the SMTP pool's timers) and samples the metrics'
    /// gauges until graceful shutdown, then stops taking messages and lets in-flight ones finish.
    public func run() async throws {
        let transport = state.withLockedValue { $0.transport }
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await transport.run() }
                group.addTask { await self.sampleGauges() }
                await group.next()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.beginShutdown()
        }
    }

    /// Stops taking new messages, lets in-flight ones finish, QUITs every connection.
    public func shutdown() async {
        beginShutdown()
        let transport = state.withLockedValue { $0.transport }
        await transport.shutdown()
    }

    private func beginShutdown() {
        let transport = state.withLockedValue { state -> any MailTransport in
            state.accepting = false
            return state.transport
        }
        transport.beginShutdown()
    }

    /// Sends one message; returns per-recipient results, the final reply, the message id and
    /// timings. Throws `DeliveryError` when the delivery failed as a whole.
    public func send(_ content: any MailContent, envelope: Envelope? = nil) async throws(DeliveryError) -> DeliveryReport {
        let (transport, accepting) = state.withLockedValue { ($0.transport, $0.accepting) }
        guard accepting else {
            throw DeliveryError(kind: .transient, message: "the mailer is shutting down")
        }
        let start = ContinuousClock.now
        do {
            let report = try await transport.send(content, envelope: envelope)
            metrics.record(report, duration: ContinuousClock.now - start)
            return report
        } catch {
            metrics.record(error, transport: transport.name, duration: ContinuousClock.now - start)
            throw error
        }
    }

    /// Applies a new configuration's options that take effect immediately (server, port, user,
    /// enable-authentication, timeouts, enable-debug): new connections use them and idle
    /// connections opened under the old values are closed. Returns the changes that must wait
    /// for a restart (or the next cycle), for the caller to report.
    @discardableResult
    public func reload(
        _ new: OutboxConfiguration,
        tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil
    ) -> [ConfigurationChange] {
        let (old, transport) = state.withLockedValue { ($0.configuration, $0.transport) }
        let changes = new.changes(from: old)
        let immediate = changes.filter { $0.effect == .immediately }
        let waiting = changes.filter { $0.effect != .immediately }
        if !immediate.isEmpty {
            var merged = old.smtpClient
            for change in immediate { Mailer.apply(change.name, from: new.smtpClient, to: &merged) }
            transport.update(options: merged, settings: old.outbox, tokenSource: tokenSource)
            state.withLockedValue { state in
                state.configuration.smtpClient = merged
            }
            logger.info("configuration reloaded", metadata: ["outbox.changed": "\(immediate.map(\.name).joined(separator: ","))"])
        }
        for change in waiting {
            logger.notice("\(change.name) changed; it takes effect \(change.effect == .atRestart ? "at restart" : "at the next cycle")")
        }
        return waiting
    }

    /// Copies one option that takes effect immediately.
    static func apply(_ name: String, from new: SMTPClientOptions, to options: inout SMTPClientOptions) {
        switch name {
        case "server": options.server = new.server
        case "port": options.port = new.port
        case "user": options.user = new.user
        case "enable-authentication": options.enableAuthentication = new.enableAuthentication
        case "connect-timeout": options.connectTimeout = new.connectTimeout
        case "protocol-timeout": options.protocolTimeout = new.protocolTimeout
        case "enable-debug": options.enableDebug = new.enableDebug
        case "token-expiry-margin-time": options.tokenExpiryMarginTime = new.tokenExpiryMarginTime
        default: break
        }
    }

    private func sampleGauges() async {
        while !Task.isCancelled {
            if let stats = poolStatistics { metrics.record(stats) }
            try? await Task.sleep(for: .seconds(1))
        }
    }
}
