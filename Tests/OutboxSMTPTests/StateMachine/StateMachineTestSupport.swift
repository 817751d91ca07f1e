import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

/// The machine under test: its waiters are names, its clock is whatever instant a test passes.
typealias TestMachine = SMTPClientStateMachine

/// Waiters named by string literals (`completion: "t1"`), compared by name.
extension SMTPWaiter: ExpressibleByStringLiteral, Equatable {
    public init(stringLiteral value: String) { self = .named(value) }
    public static func == (a: SMTPWaiter, b: SMTPWaiter) -> Bool {
        if case .named(let x) = a, case .named(let y) = b { return x == y }
        return false
    }
}
typealias TestAction = TestMachine.Action

/// Instants for tests: `at(5)` is five seconds after an arbitrary origin.
func at(_ seconds: Int64, _ nanoseconds: Int64 = 0) -> NIODeadline {
    .uptimeNanoseconds(UInt64(1_000_000_000_000 + seconds * 1_000_000_000 + nanoseconds))
}

/// A reply from its wire text (`"250-a\r\n250 b\r\n"`, or one line without CRLF).
func reply(_ text: String) -> SMTPReply {
    var parser = SMTPReplyParser()
    var buffer = ByteBuffer(string: text.hasSuffix("\n") ? text : text + "\r\n")
    return try! parser.parse(&buffer)!
}

func machineConfiguration(
    security: ConnectionSecurity = .none, credentials: SMTPCredentials? = nil, mechanisms: [String]? = nil,
    sendPartial: Bool = true, protocolTimeout: Duration = .seconds(30)
) -> SMTPClientConfiguration {
    SMTPClientConfiguration(
        host: "mx.test", port: 25, security: security, connectTimeout: .seconds(10),
        protocolTimeout: protocolTimeout, credentials: credentials, authMechanisms: mechanisms,
        localHostname: "client.test", sendPartial: sendPartial)
}

extension TestAction {
    /// The text written, for `.write`, `.writeBody` and `.writeBodyChunk`.
    var written: String? {
        switch self {
        case .write(let bytes), .writeBody(let bytes, _, _), .writeBodyChunk(let bytes): return String(buffer: bytes)
        default: return nil
        }
    }

    var isNone: Bool { if case .none = self { true } else { false } }

    /// The error a `.close` or `.fail` gives the waiter `name`.
    func error(for name: String) -> SMTPError? {
        switch self {
        case .close(_, let failures): return failures.first { $0.0 == .named(name) }?.1
        case .fail(let waiter, let error) where waiter == .named(name): return error
        default: return nil
        }
    }

    var closesConnection: Bool { if case .close = self { true } else { false } }
}

/// A machine driven to the ready state over a plain EHLO (`extensions` announced).
func readyMachine(_ extensions: [String] = ["PIPELINING", "SIZE 1000000"], configuration: SMTPClientConfiguration = machineConfiguration())
    -> TestMachine
{
    var machine = TestMachine(configuration: configuration, helloName: "client.test", session: "session")
    _ = machine.channelActive(now: at(0))
    _ = machine.replyReceived(reply("220 mx.test ESMTP"), unprocessedBytes: 0, now: at(0))
    let lines = ["mx.test"] + extensions
    let text = lines.enumerated().map { "250\($0.offset == lines.count - 1 ? " " : "-")\($0.element)\r\n" }.joined()
    let action = machine.replyReceived(reply(text), unprocessedBytes: 0, now: at(1))
    guard case .sessionReady = action else {
        Issue.record("not ready: \(action)")
        return machine
    }
    return machine
}

/// A pipelined transaction's request: MAIL, `rcpts` RCPTs and DATA in one write.
func pipelinedRequest(
    rcpts: Int = 1, body: String? = "Subject: t\r\n\r\nhi\r\n.\r\n", sendPartial: Bool = true,
    handBack: Bool = false, dataIncluded: Bool = true
) -> SMTPTransactionRequest {
    var wire = "MAIL FROM:<a@x.test>\r\n"
    for i in 0..<rcpts { wire += "RCPT TO:<r\(i)@x.test>\r\n" }
    if dataIncluded { wire += "DATA\r\n" }
    return SMTPTransactionRequest(
        commands: .pipelined(ByteBuffer(string: wire), dataIncluded: dataIncluded), sender: "a@x.test",
        rcptCount: rcpts, body: body.map { ByteBuffer(string: $0) }, sendPartial: sendPartial,
        handBack: handBack)
}
