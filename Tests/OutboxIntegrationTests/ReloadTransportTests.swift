import Foundation
import Hummingbird
import NIOCore
import Outbox
import OutboxTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SIGHUP through the daemon process, per take-effect class and transport: the file transport
/// to a server (immediately), a removed `server` refused, SMTP to GRAPH and back with messages
/// queued (at the next cycle), EWS's `exchange-version` (next cycle) and `user` (immediately).
@Suite("Reload: every transport, every take-effect class", .serialized)
struct ReloadTransportTests {
    /// A scratch directory with a configuration file and a daemon started on it.
    final class Setup: @unchecked Sendable {
        let dir = NSTemporaryDirectory() + "outbox-reload-\(UUID().uuidString)"
        let port = freePort()
        var file: String { dir + "/outbox.cfg" }
        var daemon: DaemonProcess?

        init() throws {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }

        /// `smtpClient` lines, then `[outbox]` with the scratch data directory, the API port and
        /// quick retries, plus `outbox` lines.
        func write(_ smtpClient: String, outbox: String = "") throws {
            try """
            [smtp-client]
            \(smtpClient)

            [outbox]
            data-directory = \(dir)/data
            http-listen = 127.0.0.1:\(port)
            retry-initial-delay = 00:00:01
            retry-max-delay = 00:00:02
            \(outbox)
            """.write(toFile: file, atomically: true, encoding: .utf8)
        }

        func start() async throws {
            let d = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
            daemon = d
            try await d.waitReady()
        }

        /// Sends SIGHUP and waits until `/v1/status` shows the reload (its `last_reload` moved).
        func reload() async throws -> [String: Any] {
            let before = try await http(port, .get, "/v1/status").1["last_reload"] as? String ?? ""
            kill(daemon!.pid, SIGHUP)
            var status: [String: Any] = [:]
            for _ in 0..<100 {
                try await Task.sleep(for: .milliseconds(50))
                status = try await http(port, .get, "/v1/status").1
                if (status["last_reload"] as? String ?? "") != before { return status }
            }
            Issue.record("the daemon did not reload within 5 s")
            return status
        }

        func submit(_ subject: String, from: String, to: String = "rcpt@elsewhere.example") async throws -> String {
            let body = #"{"from":"\#(from)","to":"\#(to)","subject":"\#(subject)","text":"reload test"}"#
            let (status, answer) = try await http(port, .post, "/v1/messages", body)
            #expect(status == .accepted, "\(answer)")
            return try #require(answer["id"] as? String)
        }

