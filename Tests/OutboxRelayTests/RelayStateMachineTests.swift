import Foundation
import NIOCore
import OutboxConfig
import OutboxSMTPGrammar
import Testing

@testable import OutboxRelay

private func policy(
    trusted: Bool = true, tls: Bool = false, canStartTLS: Bool = true, requireTLS: Bool = true,
    maxSize: Int = 1000, maxRecipients: Int = 3
) -> RelaySessionPolicy {
    RelaySessionPolicy(
        hostname: "relay.test", trustedNetwork: trusted, canStartTLS: canStartTLS, implicitTLS: tls,
        requireTLSForAuth: requireTLS, maxMessageSize: maxSize, maxRecipients: maxRecipients)
}

private let scanner = ClientIdentity(
    name: "scanner", user: "scanner", passwordHash: Secret("$2b$04$" + String(repeating: "a", count: 53)),
    allowedSenders: ["*@example.test"])

extension RelayStateMachine {
    mutating func send(_ line: String) -> Action { self.line(Array(line.utf8)) }

    /// The reply of an action (nil when it has none).
    static func reply(_ action: Action) -> SMTPServerReply? {
        switch action {
        case .reply(let r), .replyAndClose(let r), .startTLS(let r), .receiveData(let r): r
        default: nil
        }
    }

    mutating func code(_ line: String) -> Int? { Self.reply(send(line))?.code }
}

@Suite("Relay: state machine")
struct RelayStateMachineTests {
    @Test("EHLO lists the extensions; AUTH only after TLS when required")
    func ehlo() {
        var m = RelayStateMachine(policy: policy())
        let lines = RelayStateMachine.reply(m.send("EHLO client.test"))?.lines ?? []
        #expect(lines.first == "relay.test")
        for ext in ["PIPELINING", "SIZE 1000", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN", "STARTTLS"] {
            #expect(lines.contains(ext), "\(ext)")
        }
        #expect(!lines.contains { $0.hasPrefix("AUTH") })
        #expect(m.code("AUTH PLAIN AHNjYW5uZXIAcGFzcw==") == 538)
        #expect(m.send("STARTTLS") == .startTLS(SMTPServerReply(220, "2.0.0", "Ready to start TLS")))
        m.tlsEstablished(description: "TLSv1.3")
        // RFC 3207: after TLS the client starts again with EHLO.
        #expect(m.code("MAIL FROM:<a@example.test>") == 503)
        let after = RelayStateMachine.reply(m.send("EHLO client.test"))?.lines ?? []
        #expect(after.contains("AUTH PLAIN LOGIN"))
        #expect(!after.contains("STARTTLS"))
        #expect(m.code("STARTTLS") == 503)
    }

