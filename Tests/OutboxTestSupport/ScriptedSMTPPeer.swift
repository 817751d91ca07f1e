import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOSSL
import OutboxSMTP

/// One step of a scripted SMTP server's script.
package enum ScriptedSMTPStep: Sendable {
    /// Delivers this text to the client as one read.
    case send(String)
    /// Delivers these bytes to the client as one read.
    case sendBytes([UInt8])
    /// Reads one line from the client (recorded); notes a problem when it differs.
    case expect(String)
    /// The client's next write is exactly these lines (a pipelined group leaving in one write),
    /// each recorded; notes a problem when it differs.
    case expectWrite([String])
    /// Reads one line, whatever it is (recorded).
    case readLine
    /// Reads DATA up to and including `CRLF.CRLF` (or a lone `.CRLF` at the start); records the raw bytes.
    case readData
    /// Reads at least this many raw bytes (recorded as data).
    case readBytes(Int)
    /// From here on the server speaks TLS (the built-in test certificate): after its `220` to
    /// STARTTLS, or first thing for implicit TLS.
    case startTLS
    /// Moves the event loop's clock on: the client's timers that fall due run.
    case advance(TimeAmount)
    /// Notes a problem unless the client's channel is open (`true`) or closed (`false`).
    case expectOpen(Bool)
    /// The connection breaks: the client's channel reports a reset and closes. Later steps can
    /// only signal, wait or move the clock.
    case reset
    /// The server closes the connection (after its close_notify under TLS); as after `.reset`.
    case close
    /// Marks an event the test can wait for.
    case signal(String)
    /// Waits until the test (or another script) marks an event.
    case waitFor(String)
}

