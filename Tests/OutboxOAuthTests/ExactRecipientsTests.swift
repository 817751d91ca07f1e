import Foundation
import NIOCore
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

@testable import OutboxTransports

/// A relayed message: the header section given, then a plain body; CRLF line ends.
func relayed(
    headers: String, body: String = "Hello from the relay.\r\n", envelope: [String],
    from: String = "agent@contoso.test"
) -> (RelayedMessage, [UInt8]) {
    let text =
        "From: Agent <\(from)>\r\n\(headers)Subject: relayed\r\nDate: Wed, 25 Nov 2026 21:00:00 +0000\r\nMessage-ID: <relay.\(UUID().uuidString)@contoso.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + body
    let bytes = Array(text.utf8)
    return (RelayedMessage(bytes: bytes, envelope: Envelope(from: from, recipients: envelope)), bytes)
}

func randomBytes(_ count: Int) -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { p in
        var i = 0
        while i < count {
            let v = rng.next() as UInt64
            withUnsafeBytes(of: v) { b in
                for j in 0..<min(8, count - i) { p[i + j] = b[j] }
            }
            i += 8
        }
    }
    return out
}

/// Base64 in 76-character lines with CRLF (RFC 2045), as a mail client writes an attachment.
func base64Lines(_ bytes: [UInt8]) -> String {
    Data(bytes).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
}

/// Quoted-printable (RFC 2045 §6.7) written here, independently of Outbox: `=XX` for bytes
/// outside 33...126 (but space/tab inside a line) and for `=`, soft breaks before 76, CRLF of
/// the text kept as hard breaks.
func quotedPrintable(_ text: [UInt8]) -> String {
    var lines: [[UInt8]] = [[]]
    var i = 0
    while i < text.count {
        if text[i] == 13, i + 1 < text.count, text[i + 1] == 10 {
            lines.append([])
            i += 2
        } else {
            lines[lines.count - 1].append(text[i])
            i += 1
        }
    }
    var out: [String] = []
    for line in lines {
        var encoded = ""
        var column = 0
        for (k, b) in line.enumerated() {
            let last = k == line.count - 1
            let piece: String
            if (b >= 33 && b <= 126 && b != 61) || ((b == 32 || b == 9) && !last) {
                piece = String(UnicodeScalar(b))
            } else {
                piece = String(format: "=%02X", b)
            }
            if column + piece.count > 75 {
                encoded += "=\r\n"
                column = 0
            }
            encoded += piece
            column += piece.count
        }
        out.append(encoded)
    }
    return out.joined(separator: "\r\n")
}

@Suite("Exact recipients and large relayed messages through Graph and EWS", .serialized)
struct ExactRecipientsTests {
    /// To: a, b; Cc: c; envelope a, c, x.
    static let scenario = (
        headers: "To: Alice <a@example.test>, b@example.test\r\nCc: \"Carol C.\" <c@example.test>\r\n",
        envelope: ["a@example.test", "c@example.test", "x@example.test"]
    )

