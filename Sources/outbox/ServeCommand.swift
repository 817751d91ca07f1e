import ArgumentParser
import Foundation
import Logging
import OutboxConfig
import OutboxServer

/// `outbox serve [--config FILE]`: the daemon (queue, HTTP API, dispatcher).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Runs the Outbox daemon: a durable queue, an HTTP API and a dispatcher that delivers through the configured server.",
        discussion: """
            With no configuration: SQLite queue under ./outbox-data/, HTTP on 127.0.0.1:8025 and, with no \
            server configured, the file transport (./outbox-data/sent/*.eml). SIGTERM/SIGINT shut down \
            gracefully; SIGHUP reloads the configuration file.
            """
    )

    @Option(name: .long, help: "The configuration file (smtp-client reference format).")
    var config: String?

    @Option(name: [.customShort("o"), .long], help: "Override an option: NAME=VALUE (e.g. -o outbox.http-listen=127.0.0.1:9000).")
    var option: [String] = []

    @Flag(name: .long, help: "Log at debug level.")
    var verbose = false

    func run() async throws {
        CLILogging.bootstrap(level: verbose ? .debug : .info)
        let logger = Logger(label: "outbox")
        let daemon: Daemon
        do {
            daemon = try await Daemon.make(file: config, overrides: option, logger: logger)
        } catch let error as ConfigurationError {
            FileHandle.standardError.write(Data("outbox serve: the configuration is invalid:\n\(error)\n".utf8))
            throw ExitCode(2)
        } catch {
            FileHandle.standardError.write(Data("outbox serve: \(error)\n".utf8))
            throw ExitCode(1)
        }
        FileHandle.standardOutput.write(Data((daemon.banner + "\n").utf8))
        try await daemon.run(
            onListening: { address in
                FileHandle.standardOutput.write(Data("outbox: ready on \(address)\n".utf8))
            },
            onRelayListening: { address in
                FileHandle.standardOutput.write(Data("outbox: relay listening on \(address)\n".utf8))
            })
    }
}
