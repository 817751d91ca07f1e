import NIOCore
import NIOEmbedded
import NIOSSL
import Testing
@testable import OutboxSMTP

/// Records a future's result as soon as it completes (EmbeddedChannel completes synchronously).
final class WireFutureBox<T: Sendable>: Sendable {
    private let box = WireLocked<Result<T, any Error>?>(nil)
    init(_ future: EventLoopFuture<T>) { future.whenComplete { result in self.box.with { $0 = result } } }
    var result: Result<T, any Error>? { box.current }
    var isDone: Bool { result != nil }
    var value: T? { if case .success(let v)? = result { return v } else { return nil } }
    var error: SMTPError? { if case .failure(let e)? = result { return e as? SMTPError } else { return nil } }
}

/// An EmbeddedChannel with the SMTP handler, connected, whose greeting promise is watched.
struct WireHandlerHarness {
    let channel: EmbeddedChannel
    let greeting: WireFutureBox<SMTPReply>

    init(tls: Bool = false) throws {
        channel = EmbeddedChannel()
        let promise = channel.eventLoop.makePromise(of: SMTPReply.self)
        greeting = WireFutureBox(promise.futureResult)
        let upgrade = tls ? SMTPClientHandler.TLSUpgrade(
            context: try NIOSSLContext(configuration: .makeClientConfiguration()), serverHostname: "mx.test") : nil
        try channel.pipeline.syncOperations.addHandler(SMTPClientHandler(greeting: promise, tlsUpgrade: upgrade, implicitTLSHandshake: nil))
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25), promise: nil)
    }

    /// Writes an encoded command with a reply promise and returns the watched reply.
    @discardableResult
    func send(_ command: SMTPCommand, handshake: EventLoopPromise<Void>? = nil, flush: Bool = true) throws -> WireFutureBox<SMTPReply> {
        var bytes = channel.allocator.buffer(capacity: 64)
        try command.encode(into: &bytes)
        let promise = channel.eventLoop.makePromise(of: SMTPReply.self)
        let box = WireFutureBox(promise.futureResult)
        channel.write(SMTPOutbound(bytes: bytes, reply: promise, tlsHandshake: handshake), promise: nil)
        if flush { channel.flush() }
        return box
    }

    func feed(_ text: String) throws { try channel.writeInbound(ByteBuffer(string: text)) }

    /// Everything written so far, as text.
    func outbound() throws -> String {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text
    }

    /// Closes if still open so that every promise completes.
    func finish() {
        if channel.isActive { _ = try? channel.close().wait() }
        _ = try? channel.finish()
    }
}

@Suite("Wire: client handler on EmbeddedChannel")
struct WireHandlerTests {
    @Test("greeting, EHLO, and a pipelined MAIL/RCPT/RCPT/DATA group: one flush, replies in order")
    func pipelinedOrder() throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        try h.feed("220 mx.test ESMTP\r\n")
        #expect(h.greeting.value == SMTPReply(code: 220, lines: ["mx.test ESMTP"]))

        let ehlo = try h.send(.ehlo("client.test"))
        #expect(try h.outbound() == "EHLO client.test\r\n")
        try h.feed("250-mx.test\r\n250 PIPELINING\r\n")
        #expect(ehlo.value?.lines == ["mx.test", "PIPELINING"])

        let mail = try h.send(.mailFrom("a@x.test", parameters: []), flush: false)
        let r1 = try h.send(.rcptTo("b@x.test", parameters: []), flush: false)
        let r2 = try h.send(.rcptTo("c@x.test", parameters: []), flush: false)
        #expect(try h.outbound() == "", "nothing leaves before the flush")
        let data = try h.send(.data)
        #expect(try h.outbound() == "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")

