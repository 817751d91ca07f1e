import Foundation
import Logging
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

@testable import Outbox

/// Who writes a delivery line: a direct `Mailer.send` writes one (no queue id); a send made by
/// the dispatcher through the same mailer writes exactly one, the dispatcher's (with the id).
@Suite("Delivery log: direct sends and the dispatcher's")
struct DeliveryLogLinesTests {
    static func delivery(_ recorder: LogRecorder) -> [String] { recorder.messages.filter { $0.contains("event=delivery") } }

    @Test("one line per send, from the mailer for a direct send and from the dispatcher for a queued one")
    func oneLineEach() async throws {
        let dir = NSTemporaryDirectory() + "outbox-dlog-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let configuration = try OutboxConfiguration.parse(
            text: "[outbox]\ndata-directory = \(dir)\n", fileName: "outbox.cfg", overrides: [], environment: [:])
        let mailer = try Mailer(configuration: configuration)
        let recorder = LogRecorder()
        mailer.deliveryLog.logger = recorder.logger(label: DeliveryLog.label)
        let message = try RawMessage(bytes: Array("From: a@example.test\r\nTo: b@example.test\r\nMessage-ID: <d1@example.test>\r\n\r\nx\r\n".utf8))
        _ = try await mailer.send(message)
        var lines = Self.delivery(recorder)
        #expect(lines.count == 1)
        #expect(lines.first?.contains(" from=a@example.test rcpt=b@example.test:delivered result=delivered transport=file ") == true, "\(lines)")
        #expect(lines.first?.contains(" id=") == false, "a direct send has no queue id")

        let (store, storeDir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: storeDir) }
        let dispatcher = Dispatcher(store: store, sender: mailer)
        dispatcher.deliveryLog.logger = recorder.logger(label: DeliveryLog.label)
        let queued = try await store.enqueue(
            NewMessage(from: "a@example.test", recipients: ["c@example.test"], content: Array("From: a@example.test\r\n\r\ny\r\n".utf8)), now: 1)
        let claimed = try #require(try await store.claim(limit: 1, owner: dispatcher.instanceID, now: 2, lease: 60).first)
        await dispatcher.deliver(claimed, settings: dispatcher.settings)
        lines = Self.delivery(recorder)
        #expect(lines.count == 2, "\(lines)")
        #expect(lines.last?.contains(" id=\(queued.id) ") == true, "\(lines)")
        #expect(lines.last?.contains(" attempt=1 ") == true)
        try await store.close()
    }
}
