import Foundation
import Testing

@testable import OutboxMIME

/// Serialises messages, checks the wire format and compares Python's parse with the input.
enum RoundTrip {
    static func serialize(_ m: any MailContent, _ options: MIMEEncodingOptions = .init()) async throws -> [UInt8] {
        try await m.byteStream(options: options).collect()
    }

    /// Round-trips `messages` through one python3 process and compares everything.
    static func verify(
        _ messages: [Message], options: MIMEEncodingOptions = .init(),
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [PythonParser.PyMessage] {
        var wire: [[UInt8]] = []
        for m in messages {
            let bytes = try await serialize(m, options)
            let r = WireCheck.check(bytes)
            #expect(r.longestLine <= 998, "a line is \(r.longestLine) octets", sourceLocation: sourceLocation)
            #expect(!r.bareLineEnd, "bare CR or LF in output", sourceLocation: sourceLocation)
            #expect(r.longestHeaderLine <= 78, "a header line is \(r.longestHeaderLine) characters", sourceLocation: sourceLocation)
            if !options.smtpUTF8 {
                #expect(!r.nonASCIIHeader, "non-ASCII header without SMTPUTF8", sourceLocation: sourceLocation)
            }
            if !options.smtpUTF8 && !options.allow8BitMIME {
                #expect(bytes.allSatisfy { $0 < 0x80 }, "8-bit data without 8BITMIME", sourceLocation: sourceLocation)
            }
            wire.append(bytes)
        }
        let parsed = try PythonParser.parse(wire)
        for (m, p) in zip(messages, parsed) {
            compare(m, p, options: options, sourceLocation: sourceLocation)
        }
        return parsed
    }

    static func expectedAddresses(_ list: [Address], _ options: MIMEEncodingOptions) -> [PythonParser.PyAddress] {
        list.map { a in
            PythonParser.PyAddress(
                name: a.displayName ?? "",
                addr: options.smtpUTF8 ? a.mailbox : ((try? a.asciiMailbox()) ?? a.mailbox))
        }
    }

    static func squeeze(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.filter { $0 != " " && $0 != "\t" }))
    }

    static func firstDifference(_ a: String?, _ b: String) -> String {
        guard let a else { return "missing" }
        let x = Array(a.unicodeScalars)
        let y = Array(b.unicodeScalars)
        var i = 0
        while i < min(x.count, y.count), x[i] == y[i] { i += 1 }
        func around(_ s: [Unicode.Scalar]) -> String {
            s[max(0, i - 10)..<min(s.count, i + 10)].map { $0.escaped(asASCII: true) }.joined()
        }
        return "at scalar \(i) of \(x.count)/\(y.count): got \(around(x)) want \(around(y))"
    }

    static func compare(
        _ m: Message, _ p: PythonParser.PyMessage, options: MIMEEncodingOptions, sourceLocation: SourceLocation
    ) {
        // Python's BytesParser reports raw UTF-8 (RFC 6532) header bytes as defects; they are expected with SMTPUTF8.
        let defects = p.defects.filter {
            !(options.smtpUTF8 && ($0.hasSuffix("UndecodableBytesDefect") || $0.hasSuffix("NonASCIILocalPartDefect")))
        }
        #expect(defects.isEmpty, "parser defects: \(defects)", sourceLocation: sourceLocation)
        #expect(p.subject == m.subject, sourceLocation: sourceLocation)
        for (header, got, want) in [
            ("from", p.from, [m.from]), ("to", p.to, m.to), ("cc", p.cc, m.cc), ("reply-to", p.replyTo, m.replyTo),
            ("sender", p.sender, m.sender.map { [$0] } ?? []),
        ] {
            let expected = expectedAddresses(want, options)
            // Addresses from the default policy's parser; its display names only up to white space
            // (it keeps white space between adjacent encoded words, against RFC 2047 section 6.2).
            #expect((got ?? []).map(\.addr) == expected.map(\.addr), "\(header) addresses", sourceLocation: sourceLocation)
            #expect(
                (got ?? []).map { squeeze($0.name) } == expected.map { squeeze($0.name) }, "\(header) names (default policy)",
                sourceLocation: sourceLocation)
            // Exact display names from the RFC 2047 decoder.
            #expect((p.rfcNames[header] ?? []) == expected.map(\.name), "\(header) display names", sourceLocation: sourceLocation)
        }
        #expect(!p.hasBcc, "Bcc written to the headers", sourceLocation: sourceLocation)
        #expect(p.messageID == m.messageID, sourceLocation: sourceLocation)
        #expect(p.date != nil, sourceLocation: sourceLocation)
        let bodies = p.parts.filter { $0.filename == nil }
        if let text = m.text {
            let got = bodies.first { $0.contentType == "text/plain" }?.text
            #expect(
                got == WireCheck.normalizedText(text), "text body differs: \(firstDifference(got, WireCheck.normalizedText(text)))",
                sourceLocation: sourceLocation)
        }
        if let html = m.html {
            let got = bodies.first { $0.contentType == "text/html" }?.text
            #expect(got == WireCheck.normalizedText(html), "html body differs", sourceLocation: sourceLocation)
        }
        for a in m.attachments {
            guard let part = p.parts.first(where: { $0.filename == a.filename }) else {
                Issue.record("attachment \(a.filename) not found; parts: \(p.parts.map { $0.filename ?? "-" })", sourceLocation: sourceLocation)
                continue
            }
            #expect(part.contentType == a.contentType.lowercased(), sourceLocation: sourceLocation)
            #expect(part.disposition == (a.isInline ? "inline" : "attachment"), sourceLocation: sourceLocation)
            if let cid = a.contentID { #expect(part.cid == "<\(cid)>", sourceLocation: sourceLocation) }
            if case .data(let bytes) = a.source {
                #expect(part.length == bytes.count, sourceLocation: sourceLocation)
                #expect(part.sha256 == SHA256.hex(bytes), "attachment \(a.filename) bytes differ", sourceLocation: sourceLocation)
            }
        }
    }
}
