import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import OutboxMIME
import OutboxSMTP
import Synchronization
import Tracing

extension SMTPConnection: PoolableConnection {
    package var credentialLifetime: Duration? {
        credentialExpiry.map { $0 - ContinuousClock.now }
    }

    /// QUIT, then close.
    package func close() async {
        await quit()
    }
}

struct SMTPServerRefusedConnection: ConnectionPoolRefusalError {
    var error: SMTPError
}

extension SMTPError {
    /// 421 (service closing, too many connections) or Outlook's 432 4.3.2: back off.
    var isConnectionLimit: Bool {
        guard let code = reply?.code else { return false }
        return code == 421 || code == 432
    }
}

/// A lease handed back exactly once, whichever comes first: the event loop at the hand-back
/// (the message's body is on its way), or the sending task.
private final class HandBackLease: Sendable {
    let pool: ConnectionPool<SMTPConnectionFactory, PoolClock>
    let lease: ConnectionPoolLease<SMTPConnection>
    private let released = NIOLockedValueBox(false)

    init(pool: ConnectionPool<SMTPConnectionFactory, PoolClock>, lease: ConnectionPoolLease<SMTPConnection>) {
        self.pool = pool
        self.lease = lease
    }

    /// Returns false when the lease was already given back.
    @discardableResult
    func release(_ disposition: PoolReleaseDisposition) -> Bool {
        let first = released.withLockedValue { released in
            defer { released = true }
            return !released
        }
        if first { pool.release(lease, disposition) }
        return first
    }
}

