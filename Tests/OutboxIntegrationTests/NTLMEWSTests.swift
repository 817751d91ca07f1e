import Foundation
import Logging
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import Testing

/// Tests/NTLM/ntlm_ews_server.py: an EWS endpoint behind pyspnego's NTLM acceptor (a real
/// NTLMv2 and MIC check), one process per test. scripts/test.sh installs pyspnego.
final class NTLMEWSServer: @unchecked Sendable {
    let process = Process()
    let directory: URL
    let port: Int
    static let password = "S3cret-\(UUID().uuidString.prefix(8))"

    init(schemes: String = "NTLM,Negotiate", plain: Bool = false, closeAfter: Int = 0) throws {
        directory = try OutboxBinary.temporaryDirectory("outbox-ntlm")
        let users = directory.appendingPathComponent("users")
        try Data("TESTDOM:ntlmuser:\(Self.password)\n:ntlmuser@testdom.test:\(Self.password)\n".utf8).write(to: users)
        let certificates = TestCertificates.builtIn
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments =
            [
                "python3", OutboxBinary.packageRoot.appendingPathComponent("Tests/NTLM/ntlm_ews_server.py").path,
                "--users", users.path, "--events", directory.appendingPathComponent("events.jsonl").path, "--schemes", schemes,
                "--close-after", "\(closeAfter)",
            ] + (plain ? ["--plain"] : ["--cert", certificates.certificateFile, "--key", certificates.keyFile])
        let out = Pipe()
        process.standardOutput = out
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // The first line is "PORT <n>"; anything else (pyspnego missing) fails the test.
        var line = Data()
        while true {
            let byte = out.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty || byte == Data("\n".utf8) { break }
            line += byte
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("PORT "), let port = Int(text.dropFirst(5)) else {
            kill(process.processIdentifier, SIGKILL)
            throw Failure(description: "the NTLM test server did not start (is pyspnego installed? scripts/test.sh installs it): \(text)")
        }
        self.port = port
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    var url: String { "https://127.0.0.1:\(port)/EWS/Exchange.asmx" }

    /// The server's events, in order.
    func events() throws -> [[String: String]] {
        let text = (try? String(contentsOf: directory.appendingPathComponent("events.jsonl"), encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map {
            let object = try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] ?? [:]
            return object.compactMapValues { value in (value as? String) ?? (value as? Int).map(String.init) }
        }
    }

    func stop() {
        // SIGKILL: the test process may hand an ignored SIGTERM down to its children.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: directory)
    }

    func configuration(url: String? = nil, user: String = #"TESTDOM\ntlmuser"#, password: String = password, mechanisms: String? = nil)
        throws -> OutboxConfiguration
    {
        var c = try OutboxConfiguration.parse(
            text: "", fileName: "test.cfg",
            overrides: [
                "server-type=EWS", "server=\(url ?? self.url)", "enable-authentication=true", "user=\(user)", "password=\(password)",
                "connect-timeout=00:00:05", "protocol-timeout=00:00:10",
            ] + (mechanisms.map { ["mail.ews.auth.mechanisms=\($0)"] } ?? []), environment: [:])
        c.outbox.tlsCAFile = TestCertificates.builtIn.caFile
        return c
    }
}

@Suite("EWS with NTLMv2 against pyspnego's acceptor", .serialized)
struct NTLMEWSTests {
    func withServer(
        schemes: String = "NTLM,Negotiate", plain: Bool = false, closeAfter: Int = 0, _ body: (NTLMEWSServer) async throws -> Void
    ) async throws {
        let server = try NTLMEWSServer(schemes: schemes, plain: plain, closeAfter: closeAfter)
        defer { server.stop() }
        try await body(server)
    }

    /// Runs `body` with the transport, shutting it down whatever happens.
    func withTransport(
        _ configuration: OutboxConfiguration, logger: Logger = Logger(label: "outbox"), _ body: (any MailTransport) async throws -> Void
    ) async throws {
        let transport = try TransportFactory.make(configuration: configuration, logger: logger)
        do {
            try await body(transport)
        } catch {
            await transport.shutdown()
            throw error
        }
        await transport.shutdown()
    }

    @Test func basicFirstThenNTLMOneHandshakeForThreeMessages() async throws {
        try await withServer { server in
            var sent: [[UInt8]] = []
            try await withTransport(server.configuration()) { transport in
                for _ in 0..<3 {
                    let (message, bytes) = try rawMessage(from: "ntlmuser@testdom.test")
                    let report = try await transport.send(message)
                    #expect(report.allAccepted)
                    sent.append(bytes)
                }
            }
            let events = try server.events()
            // Basic went first (the server does not offer it), then one handshake on one
            // connection, and all three CreateItems on that connection.
            try #require(events.map { $0["event"]! } == ["unauthenticated", "negotiate", "authenticated", "served", "served", "served"])
            #expect(events[0]["scheme"] == "Basic")
            #expect(events[2]["user"] == #"TESTDOM\ntlmuser"#)
            #expect(events[2]["scheme"] == "NTLM")
            #expect(Set(events.dropFirst().map { $0["conn"]! }).count == 1)
            #expect(events.filter { $0["event"] == "served" }.map { Array(Data(base64Encoded: $0["mime"]!)!) } == sent)
        }
    }

    @Test func concurrentSendsShareOneAuthenticatedConnectionAndLogNoSecret() async throws {
        try await withServer { server in
            let recorder = LogRecorder()
            try await withTransport(server.configuration(), logger: recorder.logger(level: .trace)) { transport in
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    for _ in 0..<5 {
                        group.addTask {
                            let (message, _) = try rawMessage(from: "ntlmuser@testdom.test")
                            return try await transport.send(message).allAccepted
                        }
                    }
                    for try await accepted in group { #expect(accepted) }
                }
            }
            let events = try server.events()
            let served = events.filter { $0["event"] == "served" }
            #expect(served.count == 5)
            // The NTLM requests waited for each other: one handshake, one connection.
            #expect(events.filter { $0["event"] == "negotiate" }.count == 1)
            #expect(Set(served.map { $0["conn"]! }).count == 1)
            let hash = try NTLM.ntHash(password: NTLMEWSServer.password).map { String(format: "%02x", $0) }.joined()
            #expect(recorder.recorded.contains { $0.message.contains("using NTLM") })
            for entry in recorder.recorded {
                #expect(!entry.description.contains(NTLMEWSServer.password))
                #expect(!entry.description.lowercased().contains(hash))
                #expect(!entry.description.contains("TlRMTVNTUAAD"))  // base64 of "NTLMSSP\0" + type 3
            }
        }
    }

    @Test func negotiateOnlyWithAUPN() async throws {
        try await withServer(schemes: "Negotiate") { server in
            try await withTransport(server.configuration(user: "ntlmuser@testdom.test")) { transport in
                let (message, _) = try rawMessage(from: "ntlmuser@testdom.test")
                #expect(try await transport.send(message).allAccepted)
            }
            let authenticated = try #require(try server.events().first { $0["event"] == "authenticated" })
            #expect(authenticated["scheme"] == "Negotiate")
            #expect(authenticated["user"] == "ntlmuser@testdom.test")
        }
    }

    @Test func configuredNTLMNeverSendsBasic() async throws {
        try await withServer { server in
            try await withTransport(server.configuration(mechanisms: "NTLM")) { transport in
                let (message, _) = try rawMessage(from: "ntlmuser@testdom.test")
                #expect(try await transport.send(message).allAccepted)
            }
            #expect(try server.events().map { $0["event"]! } == ["negotiate", "authenticated", "served"])
        }
    }

    @Test func aReplacedConnectionIsAuthenticatedAgain() async throws {
        // The server closes each connection after one served request: every message needs a
        // new handshake on a new connection.
        try await withServer(closeAfter: 1) { server in
            try await withTransport(server.configuration(mechanisms: "NTLM")) { transport in
                for _ in 0..<3 {
                    let (message, _) = try rawMessage(from: "ntlmuser@testdom.test")
                    #expect(try await transport.send(message).allAccepted)
                }
            }
            let events = try server.events()
            let served = events.filter { $0["event"] == "served" }
            #expect(served.count == 3)
            #expect(Set(served.map { $0["conn"]! }).count == 3)
            #expect(events.filter { $0["event"] == "authenticated" }.count == 3)
            // Each handshake's two legs share a connection.
            for auth in events.filter({ $0["event"] == "authenticated" }) {
                #expect(events.contains { $0["event"] == "negotiate" && $0["conn"] == auth["conn"] })
            }
        }
    }

    @Test func aWrongPasswordIsAnAuthenticationRouteFault() async throws {
        try await withServer { server in
            let wrong = "Wrong-\(UUID().uuidString.prefix(8))"
            var failure: DeliveryError?
            try await withTransport(server.configuration(password: wrong)) { transport in
                let (message, _) = try rawMessage(from: "ntlmuser@testdom.test")
                failure = await deliveryError { try await transport.send(message) }
            }
            let error = try #require(failure)
            // The operator's to fix, not the message's: transient, with the route's alert.
            #expect(error.kind == .transient)
            #expect(error.routeFault == .authenticationFailed)
            #expect(error.message.contains("refused the NTLM credentials"))
            #expect(!error.message.contains(wrong))
            #expect(try server.events().contains { $0["event"] == "auth_failed" })
            #expect(try !server.events().contains { $0["event"] == "served" })
        }
    }

    @Test func plainHTTPIsRefusedBeforeAnyNTLMMessage() async throws {
        try await withServer(plain: true) { server in
            let url = "http://127.0.0.1:\(server.port)/EWS/Exchange.asmx"
            var failure: DeliveryError?
            try await withTransport(server.configuration(url: url)) { transport in
                let (message, _) = try rawMessage(from: "ntlmuser@testdom.test")
                failure = await deliveryError { try await transport.send(message) }
            }
            let error = try #require(failure)
            #expect(error.kind == .transient)
            #expect(error.routeFault == .configuration)
            #expect(error.message.contains("https"))
            #expect(try server.events().map { $0["event"]! } == ["unauthenticated"])
            // Asked for explicitly, NTLM over http is a configuration error.
            #expect(throws: TransportFactory.Unavailable.self) {
                try TransportFactory.make(configuration: server.configuration(url: url, mechanisms: "NTLM"))
            }
        }
    }
}

func deliveryError(_ body: () async throws -> DeliveryReport) async -> DeliveryError? {
    do {
        _ = try await body()
        return nil
    } catch let error as DeliveryError {
        return error
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}
