/// An RFC 5322 mailbox: an addr-spec (`local@domain`) and an optional display name.
///
/// Non-ASCII local parts and domains (RFC 6531) are accepted; `asciiMailbox()` gives the form
/// for servers without SMTPUTF8 (IDNA Punycode domain).
public struct Address: Sendable, Hashable, CustomStringConvertible {
    /// The addr-spec, `local@domain`.
    public var mailbox: String
    /// The display name, unencoded (e.g. `Zoë Müller`), or nil.
    public var displayName: String?

    /// Validates `mailbox` (an addr-spec) and `displayName` (no CR, LF or NUL).
    public init(_ mailbox: String, displayName: String? = nil) throws(MIMEError) {
        try Address.validate(mailbox: mailbox)
        if let displayName { try MIMEError.checkNoLineBreaks(displayName, header: "display name of \(mailbox)") }
        self.mailbox = mailbox
        self.displayName = (displayName?.isEmpty ?? true) ? nil : displayName
    }

    /// Parses `Name <a@b>`, `"Quoted, Name" <a@b>`, `=?utf-8?...?= <a@b>` or `a@b`.
    public init(parsing text: String) throws(MIMEError) {
        let list = try AddressParser.parseList(text)
        guard list.count == 1, let only = list.first else {
            throw MIMEError(.invalidAddress, "expected exactly one address in \"\(text)\", found \(list.count)")
        }
        self = only
    }

    /// Parses an address header value: groups are flattened, comments dropped, encoded-word
    /// display names decoded.
    public static func parseList(_ headerValue: String) throws(MIMEError) -> [Address] {
        try AddressParser.parseList(headerValue)
    }

    /// The part before the last `@`.
    public var localPart: Substring {
        mailbox.lastIndex(of: "@").map { mailbox[..<$0] } ?? Substring(mailbox)
    }

    /// The part after the last `@`.
    public var domain: Substring {
        mailbox.lastIndex(of: "@").map { mailbox[mailbox.index(after: $0)...] } ?? ""
    }

    /// True when the addr-spec is all ASCII.
    public var isASCII: Bool { mailbox.utf8.allSatisfy { $0 < 0x80 } }

    /// True when the local part is not ASCII, so that the address can only be sent with SMTPUTF8.
    public var requiresSMTPUTF8: Bool { !localPart.utf8.allSatisfy { $0 < 0x80 } }

    /// The addr-spec with an IDNA (Punycode) domain; throws when the local part is not ASCII.
    public func asciiMailbox() throws(MIMEError) -> String {
        if isASCII { return mailbox }
        guard !requiresSMTPUTF8 else {
            throw MIMEError(
                .requiresSMTPUTF8,
                "the address \(mailbox) has a non-ASCII local part and can only be sent to a server that offers SMTPUTF8")
        }
        return String(localPart) + "@" + (try Punycode.toASCII(domain: String(domain)))
    }

    /// `Display Name <mailbox>`, or the mailbox alone when there is no display name.
    public var description: String {
        displayName.map { "\($0) <\(mailbox)>" } ?? mailbox
    }

    // MARK: Validation

