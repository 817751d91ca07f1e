/// Parser for RFC 5322 address lists (section 3.4) as found in finished messages: mailboxes,
/// `Name <addr>`, groups (`team: a@b, c@d;`), comments, quoted strings, encoded words, and the
/// obsolete route syntax.
enum AddressParser {
    enum Token: Equatable {
        case atom(String)  // a run of non-special characters (dots included, for obs-phrase)
        case quoted(String)  // unescaped content
        case literal(String)  // [domain literal], with brackets
        case special(Character)  // < > , : ; @
    }

    static func tokenize(_ s: String) throws(MIMEError) -> [Token] {
        func fail(_ why: String) -> MIMEError {
            MIMEError(.invalidAddressList, "cannot parse the address header \"\(s.debugEscaped)\": \(why)")
        }
        var tokens: [Token] = []
        let chars = Array(s)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            switch c {
            case " ", "\t", "\r", "\n", "\r\n":
                i += 1
            case "(":
                var depth = 1
                i += 1
                while i < chars.count, depth > 0 {
                    if chars[i] == "\\" { i += 1 } else if chars[i] == "(" { depth += 1 } else if chars[i] == ")" { depth -= 1 }
                    i += 1
                }
                if depth > 0 { throw fail("a comment is not closed") }
            case "\"":
                var content = ""
                i += 1
                var closed = false
                while i < chars.count {
                    if chars[i] == "\\", i + 1 < chars.count {
                        content.append(chars[i + 1])
                        i += 2
                        continue
                    }
                    if chars[i] == "\"" { closed = true; i += 1; break }
                    if chars[i] != "\r" && chars[i] != "\n" && chars[i] != "\r\n" { content.append(chars[i]) }
                    i += 1
                }
                if !closed { throw fail("a quoted string is not closed") }
                tokens.append(.quoted(content))
            case "[":
                var content = "["
                i += 1
                while i < chars.count, chars[i] != "]" {
                    content.append(chars[i])
                    i += 1
                }
                if i >= chars.count { throw fail("a domain literal is not closed") }
                content.append("]")
                i += 1
                tokens.append(.literal(content))
            case "<", ">", ",", ":", ";", "@":
                tokens.append(.special(c))
                i += 1
            case ")", "]", "\\":
                throw fail("unexpected \"\(c)\"")
            default:
                var atom = ""
                while i < chars.count, !" \t\r\n()\"[]<>,:;@\\".contains(chars[i]), chars[i] != "\r\n" {
                    atom.append(chars[i])
                    i += 1
                }
                tokens.append(.atom(atom))
            }
        }
        return tokens
    }

    static func parseList(_ value: String) throws(MIMEError) -> [Address] {
        let tokens = try tokenize(value)
        func fail(_ why: String) -> MIMEError {
            MIMEError(.invalidAddressList, "cannot parse the address header \"\(value.debugEscaped)\": \(why)")
        }
        var result: [Address] = []
        var i = 0
        var inGroup = false
        while i < tokens.count {
            // Collect a phrase or addr-spec up to a delimiter.
            var words: [Token] = []
            while i < tokens.count {
                if case .special(let c) = tokens[i], c != "@" { break }
                words.append(tokens[i])
                i += 1
            }
            let delimiter: Character? = i < tokens.count ? { if case .special(let c) = tokens[i] { return c } else { return nil } }() : nil
            switch delimiter {
            case ":"?:
                guard !inGroup else { throw fail("a group is nested inside another group") }
                inGroup = true  // the group name is dropped: groups are flattened
                i += 1
            case "<"?:
                i += 1
                var inner: [Token] = []
                while i < tokens.count, tokens[i] != .special(">") {
                    inner.append(tokens[i])
                    i += 1
                }
                guard i < tokens.count else { throw fail("an angle address is not closed with >") }
                i += 1
                // obs-route: <@a,@b:addr>
                if let colon = inner.firstIndex(of: .special(":")), inner.first == .special("@") {
                    inner.removeSubrange(...colon)
                }
                let spec = try addrSpec(inner, fail)
                if spec.isEmpty {
                    // "<>" (null reverse-path) carries no mailbox.
                } else {
                    result.append(try Address(spec, displayName: phrase(words)))
                }
                // Skip to the next delimiter.
                while i < tokens.count, case .atom = tokens[i] { i += 1 }
                if i < tokens.count, tokens[i] == .special(";") {
                    guard inGroup else { throw fail("\";\" outside a group") }
                    inGroup = false
                    i += 1
                }
                if i < tokens.count, tokens[i] == .special(",") { i += 1 }
            case ","?, ";"?, nil:
                if !words.isEmpty {
                    let spec = try addrSpec(words, fail)
                    result.append(try Address(spec))
                }
                if delimiter == ";" {
                    guard inGroup else { throw fail("\";\" outside a group") }
                    inGroup = false
                }
                if delimiter != nil { i += 1 }
            default:
                throw fail("unexpected \"\(delimiter.map(String.init) ?? "")\"")
            }
        }
        return result
    }

    private static func addrSpec(_ tokens: [Token], _ fail: (String) -> MIMEError) throws(MIMEError) -> String {
        var s = ""
        for t in tokens {
            switch t {
            case .atom(let a): s += a
            case .literal(let l): s += l
            case .special(let c): s.append(c)
            case .quoted(let q):
                if !q.isEmpty, q.utf8.allSatisfy({ Address.isAtext($0) || $0 >= 0x80 }) {
                    s += q
                } else {
                    s += "\"" + q.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
                }
            }
        }
        return s
    }

    /// The display name: words joined by one space, adjacent encoded words joined without one.
    private static func phrase(_ tokens: [Token]) -> String? {
        var out = ""
        var lastEncoded = false
        for t in tokens {
            let word: String
            var encoded = false
            switch t {
            case .atom(let a):
                if let d = EncodedWord.decodeWord(Substring(a)) {
                    word = d
                    encoded = true
                } else {
                    word = a
                }
            case .quoted(let q): word = q
            case .literal(let l): word = l
            case .special(let c): word = String(c)
            }
            if !out.isEmpty && !(encoded && lastEncoded) { out += " " }
            out += word
            lastEncoded = encoded
        }
        return out.isEmpty ? nil : out
    }
}
