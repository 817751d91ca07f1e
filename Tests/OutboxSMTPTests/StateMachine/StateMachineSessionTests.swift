import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("State machine: session set-up (greeting, EHLO/HELO, STARTTLS), no sockets")
struct StateMachineSessionTests {
    @Test("greeting, EHLO, ready: the capabilities of the EHLO, one timing per step")
    func plainSession() {
        var m = TestMachine(configuration: machineConfiguration(), helloName: "client.test", session: "session")
        #expect(m.channelActive(now: at(0)).isNone)
        #expect(m.nextDeadline == at(30))
        #expect(m.replyReceived(reply("220 mx.test ESMTP"), unprocessedBytes: 0, now: at(1)).written == "EHLO client.test\r\n")
        let ready = m.replyReceived(reply("250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n"), unprocessedBytes: 0, now: at(2))
        guard case .sessionReady(let waiter, let facts) = ready else { Issue.record("\(ready)"); return }
        #expect(waiter == "session")
        #expect(facts.capabilities.pipelining && facts.capabilities.sizeLimit == 100 && facts.greeting?.code == 220)
        #expect(facts.stepTimings.map(\.step) == ["greeting", "ehlo"])
        #expect(m.nextDeadline == nil, "nothing awaited once ready")
    }

    @Test("EHLO not understood (502): HELO, and a session without extensions")
    func heloFallback() {
        var m = TestMachine(configuration: machineConfiguration(), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 old.test"), unprocessedBytes: 0, now: at(0))
        #expect(m.replyReceived(reply("502 5.5.2 what?"), unprocessedBytes: 0, now: at(1)).written == "HELO client.test\r\n")
        guard case .sessionReady(_, let facts) = m.replyReceived(reply("250 old.test"), unprocessedBytes: 0, now: at(1)) else {
            Issue.record("not ready"); return
        }
        #expect(!facts.capabilities.isExtended)
    }

    @Test(
        "EHLO refused otherwise (554), a refused HELO, a 554 greeting: the session fails",
        arguments: [
            (["220 mx", "554 no"], SMTPError.Stage.ehlo), (["220 mx", "500 eh?", "550 no"], .ehlo), (["554 go away"], .greeting),
        ])
    func refused(replies: [String], stage: SMTPError.Stage) {
        var m = TestMachine(configuration: machineConfiguration(), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        var last: TestAction = .none
        for text in replies { last = m.replyReceived(reply(text), unprocessedBytes: 0, now: at(1)) }
        let error = last.error(for: "session")
        #expect(last.closesConnection && error?.code == .reply && error?.stage == stage && error?.isTransient == false)
    }

    @Test("STARTTLS: 220 with nothing after it adds TLS; after the handshake EHLO again, and only its capabilities count")
    func startTLS() {
        var m = TestMachine(configuration: machineConfiguration(security: .startTLSRequired), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        #expect(m.replyReceived(reply("250-mx\r\n250-STARTTLS\r\n250 SIZE 5\r\n"), unprocessedBytes: 0, now: at(1)).written == "STARTTLS\r\n")
        guard case .addTLSHandler = m.replyReceived(reply("220 2.0.0 go ahead"), unprocessedBytes: 0, now: at(2)) else {
            Issue.record("no TLS"); return
        }
        #expect(m.nextDeadline == at(12), "the handshake is bounded by connect-timeout")
        #expect(m.tlsHandshakeCompleted(now: at(3)).written == "EHLO client.test\r\n")
        guard case .sessionReady(_, let facts) = m.replyReceived(reply("250-mx\r\n250 PIPELINING\r\n"), unprocessedBytes: 0, now: at(4)) else {
            Issue.record("not ready"); return
        }
        #expect(facts.tlsEstablished && facts.capabilities.pipelining && facts.capabilities.sizeLimit == nil)
        #expect(facts.stepTimings.map(\.step) == ["greeting", "ehlo", "starttls"])
    }

    @Test("STARTTLS injection: bytes left over after the 220 close the connection before TLS")
    func startTLSInjection() {
        var m = TestMachine(configuration: machineConfiguration(security: .startTLS), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        _ = m.replyReceived(reply("250-mx\r\n250 STARTTLS\r\n"), unprocessedBytes: 0, now: at(1))
        let action = m.replyReceived(reply("220 go ahead"), unprocessedBytes: 27, now: at(2))
        let error = action.error(for: "session")
        #expect(action.closesConnection && error?.code == .startTLSInjection && error?.stage == .starttls)
        #expect(error?.message.contains("27 bytes") == true)
    }

    @Test("start-tls-required and no STARTTLS offered: tls_required, nothing sent in clear text")
    func startTLSRequiredMissing() {
        var m = TestMachine(configuration: machineConfiguration(security: .startTLSRequired), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        let action = m.replyReceived(reply("250 mx"), unprocessedBytes: 0, now: at(1))
        #expect(action.error(for: "session")?.code == .tlsRequired)
        #expect(SMTPError.Code.tlsRequired.rawValue == "tls_required")
    }

    @Test("start-tls and STARTTLS refused (454): clear text goes on, with a notice")
    func startTLSOptionalRefused() {
        var m = TestMachine(configuration: machineConfiguration(security: .startTLS), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        _ = m.replyReceived(reply("250-mx\r\n250 STARTTLS\r\n"), unprocessedBytes: 0, now: at(1))
        guard case .sessionReady(_, let facts) = m.replyReceived(reply("454 4.7.0 not now"), unprocessedBytes: 0, now: at(2)) else {
            Issue.record("not ready"); return
        }
        #expect(!facts.tlsEstablished && facts.notices.count == 1)
    }

    @Test("implicit TLS: the handshake comes first, bounded by connect-timeout; then the greeting")
    func implicitTLS() {
        var m = TestMachine(configuration: machineConfiguration(security: .implicitTLS), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        #expect(m.timerFired(now: at(9)).isNone, "before the deadline nothing happens")
        var copy = m
        let timedOut = copy.timerFired(now: at(10))
        #expect(timedOut.error(for: "session")?.code == .timeout && timedOut.error(for: "session")?.stage == .tls)
        #expect(m.tlsHandshakeCompleted(now: at(1)).isNone)
        #expect(m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(2)).written == "EHLO client.test\r\n")
    }

    @Test("a greeting that never comes: timeout at protocol-timeout exactly")
    func greetingTimeout() {
        var m = TestMachine(configuration: machineConfiguration(), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        #expect(m.timerFired(now: at(29, 999_999_999)).isNone)
        let action = m.timerFired(now: at(30))
        let error = action.error(for: "session")
        #expect(error?.code == .timeout && error?.stage == .greeting && error?.isTransient == true)
        #expect(m.timerFired(now: at(31)).isNone, "closed: later events are ignored")
    }

    @Test("421 during EHLO, the connection closed before the greeting")
    func closingDuringSetUp() {
        var m = TestMachine(configuration: machineConfiguration(), helloName: "client.test", session: "session")
        _ = m.channelActive(now: at(0))
        _ = m.replyReceived(reply("220 mx"), unprocessedBytes: 0, now: at(0))
        let action = m.replyReceived(reply("421 4.3.2 shutting down"), unprocessedBytes: 0, now: at(1))
        #expect(action.error(for: "session")?.replyCode == 421 && action.error(for: "session")?.isTransient == true)

        var n = TestMachine(configuration: machineConfiguration(), helloName: "client.test", session: "session")
        _ = n.channelActive(now: at(0))
        let closed = n.channelInactive().error(for: "session")
        #expect(closed?.code == .connectionClosed && closed?.message.contains("before its greeting") == true)
    }
}
