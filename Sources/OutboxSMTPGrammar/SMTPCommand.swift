import NIOCore

/// The commands the client sends. Their wire text comes from `encode(into:)` and nowhere else.
package enum SMTPCommand: Sendable, Hashable {
    /// `EHLO <domain>` (RFC 5321 §4.1.1.1). C: `EHLO client.example` S: `250-server.example ...`
    case ehlo(String)
    /// `HELO <domain>`, when EHLO is not understood.
    case helo(String)
    /// `STARTTLS` (RFC 3207). S: `220 2.0.0 Ready to start TLS`
    case startTLS
    /// `AUTH <mechanism> [initial-response]` (RFC 4954). The response is a secret.
    case auth(mechanism: String, initialResponse: String?)
    /// A base64 line answering a 334 challenge (or empty, or `*` to cancel). A secret.
    case authResponse(String)
    /// `MAIL FROM:<reverse-path> [parameters]`.
    case mailFrom(String, parameters: [String])
    /// `RCPT TO:<forward-path> [parameters]`.
    case rcptTo(String, parameters: [String])
    /// `DATA`. S: `354 End data with <CR><LF>.<CR><LF>`
    case data
    /// `NOOP`. S: `250 2.0.0 Ok`
    case noop
    /// `RSET`: abandons the transaction. S: `250 2.0.0 Ok`
    case rset
    /// `QUIT`. S: `221 2.0.0 Bye`
    case quit

    /// Whether the command's arguments carry credentials that must never be logged.
    package var isSensitive: Bool {
        switch self {
        case .auth, .authResponse: return true
        case .ehlo, .helo, .startTLS, .mailFrom, .rcptTo, .data, .noop, .rset, .quit: return false
        }
    }

    /// The text to show in a transcript: secrets replaced with `<redacted>`.
    package var redactedText: String {
        switch self {
        case .auth(let mechanism, let initialResponse):
            return initialResponse == nil ? "AUTH \(mechanism)" : "AUTH \(mechanism) <redacted>"
        case .authResponse:
            return "<redacted>"
        case .ehlo, .helo, .startTLS, .mailFrom, .rcptTo, .data, .noop, .rset, .quit:
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            _ = try? self.encode(into: &buffer)
            return String(buffer: buffer).trimmingCRLF()
        }
    }

    /// Checks every argument: no CR, LF, NUL or other control characters; no `<` or `>` inside a path.
    package func validate() throws(SMTPError) {
        switch self {
        case .ehlo(let domain), .helo(let domain):
            try Self.check(domain, what: "EHLO name", stage: .ehlo, allowEmpty: false, forbidSpace: true)
        case .auth(let mechanism, let initialResponse):
            try Self.check(mechanism, what: "AUTH mechanism", stage: .auth, allowEmpty: false, forbidSpace: true)
            if let initialResponse {
                try Self.check(initialResponse, what: "AUTH response", stage: .auth, allowEmpty: true, forbidSpace: true, secret: true)
            }
        case .authResponse(let line):
            try Self.check(line, what: "AUTH response", stage: .auth, allowEmpty: true, forbidSpace: true, secret: true)
        case .mailFrom(let path, let parameters):
            try Self.checkPath(path, what: "sender address", stage: .mail, allowEmpty: true)
            for p in parameters { try Self.check(p, what: "MAIL parameter", stage: .mail, allowEmpty: false, forbidSpace: true) }
        case .rcptTo(let path, let parameters):
            try Self.checkPath(path, what: "recipient address", stage: .rcpt, allowEmpty: false)
            for p in parameters { try Self.check(p, what: "RCPT parameter", stage: .rcpt, allowEmpty: false, forbidSpace: true) }
        case .startTLS, .data, .noop, .rset, .quit:
            break
        }
    }

    /// Writes the command line, CRLF included, after `validate()`. Returns the bytes written.
    @discardableResult
    package func encode(into buffer: inout ByteBuffer) throws(SMTPError) -> Int {
        try validate()
        let start = buffer.writerIndex
        writeValidated(into: &buffer)
        return buffer.writerIndex - start
    }

    /// Writes the command line, CRLF included, for a command `validate()` accepted.
    package func writeValidated(into buffer: inout ByteBuffer) {
        switch self {
        case .ehlo(let domain):
            buffer.writeStaticString("EHLO ")
            buffer.writeString(domain)
        case .helo(let domain):
            buffer.writeStaticString("HELO ")
            buffer.writeString(domain)
        case .startTLS: buffer.writeStaticString("STARTTLS")
        case .auth(let mechanism, let initialResponse):
            buffer.writeStaticString("AUTH ")
            buffer.writeString(mechanism)
            if let initialResponse {
                buffer.writeStaticString(" ")
                buffer.writeString(initialResponse.isEmpty ? "=" : initialResponse)
            }
        case .authResponse(let line): buffer.writeString(line)
        case .mailFrom(let path, let parameters):
            buffer.writeStaticString("MAIL FROM:<")
            buffer.writeString(path)
            buffer.writeStaticString(">")
            for p in parameters {
                buffer.writeStaticString(" ")
                buffer.writeString(p)
            }
        case .rcptTo(let path, let parameters):
            buffer.writeStaticString("RCPT TO:<")
            buffer.writeString(path)
            buffer.writeStaticString(">")
            for p in parameters {
                buffer.writeStaticString(" ")
                buffer.writeString(p)
            }
        case .data: buffer.writeStaticString("DATA")
        case .noop: buffer.writeStaticString("NOOP")
        case .rset: buffer.writeStaticString("RSET")
        case .quit: buffer.writeStaticString("QUIT")
        }
        buffer.writeStaticString("\r\n")
    }

    private static func checkPath(_ value: String, what: String, stage: SMTPError.Stage, allowEmpty: Bool) throws(SMTPError) {
        try check(value, what: what, stage: stage, allowEmpty: allowEmpty, forbidSpace: false)
        if value.utf8.contains(where: { $0 == UInt8(ascii: "<") || $0 == UInt8(ascii: ">") }) {
            throw SMTPError(
                stage: stage, code: .invalidArgument,
                message: "the \(what) \(SMTPReplyParser.printable(value)) contains '<' or '>'")
        }
    }

    private static func check(
        _ value: String, what: String, stage: SMTPError.Stage, allowEmpty: Bool, forbidSpace: Bool,
        secret: Bool = false
    ) throws(SMTPError) {
        var shown: String { secret ? "" : " \(SMTPReplyParser.printable(value))" }
        if value.isEmpty && !allowEmpty {
            throw SMTPError(stage: stage, code: .invalidArgument, message: "the \(what) is empty")
        }
        // Every character checked is ASCII, and in UTF-8 an ASCII byte is always a character of its own.
        for byte in value.utf8 {
            if byte == 0x0D || byte == 0x0A || byte == 0x00 {
                throw SMTPError(
                    stage: stage, code: .invalidArgument,
                    message: "the \(what)\(shown) contains CR, LF or NUL; nothing was sent")
            }
            if byte < 0x20 || byte == 0x7F || (forbidSpace && byte == 0x20) {
                throw SMTPError(
                    stage: stage, code: .invalidArgument,
                    message: "the \(what)\(shown) contains a control character or space; nothing was sent")
            }
        }
    }
}

extension String {
    package func trimmingCRLF() -> String {
        var s = Substring(self)
        while let last = s.last, last == "\r" || last == "\n" || last == "\r\n" { s = s.dropLast() }
        return String(s)
    }
}
