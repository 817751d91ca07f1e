import Foundation

/// A finished RFC 5322 message (an `.eml`), sent as it is except that Bcc fields are removed,
/// Message-ID and Date are added when absent, and bare LF line ends become CRLF.
/// From a file path, only the header section is read into memory; the body is streamed.
public struct RawMessage: MailContent {
    /// One header field: its name and its raw lines (with CRLF line ends).
    struct Field: Sendable {
        var name: String
        var raw: [UInt8]
        /// The unfolded value (leading white space removed), decoded as UTF-8.
        var value: String {
            guard let colon = raw.firstIndex(of: UInt8(ascii: ":")) else { return "" }
            let v = raw[(colon + 1)...].filter { $0 != 13 && $0 != 10 }
            return String(decoding: v, as: UTF8.self).trimmingCharacters(in: .whitespaces)
        }
    }

    enum Body: Sendable {
        case bytes([UInt8])
        case file(path: String, offset: Int)
    }

    /// The header section as it will be sent (Bcc removed, Message-ID and Date added), ending
    /// with the blank line.
    public let headerBytes: [UInt8]
    let fields: [Field]
    let body: Body
    /// The envelope from the headers, parsed once: the headers never change, and a sender sends
    /// the same message more than once (retries) and asks for it every time.
    let parsedEnvelope: Result<Envelope, MIMEError>
    /// True when a header has non-ASCII bytes or an envelope address a non-ASCII local part.
    public let requiresSMTPUTF8: Bool

    /// The largest header section accepted (1 MiB).
    public static let maxHeaderBytes = 1 << 20

    /// Parses the header section of a message in memory. Throws
    /// ``MIMEError/Code/invalidRawMessage`` when it has no header section or a malformed line.
    public init(bytes: [UInt8]) throws(MIMEError) {
        let (fields, bodyOffset) = try RawMessage.parseHeader(bytes)
        self.fields = fields
        self.headerBytes = RawMessage.outputHeader(fields)
        let rest = bodyOffset.map { Array(bytes[$0...]) } ?? []
        var normalized = TransferEncoding.normalizeBareLF(rest)
        if !normalized.isEmpty, normalized.last != 10 { normalized += [13, 10] }
        self.body = .bytes(normalized)
        (self.parsedEnvelope, self.requiresSMTPUTF8) = RawMessage.envelopeAndUTF8(fields: fields, headerBytes: headerBytes)
    }

    /// Reads the header section of the `.eml` at `filePath` (the body is streamed when sent). Throws
    /// ``MIMEError/Code/fileUnreadable`` when the file cannot be read and
    /// ``MIMEError/Code/invalidRawMessage`` when its header section is malformed or over ``maxHeaderBytes``.
    public init(filePath: String) throws(MIMEError) {
        guard FileInfo.isReadableFile(filePath) else {
            throw MIMEError(.fileUnreadable, "the message file \(filePath) does not exist or cannot be read")
        }
        let reader = try FileReader(path: filePath, offset: 0)
        var head: [UInt8] = []
        var found = false
        while head.count <= RawMessage.maxHeaderBytes {
            let chunk = try reader.read(max: 64 * 1024)
            if chunk.isEmpty { break }
            let searchFrom = max(0, head.count - 3)
            head += chunk
            if RawMessage.headerEnd(head, from: searchFrom) != nil {
                found = true
                break
            }
        }
        guard found || head.count <= RawMessage.maxHeaderBytes else {
            throw MIMEError(.invalidRawMessage, "the header section of \(filePath) is longer than 1 MiB")
        }
        let (fields, bodyOffset) = try RawMessage.parseHeader(head)
        self.fields = fields
        self.headerBytes = RawMessage.outputHeader(fields)
        self.body = .file(path: filePath, offset: bodyOffset ?? head.count)
        (self.parsedEnvelope, self.requiresSMTPUTF8) = RawMessage.envelopeAndUTF8(fields: fields, headerBytes: headerBytes)
    }

