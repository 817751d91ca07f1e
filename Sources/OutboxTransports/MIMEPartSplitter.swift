import Foundation
import OutboxMIME

/// A leaf part taken out of a message by ``MIMEPartSplitter``: its content, decoded, in a
/// temporary file.
struct SpooledPart: Sendable {
    var name: String
    /// `type/subtype`, without parameters.
    var contentType: String
    /// The Content-ID without its angle brackets.
    var contentID: String?
    var isInline: Bool
    var path: String
    /// The decoded size in octets.
    var size: Int
}

/// Splits a MIME message, read as a stream, into a draft (the message without its large leaf
/// parts, small enough for one Graph request) and those parts, decoded into temporary files.
///
/// Memory stays bounded whatever the message's size: the draft (at most `draftLimit` bytes plus
/// one part's ``removalThreshold``), one line of at most ``maxLinePiece`` bytes, and the decoder's
/// output buffer. Lines are taken as they come (CRLF, or a bare LF kept as it is); a longer line
/// is handled in pieces (only a piece that starts a line can be a boundary).
///
/// Which parts are taken out: leaf parts of a multipart (at any depth) that look like
/// attachments (a `Content-Disposition: attachment`, a file name, or a media type other than
/// text/\*), once their encoded body passes ``removalThreshold``. Text bodies and headers stay
/// in the draft, so a message whose kept parts exceed the limit cannot be split (a single-part
/// message never can). A removed part leaves its multipart; a multipart left with no part gets
/// an empty text/plain one (RFC 2046 wants at least one).
///
/// Content-Transfer-Encoding base64 and quoted-printable are decoded while streaming; 7bit, 8bit,
/// binary and anything unknown are taken as they are. The line break before a boundary belongs
/// to the boundary (RFC 2046 §5.1.1) and is not part of the content.
struct MIMEPartSplitter {
    /// Encoded body size from which an attachment-like part is taken out of the draft.
    static let removalThreshold = 128 * 1024
    /// The longest line piece held at once.
    static let maxLinePiece = 8 * 1024

    enum Failure: Error, Equatable {
        /// The draft would stay larger than the limit: nothing more can be taken out.
        case draftTooLarge(multipart: Bool)
        /// A temporary file could not be written.
        case spool(String)
    }

    let draftLimit: Int
    let directory: URL
    private(set) var draft: [UInt8] = []
    private(set) var parts: [SpooledPart] = []
    /// Every temporary file created (removed by ``removeFiles()``).
    private(set) var files: [String] = []
    /// True once a multipart body was seen.
    private(set) var sawMultipart = false

    private var pending: [UInt8] = []
    private var pendingIsContinuation = false
    private var stack: [Multipart] = []
    private var state: State = .headers(delimiterStart: nil)
    private var headerText: [UInt8] = []

    private struct Multipart {
        var boundary: [UInt8]
        var kept = 0
    }

    private struct Leaf {
        var delimiterStart: Int?
        var bodyStart: Int
        var headers: PartHeaders
        var spool: Spool?
    }

    private enum State {
        case headers(delimiterStart: Int?)
        case leaf(Leaf)
        case text
    }

    init(draftLimit: Int, directory: URL = FileManager.default.temporaryDirectory) {
        self.draftLimit = draftLimit
        self.directory = directory
    }

    /// Removes the temporary files (call when the parts were sent, or on failure).
    func removeFiles() {
        for f in files { try? FileManager.default.removeItem(atPath: f) }
    }

