import Foundation
import OutboxTestSupport
import Testing

@Suite("outbox send and probe against Postfix (the built binary)", .serialized, .timeLimit(.minutes(3)))
struct SendCommandTests {
    @Test("to Postfix over STARTTLS: exit 0, and a refused recipient exits 1 with a per-recipient JSON report")
    func postfixExitCodes() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = "cli-\(UUID().uuidString)"
        let ok = try await OutboxBinary.run(
            ["send"] + peer.tlsOptions + ["--from", "app@example.test", "--to", "ops@elsewhere.example", "--subject", token, "--text", "hi"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("final reply: 250"))
        #expect(try await peer.maildir.waitForMessages(containing: token, count: 1).count == 1)

        let partial = try await OutboxBinary.run(
            ["send"] + peer.plainOptions + [
                "--json", "--from", "app@example.test", "--to", "ok@elsewhere.example",
                "--to", "reject@example.test", "--subject", "\(token)-p", "--text", "hi",
            ])
        #expect(partial.status == 1)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(partial.stdout.utf8)) as? [String: Any])
        let recipients = try #require(json["recipients"] as? [[String: Any]])
        let byAddress = Dictionary(uniqueKeysWithValues: recipients.map { ($0["address"] as! String, $0) })
        #expect(byAddress["ok@elsewhere.example"]?["status"] as? String == "accepted")
        #expect(byAddress["reject@example.test"]?["status"] as? String == "rejected")
        #expect(byAddress["reject@example.test"]?["code"] as? Int == 554)
        #expect(try await peer.maildir.waitForMessages(containing: "\(token)-p", count: 1).count == 1)

        let deferred = try await OutboxBinary.run(
            ["send"] + peer.plainOptions + ["--from", "app@example.test", "--to", "tempfail@example.test", "--subject", "\(token)-t", "--text", "hi"])
        #expect(deferred.status == 75)
        #expect(deferred.stdout.contains("deferred  tempfail@example.test  450 4.2.0"))
    }

    @Test(
        "a wrong password exits 75 (the operator's to fix, not the message's fault); the password and AUTH payloads never reach the output, even with enable-debug"
    )
    func noSecretsInOutput() async throws {
        let peer = try TestPeers.fromEnvironment()
        let wrong = "Sup3r-Secret-\(UUID().uuidString.prefix(6))"
        var options = peer.tlsOptions
        options[options.count - 1] = "password=\(wrong)"
        let r = try await OutboxBinary.run(
            ["send"] + options + [
                "-o", "enable-debug=true", "-o", "mail.smtp.auth.mechanisms=PLAIN",
                "--from", "app@example.test", "--to", "ops@elsewhere.example", "--text", "x",
            ])
        #expect(r.status == 75, "\(r.stderr)")
        let all = r.stdout + r.stderr
        #expect(r.stderr.contains("delivery failed (transient)"))
        #expect(all.contains("AUTH PLAIN <redacted>"))
        #expect(all.contains("535"))
        #expect(!all.contains(wrong))
        #expect(!all.contains(Data("\0\(peer.user)\0\(wrong)".utf8).base64EncodedString()))
        // --json names the route fault, still without the password.
        let json = try await OutboxBinary.run(
            ["send"] + options + ["--json", "--from", "app@example.test", "--to", "ops@elsewhere.example", "--text", "x"])
        #expect(json.status == 75)
        let body = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let error = try #require(body["error"] as? [String: Any])
        #expect(error["kind"] as? String == "transient")
        #expect(error["routeFault"] as? String == "authentication_failed")
        #expect(!(json.stdout + json.stderr).contains(wrong))
        // A good login with the debug transcript: no password either.
        let good = try await OutboxBinary.run(
            ["send"] + peer.tlsOptions + [
                "-o", "enable-debug=true", "--from", "app@example.test",
                "--to", "ops@elsewhere.example", "--text", "x",
            ])
        #expect(good.status == 0)
        #expect(good.stderr.contains("C: AUTH LOGIN"))
        #expect(!(good.stdout + good.stderr).contains(peer.password))
        #expect(!(good.stdout + good.stderr).contains(Data(peer.password.utf8).base64EncodedString()))
    }