/// A scripted SMTP server for the real client (`SMTPConnection`, `SMTPClientHandler`, NIOSSL)
/// on `NIOAsyncTestingChannel`s: no sockets, no threads of its own, no sleeps, no polling.
///
/// Each `connect` opens the next script's connection: an in-memory channel on the peer's
/// `NIOAsyncTestingEventLoop`, set up by the same code as a TCP connection. The script then
/// runs in a task of its own: what it sends reaches the client as one read per step, what the
/// client writes is awaited write by write. `.startTLS` puts a second testing channel with
/// NIOSSL's server handler behind the client's channel, the bytes shuttled in memory both ways.
/// Time only moves when a script or the test advances the loop's clock, so a timeout fires
/// exactly when its deadline is passed.
package final class ScriptedSMTPPeer: Sendable {
    /// The client's event loop (every connection of this peer runs on it).
    package let loop: NIOAsyncTestingEventLoop
    /// The address connections claim to reach (for logs and TLS: the test certificate's IP).
    package let address: SocketAddress

    struct State {
        var lines: [String] = []
        var data: [[UInt8]] = []
        var problems: [String] = []
        var tlsErrors: [String] = []
        var events: Set<String> = []
        var eventWaiters: [String: [CheckedContinuation<Void, Never>]] = [:]
        var scripts: [[ScriptedSMTPStep]]
        var sessions: [Task<Void, Never>] = []
        var channels: [NIOAsyncTestingChannel] = []
    }
    let state: NIOLockedValueBox<State>

    /// Every loop a peer made, kept for the process's life: a testing loop that is freed with a
    /// timer still scheduled or a promise not completed stops the process, and a failing test
    /// may leave either behind.
    private static let keptLoops = NIOLockedValueBox<[NIOAsyncTestingEventLoop]>([])

    /// A server that plays `scripts[0]` for the first connection, `scripts[1]` for the second...
    /// at `address` (the client's channel's remote address: what its logs show, and what
    /// NIOSSL also checks the certificate against).
    package init(_ scripts: [[ScriptedSMTPStep]], address: SocketAddress? = nil) {
        let loop = NIOAsyncTestingEventLoop()
        Self.keptLoops.withLockedValue { $0.append(loop) }
        self.loop = loop
        self.address = address ?? (try! SocketAddress(ipAddress: "127.0.0.1", port: 25))
        self.state = NIOLockedValueBox(State(scripts: scripts))
        Self.current?.add(self)
    }

    /// The peers made in this task (see `Registry`).
    @TaskLocal package static var current: Registry?

    /// The peers made while it is `current`, so that a test that is cancelled (its time limit
    /// passed: a script and the client waiting for each other) can end them with `abort()`.
    package final class Registry: Sendable {
        private let peers = NIOLockedValueBox<[ScriptedSMTPPeer]>([])
        package init() {}
        func add(_ peer: ScriptedSMTPPeer) { peers.withLockedValue { $0.append(peer) } }
        /// Aborts every peer made while this registry was current.
        package func abortAll() { for peer in peers.withLockedValue({ $0 }) { peer.abort() } }
    }

    /// Ends a stuck test: every connection closes as if its socket had, every `.waitFor` goes
    /// on, and a problem says so.
    package func abort() {
        let (channels, waiters) = state.withLockedValue { state in
            state.problems.append("aborted: the test was cancelled")
            let waiters = state.eventWaiters.values.flatMap { $0 }
            state.eventWaiters = [:]
            return (state.channels, waiters)
        }
        for waiter in waiters { waiter.resume() }
        for channel in channels {
            loop.execute {
                if let tls = try? channel.pipeline.syncOperations.context(handlerType: NIOSSLClientHandler.self) {
                    tls.close(promise: nil)
                } else {
                    channel.pipeline.close(promise: nil)
                }
            }
        }
    }

    /// A server for one connection.
    package convenience init(_ script: [ScriptedSMTPStep], address: SocketAddress? = nil) { self.init([script], address: address) }

    /// The lines the client sent, CRLF removed, in order (DATA content excluded).
    package var transcript: [String] { state.withLockedValue { $0.lines } }
    /// Each DATA payload, raw, terminator included.
    package var data: [[UInt8]] { state.withLockedValue { $0.data } }
    /// Each DATA payload as text.
    package var dataStrings: [String] { data.map { String(decoding: $0, as: UTF8.self) } }
    /// Script mismatches, and writes to a client that had closed.
    package var problems: [String] { state.withLockedValue { $0.problems } }
    /// What the server's TLS handler reported (a handshake the client gave up, an alert).
    package var tlsErrors: [String] { state.withLockedValue { $0.tlsErrors } }
    /// How many connections the client opened.
    package var connectionCount: Int { state.withLockedValue { $0.sessions.count } }

    /// Connects the client to the next script, as `SMTPConnection.connect` does over TCP.
    package func connect(
        configuration: SMTPClientConfiguration, logger: Logger = Logger(label: "outbox.smtp")
    ) async throws(SMTPError) -> SMTPConnection {
        try await SMTPConnection.connect(configuration: configuration, eventLoop: loop, logger: logger) { initializer in
            try await self.open(initializer)
        }
    }

    private func open(_ initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) async throws -> any Channel {
        let index = state.withLockedValue { $0.sessions.count }
        guard let script = state.withLockedValue({ index < $0.scripts.count ? $0.scripts[index] : nil }) else {
            // Nothing listens any more: refused.
            throw ChannelError.ioOnClosedChannel
        }
        let channel = NIOAsyncTestingChannel(loop: loop)
        channel.remoteAddress = address
        channel.localAddress = try SocketAddress(ipAddress: "127.0.0.1", port: 49152 + index)
        try await loop.flatSubmit { initializer(channel) }.get()
        try await channel.connect(to: address).get()
        let session = Task {
            var session = ScriptedSMTPSession(peer: self, client: channel)
            await session.play(script)
        }
        state.withLockedValue {
            $0.sessions.append(session)
            $0.channels.append(channel)
        }
        return channel
    }

    /// Moves the event loop's clock on by `amount`, running the timers that fall due.
    package func advanceTime(by amount: TimeAmount) async {
        await loop.advanceTime(by: amount)
    }

    /// The event loop's clock.
    package var now: NIODeadline { loop.now }

    /// Lets a `.waitFor(name)` step go on.
    package func mark(_ name: String) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.events.insert(name)
            return state.eventWaiters.removeValue(forKey: name) ?? []
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Whether `name` was marked.
    package func hasEvent(_ name: String) -> Bool { state.withLockedValue { $0.events.contains(name) } }

    /// Waits until `name` is marked (a `.signal(name)` step ran, or `mark(name)` was called).
    package func waitForEvent(_ name: String) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLockedValue { state -> Bool in
                if state.events.contains(name) { return true }
                state.eventWaiters[name, default: []].append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Waits until every connection's script ended (and the client closed it, or the script
    /// did); a script no client connected for is a problem.
    package func finished() async {
        let (sessions, missing) = state.withLockedValue { ($0.sessions, $0.scripts.count - $0.sessions.count) }
        for session in sessions { await session.value }
        if missing > 0 { problem("no client connected for \(missing) script(s)") }
    }

    func problem(_ text: String) { state.withLockedValue { $0.problems.append(text) } }

    // MARK: TLS

    /// The server side's TLS context: the built-in test certificate (`localhost`, 127.0.0.1),
    /// signed by `TestCertificates.builtIn.caFile`.
    package static let serverTLSContext: NIOSSLContext = {
        let certificate = try! NIOSSLCertificate(bytes: Array(TestCertificates.certificatePEM.utf8), format: .pem)
        let key = try! NIOSSLPrivateKey(bytes: Array(TestCertificates.keyPEM.utf8), format: .pem)
        let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: [.certificate(certificate)], privateKey: .privateKey(key))
        return try! NIOSSLContext(configuration: configuration)
    }()
}

/// Values a callback sets and a test awaits, in order (no polling).
package final class AsyncValues<Value: Sendable>: Sendable {
    private struct State {
        var values: [Value] = []
        var waiters: [(count: Int, continuation: CheckedContinuation<[Value], Never>)] = []
    }
    private let state = NIOLockedValueBox(State())

    package init() {}

    /// Adds a value (from any thread; a callback on the event loop, typically).
    package func append(_ value: Value) {
        let ready = state.withLockedValue { state -> [(CheckedContinuation<[Value], Never>, [Value])] in
            state.values.append(value)
            let values = state.values
            let due = state.waiters.filter { $0.count <= values.count }
            state.waiters.removeAll { $0.count <= values.count }
            return due.map { ($0.continuation, values) }
        }
        for (continuation, values) in ready { continuation.resume(returning: values) }
    }

    /// The values so far.
    package var current: [Value] { state.withLockedValue { $0.values } }

    /// Waits until there are at least `count` values; returns them all.
    package func wait(for count: Int = 1) async -> [Value] {
        await withCheckedContinuation { (continuation: CheckedContinuation<[Value], Never>) in
            let values = state.withLockedValue { state -> [Value]? in
                if state.values.count >= count { return state.values }
                state.waiters.append((count, continuation))
                return nil
            }
            if let values { continuation.resume(returning: values) }
        }
    }
}
