import Foundation  // memchr
import NIOCore

/// Parses SMTP replies out of a byte stream, incrementally and with bounded memory.
///
/// A reply is one or more lines `ddd-text` ending with a line `ddd text` (or `ddd` alone);
/// all lines must carry the same code. Lines end in CRLF; a bare LF is tolerated as a line end.
/// A line longer than `maximumLineLength` or a reply with more than `maximumLines` lines is a
/// protocol error: a hostile server cannot make the client buffer without bound.
///
/// Lines are read straight from the buffer's bytes: a one-line reply (every reply of a mail
/// transaction) costs one String for its text and nothing else.
package struct SMTPReplyParser: Sendable {
    package static let defaultMaximumLineLength = 8192
    package static let defaultMaximumLines = 512

    package let maximumLineLength: Int
    package let maximumLines: Int
    /// The lines of a multi-line reply read so far: their code, and their text after `ddd-`.
    private var pendingCode = 0
    private var pendingLines: [String] = []

    package init(maximumLineLength: Int = Self.defaultMaximumLineLength, maximumLines: Int = Self.defaultMaximumLines) {
        self.maximumLineLength = maximumLineLength
        self.maximumLines = maximumLines
    }

    /// True when part of a multi-line reply has been read but not its last line.
    package var isInsideReply: Bool { !pendingLines.isEmpty }

    /// Reads one complete reply from `buffer` if one is there, consuming its bytes.
    /// Returns nil when more bytes are needed.
    package mutating func parse(_ buffer: inout ByteBuffer) throws(SMTPError) -> SMTPReply? {
        while true {
            let result = buffer.withUnsafeReadableBytes { bytes -> Result<Step, SMTPError> in
                do throws(SMTPError) { return .success(try self.step(bytes)) } catch { return .failure(error) }
            }
            switch try result.get() {
            case .needMore:
                return nil
            case .line(let consumed):
                buffer.moveReaderIndex(forwardBy: consumed)
            case .reply(let reply, let consumed):
                buffer.moveReaderIndex(forwardBy: consumed)
                return reply
            }
        }
    }

    private enum Step {
        case needMore
        /// A line of a multi-line reply was read (`consumed` bytes, LF included).
        case line(consumed: Int)
        case reply(SMTPReply, consumed: Int)
    }

    /// Reads the first line in `bytes`, if it is complete.
    private mutating func step(_ bytes: UnsafeRawBufferPointer) throws(SMTPError) -> Step {
        guard let base = bytes.baseAddress, bytes.count > 0,
            let lf = memchr(base, 0x0A, bytes.count)
        else {
            if bytes.count > maximumLineLength { throw tooLong() }
            return .needMore
        }
        let lfIndex = base.distance(to: UnsafeRawPointer(lf))
        if lfIndex > maximumLineLength { throw tooLong() }
        var end = lfIndex
        if end > 0 && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let line = UnsafeRawBufferPointer(rebasing: bytes[0..<end])
        let consumed = lfIndex + 1

        guard line.count >= 3,
            (UInt8(ascii: "2")...UInt8(ascii: "5")).contains(line[0]),
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(line[1]),
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(line[2])
        else { throw malformed(line) }
        let code = Int(line[0] &- 48) * 100 + Int(line[1] &- 48) * 10 + Int(line[2] &- 48)
        let isLast: Bool
        if line.count == 3 || line[3] == UInt8(ascii: " ") {
            isLast = true
        } else if line[3] == UInt8(ascii: "-") {
            isLast = false
        } else {
            throw malformed(line)
        }
        let textStart = Swift.min(4, line.count)
        if !pendingLines.isEmpty, pendingCode != code {
            let first = pendingCode
            pendingLines.removeAll()
            throw SMTPError(
                stage: .protocol, code: .protocolViolation,
                message: "the server changed the reply code inside a multi-line reply (\(first), then \(code))")
        }
        if isLast && pendingLines.isEmpty {
            // The common case: a one-line reply, parsed without an intermediate copy.
            let text = UnsafeRawBufferPointer(rebasing: line[textStart...])
            return .reply(Self.makeSingleLineReply(code: code, text: text), consumed: consumed)
        }
        if pendingLines.count + 1 > maximumLines {
            pendingLines.removeAll()
            throw SMTPError(
                stage: .protocol, code: .protocolViolation,
                message: "the server sent a reply of more than \(maximumLines) lines")
        }
        pendingCode = code
        pendingLines.append(String(decoding: line[textStart...], as: UTF8.self))
        guard isLast else { return .line(consumed: consumed) }
        defer { pendingLines.removeAll(keepingCapacity: true) }
        return .reply(Self.makeReply(code: code, texts: pendingLines), consumed: consumed)
    }

    private func tooLong() -> SMTPError {
        SMTPError(
            stage: .protocol, code: .protocolViolation,
            message: "the server sent a reply line longer than \(maximumLineLength) bytes")
    }

    private mutating func malformed(_ line: UnsafeRawBufferPointer) -> SMTPError {
        pendingLines.removeAll()
        return SMTPError(
            stage: .protocol, code: .protocolViolation,
            message: "the server sent a malformed reply line: \(Self.printable(String(decoding: line, as: UTF8.self)))")
    }

    /// A one-line reply: the enhanced code (when its class matches the reply's) and the text after it.
    static func makeSingleLineReply(code: Int, text: UnsafeRawBufferPointer) -> SMTPReply {
        if let (candidate, consumed) = EnhancedStatusCode.parse(prefixOf: text), candidate.klass == code / 100 {
            var start = consumed
            while start < text.count && text[start] == UInt8(ascii: " ") { start += 1 }
            return SMTPReply(code: code, enhancedCode: candidate, lines: [String(decoding: text[start...], as: UTF8.self)])
        }
        return SMTPReply(code: code, enhancedCode: nil, lines: [String(decoding: text, as: UTF8.self)])
    }

    /// A reply from the texts of its lines: the first line's enhanced code (when its class
    /// matches the reply's) is taken off every line that repeats it.
    static func makeReply(code: Int, texts: [String]) -> SMTPReply {
        var enhanced: EnhancedStatusCode?
        var lines: [String] = []
        lines.reserveCapacity(texts.count)
        for (index, text) in texts.enumerated() {
            var utf8 = text
            let stripped: String? = utf8.withUTF8 { raw -> String? in
                let bytes = UnsafeRawBufferPointer(raw)
                guard let (candidate, consumed) = EnhancedStatusCode.parse(prefixOf: bytes), candidate.klass == code / 100 else { return nil }
                if index == 0 { enhanced = candidate }
                guard enhanced == candidate else { return nil }
                var start = consumed
                while start < bytes.count && bytes[start] == UInt8(ascii: " ") { start += 1 }
                return String(decoding: bytes[start...], as: UTF8.self)
            }
            lines.append(stripped ?? text)
        }
        return SMTPReply(code: code, enhancedCode: enhanced, lines: lines)
    }

    package static func printable(_ line: String) -> String {
        let clipped = line.count > 80 ? String(line.prefix(80)) + "..." : line
        return String(clipped.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
    }
}
