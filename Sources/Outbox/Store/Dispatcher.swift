import Foundation
import Logging
import NIOConcurrencyHelpers
import OutboxConfig
import OutboxMIME
import OutboxSMTPGrammar
import OutboxTransports
import ServiceLifecycle

/// How the dispatcher works; `update(_:)` applies a new one at the next cycle.
public struct DispatcherSettings: Sendable, Equatable {
    /// Deliveries in flight at once (this instance).
    public var concurrency: Int
    /// How long a claim holds a message; a crashed instance's claims are taken over after it.
    public var lease: Duration
    /// How often the queue is polled when idle.
    public var pollInterval: Duration
    /// How long a graceful shutdown waits for in-flight deliveries before releasing them.
    public var shutdownDeadline: Duration
    /// When to try a message again and when to give up.
    public var retry: RetryPolicy
    /// Messages a minute per sending mailbox (nil: no limit). Exchange Online allows 30.
    public var ratePerMinute: Int?
    /// Deliveries in flight at once per sending mailbox (nil: no limit). Graph allows 4.
    public var concurrencyPerMailbox: Int?
    /// Delivery status notifications for relayed messages that fail for good (nil: none).
    public var bounce: BounceSettings?
    /// Each route's pacing (``RouteLimits``), by route name; a route not listed has none.
    public var routeLimits: [String: RouteLimits] = [:]

    /// Settings; the defaults are 8 deliveries at once, a 5-minute lease, a 200 ms poll, a 20 s
    /// shutdown deadline, the default retry policy, no rate limits and no notifications.
    public init(
        concurrency: Int = 8, lease: Duration = .seconds(300), pollInterval: Duration = .milliseconds(200),
        shutdownDeadline: Duration = .seconds(20), retry: RetryPolicy = RetryPolicy(),
        ratePerMinute: Int? = nil, concurrencyPerMailbox: Int? = nil, bounce: BounceSettings? = nil,
        routeLimits: [String: RouteLimits] = [:]
    ) {
        self.bounce = bounce
        self.routeLimits = routeLimits
        self.concurrency = concurrency
        self.lease = lease
        self.pollInterval = pollInterval
        self.shutdownDeadline = shutdownDeadline
        self.retry = retry
        self.ratePerMinute = ratePerMinute
        self.concurrencyPerMailbox = concurrencyPerMailbox
    }
}

/// Something that sends a stored message: the `Mailer`, or a stand-in in tests.
public protocol MessageSender: Sendable {
    /// Sends `content` to `envelope`'s recipients (from the headers when nil); as
    /// `MailTransport.send(_:envelope:)`.
    func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport
    /// Sends through route `route` (a sender of one route ignores it).
    func send(_ content: any MailContent, envelope: Envelope?, route: String) async throws(DeliveryError) -> DeliveryReport
}

extension MessageSender {
    /// One route: `route` is ignored.
    public func send(_ content: any MailContent, envelope: Envelope?, route: String) async throws(DeliveryError) -> DeliveryReport {
        try await send(content, envelope: envelope)
    }
}

extension Mailer: MessageSender {}

/// Takes due messages from the store under a lease, sends them through the mailer with bounded
/// concurrency, and records each attempt's outcome. A `Service`: on graceful shutdown it stops
/// claiming, waits for in-flight deliveries up to the deadline, then releases the rest.
public final class Dispatcher: Service, Sendable {
    /// The queue the dispatcher claims from and records to.
    public let store: any OutboxStore
    private let sender: any MessageSender
    /// This instance's name as lease owner (`host-pid-random` by default).
    public let instanceID: String
    let logger: Logger
    let clock: any QueueClock
    private let random: @Sendable () -> Double
    private let state: NIOLockedValueBox<State>
    /// Lanes to start: one per route, each claiming only its route's messages.
    private let laneStarts: (stream: AsyncStream<(route: String, lane: Int)>, continuation: AsyncStream<(route: String, lane: Int)>.Continuation)
    /// Whether the store answers; the daemon shares it with the API and the listener.
    package let storeHealth: StoreHealth
    /// One line per attempt (logger `outbox.delivery`); the daemon sets its format.
    public let deliveryLog = DeliveryLog()
    /// Each route's sends against its limits (shared by every instance with PostgreSQL).
    package let pacer: RoutePacer

