import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

/// One parser fixture: the wire text and the replies it must give.
struct WireReplyFixture: Sendable, CustomTestStringConvertible {
    var name: String
    var wire: String
    var replies: [SMTPReply]
    var testDescription: String { name }
}

/// Parses every complete reply out of `bytes`, fed in the given pieces.
private func parseAll(_ pieces: [[UInt8]], parser: inout SMTPReplyParser) throws(SMTPError) -> [SMTPReply] {
    var buffer = ByteBuffer()
    var replies: [SMTPReply] = []
    for piece in pieces {
        buffer.writeBytes(piece)
        while let reply = try parser.parse(&buffer) { replies.append(reply) }
    }
    return replies
}

@Suite("Wire: reply parser")
struct WireReplyParserTests {
    static let fixtures: [WireReplyFixture] = [
        .init(
            name: "single line", wire: "220 mx.example.com ESMTP Postfix\r\n",
            replies: [SMTPReply(code: 220, lines: ["mx.example.com ESMTP Postfix"])]),
        .init(name: "code alone", wire: "250\r\n", replies: [SMTPReply(code: 250, lines: [""])]),
        .init(name: "bare LF tolerated", wire: "221 bye\n", replies: [SMTPReply(code: 221, lines: ["bye"])]),
        .init(
            name: "multi-line EHLO", wire: "250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n",
            replies: [SMTPReply(code: 250, lines: ["mx.example.com", "PIPELINING", "SIZE 10240000", "8BITMIME"])]),
        .init(
            name: "enhanced code", wire: "550 5.1.1 <nobody@example.com>: Recipient address rejected\r\n",
            replies: [
                SMTPReply(
                    code: 550, enhancedCode: EnhancedStatusCode(klass: 5, subject: 1, detail: 1),
                    lines: ["<nobody@example.com>: Recipient address rejected"])
            ]),
        .init(
            name: "enhanced code on every line",
            wire: "535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support.example/answer\r\n",
            replies: [
                SMTPReply(
                    code: 535, enhancedCode: EnhancedStatusCode(klass: 5, subject: 7, detail: 8),
                    lines: ["Username and Password not accepted.", "https://support.example/answer"])
            ]),
        .init(
            name: "enhanced code of another class is text", wire: "250 5.1.1 odd\r\n",
            replies: [SMTPReply(code: 250, lines: ["5.1.1 odd"])]),
        .init(
            name: "smtp-sink empty last EHLO line", wire: "250-sink.example\r\n250-PIPELINING\r\n250 \r\n",
            replies: [SMTPReply(code: 250, lines: ["sink.example", "PIPELINING", ""])]),
        .init(
            name: "two replies in one read", wire: "250 2.1.0 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
            replies: [
                SMTPReply(code: 250, enhancedCode: EnhancedStatusCode(klass: 2, subject: 1, detail: 0), lines: ["Ok"]),
                SMTPReply(code: 354, lines: ["End data with <CR><LF>.<CR><LF>"]),
            ]),
        .init(
            name: "334 XOAUTH2 challenge", wire: "334 eyJzdGF0dXMiOiI0MDEifQ==\r\n",
            replies: [SMTPReply(code: 334, lines: ["eyJzdGF0dXMiOiI0MDEifQ=="])]),
    ]

    @Test("fixtures parse whole", arguments: fixtures)
    func whole(_ fixture: WireReplyFixture) throws {
        var parser = SMTPReplyParser()
        let replies = try parseAll([Array(fixture.wire.utf8)], parser: &parser)
        #expect(replies == fixture.replies)
        #expect(!parser.isInsideReply)
    }

    @Test("fixtures parse byte at a time", arguments: fixtures)
    func byteAtATime(_ fixture: WireReplyFixture) throws {
        var parser = SMTPReplyParser()
        let replies = try parseAll(fixture.wire.utf8.map { [$0] }, parser: &parser)
        #expect(replies == fixture.replies)
    }

    @Test("fixtures parse split at every position", arguments: fixtures)
    func everySplit(_ fixture: WireReplyFixture) throws {
        let bytes = Array(fixture.wire.utf8)
        for cut in 0...bytes.count {
            var parser = SMTPReplyParser()
            let replies = try parseAll([Array(bytes[..<cut]), Array(bytes[cut...])], parser: &parser)
            #expect(replies == fixture.replies, "cut at \(cut)")
        }
    }

