import Foundation
import Logging
import Outbox
import OutboxMIME
import OutboxTestSupport
import ServiceLifecycle
import Testing

@Suite("Dispatcher", .serialized)
struct DispatcherTests {
    @Test("against the real Postfix: 40 queued messages are each delivered once")
    func postfix() async throws {
        let peer = try TestPeers.fromEnvironment()
        let mailer = try Mailer(configuration: peer.configuration(port: peer.plainPort))
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let token = "disp-\(UUID().uuidString.prefix(8))"
        for i in 0..<40 {
            let m = Message(
                from: try Address("sender@example.test"), to: [try Address("rcpt@elsewhere.example")], subject: "\(token)-\(i)", text: "body \(i)\r\n"
            )
            let bytes = try await m.byteStream(options: MIMEEncodingOptions()).collect()
            _ = try await store.enqueue(
                NewMessage(from: "sender@example.test", recipients: ["rcpt@elsewhere.example"], content: bytes, messageID: m.messageID),
                now: Date().timeIntervalSince1970)
        }
        let dispatcher = Dispatcher(store: store, sender: mailer, settings: DispatcherSettings(concurrency: 4, pollInterval: .milliseconds(50)))
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: mailer, successTerminationBehavior: .ignore), .init(service: dispatcher)], logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let deadline = ContinuousClock.now + .seconds(40)
            while ContinuousClock.now < deadline, try await store.counts()[.delivered] != 40 {
                try await Task.sleep(for: .milliseconds(100))
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(try await store.counts()[.delivered] == 40)
        // Postfix delivers to the maildir shortly after accepting.
        var subjects: [String: Int] = [:]
        for _ in 0..<100 {
            subjects = peer.maildir.subjects(prefix: token)
            if subjects.count == 40 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(subjects.count == 40)
        #expect(subjects.values.allSatisfy { $0 == 1 })
        let sample = try #require(try await store.list(status: .delivered, limit: 1, after: nil).first)
        #expect(sample.attempts.first?.transport == "smtp")
        #expect(sample.attempts.first?.reply?.hasPrefix("250") == true)
    }
}
