import ArgumentParser
import Foundation
import Logging

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
        subcommands: [SendCommand.self, CheckConfigCommand.self, ProbeCommand.self]
    )
}

/// Logs go to standard error, so standard output carries only reports and messages.
enum CLILogging {
    static func bootstrap(level: Logger.Level = .info) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
