import NIOCore
import NIOEmbedded
import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One connection of a `ScriptedSMTPPeer`: plays its script against the client's testing
/// channel. In clear text the server reads the client's writes off that channel and delivers
/// its replies into it; after `.startTLS` both go through a second testing channel holding
/// NIOSSL's server handler, and the ciphertext is shuttled between the two in memory (as
/// swift-nio-ssl's own tests do), driven by the script's reads and writes.
struct ScriptedSMTPSession {
    let peer: ScriptedSMTPPeer
    let client: NIOAsyncTestingChannel
    /// The server's end under TLS.
    var server: NIOAsyncTestingChannel?
    /// What the client sent that no step consumed yet (plain text).
    var pending: [UInt8] = []
    /// The script ended the connection itself (the steps after it can only signal, wait or
    /// move the clock).
    var closed = false

    init(peer: ScriptedSMTPPeer, client: NIOAsyncTestingChannel) {
        self.peer = peer
        self.client = client
    }

    mutating func play(_ script: [ScriptedSMTPStep]) async {
        await run(script)
        if !closed { await drain() }
    }

    private mutating func run(_ script: [ScriptedSMTPStep]) async {
        for step in script {
            switch step {
            case .send(let text):
                guard await write(Array(text.utf8)) else { return peer.problem("write failed (the client had closed): \(text.prefix(40))") }
            case .sendBytes(let bytes):
                guard await write(bytes) else { return peer.problem("write of \(bytes.count) bytes failed (the client had closed)") }
            case .expect(let wanted):
                guard let line = await readLine() else { return peer.problem("expected \(wanted), got end of stream") }
                record(line)
                if line != wanted { peer.problem("expected \(wanted), got \(line)") }
            case .expectWrite(let lines):
                guard pending.isEmpty else { return peer.problem("expected a write of \(lines), but \(pending.count) bytes were left over") }
                guard let chunk = await readChunk() else { return peer.problem("expected a write of \(lines), got end of stream") }
                let text = String(decoding: chunk, as: UTF8.self)
                let wanted = lines.map { $0 + "\r\n" }.joined()
                if text != wanted { peer.problem("expected one write of \(wanted.debugDescription), got \(text.debugDescription)") }
                pending = chunk
                while let line = takeLine() { record(line) }
                pending = []
            case .readLine:
                guard let line = await readLine() else { return peer.problem("expected a line, got end of stream") }
                record(line)
            case .readData:
                guard let bytes = await readData() else { return peer.problem("DATA ended without the final dot") }
                peer.state.withLockedValue { $0.data.append(bytes) }
            case .readBytes(let count):
                while pending.count < count, let chunk = await readChunk() { pending += chunk }
                let bytes = pending
                pending = []
                peer.state.withLockedValue { $0.data.append(bytes) }
            case .startTLS:
                guard pending.isEmpty else { return peer.problem("STARTTLS with \(pending.count) clear-text bytes left over") }
                guard await startTLS() else { return peer.problem("the server's TLS end could not start") }
            case .advance(let amount):
                await peer.loop.advanceTime(by: amount)
            case .expectOpen(let open):
                if client.isActive != open { peer.problem("expected the client's connection \(open ? "open" : "closed")") }
            case .reset:
                await reset()
            case .close:
                await close()
            case .signal(let name):
                peer.mark(name)
            case .waitFor(let name):
                await peer.waitForEvent(name)
            }
        }
    }

    /// After the script: records whatever lines the client still sends until it closes.
    private mutating func drain() async {
        while let line = await readLine() { record(line) }
    }

    private func record(_ line: String) { peer.state.withLockedValue { $0.lines.append(line) } }

    // MARK: reading

    private mutating func takeLine() -> String? {
        guard let lf = pending.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        var line = Array(pending[..<lf])
        pending.removeFirst(lf + 1)
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        return String(decoding: line, as: UTF8.self)
    }

    private mutating func readLine() async -> String? {
        while true {
            if let line = takeLine() { return line }
            guard let chunk = await readChunk() else { return nil }
            pending += chunk
        }
    }

