import Foundation
import OutboxTransports

/// One route's health as the dispatcher sees it. A route is where messages go: today the one
/// configured transport, named ``RouteHealth/defaultRoute``.
///
/// The first failure that is the route's fault (``DeliveryError/routeFault``: refused
/// credentials, a server that breaks the protocol or cannot be reached, TLS, the configuration)
/// raises an alert and pauses the route: its messages wait and make no attempt of their own.
/// One probe, a real queued message, tries the route again after a back-off (5 s doubling to
/// 5 minutes); its success, or any attempt that reaches the server without a route fault,
/// resumes the route and every held message is due at once. A configuration change (reload, or a
/// restart, which starts healthy) makes the probe due at once.
///
/// A value type and pure: the caller passes the instants (from its ``QueueClock``).
package struct RouteHealth: Sendable, Equatable {
    /// The name of the one route there is today.
    package static let defaultRoute = "default"

    /// Why a route is alerted: the fault's code, its message (never a secret: errors carry
    /// none), when it was first and last seen.
    package struct Problem: Sendable, Equatable {
        /// The route.
        package var route: String
        /// The fault's code, e.g. `authentication_failed`.
        package var code: RouteFault
        /// The last failure's message.
        package var message: String
        /// When the alert was raised.
        package var since: QueueInstant
        /// When the route last failed.
        package var lastSeen: QueueInstant
    }

    /// What the dispatcher may claim for this route now.
    package enum Admission: Sendable, Equatable {
        /// Healthy: claim as usual.
        case open
        /// Paused, and a probe is due: claim one message, as the probe.
        case probe
        /// Paused: claim nothing until this instant (nil: a probe is in flight).
        case closed(until: QueueInstant?)
    }

    /// The route's name.
    package var route: String
    /// The first probe's delay after the alert.
    package var initialBackoff: Duration
    /// The longest delay between two probes.
    package var maxBackoff: Duration
    /// The alert, while the route is paused; nil when it is healthy.
    package private(set) var problem: Problem?
    /// When the next probe may start, while paused.
    package private(set) var nextProbeAt: QueueInstant?
    /// The probe in flight, by its token; nil when none is.
    package private(set) var probeInFlight: Int?
    /// Probes that failed since the alert was raised (the back-off's exponent).
    package private(set) var failedProbes = 0
    /// How many alerts were raised since start (for the metric).
    package private(set) var alertsRaised = 0
    /// Incremented by each probe and configuration change, so the result of a probe that a
    /// configuration change overtook does not count as the probe's.
    private var probeToken = 0

    /// A healthy route.
    package init(route: String = RouteHealth.defaultRoute, initialBackoff: Duration = .seconds(5), maxBackoff: Duration = .seconds(300)) {
        self.route = route
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
    }

    /// True while the route is alerted and paused.
    package var isPaused: Bool { problem != nil }

    /// What may be claimed at `now`.
    package func admission(at now: QueueInstant) -> Admission {
        guard problem != nil else { return .open }
        if probeInFlight != nil { return .closed(until: nil) }
        guard let nextProbeAt, nextProbeAt > now else { return .probe }
        return .closed(until: nextProbeAt)
    }

    /// A probe starts: returns its token, to give back with its result.
    package mutating func startProbe() -> Int {
        probeToken += 1
        probeInFlight = probeToken
        return probeToken
    }

    /// The probe claimed nothing (no message is due): the route waits for the next one.
    package mutating func probeFoundNothing(token: Int) {
        if probeInFlight == token { probeInFlight = nil }
    }

    /// The delay before the probe after `failures` failed probes.
    package func backoff(failedProbes failures: Int) -> Duration {
        let seconds = initialBackoff.seconds * pow(2, Double(min(failures, 30)))
        return seconds < maxBackoff.seconds ? .seconds(seconds) : maxBackoff
    }

    /// An attempt on this route failed for the route's fault. The first raises the alert and
    /// pauses the route; a failed probe doubles the back-off; any other (an attempt that started
    /// before the pause) only updates the alert's message. `retryAfter`: the wait the provider
    /// asked for (throttling: `Retry-After`, `BackOffMilliseconds`), used instead of the back-off
    /// and never shortened by a later answer. Returns true when an alert was raised.
    @discardableResult
    package mutating func failed(
        _ fault: RouteFault, message: String, at now: QueueInstant, probe token: Int? = nil, retryAfter: Duration? = nil
    ) -> Bool {
        let asked = retryAfter.map { now.advanced(by: $0) }
        if var problem {
            problem.code = fault
            problem.message = message
            problem.lastSeen = now
            self.problem = problem
            if let token, token == probeInFlight {
                probeInFlight = nil
                failedProbes += 1
                nextProbeAt = asked ?? now.advanced(by: backoff(failedProbes: failedProbes))
            } else if let asked, let next = nextProbeAt, asked > next {
                nextProbeAt = asked
            }
            return false
        }
        problem = Problem(route: route, code: fault, message: message, since: now, lastSeen: now)
        alertsRaised += 1
        failedProbes = 0
        probeInFlight = nil
        nextProbeAt = asked ?? now.advanced(by: backoff(failedProbes: 0))
        return true
    }

    /// An attempt reached the server and the route worked (delivered, or the server refused or
    /// deferred the message itself): the alert clears and every held message may go. Returns
    /// true when the route was paused.
    @discardableResult
    package mutating func succeeded(probe token: Int? = nil) -> Bool {
        guard problem != nil else { return false }
        problem = nil
        nextProbeAt = nil
        probeInFlight = nil
        failedProbes = 0
        return true
    }

    /// The route's configuration changed (a reload): a paused route's probe is due at once,
    /// whatever its back-off; the alert stays until the probe succeeds.
    package mutating func configurationChanged(at now: QueueInstant) {
        guard problem != nil else { return }
        probeToken += 1
        probeInFlight = nil
        failedProbes = 0
        nextProbeAt = now
    }
}

/// What `/v1/status`, `/readyz` and `/metrics` show of a route.
public struct RouteStatus: Sendable, Equatable {
    /// The route's name (`default`).
    public var route: String
    /// `ok`, `paused` while an alert holds its messages, or `missing` for a route that is not
    /// configured while messages wait for it.
    public var state: String
    /// The alert's code (a ``RouteFault``), while paused.
    public var code: String?
    /// The last failure's message (never a secret), while paused.
    public var message: String?
    /// When the alert was raised, in seconds since 1970.
    public var since: Double?
    /// When the route last failed, in seconds since 1970.
    public var lastSeen: Double?
    /// When the next probe may start, in seconds since 1970 (nil: now, or one is running).
    public var nextProbeAt: Double?
    /// Probes that failed since the alert.
    public var failedProbes: Int
    /// Alerts raised since the process started.
    public var alertsRaised: Int

    /// A route that is not configured while `waiting` messages wait for it.
    package init(missing route: String, waiting: Int) {
        self.route = route
        state = "missing"
        code = "route_missing"
        message = "route \(route) no longer exists: \(waiting) messages wait until it comes back or an operator moves them to another route"
        failedProbes = 0
        alertsRaised = 0
    }

    package init(_ health: RouteHealth) {
        route = health.route
        state = health.isPaused ? "paused" : "ok"
        code = health.problem?.code.rawValue
        message = health.problem?.message
        since = health.problem?.since.secondsSince1970
        lastSeen = health.problem?.lastSeen.secondsSince1970
        nextProbeAt = health.isPaused && health.probeInFlight == nil ? health.nextProbeAt?.secondsSince1970 : nil
        failedProbes = health.failedProbes
        alertsRaised = health.alertsRaised
    }
}
