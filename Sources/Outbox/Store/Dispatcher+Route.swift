import Foundation
import Logging
import OutboxTransports

/// The route's alert and pause, as the dispatcher drives them (see ``RouteHealth``).
extension Dispatcher {
    /// The routes and their state, for `/v1/status`, `/readyz` and `/metrics`: every configured
    /// route, then each route that is gone while messages still wait for it (state `missing`).
    public var routes: [RouteStatus] {
        allRouteHealth().map(RouteStatus.init)
            + missingRoutes().sorted { $0.key < $1.key }.map { RouteStatus(missing: $0.key, waiting: $0.value) }
    }

    /// The default route's health as it stands (for tests and the daemon).
    package var routeHealth: RouteHealth { stateRouteHealth(RouteHealth.defaultRoute) ?? RouteHealth() }

    /// Route `route`'s health, or nil when it is not configured.
    package func routeHealth(_ route: String) -> RouteHealth? { stateRouteHealth(route) }

    /// Routes' configuration changed (a reload that the operator made to fix it): a paused
    /// route's probe is due at once, whatever its back-off, so held messages go within a poll
    /// once the probe succeeds. Does nothing to a healthy route. `routes`: nil for all.
    package func routeConfigurationChanged(_ routes: [String]? = nil) {
        let now = clock.now
        for route in routes ?? allRouteHealth().map(\.route) {
            let paused = updateRouteHealth(route) { health -> Bool in
                health.configurationChanged(at: now)
                return health.isPaused
            }
            if paused == true {
                logger.notice("the configuration changed: the paused route is probed now", metadata: ["outbox.route": "\(route)"])
            }
        }
    }

    /// An operator retried messages by hand (`POST /v1/messages/{id}/retry`, `outbox queue
    /// retry`): a paused route resumes, so the retried messages are attempted now; if the route
    /// still fails, its first failures pause it again. Does nothing to a healthy route.
    package func operatorRetried() {
        for route in allRouteHealth().map(\.route) where updateRouteHealth(route, { $0.succeeded() }) == true {
            logger.notice("a manual retry resumes the paused route", metadata: ["outbox.route": "\(route)"])
        }
    }

    /// Notes what an attempt says about its route: a route fault raises the alert (the first)
    /// or counts against the probe; anything else means the route works, and resumes it.
    /// The provider's throttling (``RouteFault/throttled``, or a report whose
    /// ``DeliveryReport/throttle`` is set) pauses the route the same way, for the time the
    /// provider asked (`Retry-After`, `BackOffMilliseconds`) or with the probe's back-off.
    func noteRoute(_ result: Result<DeliveryReport, DeliveryError>, route: String, probe: Int?) {
        let now = clock.now
        var result = result
        if case .success(let report) = result, let throttle = report.throttle {
            result = .failure(DeliveryError(kind: .transient, message: "the provider throttles the route: \(throttle)", routeFault: .throttled))
        }
        switch result {
        case .failure(let error) where error.routeFault == .throttled:
            guard
                let (paused, health) = updateRouteHealth(
                    route,
                    { health in
                        (health.failed(.throttled, message: error.message, at: now, probe: probe, retryAfter: error.retryAfter), health)
                    })
            else { return }
            if paused || probe != nil {
                logger.warning(
                    "route throttled by its provider: paused, its messages deferred",
                    metadata: [
                        "outbox.route": "\(health.route)", "outbox.error": "\(error.message)",
                        "outbox.resume_in": "\(health.nextProbeAt.map { Int(now.duration(to: $0).seconds) } ?? 0) s",
                    ])
            }
        case .failure(let error) where error.routeFault != nil:
            let fault = error.routeFault!
            guard
                let (raised, health) = updateRouteHealth(
                    route,
                    { health in
                        (health.failed(fault, message: error.message, at: now, probe: probe), health)
                    })
            else { return }
            if raised {
                logger.error(
                    "route alert: its messages are held (no attempts of their own) until a probe succeeds or the configuration changes",
                    metadata: [
                        "outbox.route": "\(health.route)", "outbox.route_fault": "\(fault.rawValue)", "outbox.error": "\(error.message)",
                    ])
            } else if probe != nil {
                logger.warning(
                    "route probe failed",
                    metadata: [
                        "outbox.route": "\(health.route)", "outbox.route_fault": "\(fault.rawValue)",
                        "outbox.next_probe_in": "\(health.nextProbeAt.map { Int(now.duration(to: $0).seconds) } ?? 0) s",
                    ])
            }
        default:
            if updateRouteHealth(route, { $0.succeeded() }) == true {
                logger.notice("route resumed: its held messages are due now", metadata: ["outbox.route": "\(route)"])
            }
        }
    }

