import ArgumentParser
import Foundation
import Logging

@main
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
