import Foundation
import Logging
import NIOCore
import OutboxTestSupport
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

// MARK: - small shared helpers

/// A value behind a lock, for recording from several threads.
final class WireLocked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func with<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
    var current: Value { with { $0 } }
}

func wireBuffer(_ string: String) -> ByteBuffer { ByteBuffer(string: string) }
func wireBuffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// Runs `body` and returns the SMTPError it throws (nil when it does not throw).
/// Any other error type is recorded as a test issue: the client must only throw SMTPError.
func wireCatch<T>(_ body: () async throws -> T) async -> SMTPError? {
    do {
        _ = try await body()
        return nil
    } catch let error as SMTPError {
        return error
    } catch {
        Issue.record("not an SMTPError: \(error)")
        return nil
    }
}

/// The message body as an AsyncSequence of ByteBuffers; `beforeChunk` runs before each chunk
/// is handed out (index of the chunk), so a test can hold the body back at a chosen point.
struct WireBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let chunks: [ByteBuffer]
    var beforeChunk: (@Sendable (Int) async -> Void)? = nil

    init(_ chunks: [ByteBuffer], beforeChunk: (@Sendable (Int) async -> Void)? = nil) {
        self.chunks = chunks
        self.beforeChunk = beforeChunk
    }
    init(_ strings: String...) { self.init(strings.map { ByteBuffer(string: $0) }) }

    struct AsyncIterator: AsyncIteratorProtocol {
        var index = 0
        let chunks: [ByteBuffer]
        let beforeChunk: (@Sendable (Int) async -> Void)?
        mutating func next() async -> ByteBuffer? {
            guard index < chunks.count else { return nil }
            if let beforeChunk { await beforeChunk(index) }
            defer { index += 1 }
            return chunks[index]
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(chunks: chunks, beforeChunk: beforeChunk) }
}

// MARK: - log capture

/// Records every log message with its metadata, for checking that no secret is logged.
final class WireLogRecorder: Sendable {
    let entries = WireLocked<[String]>([])
    var all: [String] { entries.current }
    var joined: String { all.joined(separator: "\n") }

    func logger(label: String = "wire.test") -> Logger {
        var logger = Logger(label: label) { _ in WireRecordingLogHandler(recorder: self) }
        logger.logLevel = .trace
        return logger
    }
}

struct WireRecordingLogHandler: LogHandler {
    let recorder: WireLogRecorder
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let meta = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let line = "\(event.level) \(event.message) [\(meta)]\(event.error.map { " error=\($0)" } ?? "")"
        recorder.entries.with { $0.append(line) }
    }
}

// MARK: - a stuck script ends with its test

/// Runs each test with a `ScriptedSMTPPeer.Registry`, and aborts the test's peers when the
/// test is cancelled (its time limit passed because the client and a script wait for each
/// other, as when the code under test is broken): the waits end, the test fails, the run goes on.
struct ScriptedPeersAbortOnCancel: SuiteTrait, TestTrait, TestScoping {
    var isRecursive: Bool { true }

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        guard !test.isSuite else { return try await function() }
        let registry = ScriptedSMTPPeer.Registry()
        try await ScriptedSMTPPeer.$current.withValue(registry) {
            try await withTaskCancellationHandler {
                try await function()
            } onCancel: {
                registry.abortAll()
            }
        }
    }
}

extension Trait where Self == ScriptedPeersAbortOnCancel {
    /// See `ScriptedPeersAbortOnCancel`.
    static var abortPeersOnCancel: Self { Self() }
}

// MARK: - configurations and common scripts

/// The envelope and the small message most session tests send.
let envelope1 = SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"])
let message = "Subject: t\r\n\r\nhello\r\n"

extension SMTPClientConfiguration {
    /// A configuration for a `ScriptedSMTPPeer` (`host` and `port` only name it in logs, and
    /// `host` is what TLS checks the test certificate against: it holds `localhost` and
    /// 127.0.0.1). TLS trusts the built-in test CA.
    static func wire(
        host: String = "127.0.0.1", port: Int = 25, security: ConnectionSecurity = .none, protocolTimeout: Duration = .seconds(5),
        credentials: SMTPCredentials? = nil, authMechanisms: [String]? = nil, sendPartial: Bool = true,
        enableDebug: Bool = false
    ) -> SMTPClientConfiguration {
        SMTPClientConfiguration(
            host: host, port: port, security: security, connectTimeout: .seconds(5),
            protocolTimeout: protocolTimeout, credentials: credentials, authMechanisms: authMechanisms,
            localHostname: "client.test", tlsCAFile: TestCertificates.builtIn.caFile, sendPartial: sendPartial,
            enableDebug: enableDebug)
    }
}

enum WireScript {
    /// Greeting and EHLO with the given extension lines (after the name line).
    static func hello(_ extensions: [String]) -> [ScriptedSMTPStep] {
        var reply = ""
        let lines = ["mx.test greets client.test"] + extensions
        for (i, line) in lines.enumerated() {
            reply += "250\(i == lines.count - 1 ? " " : "-")\(line)\r\n"
        }
        return [.send("220 mx.test ESMTP ready\r\n"), .expect("EHLO client.test"), .send(reply)]
    }

    static let quit: [ScriptedSMTPStep] = [.expect("QUIT"), .send("221 2.0.0 bye\r\n"), .close]
}
