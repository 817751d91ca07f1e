import NIOCore
import Testing

@testable import OutboxSMTP
@testable import OutboxSMTPGrammar

struct WireDataFixture: Sendable, CustomTestStringConvertible {
    var name: String
    var input: String
    var output: String
    var testDescription: String { name }
}

/// Encodes `chunks` one after the other and finishes; returns the wire bytes and the count.
private func encodeData(_ chunks: [[UInt8]]) -> ([UInt8], Int) {
    var encoder = SMTPDataEncoder()
    var out = ByteBuffer()
    for chunk in chunks { encoder.encode(ByteBuffer(bytes: chunk), into: &out) }
    encoder.finish(into: &out)
    return (Array(out.readableBytesView), encoder.bytesWritten)
}

@Suite("Wire: DATA encoder")
struct WireDataEncoderTests {
    static let fixtures: [WireDataFixture] = [
        .init(name: "empty message", input: "", output: ".\r\n"),
        .init(name: "plain CRLF text", input: "Subject: hi\r\n\r\nbody\r\n", output: "Subject: hi\r\n\r\nbody\r\n.\r\n"),
        .init(name: "missing final CRLF", input: "Subject: hi\r\n\r\nbody", output: "Subject: hi\r\n\r\nbody\r\n.\r\n"),
        .init(name: "leading dot on the first line", input: ".hidden\r\n", output: "..hidden\r\n.\r\n"),
        .init(name: "a line that is a lone dot", input: "a\r\n.\r\nb\r\n", output: "a\r\n..\r\nb\r\n.\r\n"),
        .init(name: "message is a lone dot without CRLF", input: ".", output: "..\r\n.\r\n"),
        .init(name: "two dots", input: "..\r\n", output: "...\r\n.\r\n"),
        .init(name: "dot only at line start", input: "a.b\r\n. c\r\n", output: "a.b\r\n.. c\r\n.\r\n"),
        .init(name: "the terminator inside the body", input: "x\r\n.\r\n\r\ny", output: "x\r\n..\r\n\r\ny\r\n.\r\n"),
        .init(name: "lone LF becomes CRLF", input: "a\nb\n", output: "a\r\nb\r\n.\r\n"),
        .init(name: "lone LF then dot", input: "a\n.\n", output: "a\r\n..\r\n.\r\n"),
        .init(name: "lone CR becomes CRLF", input: "a\rb", output: "a\r\nb\r\n.\r\n"),
        .init(name: "lone CR then dot", input: "a\r.b", output: "a\r\n..b\r\n.\r\n"),
        .init(name: "trailing lone CR", input: "a\r", output: "a\r\n.\r\n"),
        .init(name: "CR CR LF", input: "a\r\r\nb", output: "a\r\n\r\nb\r\n.\r\n"),
        .init(name: "LF CR", input: "a\n\rb", output: "a\r\n\r\nb\r\n.\r\n"),
        .init(name: "blank lines only", input: "\r\n\r\n", output: "\r\n\r\n.\r\n"),
        .init(name: "8-bit bytes pass", input: "Grüße\r\n", output: "Grüße\r\n.\r\n"),
    ]

    @Test("fixtures in one chunk", arguments: fixtures)
    func oneChunk(_ fixture: WireDataFixture) {
        let (out, count) = encodeData([Array(fixture.input.utf8)])
        #expect(String(decoding: out, as: UTF8.self) == fixture.output)
        #expect(count == out.count)
    }

    @Test("every split into two chunks gives identical bytes", arguments: fixtures)
    func everyTwoWaySplit(_ fixture: WireDataFixture) {
        let bytes = Array(fixture.input.utf8)
        let whole = encodeData([bytes]).0
        for cut in 0...bytes.count {
            let (out, count) = encodeData([Array(bytes[..<cut]), Array(bytes[cut...])])
            #expect(out == whole, "cut at \(cut)")
            #expect(count == whole.count)
        }
    }

    @Test("every split into three chunks, and byte at a time, gives identical bytes", arguments: fixtures)
    func everyThreeWaySplit(_ fixture: WireDataFixture) {
        let bytes = Array(fixture.input.utf8)
        let whole = encodeData([bytes]).0
        for a in 0...bytes.count {
            for b in a...bytes.count {
                let out = encodeData([Array(bytes[..<a]), Array(bytes[a..<b]), [], Array(bytes[b...])]).0
                #expect(out == whole, "cuts at \(a), \(b)")
            }
        }
        #expect(encodeData(bytes.map { [$0] }).0 == whole)
    }

    @Test("CR at the end of a chunk and LF at the start of the next make one line end")
    func crAtChunkBoundary() {
        let (out, _) = encodeData([Array("line\r".utf8), Array("\n.next\r".utf8), Array("\n".utf8)])
        #expect(String(decoding: out, as: UTF8.self) == "line\r\n..next\r\n.\r\n")
    }

    @Test("a pseudo-random message: splits never change the output, the output never holds a bare CR or LF or an unstuffed dot line")
    func randomized() {
        var rng = WireSplitMix(seed: 42)
        let alphabet: [UInt8] = Array("ab.\r\n .".utf8)
        for _ in 0..<200 {
            let length = Int(rng.next() % 40)
            let bytes = (0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            let whole = encodeData([bytes]).0
            var chunks: [[UInt8]] = []
            var rest = bytes[...]
            while !rest.isEmpty {
                let n = min(rest.count, Int(rng.next() % 5))
                chunks.append(Array(rest.prefix(n)))
                rest = rest.dropFirst(n)
            }
            #expect(encodeData(chunks).0 == whole)
            // Every CR is followed by LF and every LF preceded by CR.
            for (i, b) in whole.enumerated() {
                if b == 0x0D { #expect(i + 1 < whole.count && whole[i + 1] == 0x0A) }
                if b == 0x0A { #expect(i > 0 && whole[i - 1] == 0x0D) }
            }
            // The only line that is a lone "." is the terminator, and it is last.
            let text = String(decoding: whole, as: UTF8.self)
            #expect(text.hasSuffix("\r\n.\r\n") || text == ".\r\n")
            let lines = text.components(separatedBy: "\r\n").dropLast()  // after the last CRLF
            #expect(lines.filter { $0 == "." }.count == 1)
            #expect(lines.last == ".")
        }
    }

    @Test("large input in odd chunks")
    func large() {
        let line = Array(".dot line\n".utf8)
        let bytes = Array(repeating: line, count: 10_000).flatMap { $0 }
        let whole = encodeData([bytes]).0
        #expect(whole.count == 10_000 * 12 + 3)
        var chunks: [[UInt8]] = []
        var i = 0
        while i < bytes.count { chunks.append(Array(bytes[i..<min(bytes.count, i + 4093)])); i += 4093 }
        #expect(encodeData(chunks).0 == whole)
    }
}

/// A small deterministic random generator for the fuzz-style test.
struct WireSplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