    mutating func feed(_ bytes: some Collection<UInt8>) throws(Failure) {
        var i = bytes.startIndex
        while i != bytes.endIndex {
            if let lf = bytes[i...].firstIndex(of: 10) {
                pending.append(contentsOf: bytes[i..<lf])
                var end = LineEnd.lf
                if pending.last == 13 {
                    pending.removeLast()
                    end = .crlf
                }
                let line = pending
                pending.removeAll(keepingCapacity: true)
                let start = !pendingIsContinuation
                pendingIsContinuation = false
                try take(line[...], end, atLineStart: start)
                i = bytes.index(after: lf)
            } else {
                pending.append(contentsOf: bytes[i...])
                i = bytes.endIndex
                if pending.count > Self.maxLinePiece {
                    // A long line: hand on all of it but a final CR (a CRLF is never cut).
                    var keep: [UInt8] = []
                    if pending.last == 13 {
                        keep = [13]
                        pending.removeLast()
                    }
                    let piece = pending
                    pending = keep
                    let start = !pendingIsContinuation
                    pendingIsContinuation = true
                    try take(piece[...], .none, atLineStart: start)
                }
            }
        }
    }

    /// Ends the message: the last line, then any part still open.
    mutating func finish() throws(Failure) {
        if !pending.isEmpty {
            let piece = pending
            pending = []
            try take(piece[...], .none, atLineStart: !pendingIsContinuation)
        }
        if case .leaf(let leaf) = state { try endLeaf(leaf) }
        state = .text
        if draft.count > draftLimit { throw .draftTooLarge(multipart: sawMultipart) }
    }

    // MARK: Lines

    private mutating func take(_ line: ArraySlice<UInt8>, _ end: LineEnd, atLineStart: Bool) throws(Failure) {
        if atLineStart, !stack.isEmpty, line.starts(with: [45, 45]), let (depth, close) = boundary(line) {
            try delimiter(line, end, depth: depth, close: close)
            return
        }
        switch state {
        case .text:
            write(line, end)
        case .headers(let delimiterStart):
            write(line, end)
            if atLineStart, line.isEmpty, end != .none {
                let headers = PartHeaders(headerText)
                headerText = []
                if headers.mediaType.hasPrefix("multipart/"), let b = headers.boundary, !b.isEmpty {
                    stack.append(Multipart(boundary: Array(b.utf8)))
                    sawMultipart = true
                    state = .text
                } else {
                    state = .leaf(Leaf(delimiterStart: delimiterStart, bodyStart: draft.count, headers: headers))
                }
            } else if headerText.count < 256 * 1024 {
                headerText += line
                if end != .none { headerText.append(10) }
            }
        case .leaf(var leaf):
            if let spool = leaf.spool {
                try spool.decode(line, end)
            } else {
                write(line, end)
                if leaf.delimiterStart != nil, leaf.headers.looksLikeAttachment,
                    draft.count - leaf.bodyStart > Self.removalThreshold
                {
                    try spoolOut(&leaf)
                }
            }
            state = .leaf(leaf)
        }
        if draft.count > draftLimit + Self.removalThreshold + Self.maxLinePiece + 256 * 1024 {
            throw .draftTooLarge(multipart: sawMultipart)
        }
    }

    private mutating func delimiter(_ line: ArraySlice<UInt8>, _ end: LineEnd, depth: Int, close: Bool) throws(Failure) {
        if case .leaf(let leaf) = state { try endLeaf(leaf) }
        headerText = []
        stack.removeLast(stack.count - 1 - depth)
        if close {
            if stack[depth].kept == 0 {
                var empty = [45, 45] + stack[depth].boundary
                empty += Array("\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\r\n".utf8)
                draft += empty
            }
            write(line, end)
            stack.removeLast()
            state = .text
        } else {
            let start = draft.count
            write(line, end)
            stack[depth].kept += 1
            state = .headers(delimiterStart: start)
        }
    }

    /// `(depth in the stack, is the close delimiter)` when `line` is a boundary of an open multipart.
    private func boundary(_ line: ArraySlice<UInt8>) -> (Int, Bool)? {
        for depth in stride(from: stack.count - 1, through: 0, by: -1) {
            let b = stack[depth].boundary
            guard line.count >= 2 + b.count, line.dropFirst(2).starts(with: b) else { continue }
            var rest = line.dropFirst(2 + b.count)
            var close = false
            if rest.starts(with: [45, 45]) {
                close = true
                rest = rest.dropFirst(2)
            }
            if rest.allSatisfy({ $0 == 32 || $0 == 9 }) { return (depth, close) }
        }
        return nil
    }

