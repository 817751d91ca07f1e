import Foundation
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

/// Replies the client must refuse, whole sessions through the real handler: the parser's
/// limits (`SMTPReplyParser.defaultMaximumLines`, `defaultMaximumLineLength`) and its grammar.
@Suite("Wire: malformed and over-long replies", .timeLimit(.minutes(1)), .abortPeersOnCancel)
struct WireMalformedReplyTests {
    /// An EHLO reply of `count` lines, delivered in reads of `perRead` lines.
    static func ehloReply(lines count: Int, perRead: Int = 100) -> [ScriptedSMTPStep] {
        let lines = (0..<count).map { i in "250\(i == count - 1 ? " " : "-")X-EXTENSION-\(i)\r\n" }
        return stride(from: 0, to: count, by: perRead).map { .send(lines[$0..<min($0 + perRead, count)].joined()) }
    }

    @Test("an EHLO reply of 512 lines (the limit) is read whole")
    func linesAtTheLimit() async throws {
        let limit = SMTPReplyParser.defaultMaximumLines
        let server = ScriptedSMTPPeer(
            [.send("220 mx.test ESMTP\r\n"), .expect("EHLO client.test")] + Self.ehloReply(lines: limit) + WireScript.quit)
        let conn = try await server.connect(configuration: .wire())
        #expect(conn.capabilities.supports("X-EXTENSION-\(limit - 1)"))
        await conn.quit()
        await server.finished()
        #expect(server.problems.isEmpty)
    }

    @Test("an EHLO reply of more than 512 lines, across reads: protocolViolation, the connection closed, nothing more sent")
    func tooManyLines() async throws {
        let server = ScriptedSMTPPeer(
            [.send("220 mx.test ESMTP\r\n"), .expect("EHLO client.test")]
                + Self.ehloReply(lines: SMTPReplyParser.defaultMaximumLines + 1, perRead: 513) + [.expectOpen(false)])
        let error = await wireCatch { try await server.connect(configuration: .wire()) }
        #expect(error?.code == .protocolViolation && error?.isTransient == false, "\(String(describing: error))")
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test"])
    }

    @Test("a reply line over 8192 octets, with its CRLF: protocolViolation")
    func overLongLine() async throws {
        let line = "250 " + String(repeating: "x", count: SMTPReplyParser.defaultMaximumLineLength) + "\r\n"
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [.expect("MAIL FROM:<a@x.test>"), .send(line), .expectOpen(false)])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .protocolViolation, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>"])
    }

    static let malformed: [String] = [
        "250-first line\r\n251 another code\r\n",  // codes differ within one reply
        "25O ok\r\n",  // not a number
        "2500 ok\r\n",  // four digits
        "250+ok\r\n",  // neither space nor dash after the code
        "\r\n",  // an empty line
    ]

    @Test("a malformed reply to MAIL: protocolViolation, the connection closed", arguments: malformed)
    func malformedReply(_ reply: String) async throws {
        let server = ScriptedSMTPPeer(
            WireScript.hello([]) + [.expect("MAIL FROM:<a@x.test>"), .send(reply), .expectOpen(false)])
        let conn = try await server.connect(configuration: .wire())
        let error = await wireCatch { try await conn.send(envelope: envelope1, body: WireBody(message)) }
        #expect(error?.code == .protocolViolation && error?.isTransient == false, "\(String(describing: error))")
        #expect(!conn.isOpen)
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(server.transcript == ["EHLO client.test", "MAIL FROM:<a@x.test>"])
    }

    @Test("a reply that arrives when nothing was asked: protocolViolation")
    func unsolicitedReply() async throws {
        let server = ScriptedSMTPPeer(WireScript.hello([]) + [.send("250 nobody asked\r\n"), .expectOpen(false)])
        let conn = try await server.connect(configuration: .wire())
        await server.finished()
        #expect(server.problems.isEmpty)
        #expect(!conn.isOpen)
        let error = await wireCatch { try await conn.noop() }
        #expect(error != nil)
    }
}
