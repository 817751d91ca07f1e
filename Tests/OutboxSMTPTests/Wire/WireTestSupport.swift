import Foundation
import Logging
import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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

/// Polls `condition` every 5 ms, for at most `seconds`.
func wireWait(seconds: Double = 5, _ condition: @Sendable () -> Bool) async {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() && Date() < deadline {
        try? await Task.sleep(for: .milliseconds(5))
    }
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

// MARK: - scripted SMTP server

/// One step of a server script.
enum WireStep: Sendable {
    /// Write this text as is.
    case send(String)
    /// Write these bytes as is.
    case sendBytes([UInt8])
    /// Read one line from the client (recorded); note a problem when it differs.
    case expect(String)
    /// Read one line whatever it is (recorded).
    case readLine
    /// Read DATA up to and including `CRLF.CRLF` (or a lone `.CRLF` at the start); record the raw bytes.
    case readData
    /// Read at least this many raw bytes (recorded as data).
    case readBytes(Int)
    /// Close with a TCP reset (SO_LINGER 0).
    case reset
    /// Close normally (FIN).
    case close
    /// Mark an event the test can wait for.
    case signal(String)
    /// Wait until the test marks an event.
    case waitFor(String)
}

/// A tiny SMTP server on 127.0.0.1 that follows a literal script per connection, on a thread
/// of its own with blocking sockets, and records everything the client sent.
final class ScriptedSMTPServer: Sendable {
    let port: Int
    private let listenFD: Int32
    private struct State {
        var lines: [String] = []
        var data: [[UInt8]] = []
        var problems: [String] = []
        var events: Set<String> = []
        var finished = false
        var connections = 0
    }
    private let state = WireLocked(State())

    /// The lines the client sent, CRLF removed, in order (DATA content excluded).
    var transcript: [String] { state.current.lines }
    /// Each DATA payload, raw, terminator included.
    var data: [[UInt8]] { state.current.data }
    var dataStrings: [String] { data.map { String(decoding: $0, as: UTF8.self) } }
    /// Script mismatches and socket failures.
    var problems: [String] { state.current.problems }
    var connectionCount: Int { state.current.connections }

    init(_ scripts: [[WireStep]]) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        self.port = Int(UInt16(bigEndian: addr.sin_port))
        self.listenFD = fd
        let thread = Thread { [self] in self.run(scripts) }
        thread.start()
    }

    convenience init(_ script: [WireStep]) throws { try self.init([script]) }

    /// Lets a `.waitFor(name)` step go on.
    func mark(_ name: String) { state.with { _ = $0.events.insert(name) } }
    func hasEvent(_ name: String) -> Bool { state.with { $0.events.contains(name) } }

    /// Waits until a `.signal(name)` step ran.
    func waitForEvent(_ name: String, seconds: Double = 10) async {
        await wireWait(seconds: seconds) { self.hasEvent(name) }
    }

    /// Waits until every scripted connection ended (the client closed it, or the script did).
    func finished(seconds: Double = 10) async {
        await wireWait(seconds: seconds) { self.state.with { $0.finished } }
    }

    private func problem(_ text: String) { state.with { $0.problems.append(text) } }

    private func run(_ scripts: [[WireStep]]) {
        defer {
            close(listenFD)
            state.with { $0.finished = true }
        }
        for script in scripts {
            // Never block forever: a missing client ends the server.
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 10_000) == 1 else { problem("no client connected"); return }
            let conn = accept(listenFD, nil, nil)
            guard conn >= 0 else { problem("accept failed"); return }
            state.with { $0.connections += 1 }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var session = Connection(fd: conn, server: self)
            session.play(script)
            if !session.closed {
                session.drain()
                close(conn)
            }
        }
    }

    private struct Connection {
        let fd: Int32
        let server: ScriptedSMTPServer
        var pending: [UInt8] = []
        var closed = false
        var eof = false

        mutating func fill() -> Bool {
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { eof = true; return false }
            pending.append(contentsOf: chunk[0..<n])
            return true
        }

        mutating func readLine() -> String? {
            while true {
                if let lf = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    var line = Array(pending[..<lf])
                    pending.removeFirst(lf + 1)
                    if line.last == UInt8(ascii: "\r") { line.removeLast() }
                    return String(decoding: line, as: UTF8.self)
                }
                if !fill() { return nil }
            }
        }

        mutating func readData() -> [UInt8]? {
            let end: [UInt8] = Array("\r\n.\r\n".utf8)
            while true {
                if pending.starts(with: Array(".\r\n".utf8)) {
                    pending.removeFirst(3)
                    return Array(".\r\n".utf8)
                }
                if let range = pending.firstRange(of: end) {
                    let bytes = Array(pending[..<range.upperBound])
                    pending.removeFirst(range.upperBound)
                    return bytes
                }
                if !fill() { return nil }
            }
        }

        func write(_ bytes: [UInt8]) -> Bool {
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }

        mutating func play(_ script: [WireStep]) {
            for step in script {
                switch step {
                case .send(let text):
                    if !write(Array(text.utf8)) { server.problem("write failed: \(text.prefix(40))"); return }
                case .sendBytes(let bytes):
                    if !write(bytes) { server.problem("write of \(bytes.count) bytes failed"); return }
                case .expect(let wanted):
                    guard let line = readLine() else { server.problem("expected \(wanted), got end of stream"); return }
                    server.state.with { $0.lines.append(line) }
                    if line != wanted { server.problem("expected \(wanted), got \(line)") }
                case .readLine:
                    guard let line = readLine() else { server.problem("expected a line, got end of stream"); return }
                    server.state.with { $0.lines.append(line) }
                case .readData:
                    guard let bytes = readData() else { server.problem("DATA ended without the final dot"); return }
                    server.state.with { $0.data.append(bytes) }
                case .readBytes(let count):
                    while pending.count < count { if !fill() { break } }
                    let bytes = pending
                    pending.removeAll()
                    server.state.with { $0.data.append(bytes) }
                case .reset:
                    var lingerOption = linger(l_onoff: 1, l_linger: 0)
                    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lingerOption, socklen_t(MemoryLayout<linger>.size))
                    close(fd)
                    closed = true
                    return
                case .close:
                    shutdown(fd, Int32(SHUT_RDWR))
                    close(fd)
                    closed = true
                    return
                case .signal(let name):
                    server.mark(name)
                case .waitFor(let name):
                    let deadline = Date().addingTimeInterval(10)
                    while !server.hasEvent(name) && Date() < deadline { usleep(2000) }
                }
            }
        }

        /// After the script: record whatever lines the client still sends until it closes.
        mutating func drain() {
            while let line = readLine() {
                server.state.with { $0.lines.append(line) }
            }
        }
    }
}