    @Test("an incomplete reply needs more bytes and consumes only whole lines")
    func incomplete() throws {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: "250-first\r\n250 sec")
        #expect(try parser.parse(&buffer) == nil)
        #expect(parser.isInsideReply)
        #expect(buffer.readableBytes == 7)
        buffer.writeString("ond\r\n")
        #expect(try parser.parse(&buffer) == SMTPReply(code: 250, lines: ["first", "second"]))
    }

    static let malformed: [String] = [
        "hello\r\n",  // no code
        "25\r\n",  // short code
        "2x0 ok\r\n",  // not digits
        "650 ok\r\n",  // class outside 2-5
        "150 ok\r\n",
        "250_ok\r\n",  // bad separator
        "2500 ok\r\n",
        "250-one\r\n354 two\r\n",  // code changes inside a multi-line reply
        "\r\n",  // empty line
        "HTTP/1.1 400 Bad Request\r\n",  // garbage
        "\u{00}\u{01}\u{02}\r\n",
    ]

    @Test("malformed lines are protocol violations", arguments: malformed)
    func malformedLines(_ wire: String) {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: wire)
        #expect {
            while try parser.parse(&buffer) != nil {}
        } throws: { error in
            guard let error = error as? SMTPError else { return false }
            return error.code == .protocolViolation && error.stage == .protocol && !error.isTransient
        }
        // After the error the parser holds no half reply.
        #expect(!parser.isInsideReply)
    }

    @Test("an endless line fails once past the limit, without reading it all")
    func endlessLine() {
        var parser = SMTPReplyParser(maximumLineLength: 1024)
        var buffer = ByteBuffer()
        var fed = 0
        var failure: SMTPError?
        // Feed 1 MiB without LF, 512 bytes at a time; the parser must give up early.
        while fed < 1 << 20 {
            buffer.writeRepeatingByte(UInt8(ascii: "a"), count: 512)
            fed += 512
            do {
                _ = try parser.parse(&buffer)
            } catch {
                failure = error
                break
            }
        }
        #expect(failure?.code == .protocolViolation)
        #expect(fed <= 2048)
        #expect(failure?.description.contains("longer than 1024") == true)
    }

    @Test("a line over the limit with its LF present fails too")
    func longLineWithLF() throws {
        var parser = SMTPReplyParser(maximumLineLength: 100)
        var buffer = ByteBuffer(string: "250 " + String(repeating: "x", count: 200) + "\r\n")
        #expect(throws: SMTPError.self) { _ = try parser.parse(&buffer) }
        var ok = ByteBuffer(string: "250 " + String(repeating: "x", count: 90) + "\r\n")
        var fresh = SMTPReplyParser(maximumLineLength: 100)
        #expect(try fresh.parse(&ok)?.code == 250)
    }

    @Test("too many lines in one reply fail")
    func tooManyLines() {
        var parser = SMTPReplyParser(maximumLines: 4)
        var buffer = ByteBuffer(string: String(repeating: "250-x\r\n", count: 5) + "250 end\r\n")
        #expect(throws: SMTPError.self) { while try parser.parse(&buffer) != nil {} }
    }

    @Test("malformed text is shown printable and clipped")
    func printable() {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: "\u{1B}[31mevil" + String(repeating: "z", count: 200) + "\r\n")
        do {
            _ = try parser.parse(&buffer)
            Issue.record("expected an error")
        } catch {
            #expect(!error.message.contains("\u{1B}"))
            #expect(error.message.count < 200)
        }
    }

    static let enhanced: [(String, String?)] = [
        ("2.0.0", "2.0.0"), ("5.7.139 text", "5.7.139"), ("4.4.2", "4.4.2"),
        ("3.1.1", nil), ("5.1", nil), ("5..1", nil), ("5.1234.1", nil), ("x.1.1", nil), ("", nil),
    ]

    @Test("enhanced status codes", arguments: enhanced)
    func enhancedCodes(_ text: String, _ expected: String?) {
        #expect(EnhancedStatusCode.parse(prefixOf: Substring(text))?.0.description == expected)
    }

    @Test("reply classes")
    func classes() {
        #expect(SMTPReply(code: 250, lines: []).isPositiveCompletion)
        #expect(SMTPReply(code: 354, lines: []).isPositiveIntermediate)
        #expect(SMTPReply(code: 451, lines: []).isTransientFailure)
        #expect(SMTPReply(code: 550, lines: []).isPermanentFailure)
        #expect(SMTPReply(code: 550, enhancedCode: .init(klass: 5, subject: 1, detail: 1), lines: ["a", "b"]).description == "550 5.1.1 a b")
    }
}
