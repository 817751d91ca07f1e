import Foundation

/// RFC 2047 encoded words: encoding (shortest of B and Q, split at character boundaries) and decoding.
enum EncodedWord {
    /// The longest encoded word RFC 2047 allows.
    static let maxWordLength = 75
    private static let overhead = "=?utf-8?B??=".utf8.count  // 12, same for Q

    /// Characters that may stay literal in a Q-encoded word in every context (RFC 2047 section 5 (3)).
    @inline(__always)
    static func isQSafe(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "/"):
            return true
        default:
            return false
        }
    }

    @inline(__always)
    private static func qCost(_ b: UInt8) -> Int { (isQSafe(b) || b == 0x20) ? 1 : 3 }

    private static func bLength(_ n: Int) -> Int { (n + 2) / 3 * 4 }

    /// Encodes `text` as a list of encoded words. The first word is at most `firstMax` characters
    /// long (at least 16 is used), the others at most 75. Words never split a UTF-8 sequence and
    /// split a grapheme cluster only when a single cluster does not fit one word.
    static func encode(_ text: String, firstMax: Int = maxWordLength) -> [String] {
        let bytes = Array(text.utf8)
        let qTotal = bytes.reduce(0) { $0 + qCost($1) }
        let useQ = qTotal <= bLength(bytes.count)
        var words: [String] = []
        var chunk: [UInt8] = []
        var chunkQ = 0
        var limit = max(16, min(firstMax, maxWordLength))

        func cost(_ bytes: Int, _ q: Int) -> Int { overhead + (useQ ? q : bLength(bytes)) }
        func flush() {
            guard !chunk.isEmpty else { return }
            words.append(makeWord(chunk, q: useQ))
            chunk.removeAll(keepingCapacity: true)
            chunkQ = 0
            limit = maxWordLength
        }
        func add(_ piece: [UInt8], splittable: Bool) {
            let pq = piece.reduce(0) { $0 + qCost($1) }
            if cost(chunk.count + piece.count, chunkQ + pq) <= limit {
                chunk += piece
                chunkQ += pq
                return
            }
            flush()
            // A piece that does not fit the short first word starts a full-length word instead
            // (the header writer folds before it).
            if cost(piece.count, pq) > limit { limit = maxWordLength }
            if cost(piece.count, pq) <= limit {
                chunk = piece
                chunkQ = pq
                return
            }
            // A grapheme cluster too large for one word: split it at scalar boundaries.
            precondition(splittable, "a single Unicode scalar always fits an encoded word")
            let s = String(decoding: piece, as: UTF8.self)
            for scalar in s.unicodeScalars {
                add(Array(String(scalar).utf8), splittable: false)
            }
        }
        for ch in text {
            add(Array(String(ch).utf8), splittable: true)
        }
        flush()
        if words.isEmpty { words.append(useQ ? "=?utf-8?Q??=" : "=?utf-8?B??=") }
        return words
    }

    private static let hex = Array("0123456789ABCDEF".utf8)

    private static func makeWord(_ bytes: [UInt8], q: Bool) -> String {
        var out = Array("=?utf-8?".utf8)
        if q {
            out += Array("Q?".utf8)
            for b in bytes {
                if b == 0x20 {
                    out.append(UInt8(ascii: "_"))
                } else if isQSafe(b) {
                    out.append(b)
                } else {
                    out.append(UInt8(ascii: "="))
                    out.append(hex[Int(b >> 4)])
                    out.append(hex[Int(b & 0xF)])
                }
            }
        } else {
            out += Array("B?".utf8)
            out += Base64.encode(bytes)
        }
        out += Array("?=".utf8)
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: Decoding

    /// Decodes one encoded word (`=?charset?B|Q?text?=`); nil when `word` is not one.
    static func decodeWord(_ word: Substring) -> String? {
        guard word.hasPrefix("=?"), word.hasSuffix("?="), word.count >= 8 else { return nil }
        let inner = word.dropFirst(2).dropLast(2)
        let parts = inner.split(separator: "?", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var charset = parts[0].lowercased()
        if let star = charset.firstIndex(of: "*") { charset = String(charset[..<star]) }  // RFC 2231 language
        let encoding = parts[1].uppercased()
        let payload = Array(parts[2].utf8)
        let bytes: [UInt8]
        switch encoding {
        case "B":
            guard let d = Data(base64Encoded: String(decoding: payload, as: UTF8.self), options: .ignoreUnknownCharacters)
            else { return nil }
            bytes = Array(d)
        case "Q":
            var out: [UInt8] = []
            var i = 0
            while i < payload.count {
                let b = payload[i]
                if b == UInt8(ascii: "_") {
                    out.append(0x20)
                } else if b == UInt8(ascii: "="), i + 2 < payload.count,
                    let v = UInt8(String(decoding: payload[(i + 1)...(i + 2)], as: UTF8.self), radix: 16)
                {
                    out.append(v)
                    i += 2
                } else {
                    out.append(b)
                }
                i += 1
            }
            bytes = out
        default:
            return nil
        }
        return decodeCharset(bytes, charset)
    }

    static func decodeCharset(_ bytes: [UInt8], _ charset: String) -> String? {
        switch charset {
        case "utf-8", "utf8", "us-ascii", "ascii":
            return String(decoding: bytes, as: UTF8.self)
        case "iso-8859-1", "latin1", "iso8859-1":
            return String(bytes.map { Character(Unicode.Scalar($0)) })
        case "windows-1252", "cp1252":
            return String(data: Data(bytes), encoding: .windowsCP1252)
        case "iso-2022-jp":
            return String(data: Data(bytes), encoding: .iso2022JP)
        case "shift_jis", "shift-jis", "sjis":
            return String(data: Data(bytes), encoding: .shiftJIS)
        case "euc-jp":
            return String(data: Data(bytes), encoding: .japaneseEUC)
        default:
            return String(data: Data(bytes), encoding: .utf8) ?? String(bytes.map { Character(Unicode.Scalar($0)) })
        }
    }

    /// Decodes encoded words in an unstructured header value; whitespace between adjacent
    /// encoded words is dropped (RFC 2047 section 6.2).
    static func decodeUnstructured(_ value: String) -> String {
        guard value.contains("=?") else { return value }
        var result = ""
        var pendingSpace = ""
        var lastWasEncoded = false
        var i = value.startIndex
        while i < value.endIndex {
            if value[i] == " " || value[i] == "\t" {
                var j = i
                while j < value.endIndex, value[j] == " " || value[j] == "\t" { j = value.index(after: j) }
                pendingSpace = String(value[i..<j])
                i = j
                continue
            }
            var j = i
            while j < value.endIndex, value[j] != " ", value[j] != "\t" { j = value.index(after: j) }
            let word = value[i..<j]
            if let decoded = decodeWord(word) {
                if !lastWasEncoded { result += pendingSpace }
                result += decoded
                lastWasEncoded = true
            } else {
                result += pendingSpace
                result += word
                lastWasEncoded = false
            }
            pendingSpace = ""
            i = j
        }
        return result + pendingSpace
    }
}