    private struct State {
        var settings: DispatcherSettings
        var stopping = false
        /// Messages claimed by this instance and not yet recorded or released, with their route.
        var inFlight: [String: String] = [:]
        var perMailbox: [String: Int] = [:]
        var recentSends: [String: [QueueInstant]] = [:]
        var delivered = 0
        var attempts = 0
        /// Each configured route's alert and pause (see ``RouteHealth``).
        var health: [String: RouteHealth] = [RouteHealth.defaultRoute: RouteHealth()]
        /// The lane (claim loop) of each configured route, by its token: a lane whose route is
        /// removed, or replaced, ends.
        var lanes: [String: Int] = [:]
        var nextLane = 0
        /// Routes that are not configured and still have waiting messages, with how many.
        var missing: [String: Int] = [:]
        /// The routes changed since the missing routes were last looked for.
        var routesChanged = true
        /// Routes at their pacing limit claim nothing before this instant.
        var pacedUntil: [String: QueueInstant] = [:]
    }

    /// A dispatcher for `store` that sends through `sender`. `clock` and `random` (a draw in 0..<1
    /// for the retry jitter) are for tests.
    public init(
        store: any OutboxStore, sender: any MessageSender, settings: DispatcherSettings = DispatcherSettings(),
        instanceID: String = Dispatcher.makeInstanceID(), logger: Logger = Logger(label: "outbox.dispatcher"),
        clock: any QueueClock = SystemQueueClock(),
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.store = store
        self.sender = sender
        self.instanceID = instanceID
        self.logger = logger
        self.clock = clock
        self.random = random
        self.state = NIOLockedValueBox(State(settings: settings))
        self.storeHealth = StoreHealth(kind: store.kind, logger: logger)
        self.pacer = RoutePacer(shared: store as? any SharedPacing)
        self.laneStarts = AsyncStream.makeStream(of: (route: String, lane: Int).self)
        setRoutes([RouteHealth.defaultRoute])
    }

    /// A new lease owner name: `host-pid-` and eight random hex digits.
    public static func makeInstanceID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// The settings in force.
    public var settings: DispatcherSettings { state.withLockedValue { $0.settings } }

    /// Applies new settings at the next cycle (the next claim).
    public func update(_ settings: DispatcherSettings) {
        state.withLockedValue { $0.settings = settings }
    }

    /// Attempts made and messages delivered by this instance.
    public var counters: (attempts: Int, delivered: Int) { state.withLockedValue { ($0.attempts, $0.delivered) } }

    func stateRouteHealth(_ route: String) -> RouteHealth? { state.withLockedValue { $0.health[route] } }

    /// Runs `body` on route `route`'s health; nil when the route is not configured.
    func updateRouteHealth<T>(_ route: String, _ body: (inout RouteHealth) -> T) -> T? {
        state.withLockedValue { s in
            guard var health = s.health[route] else { return nil }
            defer { s.health[route] = health }
            return body(&health)
        }
    }

    /// Every configured route's health, `default` first.
    func allRouteHealth() -> [RouteHealth] {
        state.withLockedValue { s in
            s.health.values.sorted { a, b in a.route == RouteHealth.defaultRoute || (b.route != RouteHealth.defaultRoute && a.route < b.route) }
        }
    }

    /// Routes not configured that still have waiting messages, with how many.
    func missingRoutes() -> [String: Int] { state.withLockedValue { $0.missing } }

    /// Whether the routes changed since the last call, and the configured routes.
    func takeRoutesChanged() -> (Bool, [String]) {
        state.withLockedValue { s in
            defer { s.routesChanged = false }
            return (s.routesChanged, Array(s.health.keys))
        }
    }

    /// Sets the missing routes; returns the previous ones.
    func setMissingRoutes(_ missing: [String: Int]) -> [String: Int] {
        state.withLockedValue { s in
            defer { s.missing = missing }
            return s.missing
        }
    }

    /// The routes to deliver through (the daemon's routes; `default` alone until set): each gets
    /// its own lane, a claim loop of its own route's messages with `concurrency` deliveries,
    /// so one route's backlog or pause never delays another's. A route removed stops claiming;
    /// its messages wait, deferred with a route alert, until it comes back or they are moved.
    package func setRoutes(_ names: [String]) {
        let started = state.withLockedValue { s -> [(String, Int)] in
            var started: [(String, Int)] = []
            for name in names where s.health[name] == nil { s.health[name] = RouteHealth(route: name) }
            for name in s.health.keys where !names.contains(name) {
                s.health[name] = nil
                s.lanes[name] = nil
            }
            for name in names where s.lanes[name] == nil {
                s.nextLane += 1
                s.lanes[name] = s.nextLane
                started.append((name, s.nextLane))
            }
            s.routesChanged = true
            return started
        }
        for (route, lane) in started { laneStarts.continuation.yield((route, lane)) }
    }