        // Replies arrive in pieces: each completes its own promise, in order.
        try h.feed("250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n25")
        #expect(mail.value?.code == 250)
        #expect(r1.value?.code == 550 && r1.value?.enhancedCode?.description == "5.1.1")
        #expect(!r2.isDone && !data.isDone)
        try h.feed("0 2.1.5 Ok\r\n354 go ahead\r\n")
        #expect(r2.value?.code == 250)
        #expect(data.value?.code == 354)
        #expect(h.channel.isActive)
    }

    @Test("replies fed one byte at a time complete the same promises")
    func byteAtATime() throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        let wire = "220-mx.test\r\n220 hello\r\n250-mx.test\r\n250 SIZE 100\r\n"
        let ehlo = try h.send(.ehlo("client.test"))
        for byte in wire.utf8 { try h.channel.writeInbound(ByteBuffer(bytes: [byte])) }
        #expect(h.greeting.value?.lines == ["mx.test", "hello"])
        #expect(ehlo.value?.lines == ["mx.test", "SIZE 100"])
    }

    @Test("220 to STARTTLS followed by clear text fails with startTLSInjection and closes")
    func startTLSInjection() throws {
        let h = try WireHandlerHarness(tls: true)
        defer { h.finish() }
        try h.feed("220 mx.test\r\n")
        _ = try h.send(.ehlo("client.test"))
        try h.feed("250-mx.test\r\n250 STARTTLS\r\n")
        let handshake = h.channel.eventLoop.makePromise(of: Void.self)
        let handshakeBox = WireFutureBox(handshake.futureResult)
        let starttls = try h.send(.startTLS, handshake: handshake)
        #expect(try h.outbound() == "EHLO client.test\r\nSTARTTLS\r\n")
        try h.feed("220 go ahead\r\n250 injected\r\n")
        #expect(starttls.error?.kind == .startTLSInjection)
        #expect(starttls.error?.stage == .starttls)
        #expect(handshakeBox.error?.kind == .startTLSInjection)
        #expect(!h.channel.isActive)
        #expect(try h.outbound() == "", "no TLS ClientHello: the TLS handler was never added")
    }

    @Test("220 to STARTTLS alone inserts the TLS handler first, then completes the reply")
    func startTLSClean() throws {
        let h = try WireHandlerHarness(tls: true)
        defer { h.finish() }
        try h.feed("220 mx.test\r\n")
        let handshake = h.channel.eventLoop.makePromise(of: Void.self)
        let handshakeBox = WireFutureBox(handshake.futureResult)
        let starttls = try h.send(.startTLS, handshake: handshake)
        #expect(try h.outbound() == "STARTTLS\r\n")
        try h.feed("220 2.0.0 Ready to start TLS\r\n")
        #expect(starttls.value?.code == 220)
        #expect((try? h.channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)) != nil)
        #expect(!handshakeBox.isDone)
        // The TLS handler has written a ClientHello (a TLS record, content type 22).
        let hello = try #require(try h.channel.readOutbound(as: ByteBuffer.self))
        #expect(hello.getInteger(at: hello.readerIndex, as: UInt8.self) == 22)
        h.finish()
        #expect(handshakeBox.error != nil)
    }

    @Test("a refusal of STARTTLS completes the reply and fails the handshake promise")
    func startTLSRefused() throws {
        let h = try WireHandlerHarness(tls: true)
        defer { h.finish() }
        try h.feed("220 mx.test\r\n")
        let handshake = h.channel.eventLoop.makePromise(of: Void.self)
        let handshakeBox = WireFutureBox(handshake.futureResult)
        let starttls = try h.send(.startTLS, handshake: handshake)
        try h.feed("454 4.7.0 TLS not available due to local problem\r\n")
        #expect(starttls.value?.code == 454)
        #expect(handshakeBox.error?.replyCode == 454)
        #expect(h.channel.isActive)
    }

    @Test("an endless line fails every waiter with protocolViolation and closes")
    func endlessLine() throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        let chunk = String(repeating: "A", count: 4096)
        var fed = 0
        while h.channel.isActive && fed < 1 << 20 {
            try h.feed(chunk)
            fed += chunk.count
        }
        #expect(fed <= SMTPReplyParser.defaultMaximumLineLength + 4096)
        #expect(h.greeting.error?.kind == .protocolViolation)
        #expect(!h.channel.isActive)
    }

    static let garbage = ["HTTP/1.1 200 OK\r\n", "SSH-2.0-OpenSSH_9.6\r\n", "\u{16}\u{03}\u{01}\u{02}\u{00}\r\n", "220-a\r\n221 b\r\n"]

    @Test("garbage fails the greeting with protocolViolation and closes", arguments: garbage)
    func garbageReply(_ wire: String) throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        try h.feed(wire)
        #expect(h.greeting.error?.kind == .protocolViolation)
        #expect(!h.channel.isActive)
    }

    @Test("a reply nobody asked for, or an unsolicited 421, closes the connection")
    func unsolicited() throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        try h.feed("220 ok\r\n")
        try h.feed("250 surprise\r\n")
        #expect(!h.channel.isActive)

        let h2 = try WireHandlerHarness()
        defer { h2.finish() }
        try h2.feed("220 ok\r\n421 4.3.2 shutting down\r\n")
        #expect(h2.greeting.value?.code == 220)
        #expect(!h2.channel.isActive)
    }

    @Test("the connection closing fails every pending reply with connectionClosed, in order")
    func closeFailsPending() throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        try h.feed("220 ok\r\n")
        let a = try h.send(.mailFrom("a@x.test", parameters: []))
        let b = try h.send(.rcptTo("b@x.test", parameters: []))
        try h.feed("250 ok\r\n")
        h.channel.pipeline.fireChannelInactive()
        #expect(a.value?.code == 250)
        #expect(b.error?.kind == .connectionClosed)
        #expect(b.error?.isTransient == true)
    }

    @Test("a 421 answering a command completes that command's promise, and the rest fail on close")
    func reply421() throws {
        let h = try WireHandlerHarness()
        defer { h.finish() }
        try h.feed("220 ok\r\n")
        let mail = try h.send(.mailFrom("a@x.test", parameters: []))
        let rcpt = try h.send(.rcptTo("b@x.test", parameters: []))
        try h.feed("421 4.4.2 timeout\r\n")
        #expect(mail.value?.code == 421)
        #expect(!rcpt.isDone)
        _ = try? h.channel.close().wait()
        #expect(rcpt.error?.kind == .connectionClosed)
    }
}
