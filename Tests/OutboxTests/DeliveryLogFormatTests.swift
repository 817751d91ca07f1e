import Foundation
import Testing

@testable import Outbox

/// The delivery log's two formats: logfmt quoting and JSON, parsed back.
@Suite("Delivery log lines")
struct DeliveryLogFormatTests {
    static let entry = DeliveryLogEntry(
        time: Date(timeIntervalSince1970: 1_790_000_000.25), queueID: "01J0ABC", messageID: "<m.1@example.test>", route: "default",
        attempt: 2, from: "app@example.test",
        recipients: [
            .init(address: "a@example.test", result: "delivered", code: 250, enhancedCode: "2.1.5", reply: "Ok"),
            .init(address: "b@example.test", result: "failed", code: 550, enhancedCode: "5.1.1", reply: "User \"b\" unknown\r\nsecond line"),
        ],
        result: "delivered", transport: "smtp", destination: "mx.example.test:587", reply: "250 2.0.0 Ok: queued as 4Xk=",
        error: nil, durationSeconds: 0.1234, bytes: 2048, tls: "TLSv1.3", traceID: nil)

    @Test("logfmt: fixed keys, quoted values with spaces, quotes and =, recipients as address:result:code")
    func logfmt() {
        let line = Self.entry.logfmt
        #expect(line.hasPrefix("ts=2026-"))
        #expect(line.contains(" event=delivery id=01J0ABC message_id=<m.1@example.test> route=default attempt=2 from=app@example.test "))
        #expect(line.contains(" rcpt=a@example.test:delivered:250,b@example.test:failed:550 "))
        #expect(line.contains(#" reply="250 2.0.0 Ok: queued as 4Xk=" "#))
        #expect(line.contains(" duration_ms=123 bytes=2048 tls=TLSv1.3"))
        #expect(!line.contains("\n"))
        #expect(!line.contains("error="), "no error key without an error")
        #expect(DeliveryLogEntry.logfmtValue(#"say "hi"\now"#) == #""say \"hi\"\\now""#)
        #expect(DeliveryLogEntry.logfmtValue("") == #""""#)
        #expect(DeliveryLogEntry.logfmtValue("a\nb") == #""a\nb""#)
    }

    @Test("JSON: one object a line that parses back, with each recipient's result and reply")
    func json() throws {
        let line = Self.entry.json
        #expect(!line.contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["event"] as? String == "delivery")
        #expect(object["id"] as? String == "01J0ABC")
        #expect(object["message_id"] as? String == "<m.1@example.test>")
        #expect(object["attempt"] as? Int == 2)
        #expect(object["bytes"] as? Int == 2048)
        #expect(object["duration_ms"] as? Int == 123)
        #expect(object["tls"] as? String == "TLSv1.3")
        let recipients = try #require(object["recipients"] as? [[String: Any]])
        #expect(recipients.count == 2)
        #expect(recipients[1]["result"] as? String == "failed")
        #expect(recipients[1]["code"] as? Int == 550)
        #expect(recipients[1]["enhanced_code"] as? String == "5.1.1")
        #expect(recipients[1]["reply"] as? String == #"User "b" unknown / second line"#)
    }

    @Test("the null sender is written <>")
    func nullSender() {
        var entry = Self.entry
        entry.from = ""
        #expect(entry.logfmt.contains(" from=<> "))
        #expect(entry.json.contains(#""from":"<>""#))
    }
}
