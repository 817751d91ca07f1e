import Foundation
import Metrics
import NIOConcurrencyHelpers

/// The token metrics (swift-metrics, bounded labels):
/// `outbox_token_refresh_total{route,result}` (result `ok` or `failed`) and
/// `outbox_token_expiry_seconds{route}` (seconds until the route's access token expires; 0 once
/// it has; not reported before the first token).
package struct TokenMetrics: Sendable {
    private let factory: any MetricsFactory
    /// The refreshes counted so far, per route and result (the counter moves by the difference;
    /// a credential set replaced by a reload starts again from 0).
    private let counted = NIOLockedValueBox([String: Int]())

    /// Metrics made by `factory` (the daemon's Prometheus registry).
    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
    }

    /// Brings the metrics up to `states` at `now`.
    package func update(_ states: [CredentialState], now: Date = Date()) {
        for state in states where state.kind.hasPrefix("oauth2") {
            for (result, total) in [("ok", state.refreshes), ("failed", state.refreshFailures)] {
                let key = "\(state.route)|\(result)"
                let delta = counted.withLockedValue { counted -> Int in
                    let before = counted[key, default: 0]
                    counted[key] = total
                    return total >= before ? total - before : total
                }
                let counter = Counter(
                    label: "outbox_token_refresh_total", dimensions: [("route", state.route), ("result", result)], factory: factory)
                if delta > 0 { counter.increment(by: delta) }
            }
            if let expiresAt = state.expiresAt {
                Gauge(label: "outbox_token_expiry_seconds", dimensions: [("route", state.route)], factory: factory)
                    .record(max(0, expiresAt.timeIntervalSince(now)))
            }
        }
    }
}