    /// Until when `route` claims nothing, being at its pacing limit (nil: it may claim).
    func pacedUntil(_ route: String) -> QueueInstant? { state.withLockedValue { $0.pacedUntil[route] } }

    func setPaced(_ route: String, until: QueueInstant?) { state.withLockedValue { $0.pacedUntil[route] = until } }

    /// Stops claiming new messages (graceful shutdown does this too).
    public func stop() {
        state.withLockedValue { $0.stopping = true }
        laneStarts.continuation.finish()
    }

    private enum Event: Sendable {
        case finished
        /// A claim came back (empty after an error, which is logged); `probe`: the paused
        /// route's probe token when it was the probe's claim.
        case claimed([ClaimedMessage], asked: Int, at: QueueInstant, lease: Duration, probe: Int?)
        case tick
        /// A paused route's held messages past their maximum age were failed.
        case swept
    }

    /// A claimed message that is not attempted now goes back to the queue, due at once (its
    /// probe, when it carried one, found nothing to send).
    private func putBack(_ ready: Ready, route: String) async {
        let id = ready.message.message.id
        try? await store.release(id: id, owner: instanceID, nextAttemptAt: clock.now.secondsSince1970, now: clock.now.secondsSince1970)
        state.withLockedValue {
            $0.inFlight[id] = nil
            if let probe = ready.probe { $0.health[route]?.probeFoundNothing(token: probe) }
        }
    }

    /// A claimed message waiting for a free slot, and when it was claimed.
    private struct Ready {
        var message: ClaimedMessage
        /// When the claim was made, and how long its lease is (the setting then in force).
        var claimedAt: QueueInstant
        var lease: Duration
        /// The paused route's probe token, when this message is the probe.
        var probe: Int? = nil
    }

