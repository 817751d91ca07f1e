import NIOCore

/// Parses SMTP replies out of a byte stream, incrementally and with bounded memory.
///
/// A reply is one or more lines `ddd-text` ending with a line `ddd text` (or `ddd` alone);
/// all lines must carry the same code. Lines end in CRLF; a bare LF is tolerated as a line end.
/// A line longer than `maximumLineLength` or a reply with more than `maximumLines` lines is a
/// protocol error: a hostile server cannot make the client buffer without bound.
public struct SMTPReplyParser: Sendable {
    public static let defaultMaximumLineLength = 8192
    public static let defaultMaximumLines = 512

    public let maximumLineLength: Int
    public let maximumLines: Int
    private var pendingLines: [(code: Int, text: Substring)] = []

    public init(maximumLineLength: Int = Self.defaultMaximumLineLength, maximumLines: Int = Self.defaultMaximumLines) {
        self.maximumLineLength = maximumLineLength
        self.maximumLines = maximumLines
    }

    /// True when part of a multi-line reply has been read but not its last line.
    public var isInsideReply: Bool { !pendingLines.isEmpty }

    /// Reads one complete reply from `buffer` if one is there, consuming its bytes.
    /// Returns nil when more bytes are needed.
    public mutating func parse(_ buffer: inout ByteBuffer) throws(SMTPError) -> SMTPReply? {
        while true {
            guard let line = try readLine(&buffer) else { return nil }
            if let reply = try consume(line: line) { return reply }
        }
    }

    private func readLine(_ buffer: inout ByteBuffer) throws(SMTPError) -> String? {
        let view = buffer.readableBytesView
        guard let lf = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count > maximumLineLength {
                throw SMTPError(stage: .protocol, kind: .protocolViolation,
                                message: "the server sent a reply line longer than \(maximumLineLength) bytes")
            }
            return nil
        }
        let length = lf - view.startIndex
        if length > maximumLineLength {
            throw SMTPError(stage: .protocol, kind: .protocolViolation,
                            message: "the server sent a reply line longer than \(maximumLineLength) bytes")
        }
        var bytes = buffer.readBytes(length: length + 1)!
        bytes.removeLast()
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }

    private mutating func consume(line: String) throws(SMTPError) -> SMTPReply? {
        let utf8 = Array(line.utf8)
        guard utf8.count >= 3,
              (UInt8(ascii: "2")...UInt8(ascii: "5")).contains(utf8[0]),
              (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(utf8[1]),
              (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(utf8[2])
        else {
            pendingLines.removeAll()
            throw SMTPError(stage: .protocol, kind: .protocolViolation,
                            message: "the server sent a malformed reply line: \(Self.printable(line))")
        }
        let code = Int(line.prefix(3))!
        let isLast: Bool
        let text: Substring
        if utf8.count == 3 {
            isLast = true
            text = ""
        } else if utf8[3] == UInt8(ascii: " ") {
            isLast = true
            text = line.dropFirst(4)
        } else if utf8[3] == UInt8(ascii: "-") {
            isLast = false
            text = line.dropFirst(4)
        } else {
            pendingLines.removeAll()
            throw SMTPError(stage: .protocol, kind: .protocolViolation,
                            message: "the server sent a malformed reply line: \(Self.printable(line))")
        }
        if let first = pendingLines.first, first.code != code {
            pendingLines.removeAll()
            throw SMTPError(stage: .protocol, kind: .protocolViolation,
                            message: "the server changed the reply code inside a multi-line reply (\(first.code), then \(code))")
        }
        pendingLines.append((code, text))
        if pendingLines.count > maximumLines {
            pendingLines.removeAll()
            throw SMTPError(stage: .protocol, kind: .protocolViolation,
                            message: "the server sent a reply of more than \(maximumLines) lines")
        }
        guard isLast else { return nil }
        defer { pendingLines.removeAll() }
        return Self.makeReply(code: code, texts: pendingLines.map(\.text))
    }

    static func makeReply(code: Int, texts: [Substring]) -> SMTPReply {
        var enhanced: EnhancedStatusCode?
        var lines: [String] = []
        for (index, text) in texts.enumerated() {
            // An enhanced code is only taken when its class matches the reply's class.
            if let (candidate, consumed) = EnhancedStatusCode.parse(prefixOf: text), candidate.klass == code / 100 {
                if index == 0 { enhanced = candidate }
                if enhanced == candidate {
                    lines.append(String(text.dropFirst(consumed).drop(while: { $0 == " " })))
                    continue
                }
            }
            lines.append(String(text))
        }
        return SMTPReply(code: code, enhancedCode: enhanced, lines: lines)
    }

    static func printable(_ line: String) -> String {
        let clipped = line.count > 80 ? String(line.prefix(80)) + "..." : line
        return String(clipped.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
    }
}