    /// The offset just past the blank line ending the header section (CRLF or bare LF line ends),
    /// or nil when there is none.
    package static func headerEnd(_ b: [UInt8], from: Int) -> Int? {
        var i = from
        while i < b.count {
            if b[i] == 10 {
                if i + 1 < b.count, b[i + 1] == 10 { return i + 2 }
                if i + 2 < b.count, b[i + 1] == 13, b[i + 2] == 10 { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    static func parseHeader(_ bytes: [UInt8]) throws(MIMEError) -> ([Field], Int?) {
        if bytes.first == 13 || bytes.first == 10 {
            // No header section at all.
            throw MIMEError(.invalidRawMessage, "the message has no header section (it starts with a blank line)")
        }
        let end = headerEnd(bytes, from: 0)
        let headerSlice = bytes[..<(end ?? bytes.count)]
        var fields: [Field] = []
        var lineStart = headerSlice.startIndex
        while lineStart < headerSlice.endIndex {
            var lineEnd = lineStart
            while lineEnd < headerSlice.endIndex, headerSlice[lineEnd] != 10 { lineEnd += 1 }
            var content = Array(headerSlice[lineStart..<lineEnd])
            if content.last == 13 { content.removeLast() }
            lineStart = lineEnd + 1
            if content.isEmpty { break }  // the blank line
            if content[0] == 32 || content[0] == 9 {
                guard !fields.isEmpty else {
                    throw MIMEError(.invalidRawMessage, "the message starts with a continuation line")
                }
                fields[fields.count - 1].raw += content + [13, 10]
                continue
            }
            guard let colon = content.firstIndex(of: UInt8(ascii: ":")), colon > 0,
                content[..<colon].allSatisfy({ $0 > 32 && $0 < 127 })
            else {
                let line = String(decoding: content.prefix(60), as: UTF8.self)
                throw MIMEError(.invalidRawMessage, "the header line \"\(line.debugEscaped)\" is not \"Name: value\"")
            }
            fields.append(Field(name: String(decoding: content[..<colon], as: UTF8.self), raw: content + [13, 10]))
        }
        guard !fields.isEmpty else { throw MIMEError(.invalidRawMessage, "the message has no header fields") }
        return (fields, end)
    }

    static func outputHeader(_ fields: [Field]) -> [UInt8] {
        var out: [UInt8] = []
        let names = Set(fields.map { $0.name.lowercased() })
        if !names.contains("date") { out += Array("Date: \(RFC5322Date.format(Date()))\r\n".utf8) }
        if !names.contains("message-id") {
            let from = fields.first { $0.name.lowercased() == "from" }
            let domain = from.flatMap { try? Address.parseList($0.value).first }.map { String($0.domain) } ?? ""
            out += Array("Message-ID: \(Message.makeMessageID(domain: domain))\r\n".utf8)
        }
        for f in fields where f.name.lowercased() != "bcc" { out += f.raw }
        out += [13, 10]
        return out
    }

    private static func addresses(_ name: String, in fields: [Field]) throws(MIMEError) -> [Address] {
        var out: [Address] = []
        for f in fields where f.name.lowercased() == name { out += try Address.parseList(f.value) }
        return out
    }

    private static func makeEnvelope(_ fields: [Field]) throws(MIMEError) -> Envelope {
        guard let from = try addresses("from", in: fields).first else {
            throw MIMEError(.missingField, "the message has no From header")
        }
        var seen = Set<String>()
        var recipients: [String] = []
        for a in try addresses("to", in: fields) + addresses("cc", in: fields) + addresses("bcc", in: fields)
        where seen.insert(a.mailbox.lowercased()).inserted {
            recipients.append(a.mailbox)
        }
        guard !recipients.isEmpty else {
            throw MIMEError(.missingField, "the message has no recipient in To, Cc or Bcc")
        }
        return Envelope(from: from.mailbox, recipients: recipients)
    }

    private static func envelopeAndUTF8(fields: [Field], headerBytes: [UInt8]) -> (Result<Envelope, MIMEError>, Bool) {
        let envelope: Result<Envelope, MIMEError>
        do throws(MIMEError) {
            envelope = .success(try makeEnvelope(fields))
        } catch {
            envelope = .failure(error)
        }
        if headerBytes.contains(where: { $0 >= 0x80 }) { return (envelope, true) }
        guard case .success(let e) = envelope else { return (envelope, false) }
        return (envelope, ([e.from] + e.recipients).contains { !Address.localPartIsASCII($0) })
    }

    /// From the `From` header, and `To` + `Cc` + `Bcc`. Throws ``MIMEError/Code/missingField`` when
    /// there is no From or no recipient.
    public func envelope() throws(MIMEError) -> Envelope {
        try parsedEnvelope.get()
    }

    /// The header section as sent, then the body with CRLF line ends.
    public func byteStream(options: MIMEEncodingOptions) -> MessageByteStream {
        let head = headerBytes
        let body = body
        return MessageByteStream { () throws(MIMEError) -> [Segment] in
            switch body {
            case .bytes(let b): return [.bytes(head + b)]
            case .file(let path, let offset): return [.bytes(head), .rawFile(path: path, offset: offset)]
            }
        }
    }
}

extension Address {
    static func localPartIsASCII(_ mailbox: String) -> Bool {
        let local = mailbox.lastIndex(of: "@").map { mailbox[..<$0] } ?? Substring(mailbox)
        return local.utf8.allSatisfy { $0 < 0x80 }
    }
}

extension TransferEncoding {
    /// Turns a LF not preceded by CR into CRLF; everything else unchanged.
    static func normalizeBareLF(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.contains(10) else { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 40)
        var prev: UInt8 = 0
        for b in bytes {
            if b == 10, prev != 13 { out.append(13) }
            out.append(b)
            prev = b
        }
        return out
    }
}