        var log: String { (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? "" }

        func finish() {
            daemon?.terminate()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    static func count(_ token: String, in delivered: [[UInt8]]) -> Int {
        delivered.filter { String(decoding: $0, as: UTF8.self).contains(token) }.count
    }

    @Test(
        "the file transport to a server at once; a reload that removes server is refused and says why",
        .timeLimit(.minutes(2)))
    func fileToServerThenServerRemoved() async throws {
        let peer = try TestPeers.fromEnvironment()
        let setup = try Setup()
        defer { setup.finish() }
        let token = "reload-file-\(UUID().uuidString.prefix(8))"
        // password and mail.* take effect at restart: they are there from the start, unused by
        // the file transport; server, port, user and enable-authentication come with the reload.
        try setup.write("password = \(peer.password)\nmail.smtp.auth.mechanisms = PLAIN")
        try await setup.start()
        let first = try await setup.submit("\(token)-1", from: peer.user)
        #expect(try await waitForMessage(setup.port, first, status: "delivered")["status"] as? String == "delivered")
        let sent = (try? FileManager.default.contentsOfDirectory(atPath: setup.dir + "/data/sent")) ?? []
        #expect(sent.count == 1, "the file transport wrote the first message: \(sent)")

        let smtp = """
            server = \(peer.smtpHost)
            port = \(peer.plainPort)
            enable-authentication = true
            user = \(peer.user)
            password = \(peer.password)
            mail.smtp.auth.mechanisms = PLAIN
            """
        try setup.write(smtp)
        var status = try await setup.reload()
        #expect(status["transport"] as? String == "smtp")
        #expect((status["pending_restart"] as? [String] ?? []).isEmpty, "\(status["pending_restart"] ?? "")")
        let second = try await setup.submit("\(token)-2", from: peer.user)
        #expect(try await waitForMessage(setup.port, second, status: "delivered")["status"] as? String == "delivered")
        #expect(try await peer.maildir.waitForMessage(containing: "\(token)-2") != nil)

        // server removed: refused, the running configuration stays, /v1/status says why.
        try setup.write("port = \(peer.plainPort)")
        status = try await setup.reload()
        let error = status["last_reload_error"] as? String ?? ""
        #expect(error.contains("server is not set"), "\(error)")
        #expect(status["transport"] as? String == "smtp")
        #expect(option(status, "server") == peer.smtpHost)
        let third = try await setup.submit("\(token)-3", from: peer.user)
        #expect(try await waitForMessage(setup.port, third, status: "delivered")["status"] as? String == "delivered")
        #expect(try await peer.maildir.waitForMessage(containing: "\(token)-3") != nil)
        let sentAfter = (try? FileManager.default.contentsOfDirectory(atPath: setup.dir + "/data/sent")) ?? []
        #expect(sentAfter.count == 1, "no message went to files after the refused reload")
        #expect(!setup.log.contains(peer.password), "the password reached the log")
    }

    @Test(
        "SMTP to GRAPH and back at the next cycle with messages queued, each delivered once through the transport in force; GRAPH's user at once",
        .timeLimit(.minutes(3)))
    func smtpToGraphAndBack() async throws {
        let peer = try TestPeers.fromEnvironment()
        let state = EmulatorState()
        // One set of credentials serves both: Postfix's SASL account is also the Graph mailbox,
        // and its password the application's client secret (password takes effect at restart).
        await state.set {
            $0.clientSecret = peer.password
            $0.graphMailbox = peer.user
        }
        try await withEmulator(state, certificates: peer.certificates) { base in
            let setup = try Setup()
            defer { setup.finish() }
            let token = "reload-graph-\(UUID().uuidString.prefix(8))"
            let closedPort = freePort()
            func smtpClient(type: String, port: Int, user: String? = nil) -> String {
                """
                server-type = \(type)
                server = \(peer.smtpHost)
                port = \(port)
                enable-authentication = true
                user = \(user ?? peer.user)
                password = \(peer.password)
                client-id = client-1
                directory-id = tenant-1
                tenant-authority = \(base)
                """
            }
            let outbox = "graph-url = \(base)/v1.0\ntls-ca-file = \(peer.caFile)"
            try setup.write(smtpClient(type: "SMTP", port: closedPort), outbox: outbox)
            try await setup.start()

            // Queued: SMTP to a port where nothing listens defers them.
            var queued: [String] = []
            for n in 0..<5 { queued.append(try await setup.submit("\(token)-a\(n)", from: peer.user)) }
            for id in queued {
                #expect(try await waitForMessage(setup.port, id, status: "deferred")["status"] as? String == "deferred")
            }

            try setup.write(smtpClient(type: "GRAPH", port: closedPort), outbox: outbox)
            var status = try await setup.reload()
            #expect(status["transport"] as? String == "graph")
            #expect((status["last_reload_error"] as? String ?? "").isEmpty, "\(status["last_reload_error"] ?? "")")
            for id in queued {
                #expect(try await waitForMessage(setup.port, id, status: "delivered")["status"] as? String == "delivered")
            }
            var more: [String] = []
            for n in 0..<3 { more.append(try await setup.submit("\(token)-b\(n)", from: peer.user)) }
            for id in more {
                #expect(try await waitForMessage(setup.port, id, status: "delivered")["status"] as? String == "delivered")
            }
            // An immediate option under GRAPH: the mailbox (user) changes at once; the emulator
            // now serves only the new one, so the message goes out only if the new user is used.
            let shared = "shared-\(token)@contoso.test"
            await state.set { $0.graphMailbox = shared }
            try setup.write(smtpClient(type: "GRAPH", port: closedPort, user: shared), outbox: outbox)
            status = try await setup.reload()
            #expect((status["last_reload_error"] as? String ?? "").isEmpty)
            let asShared = try await setup.submit("\(token)-s0", from: shared)
            let sharedAnswer = try await waitForMessage(setup.port, asShared, status: "delivered")
            #expect(sharedAnswer["status"] as? String == "delivered", "\(sharedAnswer)")
            await state.set { $0.graphMailbox = peer.user }

            try setup.write(smtpClient(type: "SMTP", port: peer.plainPort), outbox: outbox)
            status = try await setup.reload()
            #expect(status["transport"] as? String == "smtp")
            #expect(status["transport_generation"] as? Int == 3)
            var back: [String] = []
            for n in 0..<3 { back.append(try await setup.submit("\(token)-c\(n)", from: peer.user)) }
            for id in back {
                #expect(try await waitForMessage(setup.port, id, status: "delivered")["status"] as? String == "delivered")
            }
            _ = try await peer.maildir.waitForMessages(containing: "\(token)-c", count: 3)

            let delivered = await state.delivered
            for n in 0..<5 { #expect(Self.count("\(token)-a\(n)\r\n", in: delivered) == 1, "a\(n) through Graph once") }
            for n in 0..<3 { #expect(Self.count("\(token)-b\(n)\r\n", in: delivered) == 1, "b\(n) through Graph once") }
            #expect(Self.count("\(token)-s0\r\n", in: delivered) == 1, "s0 through Graph as the new mailbox")
            #expect(Self.count("\(token)-c", in: delivered) == 0, "nothing through Graph after the switch back")
            #expect(peer.maildir.countMessages(containing: "\(token)-a") == 0)
            #expect(peer.maildir.countMessages(containing: "\(token)-b") == 0)
            let subjects = peer.maildir.subjects(prefix: token)
            for n in 0..<3 { #expect(subjects["\(token)-c\(n)"] == 1, "c\(n) through SMTP once: \(subjects)") }
            #expect(!setup.log.contains(peer.password), "the password reached the log")
        }
    }

    @Test("EWS: exchange-version at the next cycle, user at once", .timeLimit(.minutes(2)))
    func ewsVersionAndUser() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let setup = try Setup()
            defer { setup.finish() }
            let token = "reload-ews-\(UUID().uuidString.prefix(8))"
            func smtpClient(user: String, version: String) -> String {
                """
                server-type = EWS
                server = \(base)/EWS/Exchange.asmx
                enable-authentication = true
                user = \(user)
                password = ews-pass
                exchange-version = \(version)
                """
            }
            let outbox = "tls-ca-file = \(TestCertificates.builtIn.caFile)"
            try setup.write(smtpClient(user: "agent@contoso.test", version: "Exchange2010"), outbox: outbox)
            try await setup.start()
            let first = try await setup.submit("\(token)-1", from: "agent@contoso.test")
            #expect(try await waitForMessage(setup.port, first, status: "delivered")["status"] as? String == "delivered")
            #expect(await state.lastEWSVersion == "Exchange2010")

            // Exchange now accepts only the other account: the next request must use it.
            await state.set { $0.ewsBasicUser = "other@contoso.test" }
            try setup.write(smtpClient(user: "other@contoso.test", version: "Exchange2016"), outbox: outbox)
            let status = try await setup.reload()
            #expect((status["last_reload_error"] as? String ?? "").isEmpty)
            #expect((status["pending_restart"] as? [String] ?? []).isEmpty, "\(status["pending_restart"] ?? "")")
            let second = try await setup.submit("\(token)-2", from: "other@contoso.test")
            let answer = try await waitForMessage(setup.port, second, status: "delivered")
            #expect(answer["status"] as? String == "delivered", "\(answer)")
            #expect(await state.lastEWSVersion == "Exchange2016")
            #expect(Self.count("\(token)-2", in: await state.delivered) == 1)
        }
    }
}
