import ArgumentParser
import Foundation
import OutboxConfig

/// `outbox check-config [FILE] [--json] [-o NAME=VALUE ...]`: prints the effective
/// configuration and its warnings; exit 0 when valid, 2 when not. All logic is in
/// `OutboxConfig.CheckConfig`, where it is unit-tested.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check a configuration file and print the effective configuration.",
        discussion: """
            Prints every option with its value (secrets masked), where it came from (default, \
            file:line, -o, environment) and when a change takes effect, then the warnings. \
            Exits 0 when the configuration is valid, 2 when it is not. With no FILE, reads \
            ./outbox.cfg, or shows the built-in defaults when that does not exist.
            """
    )

    @Argument(help: "The configuration file (default: ./outbox.cfg).")
    var file: String?

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    @Option(
        name: .customShort("o"),
        help: ArgumentHelp(
            "Override an option: NAME=VALUE sets an [smtp-client] option or mail.* key; outbox.KEY=VALUE an [outbox] setting; secret-NAME.password=VALUE a secret. Repeatable.",
            valueName: "NAME=VALUE"))
    var overrides: [String] = []

    func run() throws {
        let result = CheckConfig.run(file: file, overrides: overrides, environment: ProcessInfo.processInfo.environment, json: json)
        print(result.output, terminator: "")
        if result.exitCode != 0 {
            throw ExitCode(result.exitCode)
        }
    }
}
