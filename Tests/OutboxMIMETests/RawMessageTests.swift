import Foundation
import Testing

@testable import OutboxMIME

@Suite("Finished messages (.eml) pass through")
struct RawMessageTests {
    static let eml = """
        From: =?utf-8?Q?Zo=C3=AB?= <zoe@example.com>
        To: Team: bob@example.org, "Carol, C." <carol@example.net>;
        Cc: dave@example.com (Dave)
        Bcc: hidden@example.com,
         also-hidden@example.com
        Subject: Report
        MIME-Version: 1.0
        Content-Type: text/plain; charset=utf-8

        Body line 1
        .leading dot
        From the body

        """

    @Test func bccRemovedIdsAddedRestUnchanged() async throws {
        let crlf = Self.eml.replacingOccurrences(of: "\n", with: "\r\n")
        let raw = try RawMessage(bytes: Array(crlf.utf8))
        let out = String(decoding: try await raw.byteStream(options: .init()).collect(), as: UTF8.self)
        #expect(!out.contains("Bcc") && !out.contains("hidden"))
        #expect(out.hasPrefix("Date: "))
        #expect(out.contains("\r\nMessage-ID: <"))
        #expect(out.contains("@example.com>\r\nFrom: =?utf-8?Q?Zo=C3=AB?= <zoe@example.com>\r\nTo: Team:"))
        #expect(out.hasSuffix("Content-Type: text/plain; charset=utf-8\r\n\r\nBody line 1\r\n.leading dot\r\nFrom the body\r\n"))
        #expect(
            try raw.envelope()
                == Envelope(
                    from: "zoe@example.com",
                    recipients: ["bob@example.org", "carol@example.net", "dave@example.com", "hidden@example.com", "also-hidden@example.com"]))
        #expect(!raw.requiresSMTPUTF8)
        let p = try PythonParser.parse([Array(out.utf8)])
        #expect(p[0].defects.isEmpty)
        #expect(p[0].from == [.init(name: "Zoë", addr: "zoe@example.com")])
        #expect(!p[0].hasBcc)
        #expect(p[0].parts[0].text == "Body line 1\n.leading dot\nFrom the body\n")
    }

    @Test func existingIdsKeptAndCRLFInputUnchanged() async throws {
        let input = "Date: Thu, 26 Nov 2026 21:07:28 +0000\r\nMessage-ID: <x@y>\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r\nhi\r\n"
        let raw = try RawMessage(bytes: Array(input.utf8))
        #expect(try await raw.byteStream(options: .init()).collect() == Array(input.utf8))
    }

    @Test func fromFileStreamsAndNormalizesLineEnds() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-\(UUID().uuidString).eml").path
        let big = String(repeating: "0123456789abcdef\n", count: 20_000)
        let text = "Date: Thu, 26 Nov 2026 21:07:28 +0000\nMessage-ID: <x@y>\nFrom: a@b.c\nTo: d@e.f\nBcc: z@e.f\n\n" + big + "no final newline"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let raw = try RawMessage(filePath: path)
        let out = try await raw.byteStream(options: .init()).collect()
        let expected = text.replacingOccurrences(of: "Bcc: z@e.f\n", with: "").replacingOccurrences(of: "\n", with: "\r\n") + "\r\n"
        #expect(out == Array(expected.utf8))
        #expect(try raw.envelope().recipients == ["d@e.f", "z@e.f"])
        #expect(throws: MIMEError.self) { try RawMessage(filePath: "/nonexistent.eml") }
    }

    @Test func malformedMessagesAreRefused() {
        #expect(throws: MIMEError.self) { try RawMessage(bytes: Array("\r\nbody only".utf8)) }
        #expect(throws: MIMEError.self) { try RawMessage(bytes: Array("not a header line\r\n\r\nbody".utf8)) }
        #expect(throws: MIMEError.self) { try RawMessage(bytes: Array("To: a@b.c\r\n\r\nx".utf8)).envelope() }
    }

    @Test func utf8HeadersRequireSMTPUTF8() throws {
        let raw = try RawMessage(bytes: Array("From: 用户@例子.广告\r\nTo: a@b.c\r\n\r\nx\r\n".utf8))
        #expect(raw.requiresSMTPUTF8)
        #expect(try raw.envelope().from == "用户@例子.广告")
    }
}