    @Test("a transaction: MAIL, RCPT (limit 452), DATA, end, commit")
    func transaction() {
        var m = RelayStateMachine(policy: policy())
        _ = m.send("EHLO c")
        #expect(m.code("RCPT TO:<a@example.test>") == 503)
        #expect(m.code("DATA") == 503)
        #expect(m.code("MAIL FROM:<ann@example.test> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1") == 250)
        #expect(m.code("MAIL FROM:<ann@example.test>") == 503)
        #expect(m.code("DATA") == 554)
        #expect(m.code("RCPT TO:<b1@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b1@example.test") == 250)
        #expect(m.code("RCPT TO:<b2@example.test>") == 250)
        #expect(m.code("RCPT TO:<b3@example.test>") == 250)
        #expect(
            RelayStateMachine.reply(m.send("RCPT TO:<b4@example.test>"))
                == SMTPServerReply(452, "4.5.3", "Error: too many recipients (at most 3 per message)"))
        #expect(m.code("DATA") == 354)
        #expect(m.readsMessage)
        guard case .commit(let envelope) = m.messageEnded(oversized: false) else { Issue.record("no commit"); return }
        #expect(envelope.sender == "ann@example.test")
        #expect(envelope.recipients.map(\.address) == ["b1@example.test", "b2@example.test", "b3@example.test"])
        #expect(envelope.recipients[0].notify == "FAILURE,DELAY")
        #expect(envelope.ret == "HDRS")
        #expect(envelope.envid == "QQ+2B1")
        #expect(RelayStateMachine.reply(m.committed(.success("id1")))?.code == 250)
        #expect(m.accepted == 1)
        #expect(m.code("MAIL FROM:<> ") == 250)
    }

    @Test("never an open relay: outside allowed-networks MAIL needs AUTH")
    func openRelay() {
        var m = RelayStateMachine(policy: policy(trusted: false))
        _ = m.send("EHLO c")
        #expect(RelayStateMachine.reply(m.send("MAIL FROM:<a@example.test>")) == SMTPServerReply(530, "5.7.0", "Authentication required"))
    }

    @Test("AUTH PLAIN and LOGIN, then the sender rules")
    func auth() {
        var m = RelayStateMachine(policy: policy(trusted: false, tls: true))
        _ = m.send("EHLO c")
        // PLAIN with an initial response: \0scanner\0secret
        #expect(m.send("AUTH PLAIN AHNjYW5uZXIAc2VjcmV0") == .verify(user: "scanner", password: "secret"))
        #expect(m.acceptsLines == false)
        #expect(RelayStateMachine.reply(m.authVerified(.invalid)) == SMTPServerReply(535, "5.7.8", "Authentication credentials invalid"))
        // LOGIN in three steps.
        #expect(RelayStateMachine.reply(m.send("AUTH LOGIN"))?.code == 334)
        #expect(m.expectsSecretLine)
        #expect(RelayStateMachine.reply(m.send("c2Nhbm5lcg=="))?.lines == ["UGFzc3dvcmQ6"])
        #expect(m.send("c2VjcmV0") == .verify(user: "scanner", password: "secret"))
        #expect(RelayStateMachine.reply(m.authVerified(.success(scanner)))?.code == 235)
        #expect(m.code("AUTH PLAIN AHNjYW5uZXIAc2VjcmV0") == 503)
        #expect(
            RelayStateMachine.reply(m.send("MAIL FROM:<x@other.test>"))
                == SMTPServerReply(553, "5.7.1", "Sender address rejected: not owned by user scanner"))
        #expect(m.code("MAIL FROM:<>") == 250)
        #expect(m.code("RSET") == 250)
        #expect(m.code("MAIL FROM:<Printer@EXAMPLE.test>") == 250)
    }

    @Test("AUTH cancelled, undecodable, unknown mechanism, other authzid")
    func authErrors() {
        var m = RelayStateMachine(policy: policy(tls: true))
        _ = m.send("EHLO c")
        #expect(m.code("AUTH CRAM-MD5") == 504)
        #expect(m.code("AUTH PLAIN") == 334)
        #expect(m.code("*") == 501)
        #expect(m.code("AUTH PLAIN !!!") == 501)
        // authzid "other", authcid "scanner"
        #expect(m.code("AUTH PLAIN b3RoZXIAc2Nhbm5lcgBzZWNyZXQ=") == 535)
    }

    @Test("oversized: SIZE at MAIL and the body after the dot")
    func sizes() {
        var m = RelayStateMachine(policy: policy())
        _ = m.send("EHLO c")
        #expect(RelayStateMachine.reply(m.send("MAIL FROM:<a@example.test> SIZE=1001"))?.enhanced == "5.3.4")
        #expect(m.code("MAIL FROM:<a@example.test>") == 250)
        #expect(m.code("RCPT TO:<b@example.test>") == 250)
        #expect(m.code("DATA") == 354)
        #expect(RelayStateMachine.reply(m.messageEnded(oversized: true))?.code == 552)
        #expect(m.code("NOOP") == 250)
    }

    @Test("BDAT: chunks, LAST commits; only BDAT/RSET/NOOP/QUIT between chunks")
    func bdat() {
        var m = RelayStateMachine(policy: policy())
        _ = m.send("EHLO c")
        _ = m.send("MAIL FROM:<a@example.test>")
        _ = m.send("RCPT TO:<b@example.test>")
        #expect(m.send("BDAT 5") == .receiveChunk(size: 5, first: true))
        let partial = m.chunkBytesRead(3)
        let whole = m.chunkBytesRead(2)
        #expect(!partial && whole)
        #expect(RelayStateMachine.reply(m.messageEnded(oversized: false))?.code == 250)
        #expect(m.code("MAIL FROM:<a@example.test>") == 503)
        #expect(m.send("BDAT 0 LAST") == .receiveChunk(size: 0, first: false))
        let complete = m.chunkBytesRead(0)
        #expect(complete)
        guard case .commit = m.messageEnded(oversized: false) else { Issue.record("no commit"); return }
    }

    @Test("BDAT after RSET starts a new message (the earlier chunks are dropped)")
    func bdatAfterReset() {
        var m = RelayStateMachine(policy: policy())
        _ = m.send("EHLO c")
        _ = m.send("MAIL FROM:<a@example.test>")
        _ = m.send("RCPT TO:<b@example.test>")
        #expect(m.send("BDAT 3") == .receiveChunk(size: 3, first: true))
        let read = m.chunkBytesRead(3)
        #expect(read)
        #expect(RelayStateMachine.reply(m.messageEnded(oversized: false))?.code == 250)
        #expect(m.code("RSET") == 250)
        _ = m.send("MAIL FROM:<a@example.test>")
        _ = m.send("RCPT TO:<b@example.test>")
        #expect(m.send("BDAT 2 LAST") == .receiveChunk(size: 2, first: true))
    }

    @Test("command errors: unknown, syntax, too many errors hang up")
    func errors() {
        var m = RelayStateMachine(policy: policy())
        #expect(m.code("MAIL FROM:<a@example.test>") == 503)
        #expect(m.code("EHLO") == 501)
        _ = m.send("EHLO c")
        #expect(m.code("MAIL FROM:a@example.test") == 501)
        #expect(m.code("RCPT TO:<>") == 501)
        #expect(m.code("VRFY bob") == 252)
        #expect(m.code("FOO") == 500)
        #expect(RelayStateMachine.reply(m.lineTooLong()) == SMTPServerReply(500, "5.5.2", "Line too long (512 octets at most)"))
        var last: RelayStateMachine.Action = .none
        for _ in 0..<30 { last = m.send("BAD"); if m.isClosed { break } }
        #expect(RelayStateMachine.reply(last)?.code == 421)
        #expect(m.isClosed)
    }

    @Test("shutdown: 421 at once when idle; a message in progress finishes first")
    func shutdown() {
        var idle = RelayStateMachine(policy: policy())
        _ = idle.send("EHLO c")
        #expect(RelayStateMachine.reply(idle.shutdown())?.code == 421)
        var busy = RelayStateMachine(policy: policy())
        _ = busy.send("EHLO c")
        _ = busy.send("MAIL FROM:<a@example.test>")
        _ = busy.send("RCPT TO:<b@example.test>")
        _ = busy.send("DATA")
        #expect(busy.shutdown() == .none)
        guard case .commit = busy.messageEnded(oversized: false) else { Issue.record("no commit"); return }
        #expect(RelayStateMachine.reply(busy.committed(.success("x")))?.code == 250)
        #expect(busy.code("NOOP") == 421)
    }

    @Test("timeouts close with 421 4.4.2")
    func timeouts() {
        var m = RelayStateMachine(policy: policy())
        #expect(m.timedOut() == .replyAndClose(SMTPServerReply(421, "4.4.2", "relay.test Error: timeout exceeded")))
    }

    @Test("non-ASCII addresses need SMTPUTF8")
    func utf8() {
        var m = RelayStateMachine(policy: policy())
        _ = m.send("EHLO c")
        #expect(m.code("MAIL FROM:<jörg@example.test>") == 553)
        #expect(m.code("MAIL FROM:<jörg@example.test> SMTPUTF8") == 250)
    }
}

