import ArgumentParser
import Foundation
import Logging
import OutboxConfig
import OutboxMIME
import OutboxSMTP
import OutboxTransports

/// `outbox send`: a one-shot sender for people and scripts, in the spirit of swaks and msmtp.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send one message as configured, and print a delivery report.",
        discussion: """
            Exit status: 0 when every recipient was accepted; 1 only when the server refused the \
            message or a recipient (a 5xx reply to MAIL, RCPT or the message, or Graph's or EWS's \
            refusal of the message); 75 (EX_TEMPFAIL) for every transient failure, including what an \
            operator can fix: refused credentials (535), a token endpoint's refusal, TLS, a server \
            that breaks the protocol or cannot be reached, the configuration; 3 when the outcome is \
            unknown (the connection failed after the whole message was sent: it may have been \
            delivered, so do not resend blindly), 2 for a usage or configuration error. With no `server` configured, the message is written as an .eml \
            file under <data-dir>/sent/ (the file transport).
            """
    )

    @Option(name: .long, help: "The configuration file (default: ./outbox.cfg when it exists).")
    var config: String?

    @Option(
        name: .customShort("o"),
        help: ArgumentHelp("Set an option by its reference name, overriding the file (e.g. -o port=2525). Repeatable.", valueName: "NAME=VALUE"))
    var overrides: [String] = []

    @Option(name: .long, help: "The sender (From and envelope sender).")
    var from: String?

    @Option(name: .long, help: "A recipient. Repeatable.")
    var to: [String] = []

    @Option(name: .long, help: "A Cc recipient. Repeatable.")
    var cc: [String] = []

    @Option(name: .long, help: "A Bcc recipient (in the envelope, never in the headers). Repeatable.")
    var bcc: [String] = []

    @Option(name: .long, help: "The subject.")
    var subject: String?

    @Option(name: .long, help: "The plain-text body.")
    var text: String?

    @Option(name: .long, help: "A file with the plain-text body (UTF-8).")
    var textFile: String?

    @Option(name: .long, help: "A file with the HTML body (UTF-8).")
    var htmlFile: String?

    @Option(name: .long, help: "A file to attach (streamed, never held in memory). Repeatable.")
    var attach: [String] = []

    @Option(name: .long, help: "Send a prepared RFC 5322 message; the envelope comes from --from/--to or its headers.")
    var eml: String?

    @Flag(name: .long, help: "Print the exact message that would be sent; send nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    func validate() throws {
        if text != nil && textFile != nil {
            throw ValidationError("use --text or --text-file, not both")
        }
        if eml != nil && (subject != nil || text != nil || textFile != nil || htmlFile != nil || !attach.isEmpty) {
            throw ValidationError(
                "--eml sends a prepared message as it is: it cannot be combined with --subject, --text, --text-file, --html-file or --attach")
        }
        if eml == nil {
            if from == nil { throw ValidationError("--from is required (or use --eml)") }
            if to.isEmpty && cc.isEmpty && bcc.isEmpty { throw ValidationError("give at least one recipient with --to, --cc or --bcc") }
        }
    }

    func run() async throws {
        let configuration = try loadConfiguration(file: config, overrides: overrides)
        CLILogging.bootstrap(level: .info)
        let logger = Logger(label: "outbox")
        for warning in configuration.warnings {
            logger.warning("\(warning)")
        }

        let content: any MailContent
        var envelope: Envelope?
        do {
            (content, envelope) = try buildContent()
        } catch {
            FileHandle.standardError.write(Data("outbox: \(error)\n".utf8))
            throw ExitCode(2)
        }

        if dryRun {
            let bytes = try await content.byteStream(options: MIMEEncodingOptions()).collect()
            let env = try envelope ?? content.envelope()
            FileHandle.standardError.write(
                Data(
                    "outbox: dry run: MAIL FROM:<\(configuration.smtpClient.envelopeFrom ?? env.from)> RCPT TO:\(env.recipients.map { "<\($0)>" }.joined(separator: ","))\n"
                        .utf8))
            FileHandle.standardOutput.write(Data(bytes))
            return
        }

        let transport: any MailTransport
        do {
            transport = try TransportFactory.make(configuration: configuration, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("outbox: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if transport is FileTransport {
            logger.notice("no server is configured: writing the message under \(configuration.outbox.dataDirectory)/sent/ (file transport)")
        }
        let runner = Task { await transport.run() }
        defer { runner.cancel() }
        let outcome: Result<DeliveryReport, DeliveryError>
        do {
            outcome = .success(try await transport.send(content, envelope: envelope))
        } catch {
            outcome = .failure(error)
        }
        await transport.shutdown()
        runner.cancel()

        switch outcome {
        case .success(let report):
            print(json ? ReportPrinter.json(report) : ReportPrinter.text(report))
            if report.allAccepted { return }
            if report.anyRejected { throw ExitCode(1) }
            throw ExitCode(report.recipients.contains { $0.status == .unknown } ? 3 : 75)
        case .failure(let error):
            if json {
                print(ReportPrinter.json(error))
            } else {
                if let report = error.report { print(ReportPrinter.text(report)) }
                FileHandle.standardError.write(Data("outbox: delivery failed (\(error.kind.rawValue)): \(error.message)\n".utf8))
            }
            switch error.kind {
            case .permanent: throw ExitCode(1)
            case .transient: throw ExitCode(75)
            case .outcomeUnknown: throw ExitCode(3)
            }
        }
    }

    struct UsageError: Error, CustomStringConvertible {
        var description: String
    }

    private func parseAddresses(_ values: [String], option: String) throws -> [Address] {
        var result: [Address] = []
        for value in values {
            do {
                result.append(contentsOf: try Address.parseList(value))
            } catch {
                throw UsageError(description: "\(option) \(value): \(error.message)")
            }
        }
        return result
    }

    private func buildContent() throws -> (any MailContent, Envelope?) {
        if let eml {
            let raw: RawMessage
            do {
                raw = try RawMessage(filePath: eml)
            } catch {
                throw UsageError(description: "--eml \(eml): \(error.message)")
            }
            var envelope: Envelope?
            if from != nil || !to.isEmpty || !cc.isEmpty || !bcc.isEmpty {
                let headerEnvelope = try? raw.envelope()
                let sender = try from.map { try parseAddresses([$0], option: "--from").first!.mailbox } ?? headerEnvelope?.from
                let recipients = try (parseAddresses(to, option: "--to") + parseAddresses(cc, option: "--cc") + parseAddresses(bcc, option: "--bcc"))
                    .map(\.mailbox)
                guard let sender else { throw UsageError(description: "--eml \(eml) has no From header: give --from") }
                let finalRecipients = recipients.isEmpty ? (headerEnvelope?.recipients ?? []) : recipients
                guard !finalRecipients.isEmpty else { throw UsageError(description: "--eml \(eml) has no recipients: give --to") }
                envelope = Envelope(from: sender, recipients: finalRecipients)
            } else {
                do {
                    _ = try raw.envelope()
                } catch {
                    throw UsageError(description: "--eml \(eml): \(error.message)")
                }
            }
            return (raw, envelope)
        }
        guard let fromValue = from, let sender = try parseAddresses([fromValue], option: "--from").first else {
            throw UsageError(description: "--from is required")
        }
        var body = text
        if let textFile {
            guard let data = FileManager.default.contents(atPath: textFile) else {
                throw UsageError(description: "--text-file \(textFile): cannot read the file")
            }
            body = String(decoding: data, as: UTF8.self)
        }
        var html: String?
        if let htmlFile {
            guard let data = FileManager.default.contents(atPath: htmlFile) else {
                throw UsageError(description: "--html-file \(htmlFile): cannot read the file")
            }
            html = String(decoding: data, as: UTF8.self)
        }
        if body == nil && html == nil { body = "" }
        var attachments: [Attachment] = []
        for path in attach {
            guard FileManager.default.isReadableFile(atPath: path) else { throw UsageError(description: "--attach \(path): cannot read the file") }
            attachments.append(.file(path: path))
        }
        let message = Message(
            from: sender,
            to: try parseAddresses(to, option: "--to"),
            cc: try parseAddresses(cc, option: "--cc"),
            bcc: try parseAddresses(bcc, option: "--bcc"),
            subject: subject, text: body, html: html, attachments: attachments)
        do {
            try message.validate()
        } catch {
            throw UsageError(description: error.message)
        }
        return (message, nil)
    }
}

enum ReportPrinter {
    static func text(_ report: DeliveryReport) -> String {
        var lines: [String] = []
        lines.append(
            "\(report.transport) -> \(report.destination)" + (report.messageID.map { " message \($0)" } ?? "")
                + String(format: " (%.3f s%@)", report.durationSeconds, report.attempts > 1 ? ", \(report.attempts) attempts" : ""))
        for r in report.recipients {
            let reply = [r.code.map(String.init), r.enhancedCode, r.text].compactMap { $0 }.joined(separator: " ")
            lines.append("  \(r.status.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(r.address)  \(reply)")
        }
        if let final = report.finalReply { lines.append("final reply: \(final)") }
        return lines.joined(separator: "\n")
    }

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    static func json(_ report: DeliveryReport) -> String {
        (try? String(decoding: encoder().encode(report), as: UTF8.self)) ?? "{}"
    }

    static func json(_ error: DeliveryError) -> String {
        struct Wrapped: Encodable {
            struct Body: Encodable {
                var kind: String
                var message: String
                var routeFault: String?
                var stage: String?
                var code: Int?
                var enhancedCode: String?
            }
            var error: Body
            var report: DeliveryReport?
        }
        let body = Wrapped(
            error: .init(
                kind: error.kind.rawValue, message: error.message, routeFault: error.routeFault?.rawValue,
                stage: error.smtp?.stage.rawValue,
                code: error.smtp?.replyCode, enhancedCode: error.smtp?.enhancedCode?.description),
            report: error.report)
        return (try? String(decoding: encoder().encode(body), as: UTF8.self)) ?? "{}"
    }
}
