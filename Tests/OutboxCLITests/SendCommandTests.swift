import Foundation
import OutboxTestSupport
import Testing

@Suite("outbox send, probe and check-config (the built binary)", .serialized, .timeLimit(.minutes(3)))
struct SendCommandTests {
    @Test("no server configured: the file transport writes an .eml under ./outbox-data/sent/")
    func fileTransport() async throws {
        let dir = try OutboxBinary.temporaryDirectory()
        let r = try await OutboxBinary.run(
            [
                "send", "--from", "Ann <ann@example.test>", "--to", "bob@example.test",
                "--subject", "Grüße aus Köln", "--text", "It works.",
            ], cwd: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let sent = dir.appendingPathComponent("outbox-data/sent")
        let files = try FileManager.default.contentsOfDirectory(atPath: sent.path).filter { $0.hasSuffix(".eml") }
        #expect(files.count == 1)
        let text = try String(contentsOf: sent.appendingPathComponent(try #require(files.first)), encoding: .utf8)
        #expect(text.contains("Subject: =?utf-8?"))
        #expect(text.contains("It works."))
        #expect(r.stdout.contains("accepted  bob@example.test"))
    }

    @Test("--dry-run prints the exact message and sends nothing")
    func dryRun() async throws {
        let dir = try OutboxBinary.temporaryDirectory()
        let r = try await OutboxBinary.run(
            [
                "send", "--from", "ann@example.test", "--to", "bob@example.test", "--bcc", "hidden@example.test",
                "--subject", "dry", "--text", "nothing sent", "--dry-run",
            ], cwd: dir)
        #expect(r.status == 0)
        #expect(r.stdout.contains("Subject: dry\r\n"))
        #expect(!r.stdout.contains("hidden@example.test"), "Bcc must never be in the headers")
        #expect(r.stderr.contains("RCPT TO:<bob@example.test>,<hidden@example.test>"))
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("outbox-data").path))
    }

    @Test("a configuration error exits 2 and names the option, the value and what is valid")
    func configurationError() async throws {
        let r = try await OutboxBinary.run(
            ["send", "--from", "a@example.test", "--to", "b@example.test", "-o", "port=70000", "-o", "cnx-pool-sise=3"],
            cwd: try OutboxBinary.temporaryDirectory())
        #expect(r.status == 2)
        #expect(r.stderr.contains("port = 70000 is not a port number (1-65535)"))
        #expect(r.stderr.contains("did you mean cnx-pool-size"))
    }

    @Test("usage errors exit 2")
    func usageError() async throws {
        let r = try await OutboxBinary.run(["send", "--to", "b@example.test"], cwd: try OutboxBinary.temporaryDirectory())
        #expect(r.status == 2)
        let bad = try await OutboxBinary.run(
            ["send", "--from", "not an address", "--to", "b@example.test", "--dry-run"], cwd: try OutboxBinary.temporaryDirectory())
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("--from"))
    }

    @Test("check-config prints the table with masked secrets and exits 0; an invalid file exits 2")
    func checkConfig() async throws {
        let dir = try OutboxBinary.temporaryDirectory()
        let cfg = dir.appendingPathComponent("outbox.cfg")
        try Data(
            "[smtp-client]\nserver = smtp.example.com\nport = 587\nenable-authentication = true\nuser = a@example.com\npassword = Hunter2-secret\n"
                .utf8
        ).write(to: cfg)
        let r = try await OutboxBinary.run(["check-config", cfg.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("port"))
        #expect(r.stdout.contains("outbox.cfg:3"))
        #expect(!r.stdout.contains("Hunter2-secret"))
        try Data("[smtp-client]\nport = 0\n".utf8).write(to: cfg)
        let bad = try await OutboxBinary.run(["check-config", cfg.path])
        #expect(bad.status == 2)
        #expect((bad.stdout + bad.stderr).contains("port = 0"))
    }
}
