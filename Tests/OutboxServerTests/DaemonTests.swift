import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Outbox
import OutboxConfig
import OutboxServer
import ServiceLifecycle
import Testing

@Suite("Daemon", .serialized)
struct DaemonTests {
    func tempDir() -> String {
        let dir = NSTemporaryDirectory() + "outbox-daemon-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test("reload: port and enable-debug apply at once, a restart-only change is reported as pending, an invalid file is refused whole")
    func reload() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/outbox.cfg"
        func write(_ text: String) throws { try text.write(toFile: file, atomically: true, encoding: .utf8) }
        try write(
            "[smtp-client]\nserver = 127.0.0.1\nport = 2588\n\n[outbox]\ndata-directory = \(dir)/data\nhttp-listen = 127.0.0.1:18025\nretry-initial-delay = 00:00:30\n"
        )
        let daemon = try await Daemon.make(file: file, environment: [:])
        #expect(daemon.mailer.configuration.smtpClient.port == 2588)
        #expect(daemon.mailer.configuration.smtpClient.enableDebug == false)

        try write(
            "[smtp-client]\nserver = 127.0.0.1\nport = 2525\nenable-debug = true\n\n[outbox]\ndata-directory = \(dir)/data\nhttp-listen = 127.0.0.1:19025\nretry-initial-delay = 00:01:00\n"
        )
        guard case .success(let pending) = daemon.reload() else { Issue.record("reload refused a valid file"); return }
        #expect(daemon.mailer.configuration.smtpClient.port == 2525)
        #expect(daemon.mailer.configuration.smtpClient.enableDebug == true)
        #expect(daemon.dispatcher.settings.retry.initialDelay == .seconds(60))
        #expect(pending == ["outbox.http-listen"])
        let status = await daemon.status()
        #expect(status["pending_restart"] as? [String] == ["outbox.http-listen"])

        // The status endpoint shows it too.
        let app = Application(router: daemon.api.makeRouter())
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/status", method: .get) { r in
                #expect(r.status == .ok)
                let j = try #require(try JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any])
                #expect(j["pending_restart"] as? [String] == ["outbox.http-listen"])
                let options = try #require(j["configuration"] as? [[String: String]])
                #expect(options.first { $0["name"] == "port" }?["value"] == "2525")
            }
        }

        try write("[smtp-client]\nserver = 127.0.0.1\nport = 99999\n")
        guard case .failure = daemon.reload() else { Issue.record("an invalid file was accepted"); return }
        #expect(daemon.mailer.configuration.smtpClient.port == 2525)
        #expect(daemon.pendingRestart == ["outbox.http-listen"])
        try await daemon.store.close()
    }

    @Test("listening beyond loopback without api-tokens is refused at start")
    func openListenRefused() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        await #expect(throws: DaemonError.self) {
            _ = try await Daemon.make(file: nil, overrides: ["outbox.http-listen=0.0.0.0:18026", "outbox.data-directory=\(dir)"], environment: [:])
        }
    }

    @Test("with no server configured, a submitted message is delivered by the file transport into data-directory/sent")
    func fileTransportEndToEnd() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let daemon = try await Daemon.make(
            file: nil, overrides: ["outbox.data-directory=\(dir)", "outbox.http-listen=127.0.0.1:18027"], environment: [:])
        #expect(daemon.banner.contains("file transport"))
        let app = Application(router: daemon.api.makeRouter())
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: daemon.mailer, successTerminationBehavior: .ignore), .init(service: daemon.dispatcher)],
                logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await app.test(.router) { client in
                let id = try await client.execute(
                    uri: "/v1/messages", method: .post, headers: [.contentType: "application/json"],
                    body: ByteBuffer(string: #"{"from":"a@example.test","to":"b@example.test","subject":"file me","text":"hi"}"#)
                ) { r in
                    #expect(r.status == .accepted)
                    return try #require(try JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any])["id"] as? String
                }
                var status = ""
                for _ in 0..<100 {
                    status = try await client.execute(uri: "/v1/messages/\(id ?? "")", method: .get) { r in
                        (try JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any])?["status"] as? String ?? ""
                    }
                    if status == "delivered" { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(status == "delivered")
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let sent = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/sent")) ?? []
        #expect(sent.filter { $0.hasSuffix(".eml") }.count == 1)
        try await daemon.store.close()
    }
}
