import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

struct WireCommandFixture: Sendable, CustomTestStringConvertible {
    var command: SMTPCommand
    var wire: String
    var redacted: String
    var testDescription: String { redacted }
}

@Suite("Wire: command encoder")
struct WireCommandTests {
    static let fixtures: [WireCommandFixture] = [
        .init(command: .ehlo("client.example"), wire: "EHLO client.example\r\n", redacted: "EHLO client.example"),
        .init(command: .helo("client.example"), wire: "HELO client.example\r\n", redacted: "HELO client.example"),
        .init(command: .startTLS, wire: "STARTTLS\r\n", redacted: "STARTTLS"),
        .init(
            command: .auth(mechanism: "PLAIN", initialResponse: "AGpvZQBzM2NyM3Q="), wire: "AUTH PLAIN AGpvZQBzM2NyM3Q=\r\n",
            redacted: "AUTH PLAIN <redacted>"),
        .init(command: .auth(mechanism: "PLAIN", initialResponse: ""), wire: "AUTH PLAIN =\r\n", redacted: "AUTH PLAIN <redacted>"),
        .init(command: .auth(mechanism: "LOGIN", initialResponse: nil), wire: "AUTH LOGIN\r\n", redacted: "AUTH LOGIN"),
        .init(command: .authResponse("c2VjcmV0"), wire: "c2VjcmV0\r\n", redacted: "<redacted>"),
        .init(command: .authResponse(""), wire: "\r\n", redacted: "<redacted>"),
        .init(command: .authResponse("*"), wire: "*\r\n", redacted: "<redacted>"),
        .init(command: .mailFrom("a@example.com", parameters: []), wire: "MAIL FROM:<a@example.com>\r\n", redacted: "MAIL FROM:<a@example.com>"),
        .init(command: .mailFrom("", parameters: []), wire: "MAIL FROM:<>\r\n", redacted: "MAIL FROM:<>"),
        .init(
            command: .mailFrom("a@example.com", parameters: ["SIZE=1234", "BODY=8BITMIME", "SMTPUTF8"]),
            wire: "MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n",
            redacted: "MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME SMTPUTF8"),
        .init(command: .rcptTo("b@example.com", parameters: []), wire: "RCPT TO:<b@example.com>\r\n", redacted: "RCPT TO:<b@example.com>"),
        .init(
            command: .rcptTo("b@example.com", parameters: ["NOTIFY=SUCCESS,FAILURE"]),
            wire: "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE\r\n", redacted: "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE"),
        .init(
            command: .rcptTo("\"john doe\"@example.com", parameters: []), wire: "RCPT TO:<\"john doe\"@example.com>\r\n",
            redacted: "RCPT TO:<\"john doe\"@example.com>"),
        .init(
            command: .rcptTo("jörg@bücher.example", parameters: []), wire: "RCPT TO:<jörg@bücher.example>\r\n",
            redacted: "RCPT TO:<jörg@bücher.example>"),
        .init(command: .data, wire: "DATA\r\n", redacted: "DATA"),
        .init(command: .noop, wire: "NOOP\r\n", redacted: "NOOP"),
        .init(command: .rset, wire: "RSET\r\n", redacted: "RSET"),
        .init(command: .quit, wire: "QUIT\r\n", redacted: "QUIT"),
    ]

    @Test("exact wire text, byte count and redacted text", arguments: fixtures)
    func encode(_ fixture: WireCommandFixture) throws {
        var buffer = ByteBuffer(string: "prefix")
        buffer.moveReaderIndex(forwardBy: 6)
        let count = try fixture.command.encode(into: &buffer)
        #expect(String(buffer: buffer) == fixture.wire)
        #expect(count == fixture.wire.utf8.count)
        #expect(fixture.command.redactedText == fixture.redacted)
        #expect(fixture.command.isSensitive == (fixture.redacted.hasPrefix("AUTH") || fixture.redacted == "<redacted>"))
    }

    static let secret = "s3cr3t-PAYLOAD"

    /// Commands carrying a forbidden character; nothing may be written for them.
    static let refused: [(SMTPCommand, SMTPError.Stage)] = [
        (.mailFrom("a@example.com\r\nRCPT TO:<evil@example.com>", parameters: []), .mail),
        (.mailFrom("a@exa\nmple.com", parameters: []), .mail),
        (.mailFrom("a@exa\rmple.com", parameters: []), .mail),
        (.mailFrom("a@exa\0mple.com", parameters: []), .mail),
        (.mailFrom("a@example.com", parameters: ["SIZE=1\r\nDATA"]), .mail),
        (.mailFrom("a@example.com", parameters: ["SIZE=1 X"]), .mail),
        (.mailFrom("a@example.com", parameters: [""]), .mail),
        (.mailFrom("a>b@example.com", parameters: []), .mail),
        (.mailFrom("a\tb@example.com", parameters: []), .mail),
        (.rcptTo("b@example.com\r\nDATA", parameters: []), .rcpt),
        (.rcptTo("b@exa\0mple.com", parameters: []), .rcpt),
        (.rcptTo("", parameters: []), .rcpt),
        (.rcptTo("<b@example.com>", parameters: []), .rcpt),
        (.rcptTo("b@example.com", parameters: ["NOTIFY=NEVER\n"]), .rcpt),
        (.ehlo("client\r\nMAIL FROM:<x>"), .ehlo),
        (.ehlo(""), .ehlo),
        (.ehlo("two words"), .ehlo),
        (.auth(mechanism: "PLAIN", initialResponse: "\(secret)\r\nQUIT"), .auth),
        (.auth(mechanism: "PL AIN", initialResponse: nil), .auth),
        (.authResponse("\(secret)\n"), .auth),
        (.authResponse("\(secret)\0"), .auth),
    ]