    @Test func graphDeliversToExactlyTheEnvelopeAndHidesEnvelopeOnlyRecipients() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let (message, bytes) = relayed(headers: Self.scenario.headers, envelope: Self.scenario.envelope)
            let report = try await transport.send(message)
            await transport.shutdown()
            #expect(report.allAccepted)
            #expect(report.recipients.map(\.address) == Self.scenario.envelope)
            let deliveries = await state.deliveries
            try #require(deliveries.count == 1)
            let d = deliveries[0]
            #expect(d.via == "draft/mime")
            #expect(Set(d.everyone) == ["a@example.test", "c@example.test", "x@example.test"])
            #expect(d.everyone.count == 3)
            #expect(d.to == ["a@example.test"])
            #expect(d.cc == ["c@example.test"])
            #expect(d.bcc == ["x@example.test"])
            #expect(!d.everyone.contains("b@example.test"))
            // Display names from the header are kept.
            #expect(d.names["a@example.test"] == "Alice")
            #expect(d.names["c@example.test"] == "Carol C.")
            // The MIME Graph got is the relayed message, byte for byte: x is in neither To nor Cc.
            #expect(d.mime == bytes)
            let seen = Emulator.headerRecipients(try #require(d.mime))
            #expect(!(seen.to + seen.cc).map { $0.lowercased() }.contains("x@example.test"))
            #expect(await state.calls == ["createDraft/mime", "patch", "send"])
            #expect(await state.drafts.isEmpty)
        }
    }

    @Test func aMessageSplitIntoTwoTransactionsReachesEveryoneOnce() async throws {
        let everyone = (1...150).map { "user\($0)@example.test" }
        let headers = "To: " + everyone.joined(separator: ",\r\n ") + "\r\n"
        for type in [ServerType.graph, .ews] {
            let state = EmulatorState()
            try await withEmulator(state) { base in
                let transport = try TransportFactory.make(configuration: configuration(base, type: type))
                // As Postfix does above its recipient limit: one message, two transactions.
                let first = relayed(headers: headers, envelope: Array(everyone[0..<100])).0
                let second = relayed(headers: headers, envelope: Array(everyone[100...])).0
                _ = try await transport.send(first)
                _ = try await transport.send(second)
                await transport.shutdown()
                let deliveries = await state.deliveries
                #expect(deliveries.count == 2, "\(type)")
                var counts: [String: Int] = [:]
                for d in deliveries { for r in d.everyone { counts[r, default: 0] += 1 } }
                #expect(counts.count == 150, "\(type): \(counts.count) distinct recipients")
                #expect(counts.values.allSatisfy { $0 == 1 }, "\(type): duplicates \(counts.filter { $0.value > 1 }.keys.sorted())")
                #expect(Set(counts.keys) == Set(everyone))
                // Each copy lists in To only the recipients of its own transaction.
                #expect(deliveries.first?.to.count == 100)
                #expect(deliveries.last?.to.count == 50)
            }
        }
    }

    @Test func aBccHeaderOutsideTheEnvelopeIsNotObeyed() async throws {
        for type in [ServerType.graph, .ews] {
            let state = EmulatorState()
            try await withEmulator(state) { base in
                let transport = try TransportFactory.make(configuration: configuration(base, type: type))
                // The relayed MIME keeps a Bcc field: secret@ is not in the envelope, y@ is, and
                // a@ (in To) is too.
                let (message, _) = relayed(
                    headers: "To: a@example.test\r\nBcc: secret@example.test, Yvonne <y@example.test>\r\n",
                    envelope: ["a@example.test", "y@example.test"])
                _ = try await transport.send(message)
                await transport.shutdown()
                let deliveries = await state.deliveries
                try #require(deliveries.count == 1, "\(type)")
                #expect(Set(deliveries[0].everyone) == ["a@example.test", "y@example.test"], "\(type)")
                #expect(!deliveries[0].everyone.contains("secret@example.test"), "\(type)")
                #expect(deliveries[0].bcc == ["y@example.test"], "\(type)")
                #expect(deliveries[0].to == ["a@example.test"], "\(type)")
            }
        }
    }

    @Test func theCommonCaseIsOneSendMailRequest() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            // Every header recipient is in the envelope; x only in the envelope.
            let (message, bytes) = relayed(headers: "To: Alice <a@example.test>\r\nCc: c@example.test\r\n", envelope: Self.scenario.envelope)
            _ = try await transport.send(message)
            await transport.shutdown()
            #expect(await state.calls == ["sendMail"])
            #expect(await state.graphRequests == 1)
            let d = try #require(await state.deliveries.first)
            #expect(d.to == ["a@example.test"])
            #expect(d.cc == ["c@example.test"])
            #expect(d.bcc == ["x@example.test"])
            #expect(d.mime == Array("Bcc: x@example.test\r\n".utf8) + bytes)
        }
    }

    @Test func ewsDeliversToExactlyTheEnvelope() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .ews))
            let (message, bytes) = relayed(headers: Self.scenario.headers, envelope: Self.scenario.envelope)
            let report = try await transport.send(message)
            #expect(report.allAccepted)
            #expect(await state.calls == ["ews/CreateItem/SaveOnly", "ews/UpdateItem/SendAndSaveCopy"])
            let d = try #require(await state.deliveries.first)
            #expect(await state.deliveries.count == 1)
            #expect(d.to == ["a@example.test"])
            #expect(d.cc == ["c@example.test"])
            #expect(d.bcc == ["x@example.test"])
            #expect(d.names["a@example.test"] == "Alice")
            #expect(d.mime == bytes)
            #expect(await state.ewsDrafts.isEmpty)
            // The common case stays one CreateItem that sends.
            let (common, _) = relayed(headers: "To: a@example.test\r\n", envelope: ["a@example.test", "x@example.test"])
            _ = try await transport.send(common)
            await transport.shutdown()
            #expect(await state.calls.last == "ews/CreateItem/SendAndSaveCopy")
            #expect(await state.calls.count == 3)
            let last = try #require(await state.deliveries.last)
            #expect(last.to == ["a@example.test"])
            #expect(last.bcc == ["x@example.test"])
        }
    }

    @Test func aLargeRelayedMessageGoesThroughADraftAndUploadSessions() async throws {
        let state = EmulatorState()
        let big = randomBytes(9 * 1024 * 1024 + 4321)
        let medium = randomBytes(200 * 1024)
        var notes: [UInt8] = []
        for i in 0..<6000 {
            notes += Array("line \(i) = café, trailing space \r\n".utf8)
        }
        notes += [0xE2, 0x82, 0xAC, 0x20]  // ends without a line break, with a space
        let textBytes = notes
        let boundary = "=_outer_b0undary"
        var text = "From: Agent <agent@contoso.test>\r\nTo: a@example.test, b@example.test\r\nSubject: large relayed\r\n"
        text += "Date: Wed, 25 Nov 2026 21:00:00 +0000\r\nMessage-ID: <large.\(UUID().uuidString)@contoso.test>\r\nMIME-Version: 1.0\r\n"
        text += "Content-Type: multipart/mixed;\r\n boundary=\"\(boundary)\"\r\n\r\nThis is a multi-part message in MIME format.\r\n"
        text += "--\(boundary)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSee the attachments.\r\n\r\n"
        text += "--\(boundary)\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n"
        text += "Content-Disposition: attachment;\r\n filename=\"big.bin\"\r\n\r\n" + base64Lines(big) + "\r\n"
        text += "--\(boundary)\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <logo@contoso.test>\r\n"
        text += "Content-Disposition: inline; filename*=utf-8''logo%C3%A9.png\r\n\r\n" + base64Lines(medium) + "\r\n"
        text += "--\(boundary)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        text += "Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\n" + quotedPrintable(textBytes) + "\r\n"
        text += "--\(boundary)\r\nContent-Type: text/plain; name=small.txt\r\nContent-Disposition: attachment\r\n\r\nsmall stays in the draft\r\n"
        text += "--\(boundary)--\r\n"
        let bytes = Array(text.utf8)
        #expect(bytes.count > 12 * 1024 * 1024)
        let message = RelayedMessage(bytes: bytes, envelope: Envelope(from: "agent@contoso.test", recipients: ["a@example.test", "x@example.test"]))
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let report = try await transport.send(message)
            await transport.shutdown()
            #expect(report.allAccepted)
            let calls = await state.calls
            #expect(!calls.contains("sendMail"))
            #expect(calls.first == "createDraft/mime")
            #expect(calls[1] == "patch")
            #expect(calls.last == "send")
            #expect(calls.filter { $0 == "createUploadSession" }.count == 1)
            #expect(calls.filter { $0 == "attachment" }.count == 2)
            #expect(await state.largestGraphRequest <= 4 * 1024 * 1024)
            #expect(await state.uploadChunkSizes.allSatisfy { $0 <= 4 * 1024 * 1024 })
            #expect(await state.uploadsWithAuthorization == 0)
            let d = try #require(await state.deliveries.first)
            #expect(d.to == ["a@example.test"])
            #expect(d.cc.isEmpty)
            #expect(d.bcc == ["x@example.test"])
            // The parts taken out arrive decoded, byte for byte.
            let uploaded = d.attachments.first { $0.name == "big.bin" }
            #expect(uploaded?.viaUploadSession == true)
            #expect(uploaded?.bytes.count == big.count)
            #expect(uploaded?.bytes == big)
            let logo = d.attachments.first { $0.name == "logoé.png" }
            #expect(logo?.bytes == medium)
            #expect(logo?.viaUploadSession == false)
            #expect(d.attachments.first { $0.name == "notes.txt" }?.bytes == textBytes)
            let sent = try #require(await state.sentDrafts.first)
            #expect(sent.isInline["logoé.png"] == true)
            #expect(sent.isInline["big.bin"] == false)
            #expect(sent.contentTypes["big.bin"] == "application/octet-stream")
            // The draft is the message without those parts: text body and small part kept.
            let draft = String(decoding: try #require(d.mime), as: UTF8.self)
            #expect(draft.contains("See the attachments."))
            #expect(draft.contains("small stays in the draft"))
            #expect(!draft.contains("big.bin"))
            #expect(!draft.contains("notes.txt"))
            #expect(draft.hasSuffix("--\(boundary)--\r\n"))
            #expect(draft.components(separatedBy: "--\(boundary)\r\n").count == 3)  // two parts left
        }
    }

    @Test func aSinglePartMessageTooLargeForGraphFailsClearly() async throws {
        let state = EmulatorState()
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph))
            let line = String(repeating: "y", count: 76) + "\r\n"
            let (message, _) = relayed(headers: "To: a@example.test\r\n", body: String(repeating: line, count: 60_000), envelope: ["a@example.test"])
            let error = await deliveryError { try await transport.send(message) }
            await transport.shutdown()
            let e = try #require(error)
            #expect(e.kind == .permanent)
            #expect(e.message.contains("single-part"))
            #expect(e.message.contains("SMTP or EWS"))
            #expect(await state.calls.isEmpty)
        }
    }
}