    /// Claims, sends and records until graceful shutdown; then stops claiming, waits for in-flight
    /// deliveries up to the shutdown deadline and gives the rest back.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                let watcher = Task { await self.watchMissingRoutes() }
                for await lane in self.laneStarts.stream {
                    group.addTask { await self.loop(route: lane.route, lane: lane.lane) }
                }
                await group.waitForAll()
                watcher.cancel()
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }

    /// One route's lane: claims that route's due messages and delivers them, until shutdown or
    /// until the route is removed (then as at shutdown: what was claimed and not started goes
    /// back, deliveries running finish up to the deadline).
    private func loop(route: String, lane: Int) async {
        await withTaskGroup(of: Event.self) { group in
            // Claims run beside the deliveries and ahead of them: up to `concurrency` claimed
            // messages wait for a slot, so a slot that frees starts the next message at once,
            // without waiting for a claim's commit.
            var inFlight = 0
            var ready: [Ready] = []
            var readyIndex = 0
            var claiming = false
            // The last claim found fewer messages than asked: the next one waits for a tick.
            var drained = false
            var ticking = false
            // A paused route's held messages past their maximum age are failed every 30 s.
            var sweeping = false
            var nextSweep: QueueInstant?
            /// Takes a claim's messages in: those taken over past the unknown-outcome allowance
            /// are recorded as not sent again at once (never put back in the queue: a release
            /// would clear the take-over); the others wait for a slot.
            func accept(_ claimed: [ClaimedMessage], at: QueueInstant, lease: Duration, settings: DispatcherSettings) -> [Ready] {
                state.withLockedValue { state in
                    for message in claimed { state.inFlight[message.message.id] = route }
                }
                var waiting: [Ready] = []
                for message in claimed {
                    if message.tookOverExpiredLease, !settings.retry.allowsAnotherTry(unknownCount: message.message.unknownCount) {
                        inFlight += 1
                        group.addTask {
                            await self.deliver(message, route: route, settings: settings)
                            return .finished
                        }
                    } else {
                        waiting.append(Ready(message: message, claimedAt: at, lease: lease))
                    }
                }
                return waiting
            }
            while !Task.isCancelled {
                let now = clock.now
                let (settings, stopping, admission, pacedUntil) = state.withLockedValue { s in
                    (
                        s.settings, s.stopping || s.lanes[route] != lane, s.health[route]?.admission(at: now) ?? .closed(until: nil),
                        s.pacedUntil[route]
                    )
                }
                if stopping { break }
                // The route's max-concurrent bounds its deliveries in flight.
                let concurrency = min(settings.concurrency, settings.routeLimits[route]?.maxConcurrent ?? Int.max)
                while inFlight < concurrency, readyIndex < ready.count {
                    let next = ready[readyIndex]
                    readyIndex += 1
                    inFlight += 1
                    group.addTask {
                        // Claimed too long ago (slow deliveries ahead of it): its lease may run
                        // out mid-send, and another instance could take it over; back to the queue.
                        // Claimed before its route was paused: it waits with the others, no attempt.
                        if next.claimedAt.duration(to: self.clock.now) > next.lease / 2
                            || (next.probe == nil && self.state.withLockedValue { $0.health[route]?.isPaused ?? true })
                        {
                            await self.putBack(next, route: route)
                        } else {
                            switch await self.takeSharedSlot(route: route, settings: settings, claimedAt: next.claimedAt, lease: next.lease) {
                            case .notNeeded:
                                await self.deliver(next.message, route: route, settings: settings, probe: next.probe)
                            case .held(let slot):
                                await self.deliver(next.message, route: route, settings: settings, probe: next.probe)
                                await self.pacer.releaseSlot(route: route, slot: slot, holder: self.instanceID)
                            case .unavailable:
                                // Every instance's slots stayed taken while its claim aged: back to the queue.
                                await self.putBack(next, route: route)
                            }
                        }
                        return .finished
                    }
                }
                if readyIndex > 0 {
                    ready.removeFirst(readyIndex)
                    readyIndex = 0
                }
                let waiting = ready.count - readyIndex
                // Claim in batches (each claim is a commit): when half the slots and the waiting
                // line could take one.
                let room = 2 * concurrency - inFlight - waiting
                // A paused route claims nothing but its probe, one message, when it is due.
                var probe: Int?
                if !claiming, admission == .probe {
                    probe = state.withLockedValue { $0.health[route]?.startProbe() }
                }
                // A route at its pacing limit claims nothing until its window frees (no spinning:
                // the loop sleeps until a tick).
                let paced = pacedUntil.map { $0 > now } ?? false
                if !claiming, probe != nil || (admission == .open && !drained && !paced && room >= max(1, concurrency / 2)) {
                    claiming = true
                    let owner = instanceID
                    let lease = settings.lease
                    let limit = probe == nil ? room : 1
                    group.addTask { [probe] in
                        let at = self.clock.now
                        let claimed = await self.claimPaced(
                            route: route, limit: limit, owner: owner, at: at, lease: lease, settings: settings)
                        return .claimed(claimed, asked: limit, at: at, lease: lease, probe: probe)
                    }
                }
                if admission != .open, !sweeping, nextSweep.map({ $0 <= now }) ?? true {
                    sweeping = true
                    nextSweep = now.advanced(by: .seconds(30))
                    group.addTask {
                        await self.failAgedHeldMessages(route: route, settings: settings)
                        return .swept
                    }
                } else if admission == .open {
                    nextSweep = nil
                }
                if !ticking {
                    ticking = true
                    let interval = settings.pollInterval
                    group.addTask {
                        try? await self.clock.sleep(for: interval)
                        return .tick
                    }
                }
                switch await group.next() {
                case .finished: inFlight -= 1
                case .claimed(let claimed, let asked, let at, let lease, let probe):
                    claiming = false
                    if probe == nil { drained = claimed.count < asked }
                    // A message still waiting here whose lease ran out was just taken over by
                    // this claim: the new claim holds it now, the old entry goes (releasing it
                    // would free the new claim's hold). (readyIndex is 0 here.)
                    let ids = Set(claimed.map(\.message.id))
                    if !ids.isEmpty { ready.removeAll { ids.contains($0.message.message.id) } }
                    var accepted = accept(claimed, at: at, lease: lease, settings: settings)
                    if let probe {
                        // The probe goes first; with nothing to send, the route waits for a message.
                        if accepted.isEmpty {
                            state.withLockedValue { $0.health[route]?.probeFoundNothing(token: probe) }
                        } else {
                            accepted[0].probe = probe
                        }
                        ready.insert(contentsOf: accepted, at: 0)
                    } else {
                        ready += accepted
                    }
                case .tick:
                    ticking = false
                    drained = false
                case .swept: sweeping = false
                case nil: break
                }
            }
            // Shutting down: claimed messages not started go back to the queue at once; a claim
            // still running is awaited and its messages go back too.
            var unstarted = ready[readyIndex...].map(\.message.message.id)
            ready = []
            while claiming, let event = await group.next() {
                switch event {
                case .finished: inFlight -= 1
                case .claimed(let claimed, _, let at, let lease, let probe):
                    claiming = false
                    let settings = state.withLockedValue { $0.settings }
                    if let probe { state.withLockedValue { $0.health[route]?.probeFoundNothing(token: probe) } }
                    unstarted += accept(claimed, at: at, lease: lease, settings: settings).map(\.message.message.id)
                case .tick, .swept: break
                }
            }
            for id in unstarted {
                try? await store.release(id: id, owner: instanceID, nextAttemptAt: clock.now.secondsSince1970, now: clock.now.secondsSince1970)
                state.withLockedValue { $0.inFlight[id] = nil }
            }
            // Let in-flight deliveries finish up to the deadline.
            let deadline = clock.now.advanced(by: state.withLockedValue { $0.settings.shutdownDeadline })
            if inFlight > 0 {
                group.addTask {
                    try? await self.clock.sleep(until: deadline, tolerance: nil)
                    return .tick
                }
                while inFlight > 0, clock.now < deadline, let event = await group.next() {
                    if case .finished = event { inFlight -= 1 }
                }
            }
            // Deliveries still running may be past their final dot: they are not released as if
            // nothing had happened (another instance would send them again, unmarked); their
            // leases end, so the next claim takes them over as unknown outcomes (possible
            // duplicates, retried by the policy's unknown-outcome rule).
            let left = state.withLockedValue { $0.inFlight.filter { $0.value == route }.map(\.key) }
            for id in left {
                try? await store.expireLease(id: id, owner: instanceID, now: clock.now.secondsSince1970)
            }
            if !left.isEmpty {
                logger.notice(
                    "\(left.count) deliveries were still running at the shutdown deadline: their leases end and the next claim treats them as unknown outcomes"
                )
            }
            group.cancelAll()
        }
    }

    /// Sends one claimed message and records the outcome; `probe`: the paused route's probe token
    /// when it is the route's probe.
    func deliver(_ claimed: ClaimedMessage, route: String = RouteHealth.defaultRoute, settings: DispatcherSettings, probe: Int? = nil) async {
        let message = claimed.message
        defer {
            state.withLockedValue {
                $0.inFlight[message.id] = nil
                // A probe that made no attempt (rate limit, nothing to send): the next one may go.
                if let probe { $0.health[route]?.probeFoundNothing(token: probe) }
            }
        }
        let policy = settings.retry
        // A take-over after a crash counts as an unknown outcome: past the allowance, stop.
        if claimed.tookOverExpiredLease, !policy.allowsAnotherTry(unknownCount: message.unknownCount) {
            let outcome = AttemptOutcome(
                status: .unknown, recipients: message.recipients,
                attempt: AttemptRecord(
                    number: message.attemptCount + 1, startedAt: clock.now.secondsSince1970, durationSeconds: 0, transport: "",
                    error: "not sent again: \(message.unknownCount) attempts had an unknown outcome (allowed: \(policy.unknownOutcomeRetries))",
                    outcome: "unknown", recipients: [], instance: instanceID),
                nextAttemptAt: nil, lastError: "the outcome of an earlier attempt is unknown; check the recipients' mailboxes", unknown: false)
            _ = try? await store.record(id: message.id, owner: instanceID, outcome: outcome, now: clock.now.secondsSince1970)
            return
        }
        // Rate limits per sending mailbox: over the limit, the message waits in the queue.
        // Per sending mailbox within the route ([outbox] limits, or the route's preset).
        let mailbox = route + "\u{0}" + message.from.lowercased()
        if let wait = admit(mailbox: mailbox, limits: settings.routeLimits[route], settings: settings) {
            let now = clock.now
            try? await store.release(
                id: message.id, owner: instanceID, nextAttemptAt: now.advanced(by: wait).secondsSince1970,
                now: now.secondsSince1970)
            return
        }
        defer { finish(mailbox: mailbox) }
        let open = message.recipients.filter(\.isOpen).map(\.address)
        let span = startDeliverySpan(message, recipients: open.count)
        let started = clock.now
        let result: Result<DeliveryReport, DeliveryError>
        if open.isEmpty {
            result = .failure(DeliveryError(kind: .permanent, message: "the message has no recipient left to send to"))
        } else {
            do {
                let envelope = Envelope(
                    from: message.from, recipients: open,
                    dsn: message.origin.flatMap { Dispatcher.dsn($0, recipients: message.recipients.map(\.address)) })
                // A relayed message goes on as it was received (malformed headers included).
                let content: any MailContent
                if message.origin != nil {
                    // Chunks are read from the store while the transport sends: never whole.
                    let store = self.store
                    let id = message.id
                    content = RelayedMessage(
                        head: claimed.content, pieceCount: message.chunkCount, byteCount: message.size,
                        envelope: envelope
                    ) { index in try await store.readChunk(messageID: id, index: index) }
                } else {
                    content = try RawMessage(bytes: claimed.content)
                }
                let sent: Result<DeliveryReport, DeliveryError>
                do throws(DeliveryError) {
                    sent = .success(
                        try await withDeliverySpan(span) { () async throws(DeliveryError) in
                            try await sender.send(content, envelope: envelope, route: route)
                        })
                } catch {
                    sent = .failure(error)
                }
                noteRoute(sent, route: route, probe: probe)
                result = .success(try sent.get())
            } catch let error as MIMEError {
                result = .failure(DeliveryError(kind: .permanent, message: "the stored message cannot be read: \(error)"))
            } catch let error as DeliveryError {
                result = .failure(error)
            } catch {
                result = .failure(DeliveryError(kind: .transient, message: "\(error)"))
            }
        }
        let ended = clock.now
        let outcome = Dispatcher.evaluate(
            message: message, sentTo: open, result: result, policy: policy, now: ended,
            startedAt: started, duration: started.duration(to: ended), random: random(), instance: instanceID)
        logAttempt(message, sentTo: open, result: result, outcome: outcome, span: span)
        endDeliverySpan(span, result: result, outcome: outcome)
        // A notification for the sender goes in the same transaction as the outcome.
        let notification = settings.bounce.flatMap { Self.notification(message: message, content: claimed.content, outcome: outcome, settings: $0) }
        do {
            let (held, retried) = try await recordOutcome(
                id: message.id, outcome: outcome, notification: notification?.message,
                until: message.leaseUntil ?? started.advanced(by: settings.lease / 2).secondsSince1970)
            if !held, !retried { logger.warning("the lease on \(message.id) was lost before its outcome was recorded") }
            if held, let notification {
                logger.notice(
                    "delivery status notification queued",
                    metadata: [
                        "outbox.message_id": "\(message.id)", "outbox.bounce_id": "\(notification.message.id ?? "?")",
                        "outbox.recipients": "\(notification.failures)",
                    ])
            }
        } catch {
            logger.error(
                "recording the outcome of \(message.id) failed: \(StoreFailure.describe(error)); its lease will expire and it will be retried")
        }
        state.withLockedValue {
            $0.attempts += 1
            if outcome.status == .delivered { $0.delivered += 1 }
        }
        logger.debug("attempt", metadata: ["outbox.message_id": "\(message.id)", "outbox.status": "\(outcome.status.rawValue)"])
    }

    /// nil: go ahead (and counted); otherwise how long to wait.
    private func admit(mailbox: String, limits: RouteLimits?, settings: DispatcherSettings) -> Duration? {
        let concurrencyPerMailbox = settings.concurrencyPerMailbox ?? limits?.mailboxConcurrency
        let t = clock.now
        let minute = Duration.seconds(60)
        return state.withLockedValue { s -> Duration? in
            if let limit = concurrencyPerMailbox, s.perMailbox[mailbox, default: 0] >= limit { return .seconds(1) }
            if let rate = settings.ratePerMinute {
                var recent = s.recentSends[mailbox, default: []].filter { $0 > t.advanced(by: .zero - minute) }
                if recent.count >= rate {
                    s.recentSends[mailbox] = recent
                    return max(.milliseconds(100), t.duration(to: (recent.first ?? t).advanced(by: minute)))
                }
                recent.append(t)
                s.recentSends[mailbox] = recent
            }
            s.perMailbox[mailbox, default: 0] += 1
            return nil
        }
    }

    private func finish(mailbox: String) {
        state.withLockedValue { s in
            s.perMailbox[mailbox, default: 1] -= 1
            if s.perMailbox[mailbox] == 0 { s.perMailbox[mailbox] = nil }
        }
    }

}