/// Opens SMTP connections with the configuration of a generation.
package struct SMTPConnectionFactory: PoolConnectionFactory {
    let configurations: NIOLockedValueBox<[Int: SMTPClientConfiguration]>
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger

    package func makeConnection(generation: Int) async throws -> SMTPConnection {
        guard let configuration = configurations.withLockedValue({ $0[generation] ?? $0.values.first }) else {
            throw ConnectionPoolError.shutdown
        }
        do {
            return try await SMTPConnection.connect(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
        } catch {
            if error.isConnectionLimit { throw SMTPServerRefusedConnection(error: error) }
            throw error
        }
    }
}

/// SMTP delivery through a pool of reused connections (`cnx-pool-size`, NOOP after
/// `cnx-check-idle-time`, close after `cnx-max-idle-time`, retire before token expiry).
///
/// A connection that fails before the final dot was sent is discarded and the message goes out
/// once more on a fresh connection; after the final dot with no reply, the outcome is unknown
/// and the message is not sent again (the caller's queue decides).
public final class SMTPTransport: MailTransport {
    /// `smtp`.
    public let name = "smtp"
    let pool: ConnectionPool<SMTPConnectionFactory, PoolClock>
    private let configurations: NIOLockedValueBox<[Int: SMTPClientConfiguration]>
    private let current: NIOLockedValueBox<Current>

    /// The settings of the current generation, and what every send needs from them.
    private struct Current {
        var generation: Int
        var configuration: SMTPClientConfiguration
        var envelopeFrom: String?
        /// `host:port`, for reports (made once, not per message).
        var destination: String
        /// What the connections of this generation offered, for preparing messages before a
        /// connection is at hand (nil until the first connection).
        var profile: SMTPTransactionProfile?

        init(generation: Int, configuration: SMTPClientConfiguration, envelopeFrom: String?) {
            self.generation = generation
            self.configuration = configuration
            self.envelopeFrom = envelopeFrom
            self.destination = "\(configuration.host):\(configuration.port)"
        }
    }
    private let logger: Logger
    /// Called when AUTH XOAUTH2 was refused with 535: the token source drops the token, and the
    /// delivery is tried once more with a new one (PROTOCOLS.md §1.3).
    private let authenticationRejected: (@Sendable () async -> Void)?

    /// A transport to the server of `configuration`, through a pool set by `poolConfiguration`;
    /// ``run()`` must be running for deliveries to make progress. `envelopeFrom` (`mail.smtp.from`)
    /// replaces the sender of every envelope; nil keeps the message's own. `onAuthenticationRejected`
    /// is called when the server refuses an XOAUTH2 token with 535, before the one retry with a
    /// fresh token.
    public init(
        configuration: SMTPClientConfiguration, pool poolConfiguration: PoolConfiguration,
        envelopeFrom: String? = nil,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "outbox.smtp"),
        onAuthenticationRejected: (@Sendable () async -> Void)? = nil
    ) {
        self.authenticationRejected = onAuthenticationRejected
        let configurations = NIOLockedValueBox([0: configuration])
        self.configurations = configurations
        self.current = NIOLockedValueBox(Current(generation: 0, configuration: configuration, envelopeFrom: envelopeFrom))
        self.logger = logger
        self.pool = ConnectionPool(
            configuration: poolConfiguration,
            factory: SMTPConnectionFactory(configurations: configurations, eventLoopGroup: eventLoopGroup, logger: logger),
            clock: PoolClock(), generation: 0, logger: logger)
    }

    /// The configuration new connections use: the last one given to `init` or
    /// ``update(configuration:envelopeFrom:)``.
    public var configuration: SMTPClientConfiguration { current.withLockedValue { $0.configuration } }
    /// Messages whose transaction started where a connection became free: pipelined behind the
    /// previous message's final dot by the connection's event loop, no task woken first.
    public var startedAtHandBack: Int { handBackStarts.load(ordering: .relaxed) }
    private let handBackStarts = Atomic<Int>(0)
    /// The connection pool's counters, now.
    public var statistics: PoolStatistics { pool.statistics }

    /// Applies options that take effect immediately (server, port, user, timeouts, debug...):
    /// new connections use them; idle connections opened under the old ones are closed.
    public func update(configuration: SMTPClientConfiguration, envelopeFrom: String?) {
        let generation = current.withLockedValue { state -> Int in
            state = Current(generation: state.generation + 1, configuration: configuration, envelopeFrom: envelopeFrom)
            return state.generation
        }
        configurations.withLockedValue { $0 = [generation: configuration] }
        pool.updateGeneration(generation)
    }

    /// Runs the connection pool (opening, checking and closing connections, its timers) until
    /// shutdown completes. Call once; cancelling it begins a graceful shutdown.
    public func run() async { await pool.run() }
    /// Graceful shutdown: new deliveries fail, in-flight ones finish, every connection is closed
    /// with QUIT. Returns when all are closed (``run()`` must be running).
    public func shutdown() async { await pool.shutdown() }
    /// Starts the graceful shutdown without waiting: new deliveries fail, in-flight ones finish.
    public func beginShutdown() { pool.beginShutdown() }

    /// One transaction for `envelope` over a pooled connection (see the type's description for
    /// when a message goes out a second time); ``send(_:envelope:)`` adds the further transactions
    /// after `452 4.5.3` and the throttling check.
    func sendTransaction(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        let started = Date()
        let clock = ContinuousClock.now
        let (destination, envelopeFrom, knownProfile) = current.withLockedValue { ($0.destination, $0.envelopeFrom, $0.profile) }
        // The message made ready before a connection is at hand, for the profile (capabilities,
        // settings) of the connections so far: a small one can then start right where a
        // connection becomes free (see `lease`).
        var outgoing: Outgoing?
        if let knownProfile {
            outgoing = await Outgoing.prepared(content, envelope: envelope, envelopeFrom: envelopeFrom, profile: knownProfile)
        }
        var attempts = 0
        var tokenRefreshed = false
        let tracing = !SMTPTracing.isOff
        while true {
            attempts += 1
            let lease: HandBackLease
            var startedOutcome: SMTPPreparedOutcome?
            do {
                if let prepared = outgoing?.prepared {
                    switch try await leaseStarting(prepared) {
                    case .leased(let leased): lease = HandBackLease(pool: pool, lease: leased)
                    case .started(let once, let outcome):
                        lease = once
                        startedOutcome = outcome
                    }
                } else {
                    lease = HandBackLease(pool: pool, lease: try await pool.lease())
                }
            } catch let error as SMTPServerRefusedConnection {
                throw DeliveryError(error.error)
            } catch let error as SMTPError {
                if error.stage == .auth, error.reply?.code == 535, !tokenRefreshed, let refresh = authenticationRejected {
                    tokenRefreshed = true
                    logger.notice("the server refused the OAuth 2.0 token (535); refreshing it once and trying again")
                    await refresh()
                    continue
                }
                throw DeliveryError(error)
            } catch let error as ConnectionPoolError {
                throw DeliveryError(kind: .transient, message: "the SMTP connection pool: \(error)")
            } catch {
                throw DeliveryError(kind: .transient, message: "no SMTP connection: \(error)", routeFault: .connectionFailed)
            }
            let connection = lease.lease.connection
            var span: (any Span)?
            if tracing {
                SMTPTracing.connectionOpened(connection, since: started)
                span = SMTPTracing.startTransaction(connection, recipients: envelope?.recipients.count)
            }
            do {
                // Once the body is on its way the connection goes back to the pool, from the event
                // loop: the next sender's commands follow this message's final dot.
                let handBack: @Sendable () -> Void = { lease.release(.clean) }
                let result: SMTPTransactionResult
                if let startedOutcome, let prepared = outgoing?.prepared {
                    result = try await connection.finish(prepared, startedOutcome)
                } else {
                    let profile = connection.transactionProfile
                    if outgoing == nil || outgoing!.bodyConsumed || !outgoing!.profile.matches(profile) {
                        outgoing = try await Outgoing(content, envelope: envelope, envelopeFrom: envelopeFrom, profile: profile)
                        remember(profile)
                    }
                    if let prepared = outgoing!.prepared, let sent = try await connection.send(prepared, handBack: handBack) {
                        result = sent
                    } else {
                        outgoing!.bodyConsumed = true
                        result = try await connection.send(
                            envelope: outgoing!.envelope, start: outgoing!.start,
                            rest: &outgoing!.rest, handBack: handBack)
                    }
                }
                lease.release(.clean)
                SMTPTracing.end(span, result)
                return Self.report(
                    result, destination: destination, content: content, started: started, clock: clock, attempts: attempts,
                    tls: connection.tlsInfo?.version ?? "none")
            } catch let error as SMTPError {
                SMTPTracing.end(span, error)
                let disposition: PoolReleaseDisposition
                if error.isConnectionLimit {
                    disposition = .serverRefused
                } else if !connection.isOpen {
                    disposition = .discard
                } else {
                    disposition = .clean  // SMTPConnection already sent RSET after a refused command
                }
                if !lease.release(disposition), disposition == .serverRefused {
                    // The connection had gone on to the next sender: the refusal still shrinks the pool.
                    pool.reportServerRefusal()
                }
                // Died before the final dot on a reused connection: once more on a fresh one.
                if attempts == 1, [.connectionClosed, .timeout, .connectionUnusable].contains(error.code), error.reply == nil, error.isTransient {
                    logger.notice(
                        "the connection failed before the message was sent; retrying once on a new connection",
                        metadata: ["smtp.error": "\(error.message)"])
                    continue
                }
                throw DeliveryError(error)
            } catch let error as DeliveryError {
                span?.end()
                lease.release(connection.isOpen ? .clean : .discard)
                throw error
            } catch {
                span?.end()
                lease.release(.discard)
                throw DeliveryError(kind: .permanent, message: "\(error)")
            }
        }
    }

    /// How a sender with a prepared transaction got its connection.
    private enum Leased: Sendable {
        /// The usual way: the sending task runs the transaction.
        case leased(ConnectionPoolLease<SMTPConnection>)
        /// The transaction was started where the connection became free, and has ended.
        case started(HandBackLease, SMTPPreparedOutcome)
    }

    /// Leases a connection for a prepared transaction: when the sender has to wait, the
    /// transaction starts on the connection's event loop as soon as the previous message's body
    /// is on its way (its commands leave in the same write), and this task wakes once, when the
    /// server has answered.
    private func leaseStarting(_ prepared: SMTPPreparedTransaction) async throws -> Leased {
        let pool = self.pool
        return try await pool.lease(
            immediate: { .leased($0) },
            handBack: { [self] lease, continuation in
                let once = HandBackLease(pool: pool, lease: lease)
                let started = lease.connection.start(
                    prepared, handBack: { once.release(.clean) },
                    completion: { continuation.resume(returning: .started(once, $0)) })
                if started {
                    handBackStarts.add(1, ordering: .relaxed)
                } else {
                    continuation.resume(returning: .leased(lease))
                }
            })
    }

    /// The server's SIZE (RFC 1870) from the EHLO of the connections so far; nil when it gave
    /// none, or SIZE 0 (no limit), or no connection was made yet.
    public var messageSizeLimit: Int? {
        current.withLockedValue { $0.profile?.capabilities.sizeLimit }.flatMap { $0 > 0 ? $0 : nil }
    }

    /// Opens a connection (or takes an idle one) to read the server's EHLO, and gives it back to
    /// the pool; a failure is left to the first delivery to report.
    public func learnLimits() async {
        do {
            let lease = HandBackLease(pool: pool, lease: try await pool.lease())
            remember(lease.lease.connection.transactionProfile)
            lease.release(.clean)
        } catch {
            logger.debug("the SMTP server's limits are not known yet: \(error)")
        }
    }

    /// Keeps the profile of the connections in use, for preparing the next messages.
    private func remember(_ profile: SMTPTransactionProfile) {
        current.withLockedValue { current in
            if current.profile.map({ !$0.matches(profile) }) ?? true { current.profile = profile }
        }
    }

    /// A message ready for a connection with `profile`: its envelope, the start of its DATA
    /// stream (the whole of it when small), and, when it can go as one exchange, the prepared
    /// transaction.
    private struct Outgoing {
        let profile: SMTPTransactionProfile
        let envelope: SMTPEnvelope
        let start: SMTPBodyStart
        var rest: MessageByteStream.AsyncIterator
        let prepared: SMTPPreparedTransaction?
        /// The body's rest was read by a send: a retry needs the message anew.
        var bodyConsumed = false

        /// For a connection at hand with `profile`; throws what makes the message unsendable there.
        init(
            _ content: any MailContent, envelope given: Envelope?, envelopeFrom: String?,
            profile: SMTPTransactionProfile
        ) async throws(DeliveryError) {
            let (envelope, stream) = try Self.envelope(content, given: given, envelopeFrom: envelopeFrom, capabilities: profile.capabilities)
            var size: Int?
            var rest = stream.makeAsyncIterator()
            let start: SMTPBodyStart
            do {
                if envelope.size != nil {
                    if let known = content.knownByteCount { size = known } else { size = try await stream.countBytes() }
                }
                start = try await SMTPBodyStart.read(from: &rest)
            } catch {
                throw DeliveryError(SMTPBodyStart.readError(error))
            }
            self.profile = profile
            self.envelope = SMTPEnvelope(
                from: envelope.from, recipients: envelope.recipients, requiresSMTPUTF8: envelope.requiresSMTPUTF8,
                eightBitMIME: envelope.eightBitMIME, size: size, dsn: envelope.dsn)
            self.start = start
            self.rest = rest
            self.prepared = SMTPConnection.prepare(envelope: self.envelope, start: start, for: profile)
        }

        /// Before a connection is at hand, for the profile of the connections so far: only a
        /// message that goes as one prepared exchange (one chunk, read once, its SIZE from that
        /// chunk). Nil otherwise, and for anything wrong: the leased connection's own profile
        /// then decides (and reports), and a waiting sender holds nothing but its message.
        static func prepared(
            _ content: any MailContent, envelope given: Envelope?, envelopeFrom: String?,
            profile: SMTPTransactionProfile
        ) async -> Outgoing? {
            guard profile.allowsPreparing,
                let (envelope, stream) = try? Self.envelope(content, given: given, envelopeFrom: envelopeFrom, capabilities: profile.capabilities)
            else { return nil }
            var rest = stream.makeAsyncIterator()
            guard let start = try? await SMTPBodyStart.read(from: &rest), start.isComplete else { return nil }
            let sized = SMTPEnvelope(
                from: envelope.from, recipients: envelope.recipients, requiresSMTPUTF8: envelope.requiresSMTPUTF8,
                eightBitMIME: envelope.eightBitMIME, size: envelope.size.map { _ in start.messageByteCount },
                dsn: envelope.dsn)
            guard let prepared = SMTPConnection.prepare(envelope: sized, start: start, for: profile) else { return nil }
            return Outgoing(profile: profile, envelope: sized, start: start, rest: rest, prepared: prepared)
        }

        private init(
            profile: SMTPTransactionProfile, envelope: SMTPEnvelope, start: SMTPBodyStart,
            rest: MessageByteStream.AsyncIterator, prepared: SMTPPreparedTransaction
        ) {
            self.profile = profile
            self.envelope = envelope
            self.start = start
            self.rest = rest
            self.prepared = prepared
        }

        /// The envelope for a server with `capabilities` (its `size` is 0 when SIZE must be
        /// given, nil otherwise) and the message's bytes as that server takes them.
        static func envelope(
            _ content: any MailContent, given: Envelope?, envelopeFrom: String?,
            capabilities caps: SMTPCapabilities
        ) throws(DeliveryError) -> (SMTPEnvelope, MessageByteStream) {
            let needsUTF8 = content.requiresSMTPUTF8
            let envelope: Envelope
            do throws(MIMEError) {
                if let given {
                    envelope = given
                } else if caps.smtpUTF8 {
                    envelope = try content.envelope()
                } else {
                    envelope = try content.asciiEnvelope()
                }
            } catch {
                throw DeliveryError(
                    kind: .permanent,
                    message: needsUTF8 && !caps.smtpUTF8
                        ? "the message has non-ASCII addresses and the server does not offer SMTPUTF8: \(error.message)"
                        : "the message's envelope is invalid: \(error.message)")
            }
            let options = MIMEEncodingOptions(allow8BitMIME: caps.eightBitMIME, smtpUTF8: caps.smtpUTF8 && needsUTF8)
            let sizeNeeded = (caps.sizeLimit ?? 0) > 0
            let dsn = given?.dsn
            return (
                SMTPEnvelope(
                    from: envelopeFrom ?? envelope.from, recipients: envelope.recipients, requiresSMTPUTF8: needsUTF8,
                    eightBitMIME: options.allow8BitMIME, size: sizeNeeded ? 0 : nil, dsn: dsn),
                content.byteStream(options: options)
            )
        }
    }

    static func report(
        _ result: SMTPTransactionResult, destination: String, content: any MailContent,
        started: Date, clock: ContinuousClock.Instant, attempts: Int, tls: String? = nil
    ) -> DeliveryReport {
        let recipients = result.recipients.map { r -> RecipientOutcome in
            let status: RecipientOutcome.Status
            // The provider's throttling, even dressed as a 5xx (Gmail's 550 5.4.5), defers.
            if r.accepted {
                let refusedForGood = result.finalReply.map { $0.isPermanentFailure && !Throttling.isThrottling($0) } ?? false
                status = result.delivered ? .accepted : (refusedForGood ? .rejected : .deferred)
            } else {
                status = r.isTransientFailure || r.reply.map(Throttling.isThrottling) == true ? .deferred : .rejected
            }
            return RecipientOutcome(
                address: r.address, status: status, code: r.reply?.code,
                enhancedCode: r.reply?.enhancedCode?.description, text: r.reply?.text)
        }
        var final = recipients
        if result.abortedForPartialRefusal {
            // Accepted recipients were not sent to (mail.smtp.sendpartial = false): retry them.
            final = recipients.map { r in
                var r = r
                if r.status == .accepted || (r.code.map { $0 < 300 } ?? false) {
                    r.status = .deferred
                    r.text = "not sent: another recipient was refused and mail.smtp.sendpartial = false"
                }
                return r
            }
        }
        var report = DeliveryReport(
            transport: "smtp", destination: destination, messageID: content.outboxMessageID,
            recipients: final, finalReply: result.finalReply?.description, startedAt: started,
            durationSeconds: (ContinuousClock.now - clock).seconds, attempts: attempts, tls: tls)
        // The first throttling reply: the final one, else a refused recipient's (no arrays built).
        if let reply = result.finalReply, Throttling.isThrottling(reply) {
            report.throttle = reply.description
        } else if let reply = result.recipients.lazy.filter({ !$0.accepted }).compactMap(\.reply).first(where: Throttling.isThrottling) {
            report.throttle = reply.description
        }
        return report
    }
}
