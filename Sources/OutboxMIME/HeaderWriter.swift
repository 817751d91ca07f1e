import Foundation

/// Writes one header field, folding between tokens so that lines stay within 78 characters
/// where the tokens allow it (RFC 5322 section 2.2.3); a token is never split.
struct HeaderWriter {
    static let foldWidth = 78
    private(set) var bytes: [UInt8]
    private(set) var column: Int
    /// False until a token is on the current line (no fold before the first token).
    private var lineHasToken = false

    init(_ name: String) {
        bytes = Array(name.utf8) + [UInt8(ascii: ":")]
        column = bytes.count
    }

    /// Room left on the current line for a token after a space.
    var available: Int { HeaderWriter.foldWidth - column - 1 }

    /// The longest next token that keeps lines within 78 characters (folding when needed).
    var room: Int { lineHasToken ? max(available, HeaderWriter.foldWidth - 1) : available }

    /// Appends ` token`, folding before it when the line would pass 78 characters; `reserve`
    /// counts characters that will be glued after it (a `,` or `;`).
    mutating func add(_ token: String, reserve: Int = 0) {
        let n = token.utf8.count
        if lineHasToken, column + 1 + n + reserve > HeaderWriter.foldWidth {
            bytes += [13, 10, 32]
            column = 1
        } else {
            bytes.append(32)
            column += 1
        }
        bytes += token.utf8
        column += n
        lineHasToken = true
    }

    /// Appends text directly after the previous token (e.g. `,` or `;`), never folding.
    mutating func glue(_ text: String) {
        bytes += text.utf8
        column += text.utf8.count
    }

    /// Appends tokens separated by `separator` (glued to the token before it).
    mutating func addSeparated(_ tokens: [String], by separator: String) {
        for (i, t) in tokens.enumerated() {
            let last = i == tokens.count - 1
            add(t, reserve: last ? 0 : separator.utf8.count)
            if !last { glue(separator) }
        }
    }

    /// The header field with its CRLF.
    func finished() -> [UInt8] { bytes + [13, 10] }
}

extension HeaderWriter {
    /// An unstructured header (Subject, custom headers): plain words when that is exact and
    /// foldable, otherwise RFC 2047 encoded words.
    static func unstructured(_ name: String, _ value: String) -> [UInt8] {
        var w = HeaderWriter(name)
        let printable = value.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
        let words = value.split(separator: " ", omittingEmptySubsequences: false)
        if printable, !value.contains("=?"), !words.contains(where: \.isEmpty),
            words.allSatisfy({ $0.utf8.count <= foldWidth - 1 }), words[0].utf8.count <= w.available
        {
            for word in words { w.add(String(word)) }
        } else if value.isEmpty {
            w.glue(" ")
        } else {
            for word in EncodedWord.encode(value, firstMax: w.available) { w.add(word) }
        }
        return w.finished()
    }

    /// An address-list header.
    static func addresses(_ name: String, _ list: [Address], options: MIMEEncodingOptions) throws(MIMEError) -> [UInt8] {
        var w = HeaderWriter(name)
        for (i, a) in list.enumerated() {
            let last = i == list.count - 1
            let tokens = try a.headerTokens(options: options, firstAvailable: w.available, firstRoom: w.room)
            for (j, t) in tokens.enumerated() { w.add(t, reserve: !last && j == tokens.count - 1 ? 1 : 0) }
            if !last { w.glue(",") }
        }
        return w.finished()
    }

    /// A header whose value is a list of message IDs (References, In-Reply-To).
    static func messageIDs(_ name: String, _ ids: [String]) throws(MIMEError) -> [UInt8] {
        var w = HeaderWriter(name)
        for id in ids { w.add(try Message.normalizedMessageID(id)) }
        return w.finished()
    }

    /// `Name: value; param=...` with MIME parameters.
    static func parameterized(_ name: String, _ value: String, _ params: [(String, String)]) -> [UInt8] {
        var w = HeaderWriter(name)
        let tokens = [value] + params.flatMap { MIMEParams.tokens($0.0, $0.1) }
        w.addSeparated(tokens, by: ";")
        return w.finished()
    }
}

/// MIME parameters (RFC 2045) with RFC 2231 encoding and continuations for non-ASCII or long values.
enum MIMEParams {
    static func isTokenChar(_ b: UInt8) -> Bool {
        b > 32 && b < 127 && !Array("()<>@,;:\\\"/[]?=".utf8).contains(b)
    }

    private static func isAttributeChar(_ b: UInt8) -> Bool {
        isTokenChar(b) && b != UInt8(ascii: "*") && b != UInt8(ascii: "'") && b != UInt8(ascii: "%")
    }

    private static let hex = Array("0123456789ABCDEF".utf8)

    /// The `key=value` tokens for one parameter; several (`key*0*=`, `key*1*=`...) when it is long.
    static func tokens(_ key: String, _ value: String) -> [String] {
        let bytes = Array(value.utf8)
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            var quoted = "\""
            for c in value {
                if c == "\"" || c == "\\" { quoted.append("\\") }
                quoted.append(c)
            }
            quoted.append("\"")
            if key.utf8.count + 1 + quoted.utf8.count <= 76 { return ["\(key)=\(quoted)"] }
        }
        // RFC 2231: charset'language'percent-encoded, split into continuations.
        var pieces: [String] = []
        var current = "utf-8''"
        let maxPiece = 60
        for b in bytes {
            let enc = isAttributeChar(b) ? String(UnicodeScalar(b)) : "%" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 0xF)]], as: UTF8.self)
            if current.utf8.count + enc.utf8.count > maxPiece {
                pieces.append(current)
                current = ""
            }
            current += enc
        }
        pieces.append(current)
        if pieces.count == 1 { return ["\(key)*=\(pieces[0])"] }
        return pieces.enumerated().map { "\(key)*\($0.offset)*=\($0.element)" }
    }

    /// The legacy `name="=?utf-8?...?="` form that clients without RFC 2231 read, as tokens
    /// (the quoted string may be folded between encoded words).
    static func encodedWordTokens(_ key: String, _ value: String) -> [String] {
        var words = EncodedWord.encode(value, firstMax: 60)
        words[0] = "\(key)=\"" + words[0]
        words[words.count - 1] += "\""
        return words
    }
}

/// RFC 5322 date-time, e.g. `Wed, 25 Nov 2026 21:07:28 +0000` (always UTC).
/// RFC 5322 §3.3 dates in UTC (`Mon, 7 Dec 2026 04:15:15 +0000`), without a DateFormatter.
public enum RFC5322Date {
    private static let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// `date` as an RFC 5322 date-time in UTC, to the second.
    public static func format(_ date: Date) -> String {
        let t = Int64(date.timeIntervalSince1970.rounded(.down))
        var dayCount = t / 86400
        var secs = t % 86400
        if secs < 0 {
            secs += 86400
            dayCount -= 1
        }
        let weekday = days[Int(((dayCount % 7) + 7) % 7)]
        // Civil from days (Howard Hinnant).
        let z = dayCount + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(weekday), \(d) \(months[Int(m - 1)]) \(y) \(two(secs / 3600)):\(two(secs / 60 % 60)):\(two(secs % 60)) +0000"
    }
}
