import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxConfig

/// The entry point: argument-parser's usage errors exit 64 (EX_USAGE); Outbox's contract is
/// 2 for any usage or configuration error, 0/1/75 for delivery outcomes.
@main
enum OutboxMain {
    static func main() async {
        do {
            var command = try OutboxCommand.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = OutboxCommand.exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((OutboxCommand.fullMessage(for: error) + "\n").utf8))
                exit(2)
            }
            OutboxCommand.exit(withError: error)
        }
    }
}

struct OutboxCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox",
        abstract: "Delivers an application's outgoing mail to a corporate mail server.",
        discussion: "Configuration follows the smtp-client option reference; see docs/options.md.",
        version: OutboxVersion.current,
        subcommands: [SendCommand.self, CheckConfigCommand.self, ProbeCommand.self, ServeCommand.self, HashPasswordCommand.self, QueueCommand.self]
    )
}

/// Loads the configuration for a command; an invalid one prints every problem and exits 2.
func loadConfiguration(file: String?, overrides: [String]) throws -> OutboxConfiguration {
    do {
        return try OutboxConfiguration.load(file: file, overrides: overrides, environment: ProcessInfo.processInfo.environment)
    } catch {
        FileHandle.standardError.write(Data("outbox: the configuration is invalid:\n\(error.description)\n".utf8))
        throw ExitCode(2)
    }
}

/// Milliseconds in a Duration, for reports.
func milliseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}

/// Logs go to standard error, so standard output carries only reports and messages. The
/// delivery log's lines (`outbox.delivery`) go there bare, as logfmt or JSON.
enum CLILogging {
    static func bootstrap(level: Logger.Level = .info) {
        LoggingSystem.bootstrap { label in
            if label == DeliveryLog.label { return DeliveryLogHandler() }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
