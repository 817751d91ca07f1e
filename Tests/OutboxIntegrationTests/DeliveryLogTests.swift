import Foundation
import OutboxTestSupport
import Testing

/// The delivery log of a running `outbox serve` (its standard error), against the real Postfix
/// over STARTTLS: a delivered message, a deferred one (450), a refused one (5xx) and a mixed one,
/// each line parsed back (logfmt, then JSON) and found by its queue id and its Message-ID.
@Suite("Delivery log", .serialized)
struct DeliveryLogTests {
    /// One delivery line, parsed back: its fields, and the recipients' results.
    struct Line {
        var fields: [String: String]
        var recipients: [String: String]
    }

    /// Parses a logfmt line (`key=value`, values in double quotes with `\"` and `\\`).
    static func logfmt(_ line: String) -> [String: String] {
        var fields: [String: String] = [:]
        var i = line.startIndex
        while i < line.endIndex {
            while i < line.endIndex, line[i] == " " { i = line.index(after: i) }
            guard let eq = line[i...].firstIndex(of: "=") else { break }
            let key = String(line[i..<eq])
            i = line.index(after: eq)
            var value = ""
            if i < line.endIndex, line[i] == "\"" {
                i = line.index(after: i)
                while i < line.endIndex, line[i] != "\"" {
                    if line[i] == "\\" {
                        i = line.index(after: i)
                        switch line[i] {
                        case "n": value.append("\n")
                        default: value.append(line[i])
                        }
                    } else {
                        value.append(line[i])
                    }
                    i = line.index(after: i)
                }
                if i < line.endIndex { i = line.index(after: i) }
            } else {
                while i < line.endIndex, line[i] != " " {
                    value.append(line[i])
                    i = line.index(after: i)
                }
            }
            fields[key] = value
        }
        return fields
    }

