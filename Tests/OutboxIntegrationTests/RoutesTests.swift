import Foundation
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Three routes in one `outbox serve`: the real Postfix with STARTTLS and PLAIN (`default`), the
/// real Postfix/Dovecot with XOAUTH2 (`oauth`, chosen by sender), and a Graph emulator (`graph`,
/// chosen by the relay client and asked for by a client's API token). Each message is checked
/// where it arrives: Postfix's log says which SASL mechanism submitted its queue id, the
/// emulator records what Graph received.
@Suite("Routes: three routes in one daemon, and their reload", .serialized, .timeLimit(.minutes(5)))
struct RoutesTests {
    /// A bcrypt hash of `password` from `outbox hash-password` (cost 4: tests only).
    static func hash(_ password: String, dir: String) async throws -> String {
        let file = dir + "/password.txt"
        try (password + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let binary = try OutboxBinary.url().path
        let r = try await OutboxBinary.run(
            ["-c", "'\(binary)' hash-password --cost 4 < '\(file)'"], executable: URL(fileURLWithPath: "/bin/sh"))
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The SASL mechanism Postfix logged for the message whose subject is `subject` (from its
    /// queue id in the Received header of the copy in the maildir).
    static func saslMethod(subject: String, peer: TestPeers) async throws -> String? {
        _ = try await peer.maildir.waitForMessages(containing: subject, count: 1)
        guard let queueID = peer.maildir.queueIDs(prefix: subject)[subject]?.first else { return nil }
        for _ in 0..<50 {
            let log = (try? String(contentsOfFile: peer.postfixLog, encoding: .utf8)) ?? ""
            if let line = log.split(separator: "\n").last(where: { $0.contains("\(queueID): client=") && $0.contains("sasl_method=") }),
                let range = line.range(of: "sasl_method=")
            {
                return String(line[range.upperBound...].prefix { $0 != "," && !$0.isWhitespace })
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    struct Daemon {
        let dir: String
        let port: Int
        let relayPort: Int
        var file: String { dir + "/outbox.cfg" }
    }

    func configuration(
        _ d: Daemon, peer: TestPeers, tokens: String, graph: String, printerHash: String, appHash: String, extraRoutes: String = ""
    ) -> String {
        """
        [smtp-client]
        server = \(peer.smtpHost)
        port = \(peer.submissionPort)
        smtp-connection-security = start-tls-required
        enable-authentication = true
        user = \(peer.user)
        password = \(peer.password)
        mail.smtp.auth.mechanisms = PLAIN

        [smtp-client-oauth]
        server = \(peer.smtpHost)
        port = \(peer.submissionPort)
        smtp-connection-security = start-tls-required
        enable-authentication = true
        mail.smtp.auth.mechanisms = XOAUTH2
        user = \(peer.user)
        password = route-xoauth2-pass
        client-id = client-1
        directory-id = tenant-1
        tenant-authority = \(tokens)
        senders = *@oauth-route.example.test

        [smtp-client-graph]
        server-type = GRAPH
        user = helpdesk@contoso.test
        password = graph-app-secret
        client-id = client-1
        directory-id = tenant-1
        tenant-authority = \(graph)
        \(extraRoutes)

        [client-printer]
        user = printer
        password-hash = \(printerHash)
        allowed-senders = *@contoso.test
        route = graph

        [client-app]
        user = app
        password-hash = \(appHash)
        allowed-senders = *@example.test *@contoso.test
        route = default
        routes = default graph
        api-token = app-token-0123456789abcdef

        [relay]
        listen = 127.0.0.1:\(d.relayPort)
        require-tls-for-auth = false

        [outbox]
        data-directory = \(d.dir)/data
        http-listen = 127.0.0.1:\(d.port)
        graph-url = \(graph)/v1.0
        tls-ca-file = \(peer.caFile)
        retry-initial-delay = 00:00:01
        retry-max-delay = 00:00:02
        """
    }

    /// A Mailer that submits to the daemon's relay as `user` (AUTH PLAIN, clear text on loopback).
    func relayMailer(_ d: Daemon, user: String, password: String) throws -> Mailer {
        var c = OutboxConfiguration()
        c.smtpClient.server = "127.0.0.1"
        c.smtpClient.port = d.relayPort
        c.smtpClient.enableAuthentication = true
        c.smtpClient.user = user
        c.smtpClient.password = Secret(password)
        c.smtpClient.authMechanisms = ["PLAIN"]
        return try Mailer(configuration: c)
    }

    func submit(_ port: Int, _ json: String, token: String? = nil) async throws -> (Int, [String: Any]) {
        let (status, answer) = try await http(port, .post, "/v1/messages", json, token: token)
        return (Int(status.code), answer)
    }

    @Test("by relay client, by a client's API token and by sender, each message arrives through its route; a client token sees its own messages only")
    func threeRoutes() async throws {
        let peer = try TestPeers.fromEnvironment()
        let tokenState = EmulatorState()
        await tokenState.set {
            $0.fixedToken = peer.oauthToken
            $0.ropcUser = peer.user
            $0.ropcPassword = "route-xoauth2-pass"
            $0.expectedScope = "https://outlook.office.com/.default"
        }
        let graphState = EmulatorState()
        await graphState.set {
            $0.clientSecret = "graph-app-secret"
            $0.graphMailbox = "helpdesk@contoso.test"
        }
        try await withEmulator(tokenState, certificates: peer.certificates) { tokens in
            try await withEmulator(graphState, certificates: peer.certificates) { graph in
                let dir = NSTemporaryDirectory() + "outbox-routes-\(UUID().uuidString)"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: dir) }
                let port = freePort()
                let d = Daemon(dir: dir, port: port, relayPort: freePort())
                let (printerPassword, appPassword) = ("printer-\(UUID().uuidString.prefix(8))", "app-\(UUID().uuidString.prefix(8))")
                try configuration(
                    d, peer: peer, tokens: tokens, graph: graph, printerHash: try await Self.hash(printerPassword, dir: dir),
                    appHash: try await Self.hash(appPassword, dir: dir)
                ).write(toFile: d.file, atomically: true, encoding: .utf8)
                let check = try await OutboxBinary.run(["check-config", d.file])
                #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
                #expect(check.stdout.contains("[smtp-client-oauth]") && check.stdout.contains("[smtp-client-graph]"))
                let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: d.file)
                defer { daemon.terminate() }
                try await daemon.waitReady()
                let token = "routes-\(UUID().uuidString.prefix(8))"

                // 1. The relay client `printer` (route = graph).
                let mailer = try relayMailer(d, user: "printer", password: printerPassword)
                let runner = Task { try await mailer.run() }
                let printed = try RawMessage(
                    bytes: Array(
                        "From: Helpdesk <helpdesk@contoso.test>\r\nTo: <rcpt@elsewhere.example>\r\nSubject: \(token)-relay\r\n\r\nfrom the printer\r\n"
                            .utf8))
                let relayed = try await mailer.send(printed)
                #expect(relayed.allAccepted)
                await mailer.shutdown()
                runner.cancel()

                // 2. The client token of `app`: its own route (default), then graph asked for; oauth refused.
                let appToken = "app-token-0123456789abcdef"
                let (s1, a1) = try await submit(
                    port, #"{"from":"app@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)-app","text":"x"}"#, token: appToken)
                #expect(s1 == 202, "\(a1)")
                let (s2, a2) = try await submit(
                    port,
                    #"{"from":"helpdesk@contoso.test","to":"rcpt@elsewhere.example","subject":"\#(token)-app-graph","text":"x","route":"graph"}"#,
                    token: appToken)
                #expect(s2 == 202, "\(a2)")
                let (s3, a3) = try await submit(
                    port, #"{"from":"app@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)-no","text":"x","route":"oauth"}"#,
                    token: appToken)
                #expect(s3 == 403, "\(a3)")
                #expect((a3["error"] as? [String: Any])?["code"] as? String == "route_not_allowed")
                let (s4, a4) = try await submit(
                    port, #"{"from":"boss@elsewhere.example","to":"rcpt@elsewhere.example","subject":"\#(token)-no2","text":"x"}"#, token: appToken)
                #expect(s4 == 403, "\(a4)")

                // 3. By sender (an operator's submission, no client): *@oauth-route.example.test → oauth.
                let (s5, a5) = try await submit(
                    port, #"{"from":"billing@oauth-route.example.test","to":"rcpt@elsewhere.example","subject":"\#(token)-sender","text":"x"}"#)
                #expect(s5 == 202, "\(a5)")
                let (s6, a6) = try await submit(
                    port, #"{"from":"other@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)-plain","text":"x"}"#)
                #expect(s6 == 202, "\(a6)")
                let ids = [a1, a2, a5, a6].compactMap { $0["id"] as? String }
                for id in ids {
                    let m = try await waitForMessage(port, id, status: "delivered", attempts: 300)
                    #expect(m["status"] as? String == "delivered", "\(m)")
                }
                #expect(try await http(port, .get, "/v1/messages/\(a2["id"] as? String ?? "")").1["route"] as? String == "graph")
                #expect(try await http(port, .get, "/v1/messages/\(a5["id"] as? String ?? "")").1["route"] as? String == "oauth")

                // At the receiving side: Postfix's log says PLAIN (default) or XOAUTH2 (oauth) for each queue id.
                #expect(try await Self.saslMethod(subject: "\(token)-app", peer: peer) == "PLAIN")
                #expect(try await Self.saslMethod(subject: "\(token)-plain", peer: peer) == "PLAIN")
                #expect(try await Self.saslMethod(subject: "\(token)-sender", peer: peer) == "XOAUTH2")
                // The Graph emulator got the relayed message and the one asked for, and nothing else.
                let delivered = await graphState.delivered.map { String(decoding: $0, as: UTF8.self) }
                #expect(delivered.filter { $0.contains("\(token)-relay\r\n") }.count == 1, "the relay client's message went through Graph")
                #expect(delivered.filter { $0.contains("\(token)-app-graph\r\n") }.count == 1)
                #expect(delivered.filter { $0.contains("\(token)-app\r\n") || $0.contains("\(token)-sender") }.isEmpty)
                #expect(peer.maildir.countMessages(containing: "\(token)-relay") == 0)
                #expect(peer.maildir.countMessages(containing: "\(token)-app-graph") == 0)

                // 4. The client token sees its own messages only; operator routes are refused.
                let listed = try await http(port, .get, "/v1/messages?limit=1000", token: appToken).1
                let mine = Set(((listed["messages"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String })
                #expect(mine == Set([a1, a2].compactMap { $0["id"] as? String }), "\(listed)")
                #expect(try await http(port, .get, "/v1/messages/\(a5["id"] as? String ?? "")", token: appToken).0.code == 404)
                #expect(try await http(port, .get, "/v1/status", token: appToken).0.code == 403)
                #expect(try await http(port, .post, "/v1/messages/\(a1["id"] as? String ?? "")/retry", token: appToken).0.code == 403)
                // The operator sees every route, each with its state.
                let status = try await http(port, .get, "/v1/status").1
                let routes = (status["routes"] as? [[String: Any]] ?? []).compactMap { $0["route"] as? String }
                #expect(Set(routes) == ["default", "oauth", "graph"], "\(status)")
                let log = (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? ""
                for secret in [peer.password, "graph-app-secret", "route-xoauth2-pass", appToken, printerPassword, peer.oauthToken] {
                    #expect(!log.contains(secret), "a secret reached the log")
                    #expect(!"\(status)".contains(secret))
                }
            }
        }
    }

    func reloadConfiguration(_ d: Daemon, peer: TestPeers, routes: [(name: String, port: Int, senders: String)]) -> String {
        var text = """
            [smtp-client]
            server = \(peer.smtpHost)
            port = \(peer.plainPort)
            enable-authentication = true
            user = \(peer.user)
            password = \(peer.password)
            mail.smtp.auth.mechanisms = PLAIN

            """
        for route in routes {
            text += """

                [smtp-client-\(route.name)]
                server = \(peer.smtpHost)
                port = \(route.port)
                enable-authentication = true
                user = \(peer.user)
                password = \(peer.password)
                mail.smtp.auth.mechanisms = PLAIN
                senders = \(route.senders)

                """
        }
        text += """

            [relay]
            listen =

            [outbox]
            data-directory = \(d.dir)/data
            http-listen = 127.0.0.1:\(d.port)
            retry-initial-delay = 00:00:01
            retry-max-delay = 00:00:02
            """
        return text
    }

    @Test("SIGHUP adds a route, removes one and changes one with messages in flight: none is lost, none sent twice")
    func reloadRoutes() async throws {
        let peer = try TestPeers.fromEnvironment()
        let dir = NSTemporaryDirectory() + "outbox-routes-reload-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let d = Daemon(dir: dir, port: port, relayPort: 0)
        let closed = freePort()
        // a and b point where nothing listens: their messages wait (held by the routes' alerts).
        try reloadConfiguration(
            d, peer: peer, routes: [("a", closed, "*@a.example.test"), ("b", closed, "*@b.example.test")]
        ).write(toFile: d.file, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: d.file)
        defer { daemon.terminate() }
        try await daemon.waitReady()
        let token = "rr-\(UUID().uuidString.prefix(8))"
        var ids: [String: String] = [:]
        func send(_ subject: String, from: String) async throws {
            let (status, answer) = try await submit(
                port, #"{"from":"\#(from)","to":"rcpt@elsewhere.example","subject":"\#(subject)","text":"x"}"#)
            #expect(status == 202, "\(answer)")
            ids[subject] = answer["id"] as? String
        }
        for n in 0..<30 { try await send("\(token)-a\(n)", from: "x@a.example.test") }
        for n in 0..<15 { try await send("\(token)-b\(n)", from: "x@b.example.test") }
        for n in 0..<10 { try await send("\(token)-d\(n)", from: "x@example.test") }
        // With default's messages in flight and a's and b's waiting: remove a, move b to Postfix, add c.
        try reloadConfiguration(
            d, peer: peer, routes: [("b", peer.plainPort, "*@b.example.test"), ("c", peer.plainPort, "*@c.example.test")]
        ).write(toFile: d.file, atomically: true, encoding: .utf8)
        let before = try await http(port, .get, "/v1/status").1["last_reload"] as? String ?? ""
        kill(daemon.pid, SIGHUP)
        var status: [String: Any] = [:]
        for _ in 0..<100 {
            try await Task.sleep(for: .milliseconds(50))
            status = try await http(port, .get, "/v1/status").1
            if (status["last_reload"] as? String ?? "") != before { break }
        }
        #expect((status["last_reload_error"] as? String ?? "").isEmpty, "\(status)")
        for n in 0..<10 { try await send("\(token)-c\(n)", from: "x@c.example.test") }
        // b and c deliver; a's messages not sent before the reload wait, deferred with the alert.
        for n in 0..<15 {
            let m = try await waitForMessage(port, ids["\(token)-b\(n)"]!, status: "delivered", attempts: 300)
            #expect(m["status"] as? String == "delivered", "\(m)")
        }
        for n in 0..<10 {
            let m = try await waitForMessage(port, ids["\(token)-c\(n)"]!, status: "delivered", attempts: 300)
            #expect(m["route"] as? String == "c" && m["status"] as? String == "delivered", "\(m)")
        }
        var waiting: [String] = []
        for n in 0..<30 {
            let id = ids["\(token)-a\(n)"]!
            var m: [String: Any] = [:]
            for _ in 0..<100 {
                m = try await http(port, .get, "/v1/messages/\(id)").1
                if m["status"] as? String == "delivered" || (m["last_error"] as? String)?.contains("route a no longer exists") == true { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            if m["status"] as? String != "delivered" {
                #expect(m["status"] as? String == "deferred", "\(m)")
                #expect((m["last_error"] as? String)?.contains("route a no longer exists") == true, "\(m)")
                waiting.append(id)
            }
        }
        #expect(waiting.count == 30, "every message of the removed route waits for it")
        if !waiting.isEmpty {
            let status = try await http(port, .get, "/v1/status").1
            let a = (status["routes"] as? [[String: Any]] ?? []).first { $0["route"] as? String == "a" }
            #expect(a?["state"] as? String == "missing", "\(status)")
        }
        // The operator moves them; all go.
        let moved = try await OutboxBinary.run(
            ["queue", "move", "--from-route", "a", "--route", "default", "--url", "http://127.0.0.1:\(port)"])
        #expect(moved.status == 0, "\(moved.stdout)\(moved.stderr)")
        for id in waiting {
            let m = try await waitForMessage(port, id, status: "delivered", attempts: 300)
            #expect(m["status"] as? String == "delivered" && m["route"] as? String == "default", "\(m)")
        }
        for n in 0..<10 {
            #expect(try await waitForMessage(port, ids["\(token)-d\(n)"]!, status: "delivered", attempts: 300)["status"] as? String == "delivered")
        }
        // At Postfix: each of the 65 messages exactly once (none lost, none twice).
        let subjects = try await peer.maildir.waitForSubjects(prefix: token, count: 65, timeout: .seconds(60))
        #expect(subjects.count == 65, "\(subjects.count) of 65 arrived")
        #expect(subjects.values.allSatisfy { $0 == 1 }, "\(subjects.filter { $0.value != 1 })")
        let list = try await OutboxBinary.run(["queue", "list", "--route", "c", "--url", "http://127.0.0.1:\(port)", "--json"])
        #expect(list.status == 0)
        let listed = (try? JSONSerialization.jsonObject(with: Data(list.stdout.utf8))) as? [String: Any]
        #expect((listed?["messages"] as? [Any])?.count == 10, "\(list.stdout.prefix(500))")
    }
}
