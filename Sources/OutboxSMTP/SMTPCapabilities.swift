/// The service extensions a server announced in its EHLO reply (RFC 5321 §4.1.1.1).
public struct SMTPCapabilities: Sendable, Hashable {
    /// Every keyword (upper-cased) with its parameters, as announced.
    public var extensions: [String: [String]]
    /// False when the server only understood HELO.
    public var isExtended: Bool

    public init(extensions: [String: [String]] = [:], isExtended: Bool = true) {
        self.extensions = extensions
        self.isExtended = isExtended
    }

    /// Parses the lines of a 250 reply to EHLO. The first line is the server's greeting name;
    /// empty lines (smtp-sink ends with `250 `) are ignored.
    public init(ehloReply: SMTPReply) {
        var extensions: [String: [String]] = [:]
        for line in ehloReply.lines.dropFirst() {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let keyword = words.first else { continue }
            var name = keyword.uppercased()
            var params = words.dropFirst().map(String.init)
            // Old servers write `AUTH=LOGIN PLAIN`.
            if name.hasPrefix("AUTH=") {
                params.insert(String(name.dropFirst(5)), at: 0)
                name = "AUTH"
            }
            extensions[name, default: []].append(contentsOf: params)
        }
        self.init(extensions: extensions, isExtended: true)
    }

    public func supports(_ keyword: String) -> Bool { extensions[keyword.uppercased()] != nil }

    public var startTLS: Bool { supports("STARTTLS") }
    public var pipelining: Bool { supports("PIPELINING") }
    public var eightBitMIME: Bool { supports("8BITMIME") }
    public var smtpUTF8: Bool { supports("SMTPUTF8") }
    public var enhancedStatusCodes: Bool { supports("ENHANCEDSTATUSCODES") }
    public var chunking: Bool { supports("CHUNKING") }
    public var dsn: Bool { supports("DSN") }

    /// `SIZE` present: nil when not announced, 0 when announced without a limit.
    public var sizeLimit: Int? {
        guard let params = extensions["SIZE"] else { return nil }
        return params.first.flatMap { Int($0) } ?? 0
    }

    /// The SASL mechanisms announced with AUTH, upper-cased.
    public var authMechanisms: [String] {
        (extensions["AUTH"] ?? []).map { $0.uppercased() }
    }
}
