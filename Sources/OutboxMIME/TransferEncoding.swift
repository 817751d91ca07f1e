/// Choice of Content-Transfer-Encoding from the bytes of a part (RFC 2045, RFC 6152).
enum TransferEncoding {
    /// The longest line (without CRLF) SMTP allows.
    static let maxLineOctets = 998

    /// Turns CRLF, lone CR and lone LF into CRLF and ends non-empty text with CRLF.
    static func normalizeLineEnds(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 40 + 2)
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 13 {
                out += [13, 10]
                if i + 1 < bytes.count, bytes[i + 1] == 10 { i += 1 }
            } else if b == 10 {
                out += [13, 10]
            } else {
                out.append(b)
            }
            i += 1
        }
        if !out.isEmpty, out.last != 10 { out += [13, 10] }
        return out
    }

    struct Stats {
        var maxLine = 0
        var nonASCII = 0
        var hasNUL = false
        var bareCRorLF = false
        var endsWithCRLF = true
    }

    static func stats(_ bytes: [UInt8]) -> Stats {
        var s = Stats()
        var line = 0
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b == 13 {
                if i + 1 < n, bytes[i + 1] == 10 {
                    s.maxLine = max(s.maxLine, line)
                    line = 0
                    i += 2
                    continue
                }
                s.bareCRorLF = true
            } else if b == 10 {
                s.bareCRorLF = true
            } else if b == 0 {
                s.hasNUL = true
            } else if b >= 0x80 {
                s.nonASCII += 1
            }
            line += 1
            i += 1
        }
        s.maxLine = max(s.maxLine, line)
        s.endsWithCRLF = n == 0 || (n >= 2 && bytes[n - 2] == 13 && bytes[n - 1] == 10)
        return s
    }

    /// Text (CRLF line ends): 7bit when ASCII with short lines, 8bit when allowed and lines fit,
    /// else the shorter of quoted-printable and base64.
    static func encodeText(_ bytes: [UInt8], allow8Bit: Bool) -> (String, [UInt8]) {
        let s = stats(bytes)
        let linesOK = s.maxLine <= maxLineOctets && !s.hasNUL && !s.bareCRorLF
        if linesOK, s.nonASCII == 0 { return ("7bit", bytes) }
        if linesOK, allow8Bit { return ("8bit", bytes) }
        let base64Length = (bytes.count + 2) / 3 * 4 * 78 / 76
        // Quoted-printable is at most 3x; skip computing it when it cannot win.
        if s.nonASCII * 2 < base64Length - bytes.count {
            let qp = QuotedPrintable.encode(bytes)
            if qp.count <= base64Length { return ("quoted-printable", qp) }
        }
        return ("base64", Base64.encodeLines(bytes))
    }

    /// An attachment held in memory: 7bit for ASCII text with CRLF lines that fit (kept exact),
    /// otherwise base64.
    static func encodeBinary(_ bytes: [UInt8], isText: Bool) -> (String, [UInt8]) {
        if isText {
            let s = stats(bytes)
            if s.nonASCII == 0, !s.hasNUL, !s.bareCRorLF, s.maxLine <= maxLineOctets, s.endsWithCRLF,
                !bytes.contains(where: { $0 < 0x20 && $0 != 9 && $0 != 10 && $0 != 13 })
            {
                return ("7bit", bytes)
            }
        }
        return ("base64", Base64.encodeLines(bytes))
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return false }
        let first = needle[0]
        var i = 0
        let last = haystack.count - needle.count
        while i <= last {
            if haystack[i] == first, haystack[i..<i + needle.count].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }
}
