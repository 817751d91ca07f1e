/// The service extensions a server announced in its EHLO reply (RFC 5321 §4.1.1.1).
public struct SMTPCapabilities: Sendable, Hashable {
    /// Every keyword (upper-cased) with its parameters, as announced.
    public var extensions: [String: [String]] {
        didSet { known = Known(extensions) }
    }
    /// False when the server only understood HELO.
    public var isExtended: Bool
    /// What every transaction asks about, read once from `extensions` (not looked up by name,
    /// with a string upper-cased and hashed, several times per message).
    package private(set) var known: Known

    package struct Known: Sendable, Hashable {
        var startTLS, pipelining, eightBitMIME, smtpUTF8, enhancedStatusCodes, chunking, dsn: Bool
        var sizeLimit: Int?

        package init(_ extensions: [String: [String]]) {
            startTLS = extensions["STARTTLS"] != nil
            pipelining = extensions["PIPELINING"] != nil
            eightBitMIME = extensions["8BITMIME"] != nil
            smtpUTF8 = extensions["SMTPUTF8"] != nil
            enhancedStatusCodes = extensions["ENHANCEDSTATUSCODES"] != nil
            chunking = extensions["CHUNKING"] != nil
            dsn = extensions["DSN"] != nil
            sizeLimit = extensions["SIZE"].map { params in params.first.flatMap { Int($0) } ?? 0 }
        }
    }

    /// Capabilities from keywords and their parameters; keys must already be upper-case.
    public init(extensions: [String: [String]] = [:], isExtended: Bool = true) {
        self.extensions = extensions
        self.isExtended = isExtended
        self.known = Known(extensions)
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

    /// Whether the server announced `keyword` (any case).
    public func supports(_ keyword: String) -> Bool { extensions[keyword.uppercased()] != nil }

    /// `STARTTLS` announced (RFC 3207): the session can be upgraded to TLS.
    public var startTLS: Bool { known.startTLS }
    /// `PIPELINING` announced (RFC 2920): commands may be sent without waiting for each reply.
    public var pipelining: Bool { known.pipelining }
    /// `8BITMIME` announced (RFC 6152): `BODY=8BITMIME` is accepted.
    public var eightBitMIME: Bool { known.eightBitMIME }
    /// `SMTPUTF8` announced (RFC 6531): UTF-8 addresses and headers are accepted.
    public var smtpUTF8: Bool { known.smtpUTF8 }
    /// `ENHANCEDSTATUSCODES` announced (RFC 2034): replies carry `x.y.z` codes.
    public var enhancedStatusCodes: Bool { known.enhancedStatusCodes }
    /// `CHUNKING` announced (RFC 3030): `BDAT` is accepted.
    public var chunking: Bool { known.chunking }
    /// `DSN` announced (RFC 3461): `NOTIFY`, `RET`, `ENVID` and `ORCPT` are accepted.
    public var dsn: Bool { known.dsn }

    /// `SIZE` present: nil when not announced, 0 when announced without a limit.
    public var sizeLimit: Int? { known.sizeLimit }

    /// The SASL mechanisms announced with AUTH, upper-cased.
    public var authMechanisms: [String] {
        (extensions["AUTH"] ?? []).map { $0.uppercased() }
    }
}
