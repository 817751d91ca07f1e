import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// `outbox-bench`: Outbox's benchmarks. They measure and print; they assert nothing.
@main
struct OutboxBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-bench",
        abstract: "Outbox benchmarks (scripts/bench-smtp.sh compares `smtp` with Postfix's smtp-source).",
        subcommands: [
            SMTPBenchCommand.self,
            MIMEBenchCommand.self,
            MailerBenchCommand.self,
        ]
    )

    /// Parses, installs NIO's event loops as Swift Concurrency's global executor when the command
    /// asks for `--executor nio` (before any task runs: it is process-wide), then runs.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if let choosing = command as? any ExecutorChoosing, choosing.executor == .nio {
                guard NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor() else {
                    throw ValidationError("--executor nio: NIO's event loops could not be installed as the global executor on this platform")
                }
            }
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// Where the benchmark's tasks run.
enum BenchExecutor: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// Swift Concurrency's default global executor: a task resumed by an event loop wakes a
    /// thread of the cooperative pool (a thread switch each way).
    case swift
    /// NIO's event loops installed as the global executor
    /// (`NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor`):
    /// a task resumed by a connection's event loop runs on that loop, no thread switch. An
    /// application embedding Outbox makes this choice for its whole process.
    case nio
}

protocol ExecutorChoosing {
    var executor: BenchExecutor { get }
}
