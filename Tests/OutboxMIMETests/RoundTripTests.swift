import Foundation
import Testing

@testable import OutboxMIME

@Suite("Round trip through Python's email package")
struct RoundTripTests {
    static let alice = try! Address("alice@example.com", displayName: "Alice Example")
    static let bob = try! Address("bob@example.org")

    static let subjects = [
        "Hello",
        "会议纪要：第三季度销售报告与下一步计划",
        "مرحبا بكم في الاجتماع السنوي",
        "Party time 🎉👨‍👩‍👧‍👦🏳️‍🌈 tonight",
        "Cafe\u{301} na\u{308}ive Zoe\u{308} Ǹ a\u{30A}\u{323}\u{304}",
        "Re: [list] \"quoted\" =?not-encoded?= (comment) ; semicolons, commas",
        "  leading and trailing spaces  and  doubles ",
        "tab\there",
    ]

    @Test func simpleTextMessage() async throws {
        var m = Message(from: Self.alice, to: [Self.bob], subject: "Hello", text: "Hi Bob,\nsee you.\n")
        m.cc = [try Address("carol@example.net", displayName: "Carol")]
        m.bcc = [try Address("secret@example.com")]
        let bytes = try await RoundTrip.serialize(m)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("Content-Transfer-Encoding: 7bit\r\n"))
        #expect(!text.lowercased().contains("secret@"))
        #expect(text.contains("MIME-Version: 1.0\r\n"))
        let p = try await RoundTrip.verify([m])
        #expect(p[0].contentType == "text/plain")
    }

    @Test func internationalSubjectsNamesAndFilenames() async throws {
        var messages: [Message] = []
        for (i, s) in Self.subjects.enumerated() {
            let name = ["李小龙", "محمد بن راشد", "Zoë 😀 Müller", "Ge\u{301}rard, \"Boss\" \\ O'Brien", "Plain Name", "x", "a.b (c)", "🇯🇵"][i % 8]
            let file = [
                "报告.pdf", "تقرير.docx", "😀 photo.png", "Re\u{301}sume\u{301}.txt", "plain.csv", "a \"q\" b.zip",
                "long-" + String(repeating: "ñ", count: 80) + ".bin", "x.unknownext",
            ][i % 8]
            var m = Message(
                from: try Address("sender@example.com", displayName: name), to: [try Address("rcpt@example.org", displayName: name)],
                subject: s, text: "Body \(s)\n", attachments: [.data(Array("data \(i)".utf8), filename: file)])
            m.replyTo = [try Address("reply@example.com", displayName: name)]
            messages.append(m)
        }
        let parsed = try await RoundTrip.verify(messages)
        #expect(parsed[0].parts.last?.contentType == "application/pdf")
        #expect(parsed[7].parts.last?.contentType == "application/octet-stream")
    }

    @Test func longSubjectsAndLines() async throws {
        let pool = Array("ab 中文 عربي 😀e\u{301}")
        let mixed = String((0..<1000).map { pool[$0 % pool.count] })
        let ascii = String(repeating: "x", count: 1000)
        let words = (0..<200).map { "word\($0)" }.joined(separator: " ")
        let m1 = Message(from: Self.alice, to: [Self.bob], subject: mixed, text: String(repeating: "a", count: 5000) + "\n")
        let m2 = Message(from: Self.alice, to: [Self.bob], subject: ascii, text: String(repeating: "é", count: 5000))
        let m3 = Message(from: Self.alice, to: [Self.bob], subject: words, text: String(repeating: "0123456789 ", count: 500))
        #expect(mixed.count == 1000)
        let p = try await RoundTrip.verify([m1, m2, m3])
        #expect(p[0].parts[0].cte == "quoted-printable")
        #expect(p[1].parts[0].cte == "base64")
        // Plain ASCII words are folded, not encoded.
        let bytes = String(decoding: try await RoundTrip.serialize(m3), as: UTF8.self)
        #expect(bytes.contains("Subject: word0 word1"))
        #expect(!bytes.contains("=?utf-8?"))
    }

    @Test func dotsAndFromLines() async throws {
        let body = ".\n..\n.\nFrom here\nFrom the start\n. \n...\n"
        let m = Message(from: Self.alice, to: [Self.bob], subject: "dots", text: body, html: "<p>.</p>\n.\nFrom x\n")
        let p = try await RoundTrip.verify([m])
        #expect(p[0].contentType == "multipart/alternative")
        // With non-ASCII content, QP protects line-leading dots and "From ".
        let m2 = Message(
            from: Self.alice, to: [Self.bob], subject: "dots ü",
            text: "ü\n" + body + String(repeating: "plain words in a long paragraph ", count: 20))
        let bytes = String(decoding: try await RoundTrip.serialize(m2), as: UTF8.self)
        #expect(bytes.contains("=46rom here"))
        _ = try await RoundTrip.verify([m2])
    }

    @Test func binaryAttachmentWithEveryByteValue() async throws {
        let all = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } + Array(0...255)
        let m = Message(
            from: Self.alice, to: [Self.bob], subject: "binary", text: "see attached",
            attachments: [
                .data(all, filename: "all-bytes.bin"), .data([], filename: "empty.dat"),
                .data(Array("line one\r\nline two\r\n".utf8), filename: "notes.txt"),
                .data(Array("bare\nLF\rCR".utf8), filename: "bare.txt"),
            ])
        let p = try await RoundTrip.verify([m])
        #expect(p[0].contentType == "multipart/mixed")
        #expect(p[0].parts.first { $0.filename == "notes.txt" }?.cte == "7bit")
        #expect(p[0].parts.first { $0.filename == "bare.txt" }?.cte == "base64")
    }

    @Test func htmlWithInlineImagesAndAttachments() async throws {
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + Array(0...255)
        var m = Message(
            from: Self.alice, to: [Self.bob], subject: "newsletter",
            text: "Plain version", html: "<html><body><img src=\"cid:logo@x\"> Hi</body></html>",
            attachments: [
                .inline(png, contentID: "logo@x", filename: "logo.png"),
                .data(Array("a,b\n1,2\n".utf8), filename: "data.csv"),
            ])
        m.priority = .high
        m.sender = try Address("robot@example.com", displayName: "Newsletter Robot ✉")
        m.replyTo = [try Address("team@example.com", displayName: "Team, \"Support\""), try Address("x@example.com")]
        m.inReplyTo = ["<orig@example.com>"]
        m.references = ["<a@example.com>", "b@example.com"]
        m.headers = [MessageHeader("X-Campaign", "spring 2026 ✿")]
        let p = try await RoundTrip.verify([m])
        #expect(p[0].structure == ["multipart/mixed", "multipart/alternative", "multipart/related"])
        #expect(p[0].header("X-Campaign") == "spring 2026 ✿")
        #expect(p[0].header("X-Priority") == "2 (High)")
        #expect(p[0].header("References") == "<a@example.com> <b@example.com>")
        #expect(p[0].header("In-Reply-To") == "<orig@example.com>")

        // HTML + inline only: multipart/related at the top.
        let m2 = Message(from: Self.alice, to: [Self.bob], html: "<img src=cid:i1>", attachments: [.inline(png, contentID: "i1", filename: "i.png")])
        #expect(try await RoundTrip.verify([m2])[0].contentType == "multipart/related")
        // Attachments only.
        let m3 = Message(from: Self.alice, to: [Self.bob], attachments: [.data(png, filename: "p.png")])
        #expect(try await RoundTrip.verify([m3])[0].contentType == "multipart/mixed")
        // Nothing at all.
        let m4 = Message(from: Self.alice, to: [Self.bob])
        #expect(try await RoundTrip.verify([m4])[0].contentType == "text/plain")
    }

    @Test func fileAttachmentIsStreamedInChunks() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-att-\(UUID().uuidString).bin").path
        var rng = SystemRandomNumberGenerator()
        let content = (0..<(1_000_003)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try Data(content).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let m = Message(
            from: Self.alice, to: [Self.bob], subject: "file", text: "file attached",
            attachments: [.file(path: path, filename: "données.bin"), .file(path: path)])
        var chunks = 0
        var biggest = 0
        for try await chunk in m.byteStream(options: .init()) {
            chunks += 1
            biggest = max(biggest, chunk.readableBytes)
        }
        #expect(chunks > 20)
        #expect(biggest <= MessageByteStream.chunkSize + 80_000)
        let p = try await RoundTrip.verify([m])
        let digest = SHA256.hex(content)
        #expect(p[0].parts.filter { $0.sha256 == digest && $0.length == content.count }.count == 2)
        #expect(p[0].parts.contains { $0.filename == "données.bin" })

        let missing = Message(from: Self.alice, to: [Self.bob], attachments: [.file(path: "/nonexistent/x.pdf")])
        await #expect(throws: MIMEError.self) { try await RoundTrip.serialize(missing) }
    }

    @Test func eightBitAndSMTPUTF8() async throws {
        let m = Message(from: Self.alice, to: [Self.bob], subject: "8bit", text: "Grüße, 你好\n", html: "<p>ü</p>")
        let bytes = String(decoding: try await RoundTrip.serialize(m, .init(allow8BitMIME: true)), as: UTF8.self)
        #expect(bytes.contains("Content-Transfer-Encoding: 8bit"))
        _ = try await RoundTrip.verify([m], options: .init(allow8BitMIME: true))

        let intl = try Address("用户@例子.广告", displayName: "用户")
        let idn = try Address("info@bücher.example", displayName: "Bücher")
        let u = Message(from: idn, to: [intl, idn], subject: "SMTPUTF8", text: "hi")
        #expect(u.requiresSMTPUTF8)
        _ = try await RoundTrip.verify([u], options: .init(allow8BitMIME: true, smtpUTF8: true))
        // Without SMTPUTF8 the non-ASCII local part cannot be written.
        await #expect(throws: MIMEError.self) { try await RoundTrip.serialize(u) }
        // An IDN domain alone is written in Punycode.
        let v = Message(from: idn, to: [idn], subject: "IDN", text: "hi")
        #expect(!v.requiresSMTPUTF8)
        let vb = String(decoding: try await RoundTrip.serialize(v), as: UTF8.self)
        #expect(vb.contains("<info@xn--bcher-kva.example>"))
        _ = try await RoundTrip.verify([v])
    }
}
