import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import OutboxSMTP

/// `outbox-bench smtp`: SMTP throughput of `SMTPConnection` against a running server
/// (normally Postfix's `smtp-sink`, see `scripts/bench-smtp.sh`). It measures; it asserts nothing.
struct SMTPBenchCommand: AsyncParsableCommand, ExecutorChoosing {
    static let configuration = CommandConfiguration(
        commandName: "smtp",
        abstract: "Send generated messages over reused SMTP connections and print the rate.",
        discussion: """
            Sends N messages of about BYTES each over C concurrent connections (each connection \
            is reused for many messages; the next message's commands follow the previous one's \
            final dot) and prints, as its last line:
              outbox-bench smtp: messages=N connections=C size=BYTES seconds=T msgs_per_sec=X
            With --big-mib M it sends instead ONE message of M MiB, streamed in 64 KiB chunks \
            that are generated lazily, and prints:
              outbox-bench smtp-big: size_mib=M seconds=T peak_rss_mib=Y
            Only plain SMTP (no TLS, no AUTH): point it at a loopback test server.
            """
    )

    @Option(help: "Server host.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 2525
    @Option(help: "Number of messages to send.") var messages = 2000
    @Option(help: "Number of concurrent connections.") var connections = 1
    @Option(help: "Approximate size of each message in bytes (headers included).") var size = 1024
    @Option(help: "Where the sending tasks run: swift (Swift's default global executor) or nio (NIO's event loops as the global executor).")
    var executor: BenchExecutor = .swift
    @Option(name: .customLong("big-mib"), help: "Send one message of this many MiB, streamed, and report peak RSS.")
    var bigMiB: Int?

    func validate() throws {
        guard messages >= 1 else { throw ValidationError("--messages must be at least 1") }
        guard connections >= 1 else { throw ValidationError("--connections must be at least 1") }
        guard size >= 1 else { throw ValidationError("--size must be at least 1") }
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535") }
        if let bigMiB, bigMiB < 1 { throw ValidationError("--big-mib must be at least 1") }
    }

    func run() async throws {
        if let bigMiB {
            try await runBig(mebibytes: bigMiB)
        } else {
            try await runThroughput()
        }
    }

    private var smtpConfiguration: SMTPClientConfiguration {
        SMTPClientConfiguration(
            host: host, port: port, security: .none,
            connectTimeout: .seconds(10), protocolTimeout: .seconds(60),
            localHostname: "outbox-bench.example.test"
        )
    }

    private static var quietLogger: Logger {
        var logger = Logger(label: "outbox.bench")
        logger.logLevel = .warning
        return logger
    }

    private static let envelopeFrom = "a@example.test"
    private static let envelopeTo = "b@example.test"

    // MARK: throughput

    private func runThroughput() async throws {
        let message = MessageGenerator.message(approximateSize: size)
        let envelope = SMTPEnvelope(from: Self.envelopeFrom, recipients: [Self.envelopeTo], size: message.readableBytes)
        let configuration = smtpConfiguration
        let total = messages
        let counter = Counter()
        let logger = Self.quietLogger

        let clock = ContinuousClock()
        let start = clock.now
        let outcomes = await withTaskGroup(of: WorkerOutcome.self, returning: [WorkerOutcome].self) { group in
            for _ in 0..<connections {
                group.addTask {
                    await Self.worker(
                        configuration: configuration, logger: logger, envelope: envelope,
                        message: message, total: total, counter: counter, clock: clock)
                }
            }
            var all: [WorkerOutcome] = []
            for await outcome in group { all.append(outcome) }
            return all
        }
        let end = outcomes.compactMap(\.lastReply).max() ?? clock.now
        let seconds = Double((end - start).components.attoseconds) / 1e18 + Double((end - start).components.seconds)
        let delivered = outcomes.reduce(0) { $0 + $1.delivered }
        let failures = total - delivered
        if failures > 0 {
            print("outbox-bench smtp: failures=\(failures) of \(total)")
            for error in Set(outcomes.flatMap(\.errors)).sorted().prefix(5) {
                print("  error: \(error)")
            }
        }
        let rate = seconds > 0 ? Double(delivered) / seconds : 0
        print(
            "outbox-bench smtp: messages=\(total) connections=\(connections) size=\(size) seconds=\(String(format: "%.3f", seconds)) msgs_per_sec=\(String(format: "%.1f", rate))"
        )
    }

    private struct WorkerOutcome: Sendable {
        var delivered = 0
        var errors: [String] = []
        var lastReply: ContinuousClock.Instant?
    }

    /// One connection, driven as a client of the engine drives it for throughput: two lanes
    /// take turns, and a lane starts its next message as soon as the other lane's message is on
    /// its way (`handBack`), so the next MAIL/RCPT/DATA follow the final dot on the wire instead
    /// of waiting for its reply. A connection that cannot be opened ends this worker (the others
    /// take the remaining messages); a broken one is replaced.
    private static func worker(
        configuration: SMTPClientConfiguration, logger: Logger, envelope: SMTPEnvelope,
        message: ByteBuffer, total: Int, counter: Counter, clock: ContinuousClock
    ) async -> WorkerOutcome {
        var outcome = WorkerOutcome()
        var connection: SMTPConnection?
        while true {
            do {
                if connection == nil || !connection!.isOpen {
                    if let old = connection { await old.quit() }
                    connection = try await SMTPConnection.connect(configuration: configuration, logger: logger)
                }
            } catch {
                outcome.errors.append("\(error)")
                break
            }
            let current = connection!
            let turn = Turn()
            let lanes = await withTaskGroup(of: WorkerOutcome.self, returning: [WorkerOutcome].self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        var lane = WorkerOutcome()
                        while current.isOpen {
                            await turn.take()
                            guard counter.take(limit: total) else {
                                turn.pass()
                                break
                            }
                            let handedOn = PassedOn()
                            do {
                                let result = try await current.send(
                                    envelope: envelope, body: SingleChunk(buffer: message),
                                    handBack: {
                                        handedOn.mark(); turn.pass()
                                    })
                                if result.delivered {
                                    lane.delivered += 1
                                } else {
                                    lane.errors.append(
                                        "not delivered: \(result.recipients.map { "\($0.address) \($0.reply.map { "\($0)" } ?? "-")" })")
                                }
                            } catch {
                                lane.errors.append("\(error)")
                            }
                            if !handedOn.marked { turn.pass() }
                            lane.lastReply = clock.now
                        }
                        return lane
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            for lane in lanes {
                outcome.delivered += lane.delivered
                outcome.errors += lane.errors
                if let last = lane.lastReply, outcome.lastReply.map({ last > $0 }) ?? true { outcome.lastReply = last }
            }
            if counter.isDone(limit: total) { break }
        }
        if let connection { await connection.quit() }
        return outcome
    }

    // MARK: one big message

    private func runBig(mebibytes: Int) async throws {
        let totalBytes = mebibytes * 1024 * 1024
        let logger = Self.quietLogger
        let before = ProcessMemory.peakRSSKiB()
        let clock = ContinuousClock()
        let start = clock.now
        let connection = try await SMTPConnection.connect(configuration: smtpConfiguration, logger: logger)
        let envelope = SMTPEnvelope(from: Self.envelopeFrom, recipients: [Self.envelopeTo], size: totalBytes)
        let result = try await connection.send(envelope: envelope, body: GeneratedMessage(totalBytes: totalBytes))
        let end = clock.now
        await connection.quit()
        let peak = ProcessMemory.peakRSSKiB()
        if !result.delivered {
            print("outbox-bench smtp-big: NOT delivered: \(result.finalReply.map { "\($0)" } ?? "no final reply")")
        }
        let seconds = Double((end - start).components.seconds) + Double((end - start).components.attoseconds) / 1e18
        print("outbox-bench smtp-big: bytes_sent=\(result.bytesSent) peak_rss_before_send_mib=\(String(format: "%.1f", Double(before) / 1024))")
        print(
            "outbox-bench smtp-big: size_mib=\(mebibytes) seconds=\(String(format: "%.3f", seconds)) peak_rss_mib=\(String(format: "%.1f", Double(peak) / 1024))"
        )
    }
}

// MARK: helpers

/// Whose turn it is to start a message on a connection: one lane at a time, FIFO.
private final class Turn: @unchecked Sendable {
    private let lock = NSLock()
    private var free = true
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func take() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            lock.lock()
            if free {
                free = false
                lock.unlock()
                continuation.resume()
            } else {
                waiting.append(continuation)
                lock.unlock()
            }
        }
    }

