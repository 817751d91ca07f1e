import Foundation
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

@testable import OutboxTransports

/// A message as Python's `email` package (an independent MIME parser) reads it.
struct ParsedMessage: Decodable {
    struct Part: Decodable {
        var type: String
        var disposition: String?
        var filename: String?
        var cid: String?
        var size: Int
        var sha256: String
        var text: String?
    }

    var headers: [String: [String]]
    var structure: [String]
    var parts: [Part]
    var defects: [String]

    static let script = #"""
        import sys, json, hashlib
        from email.parser import BytesParser
        from email import policy
        msg = BytesParser(policy=policy.default).parsebytes(open(sys.argv[1], "rb").read())
        headers = {}
        for k, v in msg.items():
            headers.setdefault(k.lower(), []).append(str(v))
        parts, structure, defects = [], [], [type(d).__name__ for d in msg.defects]
        for part in msg.walk():
            defects += [type(d).__name__ for d in part.defects]
            if part.is_multipart():
                structure.append(part.get_content_type())
                continue
            payload = part.get_payload(decode=True) or b""
            text = part.get_content() if part.get_content_maintype() == "text" else None
            cid = part["content-id"]
            parts.append({"type": part.get_content_type(), "disposition": part.get_content_disposition(),
                          "filename": part.get_filename(), "cid": str(cid).strip() if cid else None,
                          "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "text": text})
        print(json.dumps({"headers": headers, "structure": structure, "parts": parts, "defects": defects}))
        """#

    /// Parses `bytes` with python3 (a missing python3 fails the test).
    static func parse(_ bytes: [UInt8]) throws -> ParsedMessage {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-rt-\(UUID().uuidString).eml")
        try Data(bytes).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, file.path]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return try JSONDecoder().decode(ParsedMessage.self, from: data)
    }

    func part(named name: String) -> Part? { parts.first { $0.filename == name } }
}

func sha256Hex(_ bytes: [UInt8]) throws -> String {
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-sha-\(UUID().uuidString)")
    try Data(bytes).write(to: file)
    defer { try? FileManager.default.removeItem(at: file) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["sha256sum", file.path]
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(String(decoding: data, as: UTF8.self).prefix(64))
}

@Suite("Graph: a large message keeps its MIME (headers, alternatives, inline parts)", .serialized)
struct GraphRoundTripTests {
    /// A reply built from parts, over Graph's 4 MB request limit: text and HTML alternatives, an
    /// inline image, a large and a medium attachment, Message-ID, In-Reply-To, References and a
    /// custom header. Through the emulator (draft from MIME, attachments, upload session, send)
    /// and back as Exchange sends it, every one of them is there.
    @Test func aLargeReplyBuiltFromPartsSurvivesTheDraftWay() async throws {
        let state = EmulatorState()
        let logo = randomBytes(260 * 1024)
        let big = randomBytes(5 * 1024 * 1024 + 3)
        let medium = randomBytes(400 * 1024)
        let text = "Hello,\r\nsee the report attached.\r\n-- \r\nAgent\r\n"
        let html = #"<html><body><p>Hello,</p><p>see the report.</p><img src="cid:logo@contoso.test"></body></html>"#
        var built = Message(
            from: try Address("agent@contoso.test", displayName: "Agent"), to: [try Address("rcpt@example.test", displayName: "Rcpt")],
            bcc: [try Address("hidden@example.test")], subject: "Re: quarterly report", text: text, html: html,
            attachments: [
                .inline(logo, contentID: "logo@contoso.test", filename: "logo.png", contentType: "image/png"),
                .data(big, filename: "report.bin"), .data(medium, filename: "figures.bin"),
            ],
            messageID: "<reply-1@contoso.test>")
        built.inReplyTo = ["<question-1@example.test>"]
        built.references = ["<thread-0@example.test>", "<question-1@example.test>"]
        built.headers = [MessageHeader("X-Ticket", "T-4711")]
        let message = built
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let report = try await sendOrShutDown(transport, message)
            await transport.shutdown()
            #expect(report.allAccepted)
            let calls = await state.calls
            #expect(calls.first == "createDraft/mime")
            #expect(!calls.contains("createDraft/json"))
            #expect(calls.contains("createUploadSession"))
            #expect(calls.last == "send")
            #expect(await state.largestGraphRequest <= 4 * 1024 * 1024)
            let d = try #require(await state.deliveries.first)
            #expect(d.to == ["rcpt@example.test"])
            #expect(d.bcc == ["hidden@example.test"])
            let parsed = try ParsedMessage.parse(try #require(d.sent))
            #expect(parsed.defects.isEmpty, "\(parsed.defects)")
            #expect(parsed.headers["message-id"] == ["<reply-1@contoso.test>"])
            #expect(parsed.headers["in-reply-to"] == ["<question-1@example.test>"])
            #expect(parsed.headers["references"] == ["<thread-0@example.test> <question-1@example.test>"])
            #expect(parsed.headers["x-ticket"] == ["T-4711"])
            #expect(parsed.headers["subject"] == ["Re: quarterly report"])
            #expect(parsed.headers["bcc"] == nil)
            // Both alternatives.
            #expect(parsed.structure.contains("multipart/alternative"))
            let plain = try #require(parsed.parts.first { $0.type == "text/plain" }?.text)
            #expect(plain.replacingOccurrences(of: "\r\n", with: "\n") == text.replacingOccurrences(of: "\r\n", with: "\n"))
            #expect(parsed.parts.first { $0.type == "text/html" }?.text?.contains(#"src="cid:logo@contoso.test""#) == true)
            // The inline image, with its Content-ID.
            let image = try #require(parsed.part(named: "logo.png"))
            #expect(image.disposition == "inline")
            #expect(image.cid == "<logo@contoso.test>")
            #expect(image.type == "image/png")
            #expect(image.sha256 == (try sha256Hex(logo)))
            let sent = try #require(await state.sentDrafts.first)
            #expect(sent.isInline["logo.png"] == true)
            #expect(sent.contentIDs["logo.png"] == "logo@contoso.test")
            // The attachments, byte for byte.
            #expect(parsed.part(named: "report.bin")?.sha256 == (try sha256Hex(big)))
            #expect(parsed.part(named: "report.bin")?.disposition == "attachment")
            #expect(parsed.part(named: "figures.bin")?.sha256 == (try sha256Hex(medium)))
            #expect(d.attachments.first { $0.name == "report.bin" }?.viaUploadSession == true)
        }
    }

    /// A raw 6 MB reply (.eml) through `outbox send --eml` over Graph: split, drafted from its
    /// MIME, its attachment uploaded, sent; its threading headers kept.
    @Test func aRawSixMegabyteReplyGoesThroughOutboxSend() async throws {
        let state = EmulatorState()
        let attachment = randomBytes(4_500_000)
        let boundary = "=_raw_reply"
        var eml = "From: Agent <agent@contoso.test>\r\nTo: Customer <customer@example.test>\r\nSubject: Re: your order\r\n"
        eml += "Date: Wed, 25 Nov 2026 21:00:00 +0000\r\nMessage-ID: <raw-reply-1@contoso.test>\r\n"
        eml += "In-Reply-To: <order-7@example.test>\r\nReferences: <order-7@example.test>\r\nX-Ticket: T-99\r\nMIME-Version: 1.0\r\n"
        eml += "Content-Type: multipart/mixed; boundary=\"\(boundary)\"\r\n\r\n"
        eml += "--\(boundary)\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour invoice is attached.\r\n"
        eml += "--\(boundary)\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
        eml += "Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n" + base64Lines(attachment) + "\r\n--\(boundary)--\r\n"
        #expect(eml.utf8.count > 6_000_000)
        let dir = try OutboxBinary.temporaryDirectory()
        let file = dir.appendingPathComponent("reply.eml")
        try Data(eml.utf8).write(to: file)
        try await withEmulator(state) { base in
            let result = try await OutboxBinary.run(
                [
                    "send", "--eml", file.path, "-o", "server-type=GRAPH", "-o", "user=agent@contoso.test", "-o", "password=s3cret-value",
                    "-o", "client-id=client-1", "-o", "directory-id=tenant-1", "-o", "tenant-authority=\(base)",
                    "-o", "outbox.graph-url=\(base)/v1.0", "-o", "outbox.tls-ca-file=\(TestCertificates.builtIn.caFile)",
                ], cwd: dir)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(!result.stderr.contains("s3cret-value"))
            let d = try #require(await state.deliveries.first)
            #expect(d.via == "draft/mime")
            #expect(d.to == ["customer@example.test"])
            #expect(d.attachments.first { $0.name == "invoice.pdf" }?.viaUploadSession == true)
            let parsed = try ParsedMessage.parse(try #require(d.sent))
            #expect(parsed.headers["message-id"] == ["<raw-reply-1@contoso.test>"])
            #expect(parsed.headers["in-reply-to"] == ["<order-7@example.test>"])
            #expect(parsed.headers["references"] == ["<order-7@example.test>"])
            #expect(parsed.headers["x-ticket"] == ["T-99"])
            #expect(parsed.part(named: "invoice.pdf")?.sha256 == (try sha256Hex(attachment)))
            // The CRLF before a boundary belongs to the boundary.
            #expect(parsed.parts.first { $0.type == "text/plain" }?.text == "Your invoice is attached.")
        }
    }
}
