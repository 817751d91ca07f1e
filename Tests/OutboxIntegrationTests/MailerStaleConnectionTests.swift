import Foundation
import Logging
import Metrics
import MetricsTestKit
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import Testing

@Suite("Mailer: stale connections and metrics", .serialized, .timeLimit(.minutes(2)))
struct MailerStaleConnectionTests {
    @Test("a pooled connection the server closed while idle is replaced invisibly: the message is delivered once")
    func staleConnectionReplaced() async throws {
        let peer = try TestPeers.fromEnvironment()
        let port = peer.shortTimeoutPort
        // No NOOP before reuse (check after 10 minutes): the dead connection is only found by using it.
        let mailer = try Mailer(configuration: peer.configuration(port: port, ["cnx-pool-size=1", "cnx-check-idle-time=00:10:00"]))
        let prefix = "stale-\(UUID().uuidString.prefix(8))"
        try await withRunningMailer(mailer) { mailer in
            let first = try await mailer.send(testMessage(subject: "\(prefix)-1"))
            #expect(first.allAccepted)
            #expect(first.attempts == 1)
            // Postfix on this port drops a client idle for 2 s (smtpd_timeout = 2s).
            try await Task.sleep(for: .seconds(4))
            let second = try await mailer.send(testMessage(subject: "\(prefix)-2"))
            #expect(second.allAccepted)
            #expect(second.attempts == 2, "the message should have gone out on a fresh connection after the stale one failed")
            #expect(mailer.poolStatistics?.created == 2)
        }
        var stored: [String: Int] = [:]
        for _ in 0..<100 {
            stored = peer.maildir.subjects(prefix: prefix)
            if stored.count == 2 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(stored == ["\(prefix)-1": 1, "\(prefix)-2": 1])
    }

    @Test("metrics: messages by result and reply class, send latency, pool gauges")
    func metrics() async throws {
        let peer = try TestPeers.fromEnvironment()
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
        let mailer = try Mailer(configuration: peer.configuration(port: peer.plainPort, ["cnx-pool-size=2"]))
        try await withRunningMailer(mailer) { mailer in
            for i in 0..<3 { _ = try await mailer.send(testMessage(subject: "metrics-\(i)")) }
            _ = try? await mailer.send(testMessage(subject: "metrics-refused", to: "reject@example.test"))
            try await Task.sleep(for: .milliseconds(1500))  // one gauge sample
        }
        // Every metric of a mailer carries its route (a library Mailer is the route default).
        let delivered = try metrics.expectCounter(
            "outbox_messages_total", [("result", "delivered"), ("class", "2xx"), ("transport", "smtp"), ("route", "default")])
        #expect(delivered.totalValue == 3)
        let rejected = try metrics.expectCounter(
            "outbox_messages_total", [("result", "rejected"), ("class", "none"), ("transport", "smtp"), ("route", "default")])
        #expect(rejected.totalValue == 1)
        let latency = try metrics.expectTimer("outbox_send_duration_seconds", [("route", "default")])
        #expect(latency.values.count == 4)
        #expect(try metrics.expectCounter("outbox_smtp_connections_created_total", [("route", "default")]).totalValue >= 1)
        #expect(try metrics.expectGauge("outbox_smtp_connections_open", [("route", "default")]).lastValue != nil)
    }
}
