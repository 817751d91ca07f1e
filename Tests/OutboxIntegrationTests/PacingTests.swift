import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxTestSupport
import Testing

/// The pacing testbed (scripts/throttle-testbed.sh, started by scripts/test.sh): a private
/// Postfix with a port that throttles like Exchange Online (`432 4.3.2` after N messages, for T
/// seconds, from a policy service) and a plain port, counted from its own maildir and logs.
struct ThrottlePeer {
    var directory: String
    var throttlePort: Int
    var plainPort: Int
    var recipientLimitPort: Int
    var maildir: Maildir { Maildir(directory + "/mail/sink/new") }
    var policyLog: String { directory + "/log/policy.log" }

    /// Records a failure naming what is missing when the testbed's variables are absent.
    static func fromEnvironment(sourceLocation: SourceLocation = #_sourceLocation) throws -> ThrottlePeer {
        let env = ProcessInfo.processInfo.environment
        guard let dir = env["OUTBOX_TEST_THROTTLE_DIR"], let port = env["OUTBOX_TEST_THROTTLE_PORT"].flatMap(Int.init),
            let plain = env["OUTBOX_TEST_THROTTLE_PLAIN_PORT"].flatMap(Int.init),
            let recipients = env["OUTBOX_TEST_RCPT_LIMIT_PORT"].flatMap(Int.init)
        else {
            Issue.record(
                "the pacing testbed is not running (OUTBOX_TEST_THROTTLE_DIR, _PORT, _PLAIN_PORT, OUTBOX_TEST_RCPT_LIMIT_PORT): run scripts/test.sh --start-peers",
                sourceLocation: sourceLocation)
            throw NotRunning()
        }
        return ThrottlePeer(directory: dir, throttlePort: port, plainPort: plain, recipientLimitPort: recipients)
    }

    /// Sets the policy: `allowed` messages, then `432 4.3.2` for `seconds`.
    func setPolicy(allowed: Int, seconds: Int) throws {
        try "\(allowed) \(seconds)\n".write(toFile: directory + "/policy.conf", atomically: false, encoding: .utf8)
    }

