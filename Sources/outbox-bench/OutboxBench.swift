import ArgumentParser

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
}
