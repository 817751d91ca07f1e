/// An RFC 2034 / RFC 3463 enhanced status code, `class.subject.detail` (e.g. `5.1.1`).
public struct EnhancedStatusCode: Sendable, Hashable, CustomStringConvertible {
    public var klass: Int
    public var subject: Int
    public var detail: Int

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

    public var description: String { "\(klass).\(subject).\(detail)" }
}

/// One complete SMTP reply: a three-digit code and one or more text lines (RFC 5321 §4.2).
public struct SMTPReply: Sendable, Hashable, CustomStringConvertible {
    public var code: Int
    /// The enhanced status code of the first line, when the server uses ENHANCEDSTATUSCODES.
    public var enhancedCode: EnhancedStatusCode?
    /// The text of every line, without the code, the separator and the enhanced code.
    public var lines: [String]

    public init(code: Int, enhancedCode: EnhancedStatusCode? = nil, lines: [String]) {
        self.code = code
        self.enhancedCode = enhancedCode
        self.lines = lines
    }

    public var isPositiveCompletion: Bool { (200..<300).contains(code) }
    public var isPositiveIntermediate: Bool { (300..<400).contains(code) }
    public var isTransientFailure: Bool { (400..<500).contains(code) }
    public var isPermanentFailure: Bool { (500..<600).contains(code) }

    /// The whole text, lines joined with a space.
    public var text: String { lines.joined(separator: " ") }

    public var description: String {
        if let enhancedCode { return "\(code) \(enhancedCode) \(text)" }
        return "\(code) \(text)"
    }
}