    @Test("--eml sends a prepared message: envelope from its headers, Bcc delivered but stripped")
    func emlPassThrough() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = "eml-\(UUID().uuidString)"
        let dir = try OutboxBinary.temporaryDirectory()
        let eml = dir.appendingPathComponent("m.eml")
        try Data(
            """
            From: App <app@example.test>\r
            To: first@elsewhere.example\r
            Bcc: secret-bcc@elsewhere.example\r
            Subject: \(token)\r
            \r
            prepared body\r

            """.utf8
        ).write(to: eml)
        let r = try await OutboxBinary.run(["send"] + peer.plainOptions + ["--eml", eml.path])
        #expect(r.status == 0, "\(r.stderr)")
        let stored = try await peer.maildir.waitForMessages(containing: token, count: 2)
        #expect(stored.count == 2, "one copy per recipient (To and Bcc)")
        for data in stored {
            let text = String(decoding: data, as: UTF8.self)
            #expect(!text.contains("Bcc:"))
            #expect(
                !text.contains("secret-bcc@elsewhere.example") || text.contains("Delivered-To: secret-bcc@elsewhere.example")
                    || text.contains("for <secret-bcc@elsewhere.example>"))
            #expect(text.contains("Message-ID:"))
        }
    }

    @Test("a 10 MiB attachment arrives byte-exact (decoded from what Postfix stored by Python's email parser)")
    func tenMiBAttachment() async throws {
        let peer = try TestPeers.fromEnvironment()
        let token = "att-\(UUID().uuidString)"
        let dir = try OutboxBinary.temporaryDirectory()
        let file = dir.appendingPathComponent("payload.bin")
        var bytes = [UInt8](repeating: 0, count: 10 * 1024 * 1024)
        var rng = SystemRandomNumberGenerator()
        for i in stride(from: 0, to: bytes.count, by: 8) {
            let v = rng.next()
            for j in 0..<8 where i + j < bytes.count { bytes[i + j] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(j))) }
        }
        try Data(bytes).write(to: file)
        let r = try await OutboxBinary.run(
            ["send"] + peer.plainOptions + [
                "--from", "app@example.test", "--to", "big@elsewhere.example",
                "--subject", token, "--text", "see attachment", "--attach", file.path,
            ])
        #expect(r.status == 0, "\(r.stderr)")
        let stored = try #require(try await peer.maildir.waitForMessages(containing: token, count: 1, timeout: .seconds(40)).first)
        let storedFile = dir.appendingPathComponent("stored.eml")
        try Data(stored).write(to: storedFile)
        let extracted = dir.appendingPathComponent("extracted.bin")
        let script = """
            import sys, email, email.policy
            msg = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
            parts = [p for p in msg.iter_attachments()]
            assert len(parts) == 1, len(parts)
            assert parts[0].get_filename() == 'payload.bin', parts[0].get_filename()
            open(sys.argv[2], 'wb').write(parts[0].get_content())
            """
        let py = try await OutboxBinary.run(
            ["python3", "-c", script, storedFile.path, extracted.path], executable: URL(fileURLWithPath: "/usr/bin/env"))
        #expect(py.status == 0, "\(py.stderr)")
        let back = try Data(contentsOf: extracted)
        #expect(back.count == bytes.count)
        #expect(back == Data(bytes), "the attachment Postfix stored differs from the file sent")
    }

    @Test("probe: TLS version, certificate, capabilities and AUTH; exit 0; a bad password exits 1")
    func probe() async throws {
        let peer = try TestPeers.fromEnvironment()
        let r = try await OutboxBinary.run(["probe"] + peer.tlsOptions)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("tls:          TLSv1."))
        #expect(r.stdout.contains("CN=localhost"))
        #expect(r.stdout.contains("host name matches"))
        #expect(r.stdout.contains("PIPELINING"))
        #expect(r.stdout.contains("235 authenticated"))
        var options = peer.tlsOptions
        options[options.count - 1] = "password=nope-\(UUID().uuidString.prefix(4))"
        let bad = try await OutboxBinary.run(["probe", "--json"] + options)
        #expect(bad.status == 1)
        #expect(bad.stdout.contains("\"authResult\" : \"failed"))
    }
}
