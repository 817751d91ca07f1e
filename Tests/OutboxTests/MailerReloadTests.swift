import Foundation
import Logging
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import Testing

@testable import OutboxTransports

/// `Mailer.reload` without peers: which reloads replace the transport, which are refused, and
/// that the replacement carries the new options (none of these tests sends a message).
@Suite("Mailer reload")
struct MailerReloadTests {
    static func smtp(_ lines: String = "") throws -> OutboxConfiguration {
        try OutboxConfiguration.parse(
            text: "[smtp-client]\nserver = 127.0.0.1\nport = 1\n\(lines)\n", fileName: "outbox.cfg", overrides: [], environment: [:])
    }

    /// Runs `body` with the mailer's `run()` going, then shuts it down.
    static func running(_ mailer: Mailer, _ body: (Mailer) async throws -> Void) async throws {
        let runner = Task { try await mailer.run() }
        do {
            try await body(mailer)
        } catch {
            await mailer.shutdown()
            runner.cancel()
            throw error
        }
        await mailer.shutdown()
        runner.cancel()
        _ = try? await runner.value
    }

    @Test("an immediate option replaces the SMTP transport, whose pool gets the new token margin")
    func immediateOptionReplacesTransport() async throws {
        let mailer = try Mailer(configuration: Self.smtp("token-expiry-margin-time = 00:00:10"))
        try await Self.running(mailer) { mailer in
            let old = try #require(mailer.transport as? SMTPTransport)
            #expect(old.pool.configuration.tokenExpiryMargin == .seconds(10))
            let waiting = try mailer.reload(Self.smtp("token-expiry-margin-time = 00:01:40"))
            #expect(waiting.isEmpty)
            #expect(mailer.transportGeneration == 1)
            let new = try #require(mailer.transport as? SMTPTransport)
            #expect(new !== old)
            #expect(new.pool.configuration.tokenExpiryMargin == .seconds(100))
            #expect(mailer.configuration.smtpClient.tokenExpiryMarginTime == .seconds(100))
            // The old transport, with nothing in flight, is shut down: it takes no message.
            var refused = false
            let message = try RawMessage(bytes: Array("From: a@b.test\r\nTo: c@d.test\r\n\r\nx\r\n".utf8))
            for _ in 0..<50 where !refused {
                do throws(DeliveryError) {
                    _ = try await old.send(message, envelope: nil)
                } catch {
                    refused = error.message.contains("shut")
                }
                if !refused { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(refused, "the retired transport still takes messages")
        }
    }

    @Test("an option that takes effect at restart keeps the transport and is reported")
    func restartOptionKeepsTransport() async throws {
        let mailer = try Mailer(configuration: Self.smtp())
        try await Self.running(mailer) { mailer in
            let waiting = try mailer.reload(Self.smtp("cnx-pool-size = 3\n[outbox]\nretry-initial-delay = 00:00:05"))
            #expect(waiting.map(\.name) == ["cnx-pool-size"])
            #expect(mailer.transportGeneration == 0)
            #expect(mailer.configuration.smtpClient.cnxPoolSize == 10)
            #expect(mailer.configuration.outbox.retryInitialDelay == .seconds(5))
        }
    }

    @Test("removing server is refused and the running configuration stays")
    func removingServerIsRefused() async throws {
        let mailer = try Mailer(configuration: Self.smtp())
        try await Self.running(mailer) { mailer in
            let none = try OutboxConfiguration.parse(text: "[smtp-client]\nport = 1\n", fileName: "outbox.cfg", overrides: [], environment: [:])
            #expect {
                try mailer.reload(none)
            } throws: { error in
                (error as? Mailer.ReloadRefused)?.code == "reload_server_removed"
                    && "\(error)".contains("server is not set")
            }
            #expect(mailer.transportName == "smtp")
            #expect(mailer.configuration.smtpClient.server == "127.0.0.1")
            #expect(mailer.transportGeneration == 0)
        }
    }

    @Test("from the file transport to a server, and server-type to GRAPH, at once")
    func fileToServerAndGraph() async throws {
        let mailer = try Mailer(configuration: OutboxConfiguration())
        try await Self.running(mailer) { mailer in
            #expect(mailer.transportName == "file")
            try mailer.reload(Self.smtp())
            #expect(mailer.transportName == "smtp")
            let graph = configuration("https://127.0.0.1:1", type: .graph)
            var withGraph = try Self.smtp()
            withGraph.smtpClient = graph.smtpClient
            withGraph.outbox = graph.outbox
            // Every Graph setting but server-type (at the next cycle) takes effect at restart:
            // start from a configuration that already has them.
            var start = withGraph
            start.smtpClient.serverType = .smtp
            start.smtpClient.server = "127.0.0.1"
            let mailer2 = try Mailer(configuration: start)
            try await Self.running(mailer2) { mailer2 in
                try mailer2.reload(withGraph)
                #expect(mailer2.transportName == "graph")
                #expect(mailer2.transportGeneration == 1)
            }
        }
    }

    @Test("a server-type the new settings cannot build is refused whole")
    func unbuildableTransportIsRefused() async throws {
        let mailer = try Mailer(configuration: Self.smtp())
        try await Self.running(mailer) { mailer in
            // GRAPH without client-id, directory-id or a secret (they take effect at restart).
            var graph = try Self.smtp()
            graph.smtpClient.port = 2
            graph.smtpClient.serverType = .graph
            #expect {
                try mailer.reload(graph)
            } throws: { error in
                guard let refused = error as? Mailer.ReloadRefused else { return false }
                return refused.description.contains("GRAPH") && !refused.code.isEmpty
            }
            #expect(mailer.transportName == "smtp")
            #expect(mailer.configuration.smtpClient.port == 1)
        }
    }
}
