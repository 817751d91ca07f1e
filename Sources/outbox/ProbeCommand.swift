import ArgumentParser
import Foundation
import Logging
import OutboxConfig
import OutboxSMTP
import OutboxTransports

/// `outbox probe`: connects as configured and reports each step, without sending mail.
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract:
            "Connect as configured and report the server, TLS, capabilities and AUTH (for EWS: the offered and the used HTTP authentication), without sending mail.",
        discussion:
            "Exit status: 0 when every step succeeds, 75 when a step fails transiently, 1 when it fails permanently, 2 for a configuration error."
    )

    @Option(name: .long, help: "The configuration file (default: ./outbox.cfg when it exists).")
    var config: String?

    @Option(
        name: .customShort("o"), help: ArgumentHelp("Set an option by its reference name, overriding the file. Repeatable.", valueName: "NAME=VALUE"))
    var overrides: [String] = []

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    struct Report: Encodable {
        struct Step: Encodable {
            var step: String
            var milliseconds: Double
        }
        struct TLS: Encodable {
            var version: String
            var certificateSubject: String?
            var certificateExpires: Date?
            var hostNameMatches: Bool?
        }
        var server: String
        var address: String?
        var security: String
        var greeting: String?
        var tls: TLS?
        var capabilities: [String: [String]]
        var authMechanism: String?
        var authResult: String
        var steps: [Step]
        var error: String?
    }

    func run() async throws {
        let configuration = try loadConfiguration(file: config, overrides: overrides)
        let options = configuration.smtpClient
        if options.serverType == .ews {
            try await probeEWS(configuration)
            return
        }
        guard options.serverType == .smtp, options.server != nil else {
            FileHandle.standardError.write(
                Data("outbox: probe needs server-type = SMTP or EWS and a server (the file transport has nothing to probe)\n".utf8))
            throw ExitCode(2)
        }
        CLILogging.bootstrap(level: .info)
        let smtp = SMTPClientConfiguration(options: options, settings: configuration.outbox)
        var report = Report(
            server: "\(smtp.host):\(smtp.port)", security: options.smtpConnectionSecurity.rawValue,
            capabilities: [:], authResult: smtp.credentials == nil ? "not configured (enable-authentication = false)" : "not attempted", steps: [])
        var exit: Int32 = 0
        do {
            let connection = try await SMTPConnection.connect(configuration: smtp, logger: Logger(label: "outbox.probe"))
            report.address = connection.remoteAddress
            report.greeting = connection.greeting.description
            report.steps = connection.stepTimings.map { .init(step: $0.step, milliseconds: milliseconds($0.duration)) }
            if let tls = connection.tlsInfo {
                // The handshake verified the chain and, unless mail.smtp.ssl.trust or
                // checkserveridentity = false says otherwise, the host name.
                let matched: Bool? = smtp.hostIsTrustedWithoutCA || !smtp.checkServerIdentity ? nil : true
                report.tls = .init(
                    version: tls.version, certificateSubject: tls.peerSubject, certificateExpires: tls.peerNotValidAfter, hostNameMatches: matched)
            }
            report.capabilities = connection.capabilities.extensions
            report.authMechanism = connection.authMechanism?.rawValue
            if smtp.credentials != nil { report.authResult = "235 authenticated" }
            let quitStart = ContinuousClock.now
            await connection.quit()
            report.steps.append(.init(step: "quit", milliseconds: milliseconds(ContinuousClock.now - quitStart)))
        } catch {
            report.error = error.description
            if error.stage == .auth { report.authResult = "failed: \(error.message)" }
            exit = error.isTransient ? 75 : 1
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.text(report))
        }
        if exit != 0 { throw ExitCode(exit) }
    }

    static func text(_ r: Report) -> String {
        var lines = [
            "server:       \(r.server)" + (r.address.map { " (\($0))" } ?? ""),
            "security:     \(r.security)",
        ]
        if let g = r.greeting { lines.append("greeting:     \(g)") }
        if let tls = r.tls {
            lines.append("tls:          \(tls.version)")
            lines.append(
                "certificate:  \(tls.certificateSubject ?? "?"), expires \(tls.certificateExpires.map { ISO8601DateFormatter().string(from: $0) } ?? "?"), host name \(tls.hostNameMatches.map { $0 ? "matches" : "does not match" } ?? "not checked")"
            )
        } else {
            lines.append("tls:          none")
        }
        if !r.capabilities.isEmpty {
            lines.append(
                "capabilities: "
                    + r.capabilities.keys.sorted().map { key in
                        let params = r.capabilities[key]!
                        return params.isEmpty ? key : "\(key) \(params.joined(separator: " "))"
                    }.joined(separator: ", "))
        }
        lines.append("auth:         \(r.authMechanism.map { "\($0): " } ?? "")\(r.authResult)")
        lines.append("steps:        " + r.steps.map { String(format: "%@ %.1f ms", $0.step, $0.milliseconds) }.joined(separator: ", "))
        if let e = r.error { lines.append("error:        \(e)") }
        return lines.joined(separator: "\n")
    }
}