// MARK: - configurations and common scripts

/// The envelope and the small message most session tests send.
let envelope1 = SMTPEnvelope(from: "a@x.test", recipients: ["b@x.test"])
let message = "Subject: t\r\n\r\nhello\r\n"

extension SMTPClientConfiguration {
    static func wire(
        port: Int, security: ConnectionSecurity = .none, protocolTimeout: Duration = .seconds(5),
        credentials: SMTPCredentials? = nil, authMechanisms: [String]? = nil, sendPartial: Bool = true,
        enableDebug: Bool = false
    ) -> SMTPClientConfiguration {
        SMTPClientConfiguration(
            host: "127.0.0.1", port: port, security: security, connectTimeout: .seconds(5),
            protocolTimeout: protocolTimeout, credentials: credentials, authMechanisms: authMechanisms,
            localHostname: "client.test", sendPartial: sendPartial, enableDebug: enableDebug)
    }
}

enum WireScript {
    /// Greeting and EHLO with the given extension lines (after the name line).
    static func hello(_ extensions: [String]) -> [WireStep] {
        var reply = ""
        let lines = ["mx.test greets client.test"] + extensions
        for (i, line) in lines.enumerated() {
            reply += "250\(i == lines.count - 1 ? " " : "-")\(line)\r\n"
        }
        return [.send("220 mx.test ESMTP ready\r\n"), .expect("EHLO client.test"), .send(reply)]
    }

    static let quit: [WireStep] = [.expect("QUIT"), .send("221 2.0.0 bye\r\n"), .close]
}