    func pass() {
        lock.lock()
        if waiting.isEmpty {
            free = true
            lock.unlock()
        } else {
            let next = waiting.removeFirst()
            lock.unlock()
            next.resume()
        }
    }
}

/// Set from `handBack` (on the event loop), read by the lane after its send returned.
private final class PassedOn: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func mark() { lock.lock(); value = true; lock.unlock() }
    var marked: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

/// The shared message counter.
private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var taken = 0

    func isDone(limit: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return taken >= limit
    }

    /// Takes the next message number; false when `limit` are taken.
    func take(limit: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard taken < limit else { return false }
        taken += 1
        return true
    }
}

enum MessageGenerator {
    static let lineLength = 76

    static func headers(size: Int) -> String {
        "From: Outbox Bench <a@example.test>\r\n"
            + "To: <b@example.test>\r\n"
            + "Subject: outbox-bench message of about \(size) bytes\r\n"
            + "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            + "Message-ID: <outbox-bench-\(size)@example.test>\r\n"
            + "MIME-Version: 1.0\r\n"
            + "Content-Type: text/plain; charset=us-ascii\r\n"
            + "\r\n"
    }

    /// Line `n` of the body: 76 printable ASCII characters (never starting with `.`) and CRLF.
    static func writeLine(_ n: Int, into buffer: inout ByteBuffer) {
        let printable = Array(UInt8(ascii: "!")...UInt8(ascii: "~"))  // 94 characters
        var line = [UInt8](repeating: 0, count: lineLength + 2)
        for i in 0..<lineLength {
            line[i] = printable[(n &* 7 &+ i) % printable.count]
        }
        if line[0] == UInt8(ascii: ".") { line[0] = UInt8(ascii: "A") }
        line[lineLength] = 0x0D
        line[lineLength + 1] = 0x0A
        buffer.writeBytes(line)
    }

