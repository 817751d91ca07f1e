import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

@Suite("Wire: a message's own DSN parameters")
struct WireDSNParameterTests {
    @Test("RET, ENVID, NOTIFY and ORCPT of the envelope go on when the server offers DSN; the configuration's are the default")
    func passedOn() throws {
        var configuration = SMTPClientConfiguration.wire(port: 25)
        configuration.dsnNotify = "FAILURE"
        let dsn = SMTPDSNParameters(
            ret: "HDRS", envid: "QQ+2B1", notify: ["b@example.test": "NEVER"], orcpt: ["b@example.test": "rfc822;B@example.test"])
        let envelope = SMTPEnvelope(from: "a@example.test", recipients: ["B@example.test", "c@example.test"], dsn: dsn)
        let withDSN = SMTPCapabilities(extensions: ["DSN": [], "PIPELINING": []])
        let (mail, rcpts) = try SMTPConnection.plan(envelope: envelope, capabilities: withDSN, configuration: configuration)
        #expect(mail == .mailFrom("a@example.test", parameters: ["RET=HDRS", "ENVID=QQ+2B1"]))
        #expect(
            rcpts == [
                .rcptTo("B@example.test", parameters: ["NOTIFY=NEVER", "ORCPT=rfc822;B@example.test"]),
                .rcptTo("c@example.test", parameters: ["NOTIFY=FAILURE"]),
            ])
        let (plainMail, plainRcpts) = try SMTPConnection.plan(
            envelope: envelope, capabilities: SMTPCapabilities(extensions: [:]),
            configuration: configuration)
        #expect(plainMail == .mailFrom("a@example.test", parameters: []))
        #expect(plainRcpts.allSatisfy { if case .rcptTo(_, let p) = $0 { p.isEmpty } else { false } })
    }
}