    @Test("CR, LF, NUL and friends are refused before anything is written", arguments: refused)
    func refusedArguments(_ command: SMTPCommand, _ stage: SMTPError.Stage) {
        var buffer = ByteBuffer()
        do {
            try command.encode(into: &buffer)
            Issue.record("encoded \(command.redactedText)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.stage == stage)
            #expect(!error.isTransient)
            #expect(!error.description.contains(Self.secret), "an AUTH payload leaked into \(error)")
            #expect(!error.description.contains("\r") && !error.description.contains("\n"))
        }
        #expect(buffer.readableBytes == 0)
        #expect(buffer.writerIndex == 0)
    }
}

@Suite("Wire: capabilities")
struct WireCapabilitiesTests {
    private func caps(_ wire: String) throws -> SMTPCapabilities {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: wire)
        return SMTPCapabilities(ehloReply: try #require(try parser.parse(&buffer)))
    }

    @Test("Postfix-style EHLO")
    func postfix() throws {
        let c = try caps(
            "250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
        )
        #expect(c.isExtended)
        #expect(c.pipelining && c.startTLS && c.enhancedStatusCodes && c.eightBitMIME && c.dsn && c.smtpUTF8 && c.chunking)
        #expect(c.sizeLimit == 10_240_000)
        #expect(c.authMechanisms == ["PLAIN", "LOGIN"])
        #expect(!c.supports("mx.example.com"))
    }

    @Test("smtp-sink's empty last line is ignored")
    func smtpSink() throws {
        let c = try caps("250-sink.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 \r\n")
        #expect(c.extensions.keys.sorted() == ["8BITMIME", "PIPELINING"])
    }

    @Test("old AUTH=LOGIN form, together with the new one")
    func oldAuthForm() throws {
        let c = try caps("250-old.example\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH CRAM-MD5 xoauth2\r\n")
        #expect(Set(c.authMechanisms) == ["LOGIN", "PLAIN", "CRAM-MD5", "XOAUTH2"])
        #expect(c.authMechanisms.first == "LOGIN")
    }

    @Test("SIZE without a number, lower-case keywords, no extensions")
    func oddities() throws {
        #expect(try caps("250-x\r\n250 size\r\n").sizeLimit == 0)
        #expect(try caps("250-x\r\n250 starttls\r\n").startTLS)
        let bare = try caps("250 only.the.name\r\n")
        #expect(bare.extensions.isEmpty && bare.sizeLimit == nil && bare.authMechanisms.isEmpty)
    }
}

@Suite("Wire: SASL choice")
struct WireSASLChoiceTests {
    static let cases: [([String], [String], SASLMechanism?)] = [
        (SASLMechanism.javaMailDefault, ["PLAIN", "LOGIN"], .login),  // JavaMail order, not the server's
        (SASLMechanism.javaMailDefault, ["PLAIN"], .plain),
        (SASLMechanism.javaMailDefault, ["XOAUTH2", "PLAIN"], .plain),  // XOAUTH2 only when listed
        (SASLMechanism.javaMailDefault, ["XOAUTH2"], nil),
        (SASLMechanism.javaMailDefault, ["DIGEST-MD5", "NTLM"], nil),  // first offered but not implemented: nil, no fallback
        (["XOAUTH2"], ["plain", "xoauth2"], .xoauth2),
        (["xoauth2", "PLAIN"], ["PLAIN"], .plain),
        (["PLAIN"], ["LOGIN"], nil),
        (["CRAM-MD5", "LOGIN"], ["CRAM-MD5", "LOGIN"], .login),
        ([], ["PLAIN"], nil),
        (["PLAIN"], [], nil),
    ]

    @Test("first of the preference list that the server offers", arguments: cases)
    func choose(_ preference: [String], _ offers: [String], _ expected: SASLMechanism?) {
        #expect(SASLMechanism.choose(preference: preference, serverOffers: offers) == expected)
    }

    @Test("initial responses")
    func responses() {
        #expect(SASLMechanism.plainResponse(user: "joe", password: "s3cr3t") == "AGpvZQBzM2NyM3Q=")
        #expect(
            SASLMechanism.xoauth2Response(user: "someuser@example.com", token: "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
                == "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==")
        #expect(
            SASLMechanism.decodeXOAUTH2Challenge("eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==")
                == #"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#)
        #expect(SMTPSecret("pw").description == "<redacted>")
        #expect("\(SMTPCredentials.password(user: "u", password: SMTPSecret("hunter2")))".contains("hunter2") == false)
    }
}