    /// Headers and a body of whole lines, about `approximateSize` bytes in all (at least one line).
    static func message(approximateSize: Int) -> ByteBuffer {
        let head = headers(size: approximateSize)
        var buffer = ByteBufferAllocator().buffer(capacity: approximateSize + 128)
        buffer.writeString(head)
        var n = 0
        repeat {
            writeLine(n, into: &buffer)
            n += 1
        } while buffer.readableBytes + (lineLength + 2) / 2 < approximateSize
        return buffer
    }
}

/// A body that is one buffer, handed out once (the message is built once and shared).
struct SingleChunk: AsyncSequence {
    typealias Element = ByteBuffer
    let buffer: ByteBuffer

    struct AsyncIterator: AsyncIteratorProtocol {
        var buffer: ByteBuffer?
        mutating func next() async -> ByteBuffer? {
            defer { buffer = nil }
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(buffer: buffer) }
}

/// A message of `totalBytes` (headers, then 78-byte lines, the last one cut to fit), produced
/// lazily in chunks of about 64 KiB: each chunk is a new buffer, built when asked for, so the
/// whole message never exists in memory.
struct GeneratedMessage: AsyncSequence {
    typealias Element = ByteBuffer
    static let chunkSize = 64 * 1024
    let totalBytes: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        let totalBytes: Int
        var produced = 0
        /// A template of the bytes that fit in one chunk, written once; chunks copy it.
        var template: ByteBuffer?
        var allocator = ByteBufferAllocator()

        mutating func next() async -> ByteBuffer? {
            guard produced < totalBytes else { return nil }
            var chunk = allocator.buffer(capacity: GeneratedMessage.chunkSize)
            if produced == 0 {
                chunk.writeString(MessageGenerator.headers(size: totalBytes))
            }
            let lineBytes = MessageGenerator.lineLength + 2
            if template == nil {
                var t = allocator.buffer(capacity: GeneratedMessage.chunkSize)
                while t.readableBytes + lineBytes <= GeneratedMessage.chunkSize {
                    MessageGenerator.writeLine(t.readableBytes / lineBytes, into: &t)
                }
                template = t
            }
            let room = Swift.min(GeneratedMessage.chunkSize - chunk.readableBytes, totalBytes - produced - chunk.readableBytes)
            let wholeLines = room / lineBytes * lineBytes
            if wholeLines > 0 {
                chunk.writeImmutableBuffer(template!.getSlice(at: template!.readerIndex, length: wholeLines)!)
            }
            let rest = room - wholeLines
            if rest > 0 && totalBytes - produced - chunk.readableBytes == rest {
                // The end of the message: a short last line, ended by the encoder's CRLF.
                for _ in 0..<rest { chunk.writeInteger(UInt8(ascii: "x")) }
            }
            produced += chunk.readableBytes
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(totalBytes: totalBytes) }
}

enum ProcessMemory {
    /// Peak resident set size (VmHWM) from /proc/self/status, in KiB; 0 when unavailable.
    static func peakRSSKiB() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let digits = line.dropFirst("VmHWM:".count).filter(\.isNumber)
            return Int(digits) ?? 0
        }
        return 0
    }
}