    /// The policy's `432` answers logged after `since` (seconds since 1970).
    func throttleAnswers(since: Double) -> Int {
        let text = (try? String(contentsOfFile: policyLog, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { line in
            let parts = line.split(separator: " ")
            return parts.count >= 2 && (Double(parts[0]) ?? 0) >= since && parts[1] == "432"
        }.count
    }

    /// The delivery times (whole seconds, from the maildir file names Postfix's virtual agent
    /// gives: `<seconds>.V...`) of the stored messages whose subject starts with `prefix`.
    func deliverySeconds(prefix: String) -> [Int] {
        maildir.messages().compactMap { name, bytes in
            let head = String(decoding: bytes.prefix(4096), as: UTF8.self)
            guard head.contains("Subject: \(prefix)") else { return nil }
            return Int(name.prefix { $0.isNumber })
        }.sorted()
    }
}

/// The pacing testbed's variables are not set (the failure is recorded too).
struct NotRunning: Error {}

/// Pacing per route and the providers' throttling, against real Postfix: a throttled route
/// pauses and resumes with no message failed, and `rate-limit-per-minute` holds across two
/// daemons on one PostgreSQL queue, counted from the server's side.
@Suite("Pacing per route and throttling", .serialized, .timeLimit(.minutes(4)))
struct PacingTests {
    func http(_ port: Int, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
            let r = try await client.execute(
                TestClient.Request(
                    uri, method: method, headers: body == nil ? [:] : [.contentType: "application/json"],
                    body: body.map { ByteBuffer(string: $0) }))
            let text = String(buffer: r.body ?? ByteBuffer())
            return (r.status, (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:])
        }
    }

    func submit(_ port: Int, subject: String) async throws -> String {
        let (status, answer) = try await http(
            port, .post, "/v1/messages", #"{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"\#(subject)","text":"x"}"#)
        #expect(status == .accepted)
        return try #require(answer["id"] as? String)
    }

    func configuration(peer: TestPeers, port: Int, dir: String, listen: Int, extra: String = "", outbox: String = "") -> String {
        """
        [smtp-client]
        server = 127.0.0.1
        port = \(port)
        enable-authentication = true
        user = \(peer.user)
        password = \(peer.password)
        mail.smtp.auth.mechanisms = PLAIN
        \(extra)

        [outbox]
        data-directory = \(dir)/data
        http-listen = 127.0.0.1:\(listen)
        retry-initial-delay = 00:00:01
        retry-max-delay = 00:00:02
        \(outbox)

        """
    }

    @Test(
        "a route throttled with 432 4.3.2 pauses (shown in /v1/status), its messages deferred, not failed, while a second route keeps delivering; it resumes"
    )
    func throttledRoutePausesAndResumes() async throws {
        let peer = try TestPeers.fromEnvironment()
        let throttle = try ThrottlePeer.fromEnvironment()
        // 4 messages, then 432 4.3.2 for 8 s: the first probe (5 s) is throttled too, the
        // second (15 s) goes through.
        try throttle.setPolicy(allowed: 4, seconds: 8)
        let dir = try OutboxBinary.temporaryDirectory("outbox-throttle").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let file = dir + "/outbox.cfg"
        // The default route goes to the throttling port; route other, for *@other.example.test,
        // to the plain port of the same server.
        let other = """
            [smtp-client-other]
            server = 127.0.0.1
            port = \(throttle.plainPort)
            enable-authentication = true
            user = \(peer.user)
            password = \(peer.password)
            mail.smtp.auth.mechanisms = PLAIN
            senders = *@other.example.test

            """
        try (configuration(peer: peer, port: throttle.throttlePort, dir: dir, listen: port) + other)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
        defer { daemon.terminate() }
        try await daemon.waitReady()
        let started = Date().timeIntervalSince1970
        let token = "throttle-\(UUID().uuidString.prefix(8))"
        let total = 12
        var ids: [String] = []
        for n in 0..<total { ids.append(try await submit(port, subject: "\(token)-\(n)")) }

        // The route pauses with the code throttled, shown in /v1/status.
        var pausedRoute: [String: Any]?
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline, pausedRoute == nil {
            let routes = try await http(port, .get, "/v1/status").1["routes"] as? [[String: Any]] ?? []
            pausedRoute = routes.first { ($0["problem"] as? [String: Any])?["code"] as? String == "throttled" }
            if pausedRoute == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let paused = try #require(pausedRoute, "the route never showed as throttled in /v1/status")
        #expect(paused["route"] as? String == "default")
        #expect(paused["state"] as? String == "paused")
        #expect(((paused["problem"] as? [String: Any])?["message"] as? String)?.contains("432") == true, "\(paused)")

        // While it is paused, the other route delivers.
        let otherToken = "other-\(UUID().uuidString.prefix(8))"
        for n in 0..<6 {
            let (status, _) = try await http(
                port, .post, "/v1/messages",
                #"{"from":"app@other.example.test","to":"rcpt@elsewhere.example","subject":"\#(otherToken)-\#(n)","text":"x"}"#)
            #expect(status == .accepted)
        }
        let otherArrived = try await throttle.maildir.waitForSubjects(prefix: otherToken, count: 6, timeout: .seconds(30))
        #expect(otherArrived.count == 6, "the other route delivered \(otherArrived.count) of 6")
        let during = try await http(port, .get, "/v1/status").1["routes"] as? [[String: Any]] ?? []
        #expect(
            during.first { $0["route"] as? String == "default" }?["state"] as? String == "paused",
            "the default route resumed before the other route's messages arrived: \(during)")
        #expect(during.first { $0["route"] as? String == "other" }?["state"] as? String == "ok", "\(during)")

        // Every message arrives: the route resumed after each pause.
        let arrived = try await throttle.maildir.waitForSubjects(prefix: token, count: total, timeout: .seconds(150))
        #expect(arrived.count == total, "delivered by the throttling server: \(arrived.count) of \(total)")
        #expect(arrived.values.allSatisfy { $0 == 1 }, "a message arrived twice: \(arrived)")
        // The server did throttle (counted on its side), and no message failed.
        #expect(throttle.throttleAnswers(since: started) >= 1)
        var deferredOnce = 0
        for id in ids {
            let message = try await http(port, .get, "/v1/messages/\(id)").1
            #expect(message["status"] as? String == "delivered", "\(message)")
            let attempts = message["attempts"] as? [[String: Any]] ?? []
            if attempts.contains(where: { ($0["error"] as? String)?.contains("432") == true }) { deferredOnce += 1 }
        }
        #expect(deferredOnce >= 1, "no message was deferred by the 432")
        let routes = try await http(port, .get, "/v1/status").1["routes"] as? [[String: Any]] ?? []
        #expect(routes.allSatisfy { $0["state"] as? String == "ok" }, "\(routes)")
    }

    @Test("a client over its intake-limit-per-minute gets HTTP 429 with Retry-After; an operator's token is not limited")
    func intakeLimitOverHTTP() async throws {
        let peer = try TestPeers.fromEnvironment()
        let throttle = try ThrottlePeer.fromEnvironment()
        let dir = try OutboxBinary.temporaryDirectory("outbox-intake").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let file = dir + "/outbox.cfg"
        let clientToken = "client-token-\(UUID().uuidString)"
        let operatorToken = "operator-token-\(UUID().uuidString)"
        let client = """
            [client-app]
            user = app@example.test
            password-hash = $2b$12$OQmzGmxZl8G.yTsLT7QunOUVEp7EdnjN2LCXshj3UlLRTplx8U.He
            allowed-senders = *@example.test
            api-token = \(clientToken)
            intake-limit-per-minute = 3

            """
        try (configuration(peer: peer, port: throttle.plainPort, dir: dir, listen: port, outbox: "api-tokens = \(operatorToken)") + client)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
        defer { daemon.terminate() }
        try await daemon.waitReady()
        func post(_ token: String) async throws -> (HTTPResponse.Status, String?) {
            try await TestClient.withClient(host: "127.0.0.1", port: port) { c in
                let r = try await c.execute(
                    TestClient.Request(
                        "/v1/messages", method: .post, headers: [.contentType: "application/json", .authorization: "Bearer \(token)"],
                        body: ByteBuffer(string: #"{"from":"app@example.test","to":"rcpt@elsewhere.example","subject":"intake","text":"x"}"#)))
                return (r.status, r.headers[.retryAfter])
            }
        }
        var statuses: [HTTPResponse.Status] = []
        var retryAfter: String?
        for _ in 0..<5 {
            let (status, after) = try await post(clientToken)
            statuses.append(status)
            if status == .tooManyRequests { retryAfter = after }
        }
        #expect(statuses == [.accepted, .accepted, .accepted, .tooManyRequests, .tooManyRequests])
        let seconds = try #require(retryAfter.flatMap(Int.init), "no Retry-After on the 429")
        #expect(seconds >= 1 && seconds <= 60)
        #expect(try await post(operatorToken).0 == .accepted)
    }

    @Test("452 4.5.3 (too many recipients) is not throttling: the rest go at once in further transactions on the same route")
    func tooManyRecipients() async throws {
        let peer = try TestPeers.fromEnvironment()
        let throttle = try ThrottlePeer.fromEnvironment()
        let dir = try OutboxBinary.temporaryDirectory("outbox-rcpt").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let file = dir + "/outbox.cfg"
        try configuration(peer: peer, port: throttle.recipientLimitPort, dir: dir, listen: port)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
        defer { daemon.terminate() }
        try await daemon.waitReady()
        let token = "rcpt-\(UUID().uuidString.prefix(8))"
        let to = (1...5).map { "\"r\($0)@elsewhere.example\"" }.joined(separator: ",")
        let (status, answer) = try await http(
            port, .post, "/v1/messages", #"{"from":"sender@example.test","to":[\#(to)],"subject":"\#(token)","text":"x"}"#)
        #expect(status == .accepted)
        let id = try #require(answer["id"] as? String)
        var message: [String: Any] = [:]
        for _ in 0..<150 {
            message = try await http(port, .get, "/v1/messages/\(id)").1
            if message["status"] as? String == "delivered" { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(message["status"] as? String == "delivered", "\(message)")
        // One attempt: the three transactions (2 + 2 + 1 recipients) went at once.
        #expect((message["attempts"] as? [Any])?.count == 1, "\(message)")
        // Every recipient got it (one stored copy each).
        let stored = try await throttle.maildir.waitForMessages(containing: token, count: 5, timeout: .seconds(20))
        #expect(stored.count == 5)
        // Three transactions, by Postfix's queue ids (it took at most 2 recipients each).
        let transactions = Set(throttle.maildir.queueIDs(prefix: token)[token] ?? [])
        #expect(transactions.count == 3, "Postfix queue ids: \(transactions)")
    }

    @Test("rate-limit-per-minute holds across two daemons on one PostgreSQL queue, counted by the server", .timeLimit(.minutes(4)))
    func rateLimitAcrossInstances() async throws {
        let peer = try TestPeers.fromEnvironment()
        let throttle = try ThrottlePeer.fromEnvironment()
        let (url, drop) = try await ownDatabase(peer, prefix: "outbox_pacing")
        defer { drop() }
        let dir = try OutboxBinary.temporaryDirectory("outbox-rate").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let limit = 10
        let total = 15
        let base = freePort()
        var daemons: [DaemonProcess] = []
        defer { for d in daemons { d.terminate() } }
        for i in 0..<2 {
            let file = "\(dir)/d\(i).cfg"
            try configuration(
                peer: peer, port: throttle.plainPort, dir: "\(dir)/d\(i)", listen: base + i, extra: "rate-limit-per-minute = \(limit)",
                outbox: "store = \(url)\ndelivery-concurrency = 4"
            ).write(toFile: file, atomically: true, encoding: .utf8)
            daemons.append(try DaemonProcess(port: base + i, overrides: [], logPath: "\(dir)/d\(i).log", config: file))
        }
        for d in daemons { try await d.waitReady() }
        let token = "rate-\(UUID().uuidString.prefix(8))"
        for n in 0..<total { _ = try await submit(base + n % 2, subject: "\(token)-\(n)") }

        // The first minute: the limit, not twice it (each daemon alone would send 10).
        let first = try await throttle.maildir.waitForSubjects(prefix: token, count: limit, timeout: .seconds(30))
        #expect(first.count >= limit, "the first \(limit) messages did not arrive")
        try await Task.sleep(for: .seconds(20))
        let early = throttle.deliverySeconds(prefix: token)
        let start = try #require(early.first)
        let inFirstWindow = early.filter { $0 < start + 50 }.count
        #expect(inFirstWindow <= limit + 1, "delivered within 50 s of the first: \(inFirstWindow), limit \(limit) a minute")
        #expect(inFirstWindow >= limit)

        // The rest go once the minute has passed.
        let all = try await throttle.maildir.waitForSubjects(prefix: token, count: total, timeout: .seconds(90))
        #expect(all.count == total, "delivered: \(all.count) of \(total)")
        #expect(all.values.allSatisfy { $0 == 1 }, "a message arrived twice: \(all)")
        let seconds = throttle.deliverySeconds(prefix: token)
        // No sliding 55-second window holds more than the limit (and one of slack for the
        // delay between a send's reservation and Postfix's delivery).
        let busiest = seconds.map { t in seconds.filter { $0 >= t && $0 < t + 55 }.count }.max() ?? 0
        #expect(busiest <= limit + 1, "the busiest 55 s held \(busiest) deliveries; limit \(limit) a minute; times \(seconds)")
        print("rate-limit across two daemons: delivery seconds (server side) \(seconds.map { $0 - (seconds.first ?? 0) })")
        for d in daemons { d.terminate() }
    }

    @Test("max-concurrent holds across two daemons on one PostgreSQL queue, counted by the Graph emulator", .timeLimit(.minutes(3)))
    func maxConcurrentAcrossInstances() async throws {
        let peer = try TestPeers.fromEnvironment()
        let (url, drop) = try await ownDatabase(peer, prefix: "outbox_slots")
        defer { drop() }
        let dir = try OutboxBinary.temporaryDirectory("outbox-slots").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let graphState = EmulatorState()
        await graphState.set {
            $0.clientSecret = "graph-app-secret"
            $0.graphMailbox = "helpdesk@contoso.test"
            // Each send takes 400 ms at the server, so the daemons' sends overlap.
            $0.sendMailDelay = .milliseconds(400)
        }
        let limit = 2
        let total = 16
        try await withEmulator(graphState, certificates: peer.certificates) { graph in
            let base = freePort()
            var daemons: [DaemonProcess] = []
            defer { for d in daemons { d.terminate() } }
            for i in 0..<2 {
                let file = "\(dir)/d\(i).cfg"
                // Each daemon alone would have 4 in flight (delivery-concurrency), and 2 by the
                // route's max-concurrent: 4 together without sharing.
                try """
                [smtp-client]
                server-type = GRAPH
                user = helpdesk@contoso.test
                password = graph-app-secret
                client-id = client-1
                directory-id = tenant-1
                tenant-authority = \(graph)
                max-concurrent = \(limit)

                [outbox]
                data-directory = \(dir)/d\(i)/data
                http-listen = 127.0.0.1:\(base + i)
                graph-url = \(graph)/v1.0
                tls-ca-file = \(peer.caFile)
                store = \(url)
                delivery-concurrency = 4
                retry-initial-delay = 00:00:01
                retry-max-delay = 00:00:02

                """.write(toFile: file, atomically: true, encoding: .utf8)
                daemons.append(try DaemonProcess(port: base + i, overrides: [], logPath: "\(dir)/d\(i).log", config: file))
            }
            for d in daemons { try await d.waitReady() }
            for n in 0..<total {
                let (status, _) = try await http(
                    base + n % 2, .post, "/v1/messages",
                    #"{"from":"helpdesk@contoso.test","to":"rcpt@elsewhere.example","subject":"slots-\#(n)","text":"x"}"#)
                #expect(status == .accepted)
            }
            let deadline = ContinuousClock.now + .seconds(90)
            while await graphState.deliveries.count < total, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            let (delivered, most) = await (graphState.deliveries.count, graphState.sendMailMostInFlight)
            #expect(delivered == total, "delivered \(delivered) of \(total)")
            // Shared: never more than the limit at the server; and the limit was reached (the
            // daemons did send side by side).
            #expect(most <= limit, "the emulator had \(most) sendMail requests in flight at once; max-concurrent \(limit)")
            #expect(most == limit, "never \(limit) in flight at once: \(most)")
            for d in daemons { d.terminate() }
        }
    }

    /// A PostgreSQL database of the test's own, with Outbox's tables: the cluster's default one
    /// is shared with other tests (which delete its messages). Returns its URL and what drops it.
    func ownDatabase(_ peer: TestPeers, prefix: String) async throws -> (url: String, drop: () -> Void) {
        let database = "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
        let admin = peer.postgresURL.replacingOccurrences(of: #"/[^/]*$"#, with: "/postgres", options: .regularExpression)
        let url = peer.postgresURL.replacingOccurrences(of: #"/[^/]*$"#, with: "/\(database)", options: .regularExpression)
        try psql(admin, "CREATE DATABASE \(database)")
        let drop = { _ = try? psql(admin, "DROP DATABASE \(database) WITH (FORCE)") }
        do {
            let store = try await PostgresOutboxStore.open(url: url)
            try await store.migrate()
            try await store.close()
        } catch {
            drop()
            throw error
        }
        return (url, drop)
    }

    /// Runs one SQL command with psql (installed with the PostgreSQL testbed).
    func psql(_ url: String, _ command: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["psql", "-q", url, "-c", command]
        try process.run()
        process.waitUntilExit()
        if process.terminationStatus != 0 { throw NotRunning() }
    }
}