    private mutating func write(_ line: ArraySlice<UInt8>, _ end: LineEnd) {
        draft += line
        draft += end.bytes
    }

    /// Takes the part being read out of the draft: its body so far goes through the decoder
    /// into a new temporary file, the draft is cut back to the part's delimiter line.
    private mutating func spoolOut(_ leaf: inout Leaf) throws(Failure) {
        guard let delimiterStart = leaf.delimiterStart else { return }
        let path = directory.appendingPathComponent("outbox-part-\(UUID().uuidString)").path
        files.append(path)
        let spool = try Spool(path: path, encoding: leaf.headers.transferEncoding)
        var body = draft[leaf.bodyStart...]
        while !body.isEmpty {
            if let lf = body.firstIndex(of: 10) {
                var line = body[..<lf]
                var end = LineEnd.lf
                if line.last == 13 {
                    line = line.dropLast()
                    end = .crlf
                }
                try spool.decode(line, end)
                body = body[(lf + 1)...]
            } else {
                try spool.decode(body, .none)
                body = body[body.endIndex...]
            }
        }
        draft.removeSubrange(delimiterStart...)
        stack[stack.count - 1].kept -= 1
        leaf.spool = spool
    }

    private mutating func endLeaf(_ leaf: Leaf) throws(Failure) {
        guard let spool = leaf.spool else { return }
        let size = try spool.finish()
        let h = leaf.headers
        parts.append(
            SpooledPart(
                name: h.filename ?? "attachment-\(parts.count + 1)\(h.defaultExtension)",
                contentType: h.mediaType, contentID: h.contentID,
                isInline: h.disposition == "inline" || (h.disposition == nil && h.contentID != nil),
                path: spool.path, size: size))
    }
}

enum LineEnd {
    case crlf, lf, none
    var bytes: [UInt8] {
        switch self {
        case .crlf: [13, 10]
        case .lf: [10]
        case .none: []
        }
    }
}

/// The decoded content of one part, written to a file as it comes.
final class Spool {
    let path: String
    private let handle: FileHandle
    private var decoder: TransferDecoder
    private var buffer: [UInt8] = []
    private var size = 0

    init(path: String, encoding: String) throws(MIMEPartSplitter.Failure) {
        guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]),
            let handle = FileHandle(forWritingAtPath: path)
        else {
            throw .spool("cannot create the temporary file \(path)")
        }
        self.path = path
        self.handle = handle
        self.decoder = TransferDecoder(encoding)
    }

    deinit { try? handle.close() }

    func decode(_ line: ArraySlice<UInt8>, _ end: LineEnd) throws(MIMEPartSplitter.Failure) {
        decoder.line(line, end, into: &buffer)
        if buffer.count >= 256 * 1024 { try flush() }
    }

    /// Writes what is left and returns the decoded size.
    func finish() throws(MIMEPartSplitter.Failure) -> Int {
        decoder.finish(into: &buffer)
        try flush()
        try? handle.close()
        return size
    }

    private func flush() throws(MIMEPartSplitter.Failure) {
        guard !buffer.isEmpty else { return }
        do {
            try handle.write(contentsOf: buffer)
        } catch {
            throw .spool("cannot write the temporary file \(path): \(error)")
        }
        size += buffer.count
        buffer.removeAll(keepingCapacity: true)
    }
}

/// A Content-Transfer-Encoding decoder fed line by line. The last line break of a body is
/// held back until more content comes, because the break before a boundary is the boundary's.
struct TransferDecoder {
    enum Kind { case identity, base64, quotedPrintable }
    let kind: Kind
    private var heldBreak: [UInt8] = []
    private var sextets: UInt32 = 0
    private var sextetCount = 0
    private var base64Ended = false
    private var qpCarry: [UInt8] = []

