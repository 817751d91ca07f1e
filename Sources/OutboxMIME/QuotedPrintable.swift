/// Quoted-printable (RFC 2045 section 6.7) for text whose line breaks are CRLF.
///
/// Output lines are at most 76 characters; trailing white space is encoded; a line starting
/// with "From " or "." has its first character encoded so mbox and SMTP tools cannot alter it.
enum QuotedPrintable {
    private static let hex = Array("0123456789ABCDEF".utf8)
    static let maxLine = 76

    /// Encodes `bytes`. A CRLF pair is a hard line break; a lone CR or LF is encoded.
    static func encode(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 8 + 16)
        var col = 0
        var i = 0
        let n = bytes.count

        func emit(_ piece: [UInt8], _ out: inout [UInt8], _ col: inout Int, reserveForSoftBreak: Bool) {
            // Keep room for the "=" of a soft break unless this piece ends the line.
            let limit = reserveForSoftBreak ? maxLine - 1 : maxLine
            if col + piece.count > limit {
                out.append(UInt8(ascii: "="))
                out.append(13)
                out.append(10)
                col = 0
            }
            out += piece
            col += piece.count
        }

        while i < n {
            let b = bytes[i]
            if b == 13, i + 1 < n, bytes[i + 1] == 10 {
                out.append(13)
                out.append(10)
                col = 0
                i += 2
                continue
            }
            let atLineEnd = i + 1 == n || (bytes[i + 1] == 13 && i + 2 < n && bytes[i + 2] == 10)
            let atLineStart = col == 0 && (i == 0 || bytes[i - 1] == 10)
            var literal: Bool
            switch b {
            case 33...60, 62...126: literal = true
            case 32, 9: literal = !atLineEnd
            default: literal = false
            }
            if literal, atLineStart {
                if b == UInt8(ascii: ".") { literal = false }
                if b == UInt8(ascii: "F"), i + 4 < n, bytes[i + 1] == UInt8(ascii: "r"), bytes[i + 2] == UInt8(ascii: "o"),
                    bytes[i + 3] == UInt8(ascii: "m"), bytes[i + 4] == 32
                {
                    literal = false
                }
            }
            let piece: [UInt8] = literal ? [b] : [UInt8(ascii: "="), hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            emit(piece, &out, &col, reserveForSoftBreak: !atLineEnd)
            i += 1
        }
        return out
    }
}