    /// While the route is paused, its held messages make no attempts, so none reaches the
    /// policy's maximum age at an attempt: those past it are failed here, with the alert's reason
    /// (and a delivery status notification for a relayed message), without an attempt.
    func failAgedHeldMessages(route: String, settings: DispatcherSettings) async {
        let batch = 100
        while true {
            let now = clock.now
            guard let problem = routeHealth(route)?.problem else { return }
            let aged: [ClaimedMessage]
            do {
                aged = try await store.claimAged(
                    before: now.advanced(by: .zero - settings.retry.maxAge).secondsSince1970, limit: batch, owner: instanceID,
                    now: now.secondsSince1970, lease: settings.lease.seconds, route: route)
            } catch {
                logger.error("claiming held messages past their maximum age failed: \(error)")
                return
            }
            for claimed in aged {
                let message = claimed.message
                let age = Int(QueueInstant(secondsSince1970: message.ageBase).duration(to: now).seconds)
                let reason =
                    "held by route \(problem.route) since \(Int(problem.since.secondsSince1970)) (\(problem.code.rawValue)): \(problem.message)"
                let outcome = AttemptOutcome(
                    status: .failed, recipients: message.recipients,
                    attempt: AttemptRecord(
                        number: message.attemptCount + 1, startedAt: now.secondsSince1970, durationSeconds: 0, transport: "",
                        error: reason, outcome: "failed", recipients: [], instance: instanceID),
                    nextAttemptAt: nil,
                    lastError: "\(reason); gave up: still held after \(age) s; the maximum age is \(Int(settings.retry.maxAge.seconds)) s",
                    unknown: false)
                let notification = settings.bounce.flatMap {
                    Self.notification(message: message, content: claimed.content, outcome: outcome, settings: $0)
                }
                do {
                    try await store.record(
                        id: message.id, owner: instanceID, outcome: outcome, notification: notification?.message, now: now.secondsSince1970)
                } catch {
                    logger.error("recording the expiry of held message \(message.id) failed: \(error); its lease will expire")
                }
            }
            if !aged.isEmpty {
                logger.notice(
                    "held messages failed at their maximum age", metadata: ["outbox.route": "\(problem.route)", "outbox.messages": "\(aged.count)"])
            }
            if aged.count < batch { return }
        }
    }

    /// Looks for messages whose route is not configured (removed by a reload, or queued by
    /// another instance's configuration) every 30 s and when the routes change: they are
    /// deferred with the route alert's reason, and wait (never failed for it) until the route
    /// comes back or an operator moves them. Runs until cancelled.
    func watchMissingRoutes() async {
        var last: QueueInstant?
        while !Task.isCancelled {
            let now = clock.now
            let (changed, known) = routeCheckDue(now: now, last: last)
            if changed {
                last = now
                await holdMissingRoutes(known: known, now: now)
            }
            try? await clock.sleep(for: .seconds(1))
        }
    }

    private func routeCheckDue(now: QueueInstant, last: QueueInstant?) -> (Bool, [String]) {
        let (changed, known) = takeRoutesChanged()
        let due = last.map { $0.duration(to: now) >= .seconds(30) } ?? true
        return (changed || due, known)
    }

    func holdMissingRoutes(known: [String], now: QueueInstant) async {
        let waiting: [String: Int]
        do {
            waiting = try await store.waitingByRoute()
        } catch {
            return
        }
        let missing = waiting.filter { !known.contains($0.key) && $0.value > 0 }
        let before = setMissingRoutes(missing)
        for (route, count) in missing.sorted(by: { $0.key < $1.key }) {
            let reason = "route \(route) no longer exists: held until it comes back or the message is moved to another route"
            do {
                try await store.holdRoute(route, reason: reason, now: now.secondsSince1970)
            } catch {
                logger.error("holding the messages of the missing route \(route) failed: \(StoreFailure.describe(error))")
            }
            if before[route] == nil {
                logger.error(
                    "route alert: route \(route) no longer exists; its messages wait until it comes back or an operator moves them",
                    metadata: ["outbox.route": "\(route)", "outbox.route_fault": "route_missing", "outbox.messages": "\(count)"])
            }
        }
        for route in before.keys where missing[route] == nil {
            logger.notice("route \(route): no message waits for it any more", metadata: ["outbox.route": "\(route)"])
        }
    }
}
