import Foundation

/// The server side of the SMTP grammar: command lines as clients send them (RFC 5321 §4.1,
/// RFC 3207, RFC 4954, RFC 3030, RFC 3461) and the replies it writes. Channel-free: bytes in,
/// values out.

/// A reply the listener sends: a code, an enhanced status code (RFC 3463) and text lines.
package struct SMTPServerReply: Sendable, Hashable, CustomStringConvertible {
    package var code: Int
    /// `x.y.z`, written after the code on every line; nil for 220 greetings, 334 and 354.
    package var enhanced: String?
    package var lines: [String]

    package init(_ code: Int, _ enhanced: String?, _ lines: [String]) {
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    package init(_ code: Int, _ enhanced: String?, _ text: String) {
        self.init(code, enhanced, [text])
    }

    /// The wire text, CRLF after every line (`250-` on all but the last).
    package var wire: String {
        var out = ""
        for (i, line) in lines.enumerated() {
            out += String(code)
            out += i == lines.count - 1 ? " " : "-"
            if let enhanced { out += enhanced + (line.isEmpty ? "" : " ") }
            out += line
            out += "\r\n"
        }
        return out
    }

    package var description: String { wire.replacingOccurrences(of: "\r\n", with: " | ").trimmingCharacters(in: .whitespaces) }

    /// True for a 4xx or 5xx reply.
    package var isFailure: Bool { code >= 400 }
}

/// An SMTP `Mail-parameters` / `Rcpt-parameters` list: `KEY[=VALUE]` pairs (keys upper-cased).
package struct SMTPParameters: Sendable, Hashable {
    package var items: [(key: String, value: String?)]

    package static func == (a: SMTPParameters, b: SMTPParameters) -> Bool {
        a.items.count == b.items.count && zip(a.items, b.items).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    package func hash(into hasher: inout Hasher) {
        for item in items {
            hasher.combine(item.key)
            hasher.combine(item.value)
        }
    }

    package subscript(key: String) -> String?? {
        items.first { $0.key == key }.map { $0.value }
    }

    package func has(_ key: String) -> Bool { items.contains { $0.key == key } }
}

/// A command line from a client, parsed.
package enum SMTPServerCommand: Sendable, Hashable {
    case ehlo(String)
    case helo(String)
    case startTLS
    case auth(mechanism: String, initialResponse: String?)
    /// `MAIL FROM:<path>`; the path is empty for the null sender.
    case mail(path: String, parameters: SMTPParameters)
    case rcpt(path: String, parameters: SMTPParameters)
    case data
    /// `BDAT <size> [LAST]` (RFC 3030).
    case bdat(size: Int, last: Bool)
    case rset
    case noop
    case quit
    case vrfy
    case expn
    case help
    /// A verb the listener knows but whose arguments are wrong; the reply says why.
    case invalid(SMTPServerReply)
    /// A verb the listener does not know.
    case unknown(verb: String)

    /// The verb, for logs and metrics (never the arguments: AUTH carries credentials).
    package var verb: String {
        switch self {
        case .ehlo: "EHLO"
        case .helo: "HELO"
        case .startTLS: "STARTTLS"
        case .auth: "AUTH"
        case .mail: "MAIL"
        case .rcpt: "RCPT"
        case .data: "DATA"
        case .bdat: "BDAT"
        case .rset: "RSET"
        case .noop: "NOOP"
        case .quit: "QUIT"
        case .vrfy: "VRFY"
        case .expn: "EXPN"
        case .help: "HELP"
        case .invalid: "INVALID"
        case .unknown(let verb): verb.count <= 16 && verb.allSatisfy({ $0.isLetter }) ? verb.uppercased() : "UNKNOWN"
        }
    }

    /// Parses one command line (without its CRLF). Lenient where RFC 5321 allows it (case of
    /// verbs and keys, a space after `FROM:`), strict where a mistake would change meaning.
    package static func parse(_ line: [UInt8]) -> SMTPServerCommand {
        guard line.allSatisfy({ $0 != 0 }), let text = String(validating: line, as: UTF8.self) else {
            return .invalid(SMTPServerReply(500, "5.5.2", "Syntax error: the command is not UTF-8 text"))
        }
        let verbEnd = text.firstIndex(of: " ") ?? text.endIndex
        let verb = text[..<verbEnd].uppercased()
        let rest = verbEnd < text.endIndex ? String(text[text.index(after: verbEnd)...]) : ""
        let argument = rest.trimmingCharacters(in: CharacterSet(charactersIn: " \t"))
        switch verb {
        case "EHLO", "HELO":
            guard let name = argument.split(separator: " ").first.map(String.init), !name.isEmpty else {
                return .invalid(SMTPServerReply(501, "5.5.4", "Syntax: \(verb) hostname"))
            }
            return verb == "EHLO" ? .ehlo(name) : .helo(name)
        case "STARTTLS":
            return argument.isEmpty ? .startTLS : .invalid(SMTPServerReply(501, "5.5.4", "Syntax: STARTTLS (no parameters)"))
        case "AUTH":
            let parts = argument.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 1 || parts.count == 2 else {
                return .invalid(SMTPServerReply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            }
            return .auth(mechanism: parts[0].uppercased(), initialResponse: parts.count == 2 ? String(parts[1]) : nil)
        case "MAIL":
            guard let (path, parameters) = parsePath(argument, keyword: "FROM:") else {
                return .invalid(SMTPServerReply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]"))
            }
            switch path {
            case .failure(let failure): return .invalid(failure.reply)
            case .success(let p): return .mail(path: p, parameters: parameters)
            }
        case "RCPT":
            guard let (path, parameters) = parsePath(argument, keyword: "TO:") else {
                return .invalid(SMTPServerReply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]"))
            }
            switch path {
            case .failure(let failure): return .invalid(failure.reply)
            case .success(let p):
                if p.isEmpty { return .invalid(SMTPServerReply(501, "5.1.3", "Syntax: RCPT TO:<address> needs an address")) }
                return .rcpt(path: p, parameters: parameters)
            }
        case "DATA":
            return argument.isEmpty ? .data : .invalid(SMTPServerReply(501, "5.5.4", "Syntax: DATA (no parameters)"))
        case "BDAT":
            let parts = argument.split(separator: " ", omittingEmptySubsequences: true)
            guard (1...2).contains(parts.count), parts[0].count <= 10, parts[0].allSatisfy({ $0.isASCII && $0.isNumber }), let size = Int(parts[0]),
                size >= 0,
                parts.count == 1 || parts[1].uppercased() == "LAST"
            else {
                return .invalid(SMTPServerReply(501, "5.5.4", "Syntax: BDAT size [LAST]"))
            }
            return .bdat(size: size, last: parts.count == 2)
        case "RSET": return .rset
        case "NOOP": return .noop
        case "QUIT": return .quit
        case "VRFY": return .vrfy
        case "EXPN": return .expn
        case "HELP": return .help
        default: return .unknown(verb: String(verb.prefix(32)))
        }
    }

    /// `FROM:<path> params` / `TO:<path> params`. Nil when the keyword is missing.
    package static func parsePath(_ argument: String, keyword: String) -> (Result<String, SMTPServerReplyError>, SMTPParameters)? {
        guard argument.uppercased().hasPrefix(keyword) else { return nil }
        var rest = argument.dropFirst(keyword.count).drop(while: { $0 == " " })
        guard rest.first == "<" else {
            return (
                .failure(
                    SMTPServerReplyError(SMTPServerReply(501, "5.1.7", "Syntax: the address must be in angle brackets, e.g. <user@example.com>"))),
                SMTPParameters(items: [])
            )
        }
        // A quoted local part may hold '>'; find the closing bracket outside quotes.
        var inQuotes = false
        var escaped = false
        var end: Substring.Index? = nil
        var i = rest.index(after: rest.startIndex)
        while i < rest.endIndex {
            let c = rest[i]
            if escaped {
                escaped = false
            } else if c == "\\" {
                escaped = true
            } else if c == "\"" {
                inQuotes.toggle()
            } else if c == ">" && !inQuotes {
                end = i; break
            }
            i = rest.index(after: i)
        }
        guard let end else {
            return (.failure(SMTPServerReplyError(SMTPServerReply(501, "5.1.7", "Syntax: the address has no closing >"))), SMTPParameters(items: []))
        }
        var path = String(rest[rest.index(after: rest.startIndex)..<end])
        // A source route (@a,@b:user@c) is accepted and ignored (RFC 5321 §4.1.1.3).
        if path.hasPrefix("@"), let colon = path.firstIndex(of: ":") { path = String(path[path.index(after: colon)...]) }
        rest = rest[rest.index(after: end)...]
        var items: [(key: String, value: String?)] = []
        for part in rest.split(separator: " ", omittingEmptySubsequences: true) {
            if let eq = part.firstIndex(of: "=") {
                items.append((part[..<eq].uppercased(), String(part[part.index(after: eq)...])))
            } else {
                items.append((part.uppercased(), nil))
            }
        }
        if !path.isEmpty, let problem = addressProblem(path) {
            return (
                .failure(SMTPServerReplyError(SMTPServerReply(501, keyword == "FROM:" ? "5.1.7" : "5.1.3", problem))), SMTPParameters(items: items)
            )
        }
        return (.success(path), SMTPParameters(items: items))
    }

    /// Why an envelope address is unusable, or nil. `local@domain`, the domain not empty,
    /// no control characters or spaces outside quotes.
    package static func addressProblem(_ path: String) -> String? {
        guard path.utf8.count <= 320 else { return "Syntax: the address is longer than 320 octets" }
        guard let at = path.lastIndex(of: "@"), at != path.startIndex, path.index(after: at) != path.endIndex else {
            return "Syntax: <\(printable(path))> is not local@domain"
        }
        if path.unicodeScalars.contains(where: { $0.value < 32 || $0.value == 127 }) { return "Syntax: the address holds control characters" }
        let domain = path[path.index(after: at)...]
        if domain.contains(where: { $0 == " " || $0 == "\"" || $0 == "<" || $0 == ">" }) {
            return "Syntax: \(printable(String(domain))) is not a domain"
        }
        let local = path[..<at]
        if !local.hasPrefix("\"") && local.contains(where: { $0 == " " }) { return "Syntax: the local part holds a space outside quotes" }
        return nil
    }

    package static func printable(_ s: String) -> String {
        String(s.unicodeScalars.prefix(100).map { $0.value < 32 || $0.value == 127 ? "?" : Character($0) })
    }
}

/// A reply carried as an error (for `Result`).
package struct SMTPServerReplyError: Error, Sendable, Hashable {
    package var reply: SMTPServerReply
    package init(_ reply: SMTPServerReply) { self.reply = reply }
}

/// RFC 3461 `xtext` (ENVID, ORCPT): `+XX` hex escapes; the decoded text must be printable ASCII.
package enum XText {
    package static func isValid(_ s: String) -> Bool {
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "+") {
                guard i + 2 < b.count, isHex(b[i + 1]), isHex(b[i + 2]) else { return false }
                i += 3
                continue
            }
            guard c >= 33, c <= 126, c != UInt8(ascii: "=") else { return false }
            i += 1
        }
        return true
    }

    package static func isHex(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46)
    }
}
