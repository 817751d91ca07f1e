import ArgumentParser
import Foundation
import Logging
import OutboxConfig
import OutboxTransports

extension ProbeCommand {
    /// `outbox probe` for server-type = EWS: which HTTP authentication schemes the server offers
    /// (a GetFolder without credentials) and which one Outbox used (a GetFolder with them).
    struct EWSReport: Encodable {
        var server: String
        var anonymousStatus: Int?
        var offeredSchemes: [String]
        var authScheme: String?
        var authResult: String
        var ntlmHandshakes: Int
        var error: String?
    }

    func probeEWS(_ configuration: OutboxConfiguration) async throws {
        CLILogging.bootstrap(level: .info)
        let transport: EWSTransport
        do {
            guard let ews = try TransportFactory.make(configuration: configuration, logger: Logger(label: "outbox.probe")) as? EWSTransport
            else { throw ExitCode(2) }
            transport = ews
        } catch {
            FileHandle.standardError.write(Data("outbox: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let result = await transport.probe()
        await transport.shutdown()
        let report = EWSReport(
            server: result.url, anonymousStatus: result.anonymousStatus, offeredSchemes: result.offered, authScheme: result.used,
            authResult: result.error == nil ? "authenticated (\(result.result ?? "GetFolder"))" : "failed",
            ntlmHandshakes: result.ntlmHandshakes, error: result.error?.message)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.text(report))
        }
        // 1 for what the operator must fix (refused credentials, configuration, TLS, protocol), as
        // the SMTP probe; 75 for what may pass by itself (unreachable, slow, throttled).
        if let error = result.error {
            let mustFix = error.routeFault.map { $0 != .connectionFailed && $0 != .timeout } ?? false
            throw ExitCode(error.kind == .permanent || mustFix ? 1 : 75)
        }
    }

    static func text(_ r: EWSReport) -> String {
        var lines = [
            "server:       \(r.server)",
            "offered:      "
                + (r.offeredSchemes.isEmpty ? "none" : r.offeredSchemes.joined(separator: ", "))
                + (r.anonymousStatus.map { " (HTTP \($0) without credentials)" } ?? ""),
            "auth:         \(r.authScheme.map { "\($0): " } ?? "")\(r.authResult)"
                + (r.ntlmHandshakes > 0 ? " (\(r.ntlmHandshakes) NTLM handshake\(r.ntlmHandshakes == 1 ? "" : "s"))" : ""),
        ]
        if let e = r.error { lines.append("error:        \(e)") }
        return lines.joined(separator: "\n")
    }
}
