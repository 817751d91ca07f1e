import NIOCore
import Testing

@testable import OutboxRelay

/// Feeds `input` to a DATA decoder in pieces of `piece` bytes; returns what it stored, whether
/// it ended, and what is left after the end marker.
private func decode(_ input: String, piece: Int = 1_000_000, limit: Int = 1 << 20) -> (
    stored: String, ended: Bool, rest: String, decoder: MessageDecoder
) {
    var decoder = MessageDecoder(limit: limit)
    var stored = ByteBuffer()
    var rest = ByteBuffer()
    let bytes = Array(input.utf8)
    var ended = false
    var offset = 0
    while offset < bytes.count {
        var buffer = ByteBuffer(bytes: bytes[offset..<min(bytes.count, offset + piece)])
        offset += piece
        if ended {
            rest.writeBuffer(&buffer)
            continue
        }
        ended = decoder.decodeDotTerminated(&buffer)
        var out = decoder.take()
        stored.writeBuffer(&out)
        if ended { rest.writeBuffer(&buffer) }
    }
    return (String(buffer: stored), ended, String(buffer: rest), decoder)
}

@Suite("Relay: message decoder (DATA, BDAT, smuggling)")
struct MessageDecoderTests {
    @Test("a plain message ends at CRLF.CRLF; what follows stays unread", arguments: [1, 2, 3, 7, 1000])
    func plain(piece: Int) {
        let r = decode("Subject: a\r\n\r\nbody\r\n.\r\nQUIT\r\n", piece: piece)
        #expect(r.ended)
        #expect(r.stored == "Subject: a\r\n\r\nbody\r\n")
        #expect(r.rest == "QUIT\r\n")
    }

    @Test("dot-stuffing is removed at real line starts only", arguments: [1, 4, 1000])
    func unstuffing(piece: Int) {
        let r = decode("..one\r\n...two\r\nmid.dle\r\n.\r\n", piece: piece)
        #expect(r.ended)
        #expect(r.stored == ".one\r\n..two\r\nmid.dle\r\n")
    }

    @Test("an empty message")
    func empty() {
        let r = decode(".\r\n")
        #expect(r.ended)
        #expect(r.stored == "")
    }

    /// The published SMTP smuggling payloads: none of them ends the message; each bare line end
    /// becomes CRLF and the smuggled commands stay inside the one message.
    @Test("smuggling payloads never end DATA", arguments: ["\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r", ".\n", "\r\n.\n"])
    func smuggling(payload: String) {
        for piece in [1, 2, 1000] {
            let input = "Subject: x\r\n\r\nfirst" + payload + "MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nSMUGGLED\r\n.\r\nQUIT\r\n"
            let r = decode(input, piece: piece)
            #expect(r.ended)
            #expect(r.stored.contains("MAIL FROM:<evil@x>"), "payload \(payload.debugDescription)")
            #expect(r.stored.contains("SMUGGLED"))
            #expect(r.rest == "QUIT\r\n")
            #expect(r.decoder.sawBareLineEnd || payload == "\r\n.\r" || payload == ".\n")
            // No bare CR or LF is stored.
            let b = Array(r.stored.utf8)
            for (i, c) in b.enumerated() {
                if c == 13 { #expect(i + 1 < b.count && b[i + 1] == 10, "bare CR at \(i) for \(payload.debugDescription)") }
                if c == 10 { #expect(i > 0 && b[i - 1] == 13, "bare LF at \(i) for \(payload.debugDescription)") }
            }
        }
    }

    @Test("a lone dot after a bare line end stays as content")
    func dotKept() {
        let r = decode("a\n.\nb\r\n.\r\n")
        #expect(r.stored == "a\r\n.\r\nb\r\n")
        let r2 = decode("a\r\n.\rb\r\n.\r\n")
        #expect(r2.stored == "a\r\n.\r\nb\r\n")
    }

    @Test("past the limit bytes are dropped and the message is flagged")
    func oversized() {
        let body = String(repeating: "x", count: 5000) + "\r\n.\r\nNOOP\r\n"
        let r = decode(body, piece: 100, limit: 1024)
        #expect(r.ended)
        #expect(r.decoder.oversized)
        #expect(r.stored.utf8.count == 1024)
        #expect(r.rest == "NOOP\r\n")
    }

    @Test("BDAT chunks: exact counts, no dot handling, a CR across chunks")
    func chunks() {
        var decoder = MessageDecoder(limit: 1 << 20)
        var first = ByteBuffer(string: "a\r\n.\r\nb\r")
        #expect(decoder.decodeChunk(&first, upTo: 100) == 8)
        var second = ByteBuffer(string: "\nc\rNEXT")
        #expect(decoder.decodeChunk(&second, upTo: 3) == 3)
        decoder.finishChunks()
        #expect(String(buffer: decoder.take()) == "a\r\n.\r\nb\r\nc\r\n")
        #expect(String(buffer: second) == "NEXT")
    }
}
