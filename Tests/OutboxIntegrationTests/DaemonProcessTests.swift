import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension TestPeers {
    /// `-o` overrides for the daemon: Postfix's clear-text port with AUTH PLAIN.
    var overrides: [String] {
        [
            "server=\(smtpHost)", "port=\(plainPort)", "enable-authentication=true", "user=\(user)", "password=\(password)",
            "mail.smtp.auth.mechanisms=PLAIN",
        ]
    }
}

/// One `outbox serve` process.
final class DaemonProcess: @unchecked Sendable {
    let process = Process()
    let port: Int
    let logPath: String

    init(port: Int, overrides: [String], logPath: String, config: String? = nil) throws {
        self.port = port
        self.logPath = logPath
        process.executableURL = try OutboxBinary.url()
        process.arguments =
            ["serve"] + (config.map { ["--config", $0] } ?? [])
            + (config == nil ? overrides + ["outbox.http-listen=127.0.0.1:\(port)"] : overrides).flatMap { ["-o", $0] }
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Waits until /healthz answers.
    func waitReady(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard process.isRunning else { throw DaemonFailed(log: (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "") }
            if (try? await TestClient.withClient(host: "127.0.0.1", port: port) { client in
                try await client.execute(TestClient.Request("/healthz", method: .get)).status.code
            }) == 200 {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DaemonFailed(log: "not ready in time")
    }

    func kill9() {
        kill(pid, SIGKILL)
        process.waitUntilExit()
    }

    func terminate() {
        if process.isRunning { kill(pid, SIGTERM) }
        process.waitUntilExit()
    }

    struct DaemonFailed: Error, CustomStringConvertible {
        var log: String
        var description: String { "the daemon stopped: \(log.suffix(2000))" }
    }
}

@Suite("Daemon processes", .serialized)
struct DaemonProcessTests {
    @Test("three daemons on one PostgreSQL deliver 3,000 messages, each exactly once, sharing the work", .timeLimit(.minutes(4)))
    func threeDaemons() async throws {
        let peer = try TestPeers.fromEnvironment()
        let url = peer.postgresURL
        let store = try await PostgresOutboxStore.open(url: url)
        try await store.migrate()
        try await store.deleteAllForTesting()
        let token = "three-\(UUID().uuidString.prefix(8))"
        let dir = NSTemporaryDirectory() + "outbox-three-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let total = 3000
        let base = freePort()
        var daemons: [DaemonProcess] = []
        defer { for d in daemons { d.terminate() } }
        for i in 0..<3 {
            daemons.append(
                try DaemonProcess(
                    port: base + i,
                    overrides: peer.overrides + [
                        "outbox.store=\(url)", "outbox.data-directory=\(dir)/d\(i)", "outbox.delivery-concurrency=6", "cnx-pool-size=6",
                    ], logPath: "\(dir)/d\(i).log"))
        }
        for d in daemons { try await d.waitReady() }
        // Submissions over HTTP, spread over the three daemons.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<6 {
                group.addTask {
                    try await TestClient.withClient(host: "127.0.0.1", port: base + worker % 3) { client in
                        for n in stride(from: worker, to: total, by: 6) {
                            let body = #"{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)-\#(n)","text":"n \#(n)"}"#
                            let r = try await client.execute(
                                TestClient.Request(
                                    "/v1/messages", method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: body)))
                            guard r.status == .accepted else { throw DaemonProcess.DaemonFailed(log: "submission \(n): \(r.status)") }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let deadline = ContinuousClock.now + .seconds(180)
        var delivered = 0
        while ContinuousClock.now < deadline {
            delivered = try await store.counts()[.delivered] ?? 0
            if delivered == total { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(delivered == total)
        for d in daemons { d.terminate() }
        var counts: [String: Int] = [:]
        for _ in 0..<100 {
            counts = peer.maildir.subjects(prefix: token)
            if counts.count == total { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(counts.count == total, "distinct messages in Postfix's store")
        let duplicates = counts.values.filter { $0 > 1 }.count
        #expect(duplicates == 0, "messages delivered more than once")
        // Work shared: each instance made a fair part of the deliveries.
        var perInstance: [String: Int] = [:]
        var cursor: Int64?
        while true {
            let page = try await store.list(status: .delivered, limit: 1000, after: cursor)
            if page.isEmpty { break }
            for m in page { perInstance[m.attempts.last?.instance ?? "?", default: 0] += 1 }
            cursor = page.last?.sequence
        }
        print("three daemons: deliveries per instance \(perInstance.values.sorted())")
        #expect(perInstance.count == 3)
        #expect(perInstance.values.allSatisfy { $0 >= total / 10 })
        try await store.deleteAllForTesting()
        try await store.close()
    }

    @Test(
        "crash safety: 2,000 submissions while the daemon is killed with -9 and restarted; every accepted message is delivered",
        .timeLimit(.minutes(4)))
    func crashSafety() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = "crash-\(UUID().uuidString.prefix(8))"
        let dir = NSTemporaryDirectory() + "outbox-crash-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let total = 2000
        let port = freePort()
        let overrides =
            peer.overrides + [
                "outbox.data-directory=\(dir)/data", "outbox.delivery-concurrency=4", "cnx-pool-size=4",
                "outbox.unknown-outcome-retries=10", "outbox.retry-initial-delay=00:00:01", "outbox.retry-max-delay=00:00:02",
            ]
        let current = NIOLockedBox(try DaemonProcess(port: port, overrides: overrides, logPath: "\(dir)/daemon.log"))
        defer { current.value.terminate() }
        try await current.value.waitReady()
        let submitted = NIOLockedBox(false)
        let kills = NIOLockedBox(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Submitter: each message with its own Idempotency-Key; a request that fails is sent again.
            group.addTask {
                for n in 0..<total {
                    let body = #"{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)-\#(n)","text":"n \#(n)"}"#
                    while true {
                        let status = try? await TestClient.withClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(5))) {
                            client in
                            try await client.execute(
                                TestClient.Request(
                                    "/v1/messages", method: .post,
                                    headers: [.contentType: "application/json", HTTPFields.Element.Name("Idempotency-Key")!: "\(token)-\(n)"],
                                    body: ByteBuffer(string: body))
                            ).status
                        }
                        if status == .accepted { break }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                }
                submitted.value = true
            }
            // Killer: kill -9 at random moments, restart.
            group.addTask {
                while !submitted.value || kills.value < 3 {
                    try await Task.sleep(for: .milliseconds(Int.random(in: 300...1500)))
                    current.value.kill9()
                    kills.value += 1
                    current.value = try DaemonProcess(port: port, overrides: overrides, logPath: "\(dir)/daemon.log")
                    try await current.value.waitReady()
                }
            }
            try await group.waitForAll()
        }
        // Let the last daemon finish the queue.
        let deadline = ContinuousClock.now + .seconds(150)
        while ContinuousClock.now < deadline {
            let open = try await TestClient.withClient(host: "127.0.0.1", port: port) { client -> Int in
                let r = try await client.execute(TestClient.Request("/v1/status", method: .get))
                let j = try JSONSerialization.jsonObject(with: Data((r.body ?? ByteBuffer()).readableBytesView)) as? [String: Any]
                let q = j?["queue"] as? [String: Int] ?? [:]
                return (q["queued"] ?? 0) + (q["deferred"] ?? 0) + (q["sending"] ?? 0)
            }
            if open == 0 { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        current.value.terminate()
        let store = try await SQLiteOutboxStore.open(path: "\(dir)/data/outbox.sqlite")
        var messages: [StoredMessage] = []
        var cursor: Int64?
        while true {
            let page = try await store.list(status: nil, limit: 1000, after: cursor)
            if page.isEmpty { break }
            messages += page
            cursor = page.last?.sequence
        }
        try await store.close()
        #expect(messages.count == total, "one stored message per accepted submission")
        #expect(
            messages.allSatisfy { $0.status == .delivered }, "statuses: \(Dictionary(grouping: messages, by: \.status.rawValue).mapValues(\.count))")
        var counts: [String: Int] = [:]
        for _ in 0..<100 {
            counts = peer.maildir.subjects(prefix: token)
            if counts.count == total { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(counts.count == total, "every accepted message is in Postfix's store")
        let possible = Set(messages.filter(\.possibleDuplicate).compactMap(\.idempotencyKey))
        let duplicated = counts.filter { $0.value > 1 }.map(\.key)
        #expect(duplicated.allSatisfy { possible.contains($0) }, "duplicates only where the outcome was unknown")
        print(
            "crash test: \(kills.value) kill -9s, \(total) accepted, \(counts.count) delivered, \(duplicated.count) duplicates (\(possible.count) marked possible duplicates)"
        )
    }
}

extension DaemonProcessTests {
    @Test(
        "SIGHUP mid-run: port and enable-debug apply at once, http-listen waits for a restart, an invalid file is refused whole",
        .timeLimit(.minutes(2)))
    func sighupReload() async throws {
        let peer = try TestPeers.fromEnvironment()
        let dir = NSTemporaryDirectory() + "outbox-hup-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let deadPort = freePort() + 1000
        let file = dir + "/outbox.cfg"
        func write(smtpPort: String, debug: Bool, listen: Int) throws {
            try """
            [smtp-client]
            server = 127.0.0.1
            port = \(smtpPort)
            enable-authentication = true
            user = \(peer.user)
            password = \(peer.password)
            enable-debug = \(debug)
            mail.smtp.auth.mechanisms = PLAIN

            [outbox]
            data-directory = \(dir)/data
            http-listen = 127.0.0.1:\(listen)
            retry-initial-delay = 00:00:01
            retry-max-delay = 00:00:01
            """.write(toFile: file, atomically: true, encoding: .utf8)
        }
        try write(smtpPort: String(peer.plainPort), debug: false, listen: port)
        let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
        defer { daemon.terminate() }
        try await daemon.waitReady()
        let submit = #"{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"hup","text":"x"}"#
        let (s1, first) = try await http(port, .post, "/v1/messages", submit)
        #expect(s1 == .accepted)
        let firstID = try #require(first["id"] as? String)
        func waitStatus(_ id: String, _ wanted: String) async throws -> [String: Any] {
            var last: [String: Any] = [:]
            for _ in 0..<100 {
                last = try await http(port, .get, "/v1/messages/\(id)").1
                if last["status"] as? String == wanted { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            return last
        }
        #expect(try await waitStatus(firstID, "delivered")["status"] as? String == "delivered")

        // Mid-run: a port where nothing listens, debug on, another http-listen; SIGHUP.
        try write(smtpPort: String(deadPort), debug: true, listen: port + 1)
        kill(daemon.pid, SIGHUP)
        var status: [String: Any] = [:]
        for _ in 0..<50 {
            status = try await http(port, .get, "/v1/status").1
            if option(status, "port") == String(deadPort) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(option(status, "port") == String(deadPort))
        #expect(option(status, "enable-debug") == "true")
        #expect(status["pending_restart"] as? [String] == ["outbox.http-listen"])
        #expect(status["listen"] as? String == "127.0.0.1:\(port)", "still listening where it started")
        let second = try #require(try await http(port, .post, "/v1/messages", submit).1["id"] as? String)
        let deferred = try await waitStatus(second, "deferred")
        #expect(deferred["status"] as? String == "deferred", "the new port is used at once: \(deferred)")

        // Back to the real port: the deferred message is delivered on its next attempt.
        try write(smtpPort: String(peer.plainPort), debug: true, listen: port + 1)
        kill(daemon.pid, SIGHUP)
        #expect(try await waitStatus(second, "delivered")["status"] as? String == "delivered")
        let log = (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? ""
        #expect(log.contains("outbox.http-listen changed"))

        // An invalid file is refused whole: the port stays, the error is shown.
        try "[smtp-client]\nserver = 127.0.0.1\nport = 99999\n".write(toFile: file, atomically: true, encoding: .utf8)
        kill(daemon.pid, SIGHUP)
        for _ in 0..<50 {
            status = try await http(port, .get, "/v1/status").1
            if (status["last_reload_error"] as? String ?? "").isEmpty == false { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect((status["last_reload_error"] as? String ?? "").contains("port"))
        #expect(option(status, "port") == String(peer.plainPort))
    }
}

final class NIOLockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    init(_ value: T) { _value = value }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return _value }
        set { lock.lock(); _value = newValue; lock.unlock() }
    }
}
