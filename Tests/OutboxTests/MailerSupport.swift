import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxConfig
import OutboxMIME
import Testing

/// The Postfix peers that scripts/test.sh starts; missing = failure, never a skip.
struct MailerPeer {
    var host = "127.0.0.1"
    var plainPort: Int
    var limitedPort: Int
    var user: String
    var password: String
    var maildir: String
    var restartDir: String
    var restartPort: Int

    static func fromEnvironment(sourceLocation: SourceLocation = #_sourceLocation) throws -> MailerPeer {
        let env = ProcessInfo.processInfo.environment
        guard env["OUTBOX_TEST_POSTFIX"] == "1",
              let plain = env["OUTBOX_TEST_PLAIN_PORT"].flatMap(Int.init),
              let limited = env["OUTBOX_TEST_LIMITED_PORT"].flatMap(Int.init),
              let user = env["OUTBOX_TEST_USER"], let password = env["OUTBOX_TEST_PASSWORD"],
              let maildir = env["OUTBOX_TEST_MAILDIR"], let restartDir = env["OUTBOX_TEST_RESTART_DIR"],
              let restartPort = env["OUTBOX_TEST_RESTART_PORT"].flatMap(Int.init)
        else {
            Issue.record("the Postfix test peers are not running: run the tests with scripts/test.sh", sourceLocation: sourceLocation)
            throw Missing()
        }
        return MailerPeer(plainPort: plain, limitedPort: limited, user: user, password: password, maildir: maildir,
                          restartDir: restartDir, restartPort: restartPort)
    }

    struct Missing: Error {}

    /// An smtp-client configuration for the plain-text port with AUTH PLAIN.
    func configuration(port: Int, _ extra: [String] = []) throws -> OutboxConfiguration {
        try OutboxConfiguration.parse(text: "", fileName: "test.cfg", overrides: [
            "server=\(host)", "port=\(port)", "enable-authentication=true", "user=\(user)", "password=\(password)",
            "mail.smtp.auth.mechanisms=PLAIN",
        ] + extra, environment: [:])
    }
}

/// Reads every stored message once and counts subjects that carry a token prefix.
func storedSubjects(in maildir: String, prefix: String) -> [String: Int] {
    var counts: [String: Int] = [:]
    let fm = FileManager.default
    for name in (try? fm.contentsOfDirectory(atPath: maildir)) ?? [] {
        guard let data = fm.contents(atPath: maildir + "/" + name) else { continue }
        let text = String(decoding: data.prefix(4096), as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("Subject: \(prefix)") {
            counts[String(line.dropFirst("Subject: ".count)).trimmingCharacters(in: .whitespacesAndNewlines), default: 0] += 1
        }
    }
    return counts
}

/// What Postfix stored per subject: the queue ids of its copies. Two copies with one queue id are
/// Postfix delivering a message it had accepted once a second time (its local delivery is
/// at-least-once when it is stopped mid-delivery); two queue ids are two submissions.
func storedQueueIDs(in maildir: String, prefix: String) -> [String: [String]] {
    var ids: [String: [String]] = [:]
    let fm = FileManager.default
    for name in (try? fm.contentsOfDirectory(atPath: maildir)) ?? [] {
        guard let data = fm.contents(atPath: maildir + "/" + name) else { continue }
        let text = String(decoding: data.prefix(4096), as: UTF8.self)
        guard let subjectLine = text.split(separator: "\n").first(where: { $0.hasPrefix("Subject: \(prefix)") }) else { continue }
        let subject = String(subjectLine.dropFirst("Subject: ".count)).trimmingCharacters(in: .whitespacesAndNewlines)
        var queueID = "unknown-\(name)"
        if let postfix = text.range(of: "(Postfix) with "), let idMark = text.range(of: " id ", range: postfix.upperBound..<text.endIndex) {
            queueID = String(text[idMark.upperBound...].prefix { !$0.isWhitespace && $0 != ";" })
        }
        ids[subject, default: []].append(queueID)
    }
    return ids
}

func testMessage(subject: String, to: String = "rcpt@elsewhere.example") throws -> Message {
    Message(from: try Address("sender@example.test"), to: [try Address(to)], subject: subject, text: "body of \(subject)\r\n")
}

/// Records log lines for transcript checks.
final class CapturingLogHandler: LogHandler, @unchecked Sendable {
    let lines: NIOLockedValueBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    init(lines: NIOLockedValueBox<[String]>) { self.lines = lines }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        let all = metadata.merging(explicit ?? [:]) { $1 }
        lines.withLockedValue { $0.append("\(message) \(all)") }
    }
    static func make() -> (Logger, NIOLockedValueBox<[String]>) {
        let lines = NIOLockedValueBox<[String]>([])
        return (Logger(label: "test") { _ in CapturingLogHandler(lines: lines) }, lines)
    }
}

/// Runs `body` with the mailer's run() going, then shuts it down.
func withRunningMailer<R: Sendable>(_ mailer: Mailer, _ body: (Mailer) async throws -> R) async throws -> R {
    let runner = Task { try await mailer.run() }
    do {
        let result = try await body(mailer)
        await mailer.shutdown()
        runner.cancel()
        _ = await runner.result
        return result
    } catch {
        await mailer.shutdown()
        runner.cancel()
        _ = await runner.result
        throw error
    }
}

func runPostfix(_ dir: String, _ command: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/sbin/postfix")
    process.arguments = ["-c", "\(dir)/etc", command]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try? process.run()
    process.waitUntilExit()
}