    /// The delivery lines of a log, parsed as `format` (other log lines are skipped).
    static func lines(_ log: String, format: String) throws -> [Line] {
        var out: [Line] = []
        for raw in log.split(separator: "\n").map(String.init) {
            if format == "json" {
                guard raw.hasPrefix("{"), raw.contains(#""event":"delivery""#) else { continue }
                let object = try #require(try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any], "not a JSON object: \(raw)")
                var fields: [String: String] = [:]
                for (k, v) in object where !(v is [Any]) { fields[k] = "\(v)" }
                var recipients: [String: String] = [:]
                for r in object["recipients"] as? [[String: Any]] ?? [] {
                    recipients[r["address"] as? String ?? "?"] = "\(r["result"] ?? "?")" + (r["code"].map { ":\($0)" } ?? "")
                }
                out.append(Line(fields: fields, recipients: recipients))
            } else {
                guard raw.contains("event=delivery ") else { continue }
                #expect(raw.hasPrefix("ts="), "a delivery line is bare logfmt: \(raw)")
                let fields = logfmt(raw)
                var recipients: [String: String] = [:]
                for r in (fields["rcpt"] ?? "").split(separator: ",") {
                    let parts = r.split(separator: ":", maxSplits: 1).map(String.init)
                    recipients[parts[0]] = parts.count > 1 ? parts[1] : ""
                }
                out.append(Line(fields: fields, recipients: recipients))
            }
        }
        return out
    }

    @Test("logfmt and JSON lines: delivered, deferred, refused, mixed; greppable by id and Message-ID; no secret", .timeLimit(.minutes(3)))
    func deliveryLines() async throws {
        let peer = try TestPeers.fromEnvironment()
        for format in ["logfmt", "json"] {
            let dir = NSTemporaryDirectory() + "outbox-dlog-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let port = freePort()
            let token = "dlog-\(format)-\(UUID().uuidString.prefix(8))"
            // STARTTLS to the submission port, so the lines carry the TLS version.
            let overrides =
                [
                    "server=\(peer.smtpHost)", "port=\(peer.submissionPort)", "smtp-connection-security=start-tls-required",
                    "outbox.tls-ca-file=\(peer.caFile)", "enable-authentication=true", "user=\(peer.user)", "password=\(peer.password)",
                    "mail.smtp.auth.mechanisms=PLAIN", "outbox.data-directory=\(dir)/data", "outbox.retry-initial-delay=00:10:00",
                ] + (format == "json" ? ["outbox.log-format=json"] : [])
            let daemon = try DaemonProcess(port: port, overrides: overrides, logPath: "\(dir)/daemon.log")
            defer { daemon.terminate() }
            try await daemon.waitReady()
            func submit(_ name: String, to: [String]) async throws -> String {
                let list = to.map { "\"\($0)\"" }.joined(separator: ",")
                let body = #"{"from":"sender@example.test","to":[\#(list)],"subject":"\#(token)-\#(name)","text":"delivery log"}"#
                let (status, answer) = try await http(port, .post, "/v1/messages", body)
                #expect(status == .accepted, "\(answer)")
                return try #require(answer["id"] as? String)
            }
            let delivered = try await submit("ok", to: ["rcpt@elsewhere.example"])
            let deferred = try await submit("later", to: ["tempfail@example.test"])
            let refused = try await submit("refused", to: ["reject@example.test"])
            let mixed = try await submit("mixed", to: ["ok2@elsewhere.example", "reject@example.test"])
            #expect(try await waitForMessage(port, delivered, status: "delivered")["status"] as? String == "delivered")
            #expect(try await waitForMessage(port, deferred, status: "deferred")["status"] as? String == "deferred")
            #expect(try await waitForMessage(port, refused, status: "failed")["status"] as? String == "failed")
            #expect(try await waitForMessage(port, mixed, status: "delivered")["status"] as? String == "delivered")
            let messageID = try #require(try await http(port, .get, "/v1/messages/\(delivered)").1["message_id"] as? String)
            daemon.terminate()
            let log = try String(contentsOfFile: "\(dir)/daemon.log", encoding: .utf8)
            let lines = try Self.lines(log, format: format)
            func line(_ id: String) -> Line? { lines.first { $0.fields["id"] == id } }

            let ok = try #require(line(delivered), "no line for \(delivered) in:\n\(log.suffix(3000))")
            #expect(ok.fields["result"] == "delivered")
            #expect(ok.fields["message_id"] == messageID)
            #expect(ok.fields["route"] == "default")
            #expect(ok.fields["from"] == "sender@example.test")
            #expect(ok.fields["transport"] == "smtp")
            #expect(ok.recipients["rcpt@elsewhere.example"] == "delivered:250")
            #expect(ok.fields["reply"]?.hasPrefix("250") == true, "\(ok.fields)")
            #expect(ok.fields["tls"]?.hasPrefix("TLSv1.") == true, "\(ok.fields)")
            #expect(Int(ok.fields["bytes"] ?? "") ?? 0 > 100)
            #expect(Int(ok.fields["duration_ms"] ?? "") != nil)
            #expect(ok.fields["attempt"] == "1")

            let later = try #require(line(deferred))
            #expect(later.fields["result"] == "deferred")
            #expect(later.recipients["tempfail@example.test"] == "deferred:450")

            let no = try #require(line(refused))
            #expect(no.fields["result"] == "failed")
            #expect(no.recipients["reject@example.test"]?.hasPrefix("failed:5") == true, "\(no.recipients)")

            let both = try #require(line(mixed))
            #expect(both.fields["result"] == "delivered")
            #expect(both.recipients["ok2@elsewhere.example"] == "delivered:250")
            #expect(both.recipients["reject@example.test"]?.hasPrefix("failed:5") == true)

            // Greppable: one delivery line holds the queue id, and the Message-ID finds it too.
            let rawLines = log.split(separator: "\n").filter { $0.contains(format == "json" ? #""event":"delivery""# : "event=delivery ") }
            #expect(rawLines.filter { $0.contains(delivered) }.count == 1)
            #expect(rawLines.filter { $0.contains(messageID) }.count == 1)
            #expect(!log.contains(peer.password), "the password reached the log")
        }
    }
}
