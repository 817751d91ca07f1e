import ArgumentParser
import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxConfig
import OutboxMIME

/// `outbox-bench mailer`: `Mailer.send` from many concurrent tasks through a pool of S
/// connections, against a running server (normally smtp-sink). It measures; it asserts nothing.
struct MailerBenchCommand: AsyncParsableCommand, ExecutorChoosing {
    static let configuration = CommandConfiguration(
        commandName: "mailer",
        abstract: "Send generated messages with Mailer.send through a connection pool and print rate and latency.",
        discussion: """
            Sends N messages of about BYTES each with Mailer.send from max(4 x S, 16) concurrent \
            tasks through a pool of S connections (cnx-pool-size) and prints, as its last line:
              outbox-bench mailer: messages=N pool-size=S size=BYTES seconds=T msgs_per_sec=X p50_ms=A p99_ms=B
            --config FILE adds a configuration (its server, port and cnx-pool-size are replaced by \
            --host, --port and --pool-size).
            """
    )

    @Option(help: "Server host.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 2525
    @Option(help: "Number of messages to send.") var messages = 2000
    @Option(name: .customLong("pool-size"), help: "cnx-pool-size: connections in the pool.") var poolSize = 1
    @Option(help: "Approximate size of each message in bytes (headers included).") var size = 1024
    @Option(help: "A configuration file to start from.") var config: String?
    @Option(help: "Where the sending tasks run: swift (Swift's default global executor) or nio (NIO's event loops as the global executor).")
    var executor: BenchExecutor = .swift
    @Option(help: "Concurrent sending tasks (default: max(4 x pool-size, 16)).") var tasks: Int?

    func validate() throws {
        guard messages >= 1 else { throw ValidationError("--messages must be at least 1") }
        guard poolSize >= 1 else { throw ValidationError("--pool-size must be at least 1") }
        guard size >= 1 else { throw ValidationError("--size must be at least 1") }
    }

    func run() async throws {
        let overrides = ["server=\(host)", "port=\(port)", "cnx-pool-size=\(poolSize)"]
        let configuration: OutboxConfiguration
        do {
            if let config {
                configuration = try OutboxConfiguration.load(file: config, overrides: overrides, environment: ProcessInfo.processInfo.environment)
            } else {
                configuration = try OutboxConfiguration.parse(text: "", fileName: "bench", overrides: overrides, environment: [:])
            }
        } catch {
            throw ValidationError(error.description)
        }
        var logger = Logger(label: "outbox.bench")
        logger.logLevel = .warning
        let mailer = try Mailer(configuration: configuration, logger: logger)
        let runner = Task { try await mailer.run() }

        var bytes = MessageGenerator.message(approximateSize: size)
        let raw = try RawMessage(bytes: bytes.readBytes(length: bytes.readableBytes)!)
        let envelope = Envelope(from: "a@example.test", recipients: ["b@example.test"])
        let total = messages
        let next = NIOLockedValueBox(0)
        let tasks = self.tasks ?? max(4 * poolSize, 16)

        let clock = ContinuousClock()
        let start = clock.now
        let results = await withTaskGroup(of: ([Double], Int).self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    var latencies: [Double] = []
                    var failures = 0
                    while true {
                        let i = next.withLockedValue { n -> Int in
                            defer { n += 1 }; return n
                        }
                        guard i < total else { break }
                        let t0 = clock.now
                        do {
                            let report = try await mailer.send(raw, envelope: envelope)
                            if !report.allAccepted { failures += 1 }
                        } catch {
                            failures += 1
                        }
                        let d = clock.now - t0
                        latencies.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
                    }
                    return (latencies, failures)
                }
            }
            return await group.reduce(into: [([Double], Int)]()) { $0.append($1) }
        }
        let elapsed = clock.now - start
        let handBackStarts = mailer.smtpStartedAtHandBack
        await mailer.shutdown()
        runner.cancel()
        _ = await runner.result

        let latencies = results.flatMap(\.0).sorted()
        let failures = results.map(\.1).reduce(0, +)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            return latencies[min(latencies.count - 1, max(0, Int((Double(latencies.count) * p).rounded(.up)) - 1))]
        }
        if failures > 0 { print("outbox-bench mailer: \(failures) of \(total) messages failed") }
        if let handBackStarts { print("outbox-bench mailer: started_at_hand_back=\(handBackStarts)") }
        let rate = Double(total - failures) / seconds
        print(
            String(
                format: "outbox-bench mailer: messages=%d pool-size=%d size=%d seconds=%.3f msgs_per_sec=%.1f p50_ms=%.3f p99_ms=%.3f",
                total, poolSize, size, seconds, rate, percentile(0.50), percentile(0.99)))
    }
}