    static func isAtext(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-/=?^_`{|}~".utf8).contains(b)
        }
    }

    static func validate(mailbox: String) throws(MIMEError) {
        func fail(_ why: String) -> MIMEError {
            MIMEError(.invalidAddress, "the address \"\(mailbox.debugEscaped)\" is invalid: \(why)")
        }
        let bytes = Array(mailbox.utf8)
        guard !bytes.isEmpty else { throw fail("it is empty") }
        if let bad = bytes.first(where: { $0 < 0x20 || $0 == 0x7F }) {
            throw fail(bad == 13 || bad == 10 ? "it contains a line break" : "it contains a control character")
        }
        guard let at = mailbox.lastIndex(of: "@") else { throw fail("it has no @") }
        let local = mailbox[..<at]
        let domain = mailbox[mailbox.index(after: at)...]
        guard !local.isEmpty else { throw fail("the local part before @ is empty") }
        guard !domain.isEmpty else { throw fail("the domain after @ is empty") }
        guard local.utf8.count <= 64 else { throw fail("the local part is longer than 64 octets") }
        guard bytes.count <= 254 else { throw fail("it is longer than 254 octets") }
        if local.hasPrefix("\"") {
            guard local.count >= 2, local.hasSuffix("\"") else { throw fail("the quoted local part is not closed") }
            var escaped = false
            for b in local.utf8.dropFirst().dropLast() {
                if escaped { escaped = false; continue }
                if b == UInt8(ascii: "\\") { escaped = true; continue }
                if b == UInt8(ascii: "\"") { throw fail("the quoted local part contains an unescaped quote") }
            }
            if escaped { throw fail("the quoted local part ends with a backslash") }
        } else {
            if local.hasPrefix(".") || local.hasSuffix(".") || local.contains("..") {
                throw fail("the local part has a leading, trailing or doubled dot")
            }
            for b in local.utf8 where !(isAtext(b) || b == UInt8(ascii: ".") || b >= 0x80) {
                throw fail("the local part contains \"\(Character(Unicode.Scalar(b)))\"; quote it or remove it")
            }
        }
        if domain.hasPrefix("[") {
            guard domain.hasSuffix("]"), !domain.dropFirst().dropLast().contains(where: { "[]\\ ".contains($0) }) else {
                throw fail("the domain literal is malformed")
            }
            return
        }
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            guard !label.isEmpty else { throw fail("the domain has an empty label") }
            guard !label.hasPrefix("-"), !label.hasSuffix("-") else {
                throw fail("a domain label starts or ends with a hyphen")
            }
            for b in label.utf8 {
                let ok =
                    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                    || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-")
                    || b == UInt8(ascii: "_") || b >= 0x80
                guard ok else { throw fail("the domain contains \"\(Character(Unicode.Scalar(b)))\"") }
            }
            if label.utf8.allSatisfy({ $0 < 0x80 }), label.utf8.count > 63 {
                throw fail("a domain label is longer than 63 octets")
            }
        }
    }
}

extension String {
    /// The string with control characters shown escaped (for error messages).
    var debugEscaped: String {
        var s = ""
        for u in unicodeScalars {
            if u.value < 0x20 || u.value == 0x7F { s += u.escaped(asASCII: true) } else { s.unicodeScalars.append(u) }
        }
        return s
    }
}

// MARK: - Formatting

extension Address {
    /// The tokens of this mailbox for an address header: display-name words then `<addr>`.
    /// `firstAvailable` is the room left on the current header line (used to size the first
    /// encoded word).
    /// `firstRoom` is the longest first token that keeps the line within 78 characters (more
    /// than `firstAvailable` when the writer may fold before it).
    func headerTokens(options: MIMEEncodingOptions, firstAvailable: Int, firstRoom: Int = 77) throws(MIMEError) -> [String] {
        let addr = options.smtpUTF8 ? mailbox : try asciiMailbox()
        guard let name = displayName, !name.isEmpty else { return [addr] }
        return Address.phraseTokens(name, firstAvailable: firstAvailable, firstRoom: firstRoom) + ["<" + addr + ">"]
    }

    /// A display name as phrase tokens: atoms, one quoted string, or RFC 2047 encoded words.
    static func phraseTokens(_ name: String, firstAvailable: Int, firstRoom: Int = 77) -> [String] {
        let bytes = Array(name.utf8)
        let printableASCII = bytes.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
        let words = name.split(separator: " ", omittingEmptySubsequences: false)
        let plainSpacing = !words.contains(where: \.isEmpty)
        if printableASCII, plainSpacing, !name.contains("=?") {
            if words.allSatisfy({ $0.utf8.allSatisfy(isAtext) }) && words.allSatisfy({ $0.utf8.count <= 76 })
                && words[0].utf8.count <= firstRoom
            {
                return words.map(String.init)
            }
            var quoted = "\""
            for c in name {
                if c == "\"" || c == "\\" { quoted.append("\\") }
                quoted.append(c)
            }
            quoted.append("\"")
            if quoted.utf8.count <= min(76, firstRoom) { return [quoted] }
        }
        return EncodedWord.encode(name, firstMax: firstAvailable)
    }
}
