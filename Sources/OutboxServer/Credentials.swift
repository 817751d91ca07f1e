import Foundation
import Outbox
import Prometheus

extension DaemonStatusProvider {
    /// No credentials: a provider that does not send.
    package func credentials() async -> [CredentialState] { [] }
}

extension Daemon {
    /// Each route's credentials and the health of their tokens.
    package func credentials() async -> [CredentialState] {
        var states: [CredentialState] = []
        for name in routes.names {
            guard let mailer = routes.mailer(name) else { continue }
            for var state in await mailer.credentialStates {
                state.route = name
                states.append(state)
            }
        }
        return states
    }
}

/// The `credentials` of `/v1/status` and the credential part of `/readyz`.
enum CredentialsReport {
    /// One route's credentials in `/v1/status` (no secret: codes and the endpoint's words only).
    static func status(_ state: CredentialState) -> [String: Any] {
        [
            "route": state.route, "kind": state.kind, "failing": state.failing,
            "last_refresh": JSON.iso(state.lastRefresh?.timeIntervalSince1970),
            "expires_at": JSON.iso(state.expiresAt?.timeIntervalSince1970),
            "last_error_code": state.lastErrorCode.map { $0 as Any } ?? NSNull(),
            "last_error": state.lastError.map { $0 as Any } ?? NSNull(),
            "last_error_at": JSON.iso(state.lastErrorAt?.timeIntervalSince1970),
            "refreshes": state.refreshes, "refresh_failures": state.refreshFailures,
        ]
    }

    /// A failing refresh as a `/readyz` problem (`degraded`: messages are still accepted).
    static func problem(_ state: CredentialState) -> [String: Any]? {
        guard state.failing else { return nil }
        return [
            "route": state.route, "code": "token_refresh_failed",
            "message": "the \(state.kind) token refresh fails (\(state.lastErrorCode ?? "?")): \(state.lastError ?? "")",
            "since": JSON.iso(state.lastErrorAt?.timeIntervalSince1970),
        ]
    }
}

extension OutboxAPI {
    /// The token metrics, made in the API's registry.
    static func tokenMetrics(registry: PrometheusCollectorRegistry) -> TokenMetrics {
        TokenMetrics(factory: PrometheusMetricsFactory(registry: registry))
    }
}