    init(_ encoding: String) {
        switch encoding.lowercased() {
        case "base64": kind = .base64
        case "quoted-printable": kind = .quotedPrintable
        default: kind = .identity
        }
    }

    private static let base64Values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    mutating func line(_ line: ArraySlice<UInt8>, _ end: LineEnd, into out: inout [UInt8]) {
        switch kind {
        case .identity:
            out += heldBreak
            out += line
            heldBreak = end.bytes
        case .base64:
            guard !base64Ended else { return }
            let table = Self.base64Values
            for c in line {
                if c == UInt8(ascii: "=") {
                    base64Ended = true
                    return
                }
                let v = table[Int(c)]
                if v == 0xFF { continue }
                sextets = sextets << 6 | UInt32(v)
                sextetCount += 1
                if sextetCount == 4 {
                    out.append(UInt8(truncatingIfNeeded: sextets >> 16))
                    out.append(UInt8(truncatingIfNeeded: sextets >> 8))
                    out.append(UInt8(truncatingIfNeeded: sextets))
                    sextets = 0
                    sextetCount = 0
                }
            }
        case .quotedPrintable:
            out += heldBreak
            heldBreak = []
            var bytes = qpCarry
            bytes += line
            qpCarry = []
            var soft = false
            if end != .none {
                // Trailing white space is transport padding (RFC 2045 §6.7 rule 3).
                while let last = bytes.last, last == 32 || last == 9 { bytes.removeLast() }
                if bytes.last == UInt8(ascii: "=") {
                    bytes.removeLast()
                    soft = true
                }
            }
            var i = 0
            while i < bytes.count {
                let b = bytes[i]
                if b == UInt8(ascii: "=") {
                    if bytes.count - i < 3 {
                        if end == .none {
                            // The escape goes on in the next piece of this long line.
                            qpCarry = Array(bytes[i...])
                            break
                        }
                    } else if let h = Self.hex(bytes[i + 1]), let l = Self.hex(bytes[i + 2]) {
                        out.append(h << 4 | l)
                        i += 3
                        continue
                    }
                }
                out.append(b)
                i += 1
            }
            if end != .none, !soft { heldBreak = [13, 10] }
        }
    }

    mutating func finish(into out: inout [UInt8]) {
        switch kind {
        case .identity:
            heldBreak = []
        case .base64:
            if sextetCount == 2 {
                out.append(UInt8(truncatingIfNeeded: sextets >> 4))
            } else if sextetCount == 3 {
                out.append(UInt8(truncatingIfNeeded: sextets >> 10))
                out.append(UInt8(truncatingIfNeeded: sextets >> 2))
            }
            sextets = 0
            sextetCount = 0
        case .quotedPrintable:
            out += qpCarry
            qpCarry = []
            heldBreak = []
        }
    }

    private static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 65...70: c - 55
        case 97...102: c - 87
        default: nil
        }
    }
}

/// The headers of one MIME part that decide what happens to it.
struct PartHeaders {
    var mediaType = "text/plain"
    var boundary: String?
    var transferEncoding = "7bit"
    var disposition: String?
    var filename: String?
    var contentID: String?

