import Foundation
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

extension TestPeers {
    /// An smtp-client configuration for a clear-text port with AUTH PLAIN.
    func configuration(port: Int, _ extra: [String] = []) throws -> OutboxConfiguration {
        try OutboxConfiguration.parse(
            text: "", fileName: "test.cfg",
            overrides: [
                "server=\(smtpHost)", "port=\(port)", "enable-authentication=true", "user=\(user)", "password=\(password)",
                "mail.smtp.auth.mechanisms=PLAIN",
            ] + extra, environment: [:])
    }
}

func testMessage(subject: String, to: String = "rcpt@elsewhere.example") throws -> Message {
    Message(from: try Address("sender@example.test"), to: [try Address(to)], subject: subject, text: "body of \(subject)\r\n")
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
