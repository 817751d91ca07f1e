import Foundation
import HummingbirdTesting
import NIOCore
import OutboxTestSupport
import Testing

/// Token health through a running `outbox serve` with server-type = EWS, XOAUTH2 with the password
/// grant (ROPC), against the emulator's EWS and token endpoints: it starts refusing the password (`invalid_grant`,
/// AADSTS50126) and `/readyz`, `/v1/status`'s credentials, the route's alert and the metrics
/// show it; then it takes the password again and all recover. No secret in any answer or log.
@Suite("Token health", .serialized)
struct TokenHealthTests {
    /// The value of `name{labels}` in a Prometheus text exposition, or nil.
    static func metric(_ text: String, _ name: String, _ labels: [String: String]) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
            let parts = line.split(separator: " ")
            guard parts.count >= 2 else { continue }
            let head = String(parts[0])
            if labels.allSatisfy({ head.contains("\($0.key)=\"\($0.value)\"") }) { return Double(parts[1]) }
        }
        return nil
    }

    /// `GET /metrics` as text.
    static func metrics(_ port: Int) async throws -> String { try await text(port, "/metrics") }

    static func text(_ port: Int, _ path: String) async throws -> String {
        try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
            let r = try await client.execute(TestClient.Request(path, method: .get))
            return String(buffer: r.body ?? ByteBuffer())
        }
    }

    /// The dashboard's credential row of the default route (loopback, no tokens: no login).
    static func credentialRow(_ port: Int) async throws -> String {
        let page = try await text(port, "/credentials")
        guard let start = page.range(of: "<tr><td>default</td>") else { return "no default row in: \(page)" }
        let rest = page[start.upperBound...]
        return String(rest[..<(rest.range(of: "</tr>")?.lowerBound ?? rest.endIndex)])
    }

    @Test(
        "a refused refresh: /readyz degraded, credentials failing with AADSTS50126, the alert and the metric; then recovery", .timeLimit(.minutes(3)))
    func refusedThenRecovered() async throws {
        let state = EmulatorState()
        let password = "ropc-\(UUID().uuidString)"
        await state.set {
            $0.ropcPassword = password
            // Each token lives 60 s, less than the margin: every send asks for a new one.
            $0.expiresIn = 60
            $0.expectedScope = "https://outlook.office365.com/.default"
        }
        try await withEmulator(state) { base in
            let dir = NSTemporaryDirectory() + "outbox-tokens-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let port = freePort()
            let file = dir + "/outbox.cfg"
            let user = await state.ropcUser
            try """
            [smtp-client]
            server-type = EWS
            server = \(base)/EWS/Exchange.asmx
            mail.ews.auth.mechanisms = XOAUTH2
            scope = https://outlook.office365.com/.default
            enable-authentication = true
            user = \(user)
            password = \(password)
            grant-type = password
            client-id = client-1
            directory-id = tenant-1
            tenant-authority = \(base)
            token-expiry-margin-time = 00:05:00

            [outbox]
            data-directory = \(dir)/data
            http-listen = 127.0.0.1:\(port)
            tls-ca-file = \(TestCertificates.builtIn.caFile)
            retry-initial-delay = 00:00:01
            retry-max-delay = 00:00:02
            """.write(toFile: file, atomically: true, encoding: .utf8)
            let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
            defer { daemon.terminate() }
            try await daemon.waitReady()
            func submit(_ subject: String) async throws -> String {
                let body = #"{"from":"\#(user)","to":"rcpt@elsewhere.example","subject":"\#(subject)","text":"token health"}"#
                let (status, answer) = try await http(port, .post, "/v1/messages", body)
                #expect(status == .accepted, "\(answer)")
                return try #require(answer["id"] as? String)
            }
            func credentials() async throws -> [String: Any] {
                let status = try await http(port, .get, "/v1/status").1
                let list = try #require(status["credentials"] as? [[String: Any]], "no credentials in \(status)")
                return try #require(list.first { $0["route"] as? String == "default" })
            }
            var answers: [String] = []

            // Healthy: a token was fetched for the first message.
            let first = try await submit("healthy")
            #expect(try await waitForMessage(port, first, status: "delivered")["status"] as? String == "delivered")
            var c = try await credentials()
            #expect(c["kind"] as? String == "oauth2-azure")
            #expect(c["failing"] as? Bool == false)
            #expect(c["last_refresh"] is String)
            #expect(c["expires_at"] is String)
            var ready = try await http(port, .get, "/readyz").1
            #expect(ready["status"] as? String == "ready", "\(ready)")
            var metrics = try await Self.metrics(port)
            #expect((Self.metric(metrics, "outbox_token_refresh_total", ["route": "default", "result": "ok"]) ?? 0) >= 1, "\(metrics)")
            #expect(Self.metric(metrics, "outbox_token_expiry_seconds", ["route": "default"]) != nil, "\(metrics)")
            var row = try await Self.credentialRow(port)
            #expect(row.contains("oauth2-azure") && row.contains(">ok<") && !row.contains("AADSTS"), "\(row)")
            // The token's last refresh and expiry are shown (dates in their cells).
            #expect(row.components(separatedBy: "<td>20").count == 3, "\(row)")
            answers += [metrics, row]

            // The password changed at the identity provider: every refresh is refused.
            await state.set { $0.ropcPassword = "rotated-\(UUID().uuidString)" }
            let second = try await submit("refused")
            #expect(try await waitForMessage(port, second, status: "deferred")["status"] as? String == "deferred")
            c = try await credentials()
            #expect(c["failing"] as? Bool == true, "\(c)")
            #expect(c["last_error_code"] as? String == "AADSTS50126", "\(c)")
            #expect((c["last_error"] as? String ?? "").contains("invalid_grant"), "\(c)")
            ready = try await http(port, .get, "/readyz").1
            #expect(ready["status"] as? String == "degraded", "\(ready)")
            let problems = ready["problems"] as? [[String: Any]] ?? []
            #expect(
                problems.contains { $0["code"] as? String == "token_refresh_failed" && ($0["message"] as? String ?? "").contains("AADSTS50126") },
                "\(ready)")
            let status = try await http(port, .get, "/v1/status").1
            let route = (status["routes"] as? [[String: Any]] ?? []).first
            #expect(route?["state"] as? String == "paused", "\(status["routes"] ?? "")")
            #expect((route?["problem"] as? [String: Any])?["code"] as? String == "credentials_unavailable")
            metrics = try await Self.metrics(port)
            #expect((Self.metric(metrics, "outbox_token_refresh_total", ["route": "default", "result": "failed"]) ?? 0) >= 1, "\(metrics)")
            row = try await Self.credentialRow(port)
            #expect(row.contains(">failing<") && row.contains("AADSTS50126"), "the dashboard's credential view: \(row)")
            answers += [metrics, "\(status)", "\(ready)", "\(c)", row]

            // The password is back: the route's probe gets a token and the held message goes.
            await state.set { $0.ropcPassword = password }
            #expect(try await waitForMessage(port, second, status: "delivered", attempts: 300)["status"] as? String == "delivered")
            c = try await credentials()
            #expect(c["failing"] as? Bool == false, "\(c)")
            #expect(c["last_error_code"] as? String == "AADSTS50126", "the last error stays on record")
            ready = try await http(port, .get, "/readyz").1
            #expect(ready["status"] as? String == "ready", "\(ready)")
            answers.append("\(c)")

            daemon.terminate()
            let log = (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? ""
            let tokens = await Array(state.issued.keys)
            #expect(!tokens.isEmpty)
            for text in answers + [log] {
                #expect(!text.contains(password), "the password reached an answer or the log")
                for token in tokens { #expect(!text.contains(token), "an access token reached an answer or the log") }
            }
        }
    }
}
