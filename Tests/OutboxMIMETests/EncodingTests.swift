import Foundation
import Testing

@testable import OutboxMIME

@Suite("Encoded words, quoted-printable, base64, dates, header folding")
struct EncodingTests {
    @Test(arguments: [
        "Hello", "会议纪要：第三季度销售报告与下一步计划" + String(repeating: "长", count: 100), "👨‍👩‍👧‍👦🏳️‍🌈" + String(repeating: "😀", count: 40),
        "e" + String(repeating: "\u{301}", count: 200), "mostly ascii with one ü in it and many words to fill several encoded words",
    ])
    func encodedWordsAreShortAndWhole(_ s: String) throws {
        let words = EncodedWord.encode(s, firstMax: 40)
        var decoded = ""
        for w in words {
            #expect(w.utf8.count <= 75)
            let d = try #require(EncodedWord.decodeWord(Substring(w)))
            // Each word holds whole UTF-8 sequences.
            let payload = Array(d.utf8)
            #expect(String(validating: payload, as: UTF8.self) == d)
            decoded += d
        }
        #expect(decoded == s)
        #expect(EncodedWord.decodeUnstructured(words.joined(separator: "\r\n ").replacingOccurrences(of: "\r\n", with: "")) == s)
    }

    @Test func shortestOfBAndQ() {
        #expect(EncodedWord.encode("Einladung zum Grillfest am Samstag bei Müller")[0].hasPrefix("=?utf-8?Q?"))
        #expect(EncodedWord.encode("日本語のテキスト")[0].hasPrefix("=?utf-8?B?"))
    }

    @Test func quotedPrintableLinesAndTrailingSpace() {
        let text = Array((String(repeating: "ü", count: 300) + " \r\n" + String(repeating: "x=", count: 200) + "\t\r\n.dot\r\nFrom me\r\n").utf8)
        let qp = QuotedPrintable.encode(text)
        let lines = String(decoding: qp, as: UTF8.self).components(separatedBy: "\r\n")
        #expect(lines.allSatisfy { $0.utf8.count <= 76 })
        #expect(lines.allSatisfy { !$0.hasSuffix(" ") && !$0.hasSuffix("\t") })
        #expect(lines.contains("=2Edot"))
        #expect(lines.contains("=46rom me"))
    }

    @Test func base64LinesAreAtMost76() {
        let out = String(decoding: Base64.encodeLines(Array(repeating: 0xFF, count: 1000)), as: UTF8.self)
        let lines = out.components(separatedBy: "\r\n").dropLast()
        #expect(lines.allSatisfy { $0.count <= 76 })
        #expect(Data(base64Encoded: lines.joined()) == Data(repeating: 0xFF, count: 1000))
    }

    @Test func rfc5322Dates() {
        #expect(RFC5322Date.format(Date(timeIntervalSince1970: 0)) == "Thu, 1 Jan 1970 00:00:00 +0000")
        #expect(RFC5322Date.format(Date(timeIntervalSince1970: 1_795_727_248)) == "Thu, 26 Nov 2026 21:07:28 +0000")
        #expect(RFC5322Date.format(Date(timeIntervalSince1970: 951_782_400)) == "Tue, 29 Feb 2000 00:00:00 +0000")
    }

    @Test func rfc2231Continuations() {
        let tokens = MIMEParams.tokens("filename", String(repeating: "文", count: 40) + ".pdf")
        #expect(tokens.count > 1)
        #expect(tokens[0].hasPrefix("filename*0*=utf-8''%E6%96%87"))
        #expect(tokens.allSatisfy { $0.utf8.count <= 76 })
        #expect(MIMEParams.tokens("filename", "a \"b\".txt") == ["filename=\"a \\\"b\\\".txt\""])
    }

    @Test func contentTypesFromExtension() {
        #expect(ContentTypes.forFilename("Report.PDF") == "application/pdf")
        #expect(ContentTypes.forFilename("photo.jpeg") == "image/jpeg")
        #expect(ContentTypes.forFilename("noextension") == "application/octet-stream")
        #expect(ContentTypes.forFilename(".bashrc") == "application/octet-stream")
        #expect(Attachment.data([], filename: "x.docx").contentType.hasSuffix("wordprocessingml.document"))
    }
}

@Suite("Header injection")
struct InjectionTests {
    static let from = try! Address("a@example.com")
    static let to = try! Address("b@example.com")

    func refused(_ m: Message) async -> MIMEError? {
        do {
            _ = try await m.byteStream(options: .init()).collect()
            return nil
        } catch let e as MIMEError {
            return e
        } catch {
            return nil
        }
    }

    @Test func crlfInAnyCallerValueIsRefused() async throws {
        var cases: [Message] = []
        var m = Message(from: Self.from, to: [Self.to], subject: "Hi\r\nBcc: victim@example.com", text: "x")
        cases.append(m)
        m.subject = "Hi\nX-Injected: 1"; cases.append(m)
        m.subject = "Hi\rX-Injected: 1"; cases.append(m)
        m.subject = "ok"
        var withName = m
        withName.to[0].displayName = "Eve\r\nBcc: victim@example.com"; cases.append(withName)
        var withHeader = m
        withHeader.headers = [MessageHeader("X-Note", "a\r\nBcc: victim@example.com")]; cases.append(withHeader)
        withHeader.headers = [MessageHeader("X-Note\r\nBcc", "v")]; cases.append(withHeader)
        withHeader.headers = [MessageHeader("Bcc", "victim@example.com")]; cases.append(withHeader)
        var withID = m
        withID.inReplyTo = ["<a@b>\r\nBcc: victim@example.com"]; cases.append(withID)
        withID = m
        withID.messageID = "<a@b>\nBcc: x@y"; cases.append(withID)
        var withFile = m
        withFile.attachments = [.data([1], filename: "a.txt\r\nContent-Type: text/html")]; cases.append(withFile)
        withFile.attachments = [.data([1], filename: "a.txt", contentType: "text/plain\r\nX: y")]; cases.append(withFile)
        withFile.attachments = [.inline([1], contentID: "a\r\nX: y", filename: "a.png")]; cases.append(withFile)
        var withMailbox = m
        withMailbox.cc = [Self.to]
        withMailbox.cc[0].mailbox = "x@y.z\r\nBcc: victim@example.com"; cases.append(withMailbox)
        for (i, c) in cases.enumerated() {
            let e = await refused(c)
            #expect(e != nil, "case \(i) was not refused")
        }
    }

    @Test func headerLookingTextStaysInsideItsHeader() async throws {
        let m = Message(from: Self.from, to: [Self.to], subject: "Hi Bcc: victim@example.com X-Evil: 1", text: "x")
        let wire = try await RoundTrip.serialize(m)
        #expect(WireCheck.check(wire).headerCount == 8)  // Date From To Message-ID Subject MIME-Version Content-Type CTE
        let p = try await RoundTrip.verify([m])
        #expect(!p[0].hasBcc)
        #expect(p[0].header("X-Evil") == nil)
        #expect(p[0].subject == "Hi Bcc: victim@example.com X-Evil: 1")
    }
}