@Suite("MIME part splitter")
struct MIMEPartSplitterTests {
    /// Feeds `bytes` in pieces of `size` (lines, escapes and CRLFs cut anywhere).
    func split(_ bytes: [UInt8], piece size: Int, limit: Int = 1 << 20) throws -> MIMEPartSplitter {
        var s = MIMEPartSplitter(draftLimit: limit)
        var i = 0
        while i < bytes.count {
            try s.feed(bytes[i..<min(bytes.count, i + size)])
            i += size
        }
        try s.finish()
        return s
    }

    @Test func decodesWhateverTheChunkBoundaries() throws {
        let binary = randomBytes(300 * 1024)
        var text: [UInt8] = []
        for i in 0..<9000 { text += Array("Zeile \(i): Grüße = \t\r\n".utf8) }
        let mime =
            "Content-Type: multipart/mixed; boundary=XyZ\r\n\r\n--XyZ\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
            + "--XyZ\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64Lines(binary) + "\r\n"
            + "--XyZ\r\nContent-Type: text/csv; name=\"a.csv\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + quotedPrintable(text)
            + "\r\n"
            + "--XyZ--\r\n"
        for size in [7, 4096, 1 << 20] {
            let s = try split(Array(mime.utf8), piece: size)
            defer { s.removeFiles() }
            #expect(s.parts.count == 2)
            let pdf = try #require(s.parts.first)
            #expect(pdf.size == binary.count)
            #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: pdf.path))) == binary)
            #expect(pdf.name == "attachment-1.bin")
            let csv = try #require(s.parts.last)
            #expect(csv.name == "a.csv")
            #expect(csv.contentType == "text/csv")
            #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: csv.path))) == text)
            #expect(
                String(decoding: s.draft, as: UTF8.self)
                    == "Content-Type: multipart/mixed; boundary=XyZ\r\n\r\n--XyZ\r\nContent-Type: text/plain\r\n\r\nbody\r\n--XyZ--\r\n")
        }
    }

    @Test func aMultipartLeftEmptyGetsAnEmptyTextPartAndFilesAreRemoved() throws {
        let data = randomBytes(200 * 1024)
        let mime =
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64Lines(data) + "\r\n--b--\r\n"
        let s = try split(Array(mime.utf8), piece: 65536)
        #expect(s.parts.count == 1)
        #expect(
            String(decoding: s.draft, as: UTF8.self)
                == "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\r\n--b--\r\n")
        let path = s.parts[0].path
        #expect(FileManager.default.fileExists(atPath: path))
        s.removeFiles()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func aTextBodyOverTheLimitCannotBeSplit() throws {
        let body = String(repeating: String(repeating: "t", count: 70) + "\r\n", count: 5000)
        let mime = "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n" + body + "--b--\r\n"
        #expect(throws: MIMEPartSplitter.Failure.draftTooLarge(multipart: true)) {
            let s = try split(Array(mime.utf8), piece: 65536, limit: 100 * 1024)
            s.removeFiles()
        }
    }
}