@Suite("Relay: header checks and added headers")
struct RelayMessageTests {
    @Test("From addresses, malformed ones, mbox From line")
    func facts() {
        let facts = RelayMessage.headerFacts(
            ByteBuffer(string: "From x@y Mon\r\nFrom: \"A\" <a@example.test>,\r\n b@other.test\r\nDate: now\r\n\r\nFrom: body@x\r\n"))
        #expect(facts.fromAddresses == ["a@example.test", "b@other.test"])
        #expect(facts.hasDate)
        #expect(!facts.hasMessageID)
        let broken = RelayMessage.headerFacts(ByteBuffer(string: "From: <evil@other.test> (((\r\n\r\n"))
        #expect(broken.fromAddresses == ["evil@other.test"])
        let ref = ClientIdentityRef(name: "s", user: "s", allowedSenders: ["*@example.test"])
        #expect(RelayMessage.senderProblem(facts, identity: ref)?.code == 550)
        #expect(RelayMessage.senderProblem(facts, identity: nil) == nil)
        #expect(RelayMessage.senderProblem(RelayMessage.headerFacts(ByteBuffer(string: "Subject: x\r\n\r\n")), identity: ref) == nil)
    }

    @Test("Received records TLS and AUTH; Date and Message-ID only when missing")
    func added() {
        var info = RelaySessionInfo()
        info.heloName = "printer"
        info.extended = true
        info.tls = true
        info.tlsDescription = "TLSv1.3"
        info.authenticatedUser = "scanner"
        let envelope = RelayEnvelope(sender: "a@example.test", recipients: [.init(address: "b@example.test")])
        let text = RelayMessage.addedHeaders(
            facts: RelayMessage.HeaderFacts(), settings: RelaySettings(), session: info, envelope: envelope,
            client: "192.0.2.1", id: "ID1", hostname: "relay.test", now: Date(timeIntervalSince1970: 0))
        #expect(
            text.hasPrefix(
                "Received: from printer ([192.0.2.1])\r\n\tby relay.test (Outbox) with ESMTPSA id ID1\r\n\t(using TLSv1.3; authenticated as scanner)\r\n\tfor <b@example.test>; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
            ))
        #expect(text.contains("Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"))
        #expect(text.contains("Message-ID: <ID1@relay.test>\r\n"))
        var facts = RelayMessage.HeaderFacts()
        facts.hasDate = true
        facts.hasMessageID = true
        var settings = RelaySettings()
        settings.addReceivedHeader = false
        #expect(
            RelayMessage.addedHeaders(
                facts: facts, settings: settings, session: info, envelope: envelope, client: "c", id: "i",
                hostname: "h", now: Date()) == "")
    }
}

@Suite("Relay: queue-min-free at MAIL")
struct RelayIntakeTests {
    @Test("refused intake and a SIZE that does not fit get 452 4.3.1; the session goes on")
    func insufficientStorage() {
        var m = RelayStateMachine(policy: policy())
        _ = m.send("EHLO client.test")
        m.intake = .refused
        let refused = RelayStateMachine.reply(m.send("MAIL FROM:<a@example.test>"))
        #expect(refused?.code == 452 && refused?.enhanced == "4.3.1", "\(String(describing: refused))")
        #expect(m.code("RCPT TO:<b@example.test>") == 503, "no transaction was opened")
        m.intake = .open(room: 500)
        #expect(m.code("MAIL FROM:<a@example.test> SIZE=600") == 452)
        #expect(m.code("MAIL FROM:<a@example.test> SIZE=400") == 250)
        #expect(m.code("RSET") == 250)
        m.intake = .open(room: nil)
        #expect(m.code("MAIL FROM:<a@example.test> SIZE=900") == 250)
    }
}
