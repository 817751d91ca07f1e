/// An RFC 2034 / RFC 3463 enhanced status code, `class.subject.detail` (e.g. `5.1.1`).
public struct EnhancedStatusCode: Sendable, Hashable, CustomStringConvertible {
    /// The class, the first number: 2 (success), 4 (persistent transient failure) or 5 (permanent
    /// failure). Spelled `klass` because `class` is a keyword.
    public var klass: Int
    /// The subject, the second number (0-999): what the code is about (0 other, 1 addressing,
    /// 2 mailbox, 3 mail system, 4 network and routing, 5 delivery protocol, 6 content, 7 security).
    public var subject: Int
    /// The detail, the third number (0-999), whose meaning depends on the subject.
    public var detail: Int

    /// A code from its three numbers, taken as given (not checked).
    public init(klass: Int, subject: Int, detail: Int) {
        self.klass = klass
        self.subject = subject
        self.detail = detail
    }

    /// Parses `x.y.z` at the start of `text` (class 2, 4 or 5; subject and detail 0-999).
    /// Returns the code and the number of characters consumed, or nil.
    static func parse(prefixOf text: Substring) -> (EnhancedStatusCode, Int)? {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { parse(prefixOf: $0) }
    }

    /// Parses `x.y.z` at the start of `bytes`: one to three digits each, class 2, 4 or 5.
    /// Returns the code and the number of bytes consumed, or nil.
    static func parse(prefixOf bytes: UnsafeRawBufferPointer) -> (EnhancedStatusCode, Int)? {
        var parts = (0, 0, 0)
        var index = 0
        for part in 0..<3 {
            if part > 0 {
                guard index < bytes.count, bytes[index] == UInt8(ascii: ".") else { return nil }
                index += 1
            }
            var value = 0
            var digits = 0
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
                digits += 1
                if digits > 3 { return nil }
                value = value * 10 + Int(bytes[index] - UInt8(ascii: "0"))
                index += 1
            }
            guard digits > 0 else { return nil }
            switch part {
            case 0: parts.0 = value
            case 1: parts.1 = value
            default: parts.2 = value
            }
        }
        guard parts.0 == 2 || parts.0 == 4 || parts.0 == 5 else { return nil }
        return (EnhancedStatusCode(klass: parts.0, subject: parts.1, detail: parts.2), index)
    }

    /// `class.subject.detail`, e.g. `5.1.1`.
    public var description: String { "\(klass).\(subject).\(detail)" }
}

/// One complete SMTP reply: a three-digit code and one or more text lines (RFC 5321 §4.2).
public struct SMTPReply: Sendable, Hashable, CustomStringConvertible {
    /// The three-digit reply code (e.g. 250, 354, 421, 550), the same on every line.
    public var code: Int
    /// The enhanced status code of the first line, when the server uses ENHANCEDSTATUSCODES.
    public var enhancedCode: EnhancedStatusCode?
    /// The text of every line, without the code, the separator and the enhanced code.
    public var lines: [String]

    /// A reply from its parts, taken as given (not checked).
    public init(code: Int, enhancedCode: EnhancedStatusCode? = nil, lines: [String]) {
        self.code = code
        self.enhancedCode = enhancedCode
        self.lines = lines
    }

    /// True for a 2xx reply: the command was accepted.
    public var isPositiveCompletion: Bool { (200..<300).contains(code) }
    /// True for a 3xx reply: go on (354 after DATA, 334 during AUTH).
    public var isPositiveIntermediate: Bool { (300..<400).contains(code) }
    /// True for a 4xx reply: refused for now; the same command may succeed later.
    public var isTransientFailure: Bool { (400..<500).contains(code) }
    /// True for a 5xx reply: refused; repeating the command will not help.
    public var isPermanentFailure: Bool { (500..<600).contains(code) }

    /// The whole text, lines joined with a space.
    public var text: String { lines.joined(separator: " ") }

    /// `code [enhanced] text`, e.g. `550 5.1.1 no such user`.
    public var description: String {
        if let enhancedCode { return "\(code) \(enhancedCode) \(text)" }
        return "\(code) \(text)"
    }
}
