import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxServer
import OutboxTestSupport
import OutboxTransports
import Testing

/// A daemon stand-in whose one route is paused by a refused password.
private struct PausedRoute: DaemonStatusProvider {
    let paused: Bool

    func status() async -> [String: any Sendable] { [:] }
    func transportProblem() async -> String? { nil }
    func routes() async -> [RouteStatus] {
        var health = RouteHealth()
        if paused {
            health.failed(
                .authenticationFailed, message: "SMTP auth failed (transient): 535 5.7.8 Error: authentication failed",
                at: QueueInstant(secondsSince1970: 1_800_000_000))
        }
        return [RouteStatus(health)]
    }
}

@Suite("HTTP API: route alerts in /readyz, /v1/status and /metrics", .serialized)
struct ReadinessTests {
    @Test("a paused route makes /readyz 200 degraded with its problem; /v1/status shows it and the held count; /metrics counts it")
    func degraded() async throws {
        let f = try await APIFixture.make()
        f.api.attach(PausedRoute(paused: true))
        for _ in 0..<3 {
            _ = try await f.store.enqueue(
                NewMessage(from: "a@example.test", recipients: ["b@example.test"], content: Array("Subject: x\r\n\r\nx\r\n".utf8)), now: 1)
        }
        try await f.test { client in
            try await client.execute(uri: "/readyz", method: .get) { r in
                #expect(r.status == .ok)
                let j = json(r)
                #expect(j["status"] as? String == "degraded")
                let problem = (j["problems"] as? [[String: Any]])?.first
                #expect(problem?["route"] as? String == "default")
                #expect(problem?["code"] as? String == "authentication_failed")
                #expect((problem?["message"] as? String)?.contains("535") == true)
                #expect((problem?["since"] as? String)?.hasPrefix("2027-01-15T08:00:00") == true)
            }
            try await client.execute(uri: "/v1/status", method: .get) { r in
                let j = json(r)
                #expect(j["held"] as? Int == 3)
                let route = (j["routes"] as? [[String: Any]])?.first
                #expect(route?["state"] as? String == "paused")
                #expect(route?["held"] as? Int == 3)
                #expect((route?["problem"] as? [String: Any])?["code"] as? String == "authentication_failed")
                #expect(route?["next_probe_at"] is String)
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                let text = String(buffer: r.body)
                #expect(text.contains(#"outbox_route_paused{route="default"} 1"#), "\(text)")
                #expect(text.contains(#"outbox_route_held_messages{route="default"} 3"#), "\(text)")
                #expect(text.contains(#"outbox_route_alerts_total{route="default"} 1"#), "\(text)")
            }
        }
    }

    @Test("a healthy route: /readyz ready, /v1/status state ok and nothing held")
    func ready() async throws {
        let f = try await APIFixture.make()
        f.api.attach(PausedRoute(paused: false))
        try await f.test { client in
            try await client.execute(uri: "/readyz", method: .get) { r in
                #expect(r.status == .ok)
                #expect(json(r)["status"] as? String == "ready")
            }
            try await client.execute(uri: "/v1/status", method: .get) { r in
                let j = json(r)
                #expect(j["held"] as? Int == 0)
                #expect((j["routes"] as? [[String: Any]])?.first?["state"] as? String == "ok")
            }
        }
    }
}