    init(_ raw: [UInt8]) {
        var fields: [(String, String)] = []
        for line in String(decoding: raw, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty { continue }
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].1 += " " + line.trimmingCharacters(in: .whitespaces)
            } else if let colon = line.firstIndex(of: ":") {
                fields.append((line[..<colon].trimmingCharacters(in: .whitespaces).lowercased(), String(line[line.index(after: colon)...])))
            }
        }
        var nameParameter: String?
        for (name, value) in fields {
            switch name {
            case "content-type":
                let (type, params) = Self.parameters(value)
                if type.contains("/") { mediaType = type }
                boundary = params["boundary"]
                nameParameter = params["name"]
            case "content-transfer-encoding":
                transferEncoding = value.trimmingCharacters(in: .whitespaces).lowercased()
            case "content-disposition":
                let (type, params) = Self.parameters(value)
                disposition = type.isEmpty ? nil : type
                if let f = params["filename"] { filename = f }
            case "content-id":
                var id = value.trimmingCharacters(in: .whitespaces)
                if id.hasPrefix("<"), id.hasSuffix(">") { id = String(id.dropFirst().dropLast()) }
                contentID = id.isEmpty ? nil : id
            default:
                break
            }
        }
        if filename == nil { filename = nameParameter }
        if let f = filename {
            let decoded = HeaderText.decodingEncodedWords(f).trimmingCharacters(in: .whitespaces)
            filename = decoded.isEmpty ? nil : decoded
        }
    }

    /// An attachment rather than a body: a file name, `attachment`, or not text.
    var looksLikeAttachment: Bool {
        disposition == "attachment" || filename != nil || !mediaType.hasPrefix("text/")
    }

    var defaultExtension: String {
        switch mediaType {
        case "message/rfc822": ".eml"
        case "text/plain": ".txt"
        case "text/html": ".html"
        default: ".bin"
        }
    }

    /// `type/subtype; a=b; c="d"` → (lower-cased value, parameters with lower-cased names);
    /// RFC 2231 continuations (`name*0*=`, `name*1=`) and charsets (`name*=utf-8''%C3%A9`) are joined
    /// and decoded.
    static func parameters(_ value: String) -> (String, [String: String]) {
        var pieces: [String] = []
        var current = ""
        var quoted = false
        var escaped = false
        for c in value {
            if escaped {
                current.append(c)
                escaped = false
            } else if c == "\\" && quoted {
                current.append(c)
                escaped = true
            } else if c == "\"" {
                quoted.toggle()
                current.append(c)
            } else if c == ";" && !quoted {
                pieces.append(current)
                current = ""
            } else {
                current.append(c)
            }
        }
        pieces.append(current)
        let type = pieces.removeFirst().trimmingCharacters(in: .whitespaces).lowercased()
        var plain: [String: String] = [:]
        // name -> [(section, extended, value)]
        var sections: [String: [(Int, Bool, String)]] = [:]
        for piece in pieces {
            guard let eq = piece.firstIndex(of: "=") else { continue }
            var key = piece[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            var v = piece[piece.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if v.hasPrefix("\""), v.hasSuffix("\""), v.count >= 2 {
                v = String(v.dropFirst().dropLast())
                var unescaped = ""
                var esc = false
                for c in v {
                    if esc { unescaped.append(c); esc = false } else if c == "\\" { esc = true } else { unescaped.append(c) }
                }
                v = unescaped
            }
            guard key.contains("*") else {
                plain[key] = v
                continue
            }
            let extended = key.hasSuffix("*")
            if extended { key.removeLast() }
            var section = 0
            if let star = key.firstIndex(of: "*") {
                section = Int(key[key.index(after: star)...]) ?? 0
                key = String(key[..<star])
            }
            sections[key, default: []].append((section, extended, v))
        }
        for (key, list) in sections {
            var bytes: [UInt8] = []
            var charset = "utf-8"
            for (i, (_, extended, v)) in list.sorted(by: { $0.0 < $1.0 }).enumerated() {
                var text = Substring(v)
                if extended, i == 0 {
                    let parts = v.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
                    if parts.count == 3 {
                        if !parts[0].isEmpty { charset = String(parts[0]) }
                        text = parts[2]
                    }
                }
                if extended {
                    bytes += percentDecoded(text)
                } else {
                    bytes += Array(text.utf8)
                }
            }
            plain[key] = HeaderText.decode(bytes, charset: charset)
        }
        return (type, plain)
    }

    private static func percentDecoded(_ s: Substring) -> [UInt8] {
        let u = Array(s.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < u.count {
            if u[i] == 37, i + 2 < u.count, let v = UInt8(String(decoding: u[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
                out.append(v)
                i += 3
            } else {
                out.append(u[i])
                i += 1
            }
        }
        return out
    }
}
