import Foundation
import Testing

@Suite("outbox send, probe and check-config (the built binary)", .serialized, .timeLimit(.minutes(3)))
struct SendCommandTests {
    @Test("no server configured: the file transport writes an .eml under ./outbox-data/sent/")
    func fileTransport() async throws {
        let dir = try CLI.temporaryDirectory()
        let r = try await CLI.run(["send", "--from", "Ann <ann@example.test>", "--to", "bob@example.test",
                                   "--subject", "Grüße aus Köln", "--text", "It works."], cwd: dir)
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
        let dir = try CLI.temporaryDirectory()
        let r = try await CLI.run(["send", "--from", "ann@example.test", "--to", "bob@example.test", "--bcc", "hidden@example.test",
                                   "--subject", "dry", "--text", "nothing sent", "--dry-run"], cwd: dir)
        #expect(r.status == 0)
        #expect(r.stdout.contains("Subject: dry\r\n"))
        #expect(!r.stdout.contains("hidden@example.test"), "Bcc must never be in the headers")
        #expect(r.stderr.contains("RCPT TO:<bob@example.test>,<hidden@example.test>"))
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("outbox-data").path))
    }

    @Test("a configuration error exits 2 and names the option, the value and what is valid")
    func configurationError() async throws {
        let r = try await CLI.run(["send", "--from", "a@example.test", "--to", "b@example.test", "-o", "port=70000", "-o", "cnx-pool-sise=3"],
                                  cwd: try CLI.temporaryDirectory())
        #expect(r.status == 2)
        #expect(r.stderr.contains("port = 70000 is not a port number (1-65535)"))
        #expect(r.stderr.contains("did you mean cnx-pool-size"))
    }

    @Test("usage errors exit 2")
    func usageError() async throws {
        let r = try await CLI.run(["send", "--to", "b@example.test"], cwd: try CLI.temporaryDirectory())
        #expect(r.status == 2)
        let bad = try await CLI.run(["send", "--from", "not an address", "--to", "b@example.test", "--dry-run"], cwd: try CLI.temporaryDirectory())
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("--from"))
    }

    @Test("to Postfix over STARTTLS: exit 0, and a refused recipient exits 1 with a per-recipient JSON report")
    func postfixExitCodes() async throws {
        let peer = try CLIPeer.fromEnvironment()
        let token = "cli-\(UUID().uuidString)"
        let ok = try await CLI.run(["send"] + peer.tlsOptions + ["--from", "app@example.test", "--to", "ops@elsewhere.example", "--subject", token, "--text", "hi"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("final reply: 250"))
        #expect(try await peer.waitForFiles(containing: token).count == 1)

        let partial = try await CLI.run(["send"] + peer.plainOptions + ["--json", "--from", "app@example.test", "--to", "ok@elsewhere.example",
                                                                        "--to", "reject@example.test", "--subject", "\(token)-p", "--text", "hi"])
        #expect(partial.status == 1)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(partial.stdout.utf8)) as? [String: Any])
        let recipients = try #require(json["recipients"] as? [[String: Any]])
        let byAddress = Dictionary(uniqueKeysWithValues: recipients.map { ($0["address"] as! String, $0) })
        #expect(byAddress["ok@elsewhere.example"]?["status"] as? String == "accepted")
        #expect(byAddress["reject@example.test"]?["status"] as? String == "rejected")
        #expect(byAddress["reject@example.test"]?["code"] as? Int == 554)
        #expect(try await peer.waitForFiles(containing: "\(token)-p").count == 1)

        let deferred = try await CLI.run(["send"] + peer.plainOptions + ["--from", "app@example.test", "--to", "tempfail@example.test", "--subject", "\(token)-t", "--text", "hi"])
        #expect(deferred.status == 75)
        #expect(deferred.stdout.contains("deferred  tempfail@example.test  450 4.2.0"))
    }

    @Test("a wrong password exits 1; the password and AUTH payloads never reach the output, even with enable-debug")
    func noSecretsInOutput() async throws {
        let peer = try CLIPeer.fromEnvironment()
        let wrong = "Sup3r-Secret-\(UUID().uuidString.prefix(6))"
        var options = peer.tlsOptions
        options[options.count - 1] = "password=\(wrong)"
        let r = try await CLI.run(["send"] + options + ["-o", "enable-debug=true", "-o", "mail.smtp.auth.mechanisms=PLAIN",
                                                        "--from", "app@example.test", "--to", "ops@elsewhere.example", "--text", "x"])
        #expect(r.status == 1)
        let all = r.stdout + r.stderr
        #expect(all.contains("AUTH PLAIN <redacted>"))
        #expect(all.contains("535"))
        #expect(!all.contains(wrong))
        #expect(!all.contains(Data("\0\(peer.user)\0\(wrong)".utf8).base64EncodedString()))
        // A good login with the debug transcript: no password either.
        let good = try await CLI.run(["send"] + peer.tlsOptions + ["-o", "enable-debug=true", "--from", "app@example.test",
                                                                   "--to", "ops@elsewhere.example", "--text", "x"])
        #expect(good.status == 0)
        #expect(good.stderr.contains("C: AUTH LOGIN"))
        #expect(!(good.stdout + good.stderr).contains(peer.password))
        #expect(!(good.stdout + good.stderr).contains(Data(peer.password.utf8).base64EncodedString()))
    }

    @Test("--eml sends a prepared message: envelope from its headers, Bcc delivered but stripped")
    func emlPassThrough() async throws {
        let peer = try CLIPeer.fromEnvironment()
        let token = "eml-\(UUID().uuidString)"
        let dir = try CLI.temporaryDirectory()
        let eml = dir.appendingPathComponent("m.eml")
        try Data("""
            From: App <app@example.test>\r
            To: first@elsewhere.example\r
            Bcc: secret-bcc@elsewhere.example\r
            Subject: \(token)\r
            \r
            prepared body\r

            """.utf8).write(to: eml)
        let r = try await CLI.run(["send"] + peer.plainOptions + ["--eml", eml.path])
        #expect(r.status == 0, "\(r.stderr)")
        let stored = try await peer.waitForFiles(containing: token, count: 2)
        #expect(stored.count == 2, "one copy per recipient (To and Bcc)")
        for data in stored {
            let text = String(decoding: data, as: UTF8.self)
            #expect(!text.contains("Bcc:"))
            #expect(!text.contains("secret-bcc@elsewhere.example") || text.contains("Delivered-To: secret-bcc@elsewhere.example") || text.contains("for <secret-bcc@elsewhere.example>"))
            #expect(text.contains("Message-ID:"))
        }
    }

    @Test("a 10 MiB attachment arrives byte-exact (decoded from what Postfix stored by Python's email parser)")
    func tenMiBAttachment() async throws {
        let peer = try CLIPeer.fromEnvironment()
        let token = "att-\(UUID().uuidString)"
        let dir = try CLI.temporaryDirectory()
        let file = dir.appendingPathComponent("payload.bin")
        var bytes = [UInt8](repeating: 0, count: 10 * 1024 * 1024)
        var rng = SystemRandomNumberGenerator()
        for i in stride(from: 0, to: bytes.count, by: 8) {
            let v = rng.next()
            for j in 0..<8 where i + j < bytes.count { bytes[i + j] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(j))) }
        }
        try Data(bytes).write(to: file)
        let r = try await CLI.run(["send"] + peer.plainOptions + ["--from", "app@example.test", "--to", "big@elsewhere.example",
                                                                  "--subject", token, "--text", "see attachment", "--attach", file.path])
        #expect(r.status == 0, "\(r.stderr)")
        let stored = try #require(try await peer.waitForFiles(containing: token, timeout: .seconds(40)).first)
        let storedFile = dir.appendingPathComponent("stored.eml")
        try stored.write(to: storedFile)
        let extracted = dir.appendingPathComponent("extracted.bin")
        let script = """
            import sys, email, email.policy
            msg = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
            parts = [p for p in msg.iter_attachments()]
            assert len(parts) == 1, len(parts)
            assert parts[0].get_filename() == 'payload.bin', parts[0].get_filename()
            open(sys.argv[2], 'wb').write(parts[0].get_content())
            """
        let py = try await CLI.run(["python3", "-c", script, storedFile.path, extracted.path], executable: URL(fileURLWithPath: "/usr/bin/env"))
        #expect(py.status == 0, "\(py.stderr)")
        let back = try Data(contentsOf: extracted)
        #expect(back.count == bytes.count)
        #expect(back == Data(bytes), "the attachment Postfix stored differs from the file sent")
    }

    @Test("probe: TLS version, certificate, capabilities and AUTH; exit 0; a bad password exits 1")
    func probe() async throws {
        let peer = try CLIPeer.fromEnvironment()
        let r = try await CLI.run(["probe"] + peer.tlsOptions)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("tls:          TLSv1."))
        #expect(r.stdout.contains("CN=localhost"))
        #expect(r.stdout.contains("host name matches"))
        #expect(r.stdout.contains("PIPELINING"))
        #expect(r.stdout.contains("235 authenticated"))
        var options = peer.tlsOptions
        options[options.count - 1] = "password=nope-\(UUID().uuidString.prefix(4))"
        let bad = try await CLI.run(["probe", "--json"] + options)
        #expect(bad.status == 1)
        #expect(bad.stdout.contains("\"authResult\" : \"failed"))
    }

    @Test("check-config prints the table with masked secrets and exits 0; an invalid file exits 2")
    func checkConfig() async throws {
        let dir = try CLI.temporaryDirectory()
        let cfg = dir.appendingPathComponent("outbox.cfg")
        try Data("[smtp-client]\nserver = smtp.example.com\nport = 587\nenable-authentication = true\nuser = a@example.com\npassword = Hunter2-secret\n".utf8).write(to: cfg)
        let r = try await CLI.run(["check-config", cfg.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("port"))
        #expect(r.stdout.contains("outbox.cfg:3"))
        #expect(!r.stdout.contains("Hunter2-secret"))
        try Data("[smtp-client]\nport = 0\n".utf8).write(to: cfg)
        let bad = try await CLI.run(["check-config", cfg.path])
        #expect(bad.status == 2)
        #expect((bad.stdout + bad.stderr).contains("port = 0"))
    }
}
