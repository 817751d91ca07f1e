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

    static func main() async {
        if ProcessInfo.processInfo.environment["OUTBOX_BENCH_NIO_EXECUTOR"] == "1" {
            let ok = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
            FileHandle.standardError.write(Data("executor: nio installed=\(ok)\n".utf8))
        }
        do {
            var command = try parseAsRoot()
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
