import Foundation
import Logging
import OutboxTransports

/// The route's alert and pause, as the dispatcher drives them (see ``RouteHealth``).
extension Dispatcher {
    /// The routes and their state, for `/v1/status`, `/readyz` and `/metrics`.
    public var routes: [RouteStatus] { [RouteStatus(routeHealth)] }

    /// The route's health as it stands (for tests and the daemon).
    package var routeHealth: RouteHealth { stateRouteHealth() }

    /// The route's configuration changed (a reload that the operator made to fix it): a paused
    /// route's probe is due at once, whatever its back-off, so held messages go within a poll
    /// once the probe succeeds. Does nothing to a healthy route.
    package func routeConfigurationChanged() {
        let now = clock.now
        let paused = updateRouteHealth { health -> Bool in
            health.configurationChanged(at: now)
            return health.isPaused
        }
        if paused {
            logger.notice(
                "the configuration changed: the paused route is probed now", metadata: ["outbox.route": "\(RouteHealth.defaultRoute)"])
        }
    }

    /// An operator retried messages by hand (`POST /v1/messages/{id}/retry`, `outbox queue
    /// retry`): a paused route resumes, so the retried messages are attempted now; if the route
    /// still fails, its first failures pause it again. Does nothing to a healthy route.
    package func operatorRetried() {
        let resumed = updateRouteHealth { $0.succeeded() }
        if resumed {
            logger.notice("a manual retry resumes the paused route", metadata: ["outbox.route": "\(RouteHealth.defaultRoute)"])
        }
    }

    /// Notes what an attempt says about its route: a route fault raises the alert (the first)
    /// or counts against the probe; anything else means the route works, and resumes it.
    func noteRoute(_ result: Result<DeliveryReport, DeliveryError>, probe: Int?) {
        let now = clock.now
        switch result {
        case .failure(let error) where error.routeFault != nil:
            let fault = error.routeFault!
            let (raised, health) = updateRouteHealth { health in
                (health.failed(fault, message: error.message, at: now, probe: probe), health)
            }
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
            let resumed = updateRouteHealth { $0.succeeded() }
            if resumed {
                logger.notice("route resumed: its held messages are due now", metadata: ["outbox.route": "\(RouteHealth.defaultRoute)"])
            }
        }
    }

    /// While the route is paused, its held messages make no attempts, so none reaches the
    /// policy's maximum age at an attempt: those past it are failed here, with the alert's reason
    /// (and a delivery status notification for a relayed message), without an attempt.
    func failAgedHeldMessages(settings: DispatcherSettings) async {
        let batch = 100
        while true {
            let now = clock.now
            guard let problem = routeHealth.problem else { return }
            let aged: [ClaimedMessage]
            do {
                aged = try await store.claimAged(
                    before: now.advanced(by: .zero - settings.retry.maxAge).secondsSince1970, limit: batch, owner: instanceID,
                    now: now.secondsSince1970, lease: settings.lease.seconds)
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
}