    private mutating func readData() async -> [UInt8]? {
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
            guard let chunk = await readChunk() else { return nil }
            pending += chunk
        }
    }

    /// The client's next write (plain text), nil once it closed.
    private func readChunk() async -> [UInt8]? {
        guard let server else {
            guard let buffer = try? await client.waitForOutboundWrite(as: ByteBuffer.self) else { return nil }
            return Array(buffer.readableBytesView)
        }
        while true {
            if let plain = try? await server.readInbound(as: ByteBuffer.self) { return Array(plain.readableBytesView) }
            await shuttleToClient()
            // The server's TLS end closed (its shutdown done, or the handshake failed): so does
            // its socket.
            if !server.isActive { await closeClientSocket() }
            guard let cipher = try? await client.waitForOutboundWrite(as: ByteBuffer.self) else { return nil }
            do {
                try await server.writeInbound(cipher)
            } catch {
                peer.state.withLockedValue { $0.tlsErrors.append("\(error)") }
            }
        }
    }

    // MARK: writing

    /// Delivers `bytes` to the client as one read; false when the client had closed.
    private func write(_ bytes: [UInt8]) async -> Bool {
        guard client.isActive else { return false }
        let buffer = ByteBuffer(bytes: bytes)
        if let server {
            try? await peer.loop.submit { server.pipeline.syncOperations.writeAndFlush(NIOAny(buffer), promise: nil) }.get()
            await shuttleToClient()
        } else {
            _ = try? await client.writeInbound(buffer)
            // Whatever the read scheduled on the loop for "now" runs before the next step.
            await peer.loop.run()
        }
        return true
    }

    /// Moves everything the server's TLS end wrote to the client.
    private func shuttleToClient() async {
        guard let server else { return }
        await peer.loop.run()
        while let cipher = try? await server.readOutbound(as: ByteBuffer.self) {
            _ = try? await client.writeInbound(cipher)
            await peer.loop.run()
        }
    }

    // MARK: TLS and closing

    private mutating func startTLS() async -> Bool {
        let server = NIOAsyncTestingChannel(loop: peer.loop)
        do {
            try await peer.loop.submit {
                try server.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: ScriptedSMTPPeer.serverTLSContext))
            }.get()
            try await server.connect(to: peer.address).get()
        } catch {
            return false
        }
        self.server = server
        return true
    }

    /// A broken connection: the client's read fails with ECONNRESET, and its channel closes
    /// (what NIO does on a reset socket).
    private mutating func reset() async {
        closed = true
        let client = self.client
        try? await peer.loop.submit {
            client.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)"))
        }.get()
        await closeClientSocket()
        server?.close(promise: nil)
        await peer.loop.run()
    }

    /// The client's channel closes as when its socket reads EOF: below its TLS handler (which
    /// would otherwise wait for a close_notify that never comes), channelInactive through all.
    private func closeClientSocket() async {
        let client = self.client
        let closed = try? await peer.loop.submit { () -> EventLoopFuture<Void> in
            let promise = client.eventLoop.makePromise(of: Void.self)
            if let tls = try? client.pipeline.syncOperations.context(handlerType: NIOSSLClientHandler.self) {
                tls.close(promise: promise)
            } else {
                client.pipeline.close(promise: promise)
            }
            return promise.futureResult
        }.get()
        _ = try? await closed?.get()
        await peer.loop.run()
    }

    /// The server closes: in clear text the client's channel closes at once (as on reading
    /// EOF); under TLS the server's close_notify goes first, the client answers and closes.
    private mutating func close() async {
        closed = true
        guard let server else {
            await closeClientSocket()
            return
        }
        server.close(promise: nil)
        await shuttleToClient()
        // The client's close_notify back, so that both ends finish their shutdown.
        while let cipher = try? await client.readOutbound(as: ByteBuffer.self) {
            _ = try? await server.writeInbound(cipher)
            await shuttleToClient()
        }
        await closeClientSocket()
    }
}
