import Foundation
import Hummingbird
import NIOConcurrencyHelpers
import Outbox
import Prometheus

extension DaemonStatusProvider {
    /// No routes: a provider that does not dispatch.
    package func routes() async -> [RouteStatus] { [] }
    /// Nothing to resume: a provider that does not dispatch.
    package func messagesRetried() async {}
}

extension Daemon {
    /// The dispatcher's routes and their alerts.
    package func routes() async -> [RouteStatus] { dispatcher.routes }
    /// A manual retry resumes a paused route (see ``Dispatcher/operatorRetried()``).
    package func messagesRetried() async { dispatcher.operatorRetried() }
}

/// The route gauges and the alert counter of `/metrics`:
/// `outbox_route_paused{route}` (1 while an alert holds the route's messages),
/// `outbox_route_held_messages{route}` and `outbox_route_alerts_total{route}`.
struct RouteMetrics: Sendable {
    private let registry: PrometheusCollectorRegistry
    /// The alerts counted so far, per route (the counter moves by the difference).
    private let counted = NIOLockedValueBox([String: Int]())

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func update(_ routes: [RouteStatus], waiting: [String: Int]) {
        for route in routes {
            let labels = [("route", route.route)]
            let held = waiting[route.route] ?? 0
            registry.makeGauge(
                descriptor: MetricNameDescriptor(
                    namespace: "outbox", metricName: "route_waiting_messages", unitName: nil,
                    helpText: "Messages waiting for a route (queued, deferred or being sent)"),
                labels: labels
            ).set(Double(held))
            registry.makeGauge(
                descriptor: MetricNameDescriptor(
                    namespace: "outbox", metricName: "route_paused", unitName: nil,
                    helpText: "1 while a route's alert holds its messages (a probe retries it), else 0"),
                labels: labels
            ).set(route.state == "ok" ? 0.0 : 1.0)
            registry.makeGauge(
                descriptor: MetricNameDescriptor(
                    namespace: "outbox", metricName: "route_held_messages", unitName: nil,
                    helpText: "Messages waiting for a paused route (queued and deferred), 0 when it is not paused"),
                labels: labels
            ).set(Double(route.state == "ok" ? 0 : held))
            let counter = registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "outbox", metricName: "route_alerts", unitName: "total",
                    helpText:
                        "Alerts raised on a route by a failure that is not the message's fault (credentials, TLS, protocol, server, configuration)"
                ),
                labels: labels)
            let delta = counted.withLockedValue { counted -> Int in
                let delta = route.alertsRaised - counted[route.route, default: 0]
                if delta > 0 { counted[route.route] = route.alertsRaised }
                return delta
            }
            if delta > 0 { counter.increment(by: Int64(delta)) }
        }
    }
}

/// `/readyz` and the route part of `/v1/status`.
enum Readiness {
    /// A paused route's problem as `/readyz` and `/v1/status` show it (no secret: errors carry none).
    static func problem(_ route: RouteStatus) -> [String: Any] {
        var problem: [String: Any] = ["route": route.route, "code": route.code ?? "", "message": route.message ?? ""]
        if let since = route.since { problem["since"] = JSON.iso(since) }
        if let last = route.lastSeen { problem["last_seen"] = JSON.iso(last) }
        return problem
    }

    /// A route's entry in `/v1/status`.
    static func status(_ route: RouteStatus, held: Int) -> [String: Any] {
        var entry: [String: Any] = [
            "route": route.route, "state": route.state, "held": route.state == "ok" ? 0 : held,
            "failed_probes": route.failedProbes, "alerts_raised": route.alertsRaised,
        ]
        if route.state != "ok" {
            entry["problem"] = problem(route)
        }
        if route.state == "paused" {
            entry["next_probe_at"] = JSON.iso(route.nextProbeAt)
        }
        return entry
    }

    /// Messages held by a paused route: every waiting one (queued or deferred), since the one
    /// route takes them all.
    static func held(_ counts: [MessageStatus: Int]) -> Int {
        (counts[.queued] ?? 0) + (counts[.deferred] ?? 0)
    }
}
