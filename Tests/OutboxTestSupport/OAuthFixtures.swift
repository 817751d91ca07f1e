import Foundation
import OutboxConfig
import OutboxMIME

/// A fixed RFC 5322 message: its bytes are exactly what the transports must deliver.
package func rawMessage(
    from: String = "agent@contoso.test", to: String = "rcpt@example.test", extra: String = "", body: String = "Hello from Outbox.\r\n"
) throws -> (RawMessage, [UInt8]) {
    let text =
        "From: Agent <\(from)>\r\nTo: <\(to)>\r\n\(extra)Subject: emulator round trip\r\nDate: Wed, 25 Nov 2026 21:00:00 +0000\r\nMessage-ID: <rt.\(UUID().uuidString)@contoso.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + body
    let bytes = Array(text.utf8)
    let message = try RawMessage(bytes: bytes)
    return (message, bytes)
}

/// The emulator's CA is `caFile` (the built-in test CA unless the emulator runs with other
/// certificates).
package func configuration(
    _ base: String, type: ServerType, caFile: String = TestCertificates.builtIn.caFile, _ edit: (inout OutboxConfiguration) -> Void = { _ in }
) -> OutboxConfiguration {
    var c = OutboxConfiguration()
    c.smtpClient.serverType = type
    c.smtpClient.clientID = "client-1"
    c.smtpClient.directoryID = "tenant-1"
    c.smtpClient.tenantAuthority = base
    c.smtpClient.user = "agent@contoso.test"
    c.smtpClient.password = Secret("s3cret-value")
    c.smtpClient.connectTimeout = .seconds(5)
    c.smtpClient.protocolTimeout = .seconds(10)
    c.outbox.graphURL = "\(base)/v1.0"
    c.outbox.googleTokenURL = "\(base)/google/token"
    c.outbox.tlsCAFile = caFile
    if type == .ews {
        c.smtpClient.server = "\(base)/EWS/Exchange.asmx"
        c.smtpClient.password = Secret("ews-pass")
        c.smtpClient.enableAuthentication = true
    }
    edit(&c)
    return c
}
