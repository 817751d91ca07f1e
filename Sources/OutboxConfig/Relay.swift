import Foundation

/// `[relay]`: the SMTP submission listener of `outbox serve` (override with `-o relay.KEY=VALUE`).
package struct RelaySettings: Sendable, Equatable {
    /// `listen`: host:port addresses for SMTP (STARTTLS offered when a certificate is set). Empty: no listener.
    package var listen: [String] = ["127.0.0.1:2525"]
    /// `listen-tls`: host:port addresses for implicit TLS (RFC 8314).
    package var listenTLS: [String] = []
    /// `tls-certificate-file`, `tls-key-file`: PEM files.
    package var tlsCertificateFile: String?
    package var tlsKeyFile: String?
    /// `allowed-networks`: who may send without AUTH.
    package var allowedNetworks: [CIDR] = [CIDR("127.0.0.0/8")!, CIDR("::1")!]
    /// `require-tls-for-auth`.
    package var requireTLSForAuth = true
    /// `max-message-size` in bytes (advertised as SIZE).
    package var maxMessageSize = 26_214_400
    /// `max-recipients` per message.
    package var maxRecipients = 100
    /// `max-connections`, `max-connections-per-client`.
    package var maxConnections = 200
    package var maxConnectionsPerClient = 50
    /// `hostname`: for the greeting and the Received header; nil: the machine's host name.
    package var hostname: String?
    /// `command-timeout`, `data-timeout`, `session-timeout`.
    package var commandTimeout: Duration = .seconds(300)
    package var dataTimeout: Duration = .seconds(600)
    package var sessionTimeout: Duration = .seconds(3600)
    /// `auth-failure-limit`: failed AUTH attempts (per client address, and per user) within
    /// `auth-lockout-time` before AUTH is refused for `auth-lockout-time`.
    package var authFailureLimit = 5
    package var authLockoutTime: Duration = .seconds(300)
    /// `bounce-copy-to`: a postmaster copy of every bounce; nil: none.
    package var bounceCopyTo: String?
    /// `add-received-header`, `add-message-id`, `add-date`: the RFC 6409 §8 submission fixes.
    package var addReceivedHeader = true
    package var addMessageID = true
    package var addDate = true

    package init() {}

    /// `hostname`, or this machine's host name.
    package var effectiveHostname: String {
        if let hostname { return hostname }
        let name = ProcessInfo.processInfo.hostName
        return name.isEmpty ? "localhost" : name
    }

    /// Whether implicit TLS or STARTTLS can be offered.
    package var hasCertificate: Bool { tlsCertificateFile != nil && tlsKeyFile != nil }
}

/// A `[client-NAME]` section: an identity that may AUTH to the relay.
package struct ClientIdentity: Sendable, Equatable {
    /// The `NAME` part.
    package var name: String
    /// `user`: the AUTH user name.
    package var user: String
    /// `password-hash`: a bcrypt hash (`$2a$`, `$2b$` or `$2y$`), made by `outbox hash-password`.
    package var passwordHash: Secret
    /// `allowed-senders`: address patterns (`*@example.com`, `scanner@example.com`, `*`).
    package var allowedSenders: [String]
    /// `route`: the route its messages take; nil: chosen by sender (then `default`).
    package var route: String?
    /// `routes`: the routes it may ask for (`"route"` in an HTTP submission); unset: its
    /// `route` alone.
    package var routes: [String]?
    /// `api-token`: its bearer token for the HTTP API (submit, and see its own messages).
    package var apiToken: Secret?
    /// `intake-limit-per-minute`: messages this client may submit over a sliding minute (nil:
    /// no limit); beyond it `452 4.7.0` on the listener, HTTP 429 with Retry-After.
    package var intakeLimitPerMinute: Int?

    package init(
        name: String, user: String, passwordHash: Secret, allowedSenders: [String], route: String? = nil, routes: [String]? = nil,
        apiToken: Secret? = nil
    ) {
        self.name = name
        self.user = user
        self.passwordHash = passwordHash
        self.allowedSenders = allowedSenders
        self.route = route
        self.routes = routes
        self.apiToken = apiToken
    }

    /// The routes it may ask for: `routes`, else its own `route`.
    package var mayChoose: [String] { routes ?? route.map { [$0] } ?? [] }

    /// True when `address` (an envelope or header address) matches one of `allowedSenders`:
    /// `*` any, `*@domain` any local part at that domain, else the exact address; ignoring case.
    package func allows(sender address: String) -> Bool {
        ClientIdentity.matches(address, patterns: allowedSenders)
    }

    package static func matches(_ address: String, patterns: [String]) -> Bool {
        let a = address.lowercased()
        for p in patterns.map({ $0.lowercased() }) {
            if p == "*" { return true }
            if p.hasPrefix("*@") {
                if let at = a.lastIndex(of: "@"), a[a.index(after: at)...] == p.dropFirst(2) { return true }
            } else if p == a {
                return true
            }
        }
        return false
    }
}

/// An IPv4 or IPv6 network (`192.0.2.0/24`, `::1`, `10.0.0.1`).
package struct CIDR: Sendable, Hashable, CustomStringConvertible {
    /// 4 or 16 bytes, masked to the prefix.
    package let address: [UInt8]
    package let prefix: Int

    package init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let bytes = CIDR.parse(address: String(parts[0])) else { return nil }
        let bits = bytes.count * 8
        var prefix = bits
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...bits).contains(p), parts[1].allSatisfy(\.isASCII) else { return nil }
            prefix = p
        }
        self.prefix = prefix
        self.address = CIDR.mask(bytes, prefix)
    }

    package var isIPv4: Bool { address.count == 4 }

    /// True when it covers every address of its family (`0.0.0.0/0`, `::/0`).
    package var coversEveryone: Bool { prefix == 0 }

    /// True when `bytes` (4 or 16; an IPv4-mapped IPv6 address counts as IPv4) is inside.
    package func contains(_ bytes: [UInt8]) -> Bool {
        var candidate = bytes
        if candidate.count == 16, isIPv4, candidate[0..<10].allSatisfy({ $0 == 0 }), candidate[10] == 0xff, candidate[11] == 0xff {
            candidate = Array(candidate[12...])
        }
        guard candidate.count == address.count else { return false }
        return CIDR.mask(candidate, prefix) == address
    }

    /// Parses an address literal: dotted IPv4 or IPv6 (with `::`, optionally bracketed).
    package static func parse(address text: String) -> [UInt8]? {
        var s = text
        if s.hasPrefix("[") && s.hasSuffix("]") { s = String(s.dropFirst().dropLast()) }
        if let zone = s.firstIndex(of: "%") { s = String(s[..<zone]) }
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    static func mask(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        var out = bytes
        for i in 0..<out.count {
            let keep = max(0, min(8, prefix - i * 8))
            out[i] &= keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
        return out
    }

    package var description: String {
        let text: String
        if isIPv4 {
            text = address.map(String.init).joined(separator: ".")
        } else {
            var a = in6_addr()
            withUnsafeMutableBytes(of: &a) { $0.copyBytes(from: address) }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count))
            text = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return prefix == address.count * 8 ? text : "\(text)/\(prefix)"
    }
}

extension OptionTable {
    /// `[relay]`: the SMTP submission listener (override with `-o relay.KEY=VALUE`).
    package static let relay: [OptionDescriptor] = [
        .init(
            name: "listen", section: .relay, type: .list, defaultValue: "127.0.0.1:2525",
            validValues: "host:port addresses separated by commas or spaces; empty: no SMTP listener",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "Where `outbox serve` accepts SMTP submissions (RFC 6409). STARTTLS is offered when tls-certificate-file and tls-key-file are set.",
            outboxNote:
                "When the default address is already taken (a second instance on one host), Outbox warns and runs without the listener; an address the configuration names must be free."
        ),
        .init(
            name: "listen-tls", section: .relay, type: .list, defaultValue: nil, validValues: "host:port addresses separated by commas or spaces",
            effect: .atRestart, referenceEffect: nil,
            summary: "Addresses for SMTP submission over implicit TLS (RFC 8314, usually port 465). Needs tls-certificate-file and tls-key-file."),
        .init(
            name: "tls-certificate-file", section: .relay, type: .string, defaultValue: nil,
            validValues: "Path of a PEM file (the certificate chain)",
            effect: .immediately, referenceEffect: nil,
            summary: "The listener's certificate. Re-read on SIGHUP; connections already open keep theirs."),
        .init(
            name: "tls-key-file", section: .relay, type: .string, defaultValue: nil, validValues: "Path of a PEM file (the private key)",
            effect: .immediately, referenceEffect: nil,
            summary: "The private key of tls-certificate-file. Re-read on SIGHUP."),
        .init(
            name: "allowed-networks", section: .relay, type: .list, defaultValue: "127.0.0.0/8 ::1",
            validValues: "CIDRs (192.0.2.0/24, 2001:db8::/32) or addresses, separated by spaces or commas; empty: none",
            effect: .immediately, referenceEffect: nil,
            summary: "Clients from these networks may send without AUTH. Every other client must authenticate as a [client-NAME].",
            outboxNote:
                "Outbox refuses to start (and refuses a reload) when a listen address is not loopback and allowed-networks covers everyone (0.0.0.0/0 or ::/0): that would be an open relay."
        ),
        .init(
            name: "require-tls-for-auth", section: .relay, type: .boolean, defaultValue: "true", validValues: "true, false",
            effect: .immediately, referenceEffect: nil,
            summary: "AUTH is neither offered nor accepted before TLS (STARTTLS or implicit TLS)."),
        .init(
            name: "max-message-size", section: .relay, type: .integer, defaultValue: "26214400", validValues: "Bytes, from 1024 to 2147483647",
            effect: .immediately, referenceEffect: nil,
            summary:
                "The largest message accepted, advertised as SIZE (the smaller of this and what the transport takes). A larger one gets 552 5.3.4 and is not queued."
        ),
        .init(
            name: "max-recipients", section: .relay, type: .integer, defaultValue: "100", validValues: "An integer from 1 to 100000",
            effect: .immediately, referenceEffect: nil,
            summary: "Recipients per message; beyond it RCPT gets 452 4.5.3 (the client sends the rest in another transaction)."),
        .init(
            name: "max-connections", section: .relay, type: .integer, defaultValue: "200", validValues: "An integer from 1 to 100000",
            effect: .immediately, referenceEffect: nil,
            summary: "SMTP sessions open at once; a connection beyond it gets 421 4.7.0 and is closed."),
        .init(
            name: "max-connections-per-client", section: .relay, type: .integer, defaultValue: "50", validValues: "An integer from 1 to 100000",
            effect: .immediately, referenceEffect: nil,
            summary:
                "SMTP sessions open at once from one client address outside allowed-networks; beyond it, 421 4.7.0. Clients in allowed-networks are not limited per address (as Postfix exempts $mynetworks); max-connections still applies."
        ),
        .init(
            name: "hostname", section: .relay, type: .string, defaultValue: nil, validValues: "A host name",
            effect: .immediately, referenceEffect: nil,
            summary: "The name in the greeting, the EHLO reply and the Received header. Unset: the machine's host name."),
        .init(
            name: "command-timeout", section: .relay, type: .time, defaultValue: "00:05:00",
            validValues: TimeValue.formatDescription + "; more than 00:00:00",
            effect: .immediately, referenceEffect: nil,
            summary:
                "How long the listener waits for the next command (RFC 5321 §4.5.3.2: at least 5 minutes); then 421 4.4.2 and the connection is closed."
        ),
        .init(
            name: "data-timeout", section: .relay, type: .time, defaultValue: "00:10:00",
            validValues: TimeValue.formatDescription + "; more than 00:00:00",
            effect: .immediately, referenceEffect: nil,
            summary: "How long the listener waits for the next bytes of a message (DATA or BDAT; RFC 5321 §4.5.3.2.6: 10 minutes)."),
        .init(
            name: "session-timeout", section: .relay, type: .time, defaultValue: "01:00:00",
            validValues: TimeValue.formatDescription + "; more than 00:00:00",
            effect: .immediately, referenceEffect: nil,
            summary:
                "The longest a whole SMTP session may last; then 421 4.4.2 (a message being received finishes first, up to data-timeout per read)."),
        .init(
            name: "auth-failure-limit", section: .relay, type: .integer, defaultValue: "5", validValues: "An integer from 1 to 1000",
            effect: .immediately, referenceEffect: nil,
            summary:
                "Failed AUTH attempts from one client address, or for one user, within auth-lockout-time before AUTH is refused (454 4.7.0) for auth-lockout-time. Each failure is answered more slowly than the last."
        ),
        .init(
            name: "auth-lockout-time", section: .relay, type: .time, defaultValue: "00:05:00", validValues: TimeValue.formatDescription,
            effect: .immediately, referenceEffect: nil,
            summary: "The window in which AUTH failures are counted, and how long AUTH is refused after auth-failure-limit of them."),
        .init(
            name: "bounce-copy-to", section: .relay, type: .string, defaultValue: nil, validValues: "An e-mail address",
            effect: .immediately, referenceEffect: nil,
            summary: "A postmaster copy of every delivery status notification (bounce) Outbox sends for a relayed message."),
        .init(
            name: "add-received-header", section: .relay, type: .boolean, defaultValue: "true", validValues: "true, false",
            effect: .immediately, referenceEffect: nil,
            summary: "Add a Received header that records the client, TLS and authentication (RFC 5321 §4.4, RFC 3848)."),
        .init(
            name: "add-message-id", section: .relay, type: .boolean, defaultValue: "true", validValues: "true, false",
            effect: .immediately, referenceEffect: nil,
            summary: "Add a Message-ID header to a message that has none (RFC 6409 §8.3)."),
        .init(
            name: "add-date", section: .relay, type: .boolean, defaultValue: "true", validValues: "true, false",
            effect: .immediately, referenceEffect: nil,
            summary: "Add a Date header to a message that has none (RFC 6409 §8.2)."),
    ]

    /// The keys of a `[client-NAME]` section.
    package static let clientSection: [OptionDescriptor] = [
        .init(
            name: "user", section: .client, type: .string, defaultValue: nil, validValues: "A user name (often an e-mail address)",
            effect: .immediately, referenceEffect: nil,
            summary: "The name this client gives in AUTH PLAIN or AUTH LOGIN. Required."),
        .init(
            name: "password-hash", section: .client, type: .secret, defaultValue: nil,
            validValues: "A bcrypt hash ($2a$, $2b$ or $2y$), from `outbox hash-password`; or env:NAME, file:/path",
            effect: .immediately, referenceEffect: nil, isSecret: true,
            summary: "The bcrypt hash of this client's password. Required. Outbox never stores or prints the password itself.",
            outboxNote: "Never printed."),
        .init(
            name: "allowed-senders", section: .client, type: .list, defaultValue: nil,
            validValues: "Address patterns separated by commas or spaces: *@example.com, scanner@example.com, or *",
            effect: .immediately, referenceEffect: nil,
            summary:
                "The envelope senders and header From addresses this client may use (both must match; 553 5.7.1 / 550 5.7.1 otherwise). The null sender <> is always allowed. Required."
        ),
        .init(
            name: "route", section: .client, type: .string, defaultValue: nil, validValues: "A route: default, or NAME of an [smtp-client-NAME]",
            effect: .immediately, referenceEffect: nil,
            summary:
                "The route this client's messages take (over SMTP and HTTP), before any senders pattern. Unset: the route is chosen by the envelope sender (a route's senders), then default."
        ),
        .init(
            name: "routes", section: .client, type: .list, defaultValue: nil, validValues: "Routes separated by commas or spaces",
            effect: .immediately, referenceEffect: nil,
            summary:
                "The routes this client may ask for with \"route\" in an HTTP submission (403 route_not_allowed for another). Unset: only its own route."
        ),
        .init(
            name: "api-token", section: .client, type: .secret, defaultValue: nil,
            validValues: "A bearer token of at least 16 characters; or env:NAME, file:/path",
            effect: .immediately, referenceEffect: nil, isSecret: true,
            summary:
                "This client's token for the HTTP API (Authorization: Bearer TOKEN): it may submit messages (with its allowed-senders and routes) and list and read its own messages only. The [outbox] api-tokens stay the operators' tokens, with full access.",
            outboxNote: "Never printed."),
        .init(
            name: "intake-limit-per-minute", section: .client, type: .integer, defaultValue: "0",
            validValues: "An integer, 0 for no limit", effect: .immediately, referenceEffect: nil,
            summary:
                "Messages this client may submit over a sliding minute (per instance), so that one runaway application cannot fill the queue for everyone. Beyond it the listener answers MAIL with 452 4.7.0 and the HTTP API (for the client's api-token) 429 with Retry-After; the client tries again later."
        ),
    ]

    /// Looks up a descriptor of `[relay]`.
    package static func descriptor(relay name: String) -> OptionDescriptor? {
        relay.first { $0.name == name }
    }
}

extension ConfigurationReader {
    mutating func interpretRelay(_ configuration: inout OutboxConfiguration) {
        var r = RelaySettings()
        reportUnknownKeys(relayOrder, in: relay, known: OptionTable.relay.map(\.name), what: "a setting of [relay]")
        func d(_ name: String) -> OptionDescriptor { OptionTable.descriptor(relay: name)! }
        let integer = Convert.integer
        let positiveTime = Convert.positiveTime
        func listenList(_ v: String) -> [String]? {
            let list = Convert.list(v)
            return list.allSatisfy(Convert.isListenAddress) ? list : nil
        }
        func file(_ path: String) -> String? {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue ? path : nil
        }
        let listenMessage = "is not a list of host:port addresses with ports 1-65535 (e.g. 127.0.0.1:2525, [::1]:2525 or 0.0.0.0:587)"
        let timeMessage = Self.timeMessage + " greater than 00:00:00"
        // An empty `listen` turns the listener off (not an error, unlike other settings with a default).
        if let entry = relay["listen"] {
            sources["relay.listen"] = entry.source
            if entry.value.isEmpty {
                r.listen = []
            } else if let v = listenList(entry.value) {
                r.listen = v
            } else {
                invalid(entry, listenMessage)
            }
        }
        if let v = typed(relay["listen-tls"], sourceKey: "relay.listen-tls", descriptor: d("listen-tls"), listenList, invalid: listenMessage) {
            r.listenTLS = v
        }
        r.tlsCertificateFile = typed(
            relay["tls-certificate-file"], sourceKey: "relay.tls-certificate-file", descriptor: d("tls-certificate-file"), file,
            invalid: "is not an existing file (a PEM certificate chain)")
        r.tlsKeyFile = typed(
            relay["tls-key-file"], sourceKey: "relay.tls-key-file", descriptor: d("tls-key-file"), file,
            invalid: "is not an existing file (a PEM private key)")
        if let entry = relay["allowed-networks"] {
            sources["relay.allowed-networks"] = entry.source
            let items = Convert.list(entry.value)
            let parsed = items.map { CIDR($0) }
            if let bad = zip(items, parsed).first(where: { $0.1 == nil }) {
                invalid(entry, "is not a list of networks: \(bad.0) is not an address or CIDR (e.g. 127.0.0.0/8, 192.0.2.10, 2001:db8::/32)")
            } else {
                r.allowedNetworks = parsed.compactMap { $0 }
            }
        }
        if let v = typed(
            relay["require-tls-for-auth"], sourceKey: "relay.require-tls-for-auth", descriptor: d("require-tls-for-auth"), Convert.bool,
            invalid: "is not true or false")
        {
            r.requireTLSForAuth = v
        }
        if let v = typed(
            relay["max-message-size"], sourceKey: "relay.max-message-size", descriptor: d("max-message-size"), integer(1024...Int(Int32.max)),
            invalid: "is not a number of bytes from 1024 to 2147483647")
        {
            r.maxMessageSize = v
        }
        if let v = typed(
            relay["max-recipients"], sourceKey: "relay.max-recipients", descriptor: d("max-recipients"), integer(1...100_000),
            invalid: "is not an integer from 1 to 100000")
        {
            r.maxRecipients = v
        }
        if let v = typed(
            relay["max-connections"], sourceKey: "relay.max-connections", descriptor: d("max-connections"), integer(1...100_000),
            invalid: "is not an integer from 1 to 100000")
        {
            r.maxConnections = v
        }
        if let v = typed(
            relay["max-connections-per-client"], sourceKey: "relay.max-connections-per-client", descriptor: d("max-connections-per-client"),
            integer(1...100_000), invalid: "is not an integer from 1 to 100000")
        {
            r.maxConnectionsPerClient = v
        }
        r.hostname = typed(
            relay["hostname"], sourceKey: "relay.hostname", descriptor: d("hostname"), { Convert.isHost($0) && !$0.contains(":") ? $0 : nil },
            invalid: "is not a host name (letters, digits, dots and hyphens)")
        if let v = typed(
            relay["command-timeout"], sourceKey: "relay.command-timeout", descriptor: d("command-timeout"), positiveTime, invalid: timeMessage)
        {
            r.commandTimeout = v
        }
        if let v = typed(relay["data-timeout"], sourceKey: "relay.data-timeout", descriptor: d("data-timeout"), positiveTime, invalid: timeMessage) {
            r.dataTimeout = v
        }
        if let v = typed(
            relay["session-timeout"], sourceKey: "relay.session-timeout", descriptor: d("session-timeout"), positiveTime, invalid: timeMessage)
        {
            r.sessionTimeout = v
        }
        if let v = typed(
            relay["auth-failure-limit"], sourceKey: "relay.auth-failure-limit", descriptor: d("auth-failure-limit"), integer(1...1000),
            invalid: "is not an integer from 1 to 1000")
        {
            r.authFailureLimit = v
        }
        if let v = typed(
            relay["auth-lockout-time"], sourceKey: "relay.auth-lockout-time", descriptor: d("auth-lockout-time"), { TimeValue.parse($0) },
            invalid: Self.timeMessage)
        {
            r.authLockoutTime = v
        }
        r.bounceCopyTo = typed(
            relay["bounce-copy-to"], sourceKey: "relay.bounce-copy-to", descriptor: d("bounce-copy-to"),
            { s in
                let parts = s.split(separator: "@", omittingEmptySubsequences: false)
                return parts.count == 2 && !parts[0].isEmpty && !parts[1].isEmpty && !s.contains(where: { $0.isWhitespace || $0 == "<" || $0 == ">" })
                    ? s : nil
            }, invalid: "is not an e-mail address (local@domain, without <>)")
        if let v = typed(
            relay["add-received-header"], sourceKey: "relay.add-received-header", descriptor: d("add-received-header"), Convert.bool,
            invalid: "is not true or false")
        {
            r.addReceivedHeader = v
        }
        if let v = typed(
            relay["add-message-id"], sourceKey: "relay.add-message-id", descriptor: d("add-message-id"), Convert.bool, invalid: "is not true or false"
        ) {
            r.addMessageID = v
        }
        if let v = typed(relay["add-date"], sourceKey: "relay.add-date", descriptor: d("add-date"), Convert.bool, invalid: "is not true or false") {
            r.addDate = v
        }
        configuration.relay = r
        checkRelayRules(r)
    }

    mutating func checkRelayRules(_ r: RelaySettings) {
        let here = ConfigurationLocation(file: fileName, line: nil)
        func at(_ key: String) -> ConfigurationLocation { relay[key]?.location ?? here }
        let listenFailed = failed.contains("listen") || failed.contains("listen-tls")
        // Never an open relay.
        if !listenFailed, !failed.contains("allowed-networks"), let everyone = r.allowedNetworks.first(where: \.coversEveryone) {
            let exposed = (r.listen + r.listenTLS).filter { address in
                guard let colon = address.lastIndex(of: ":") else { return true }
                return !Convert.isLoopback(String(address[..<colon]))
            }
            if !exposed.isEmpty {
                problem(
                    "open_relay", at("allowed-networks"), option: "relay.allowed-networks", value: everyone.description,
                    "covers every address while the relay listens on \(exposed.joined(separator: ", ")), which is not loopback: anyone could send mail through Outbox (an open relay). Name the networks that may send without AUTH (e.g. 192.0.2.0/24), or use [client-NAME] identities"
                )
            }
        }
        let certGiven = relay["tls-certificate-file"] != nil
        let keyGiven = relay["tls-key-file"] != nil
        if certGiven != keyGiven, !failed.contains("tls-certificate-file"), !failed.contains("tls-key-file") {
            let missing = certGiven ? "tls-key-file" : "tls-certificate-file"
            problem(
                "relay_tls_incomplete", at(certGiven ? "tls-certificate-file" : "tls-key-file"), option: "relay.\(missing)", value: nil,
                "is not set: the relay's TLS needs both tls-certificate-file and tls-key-file")
        }
        if !r.listenTLS.isEmpty, !r.hasCertificate, !certGiven, !keyGiven {
            problem(
                "relay_tls_needs_certificate", at("listen-tls"), option: "relay.listen-tls", value: r.listenTLS.joined(separator: ","),
                "needs tls-certificate-file and tls-key-file in [relay] (implicit TLS cannot start without a certificate)")
        }
    }

    mutating func interpretClients(_ configuration: inout OutboxConfiguration) {
        var users: [String: String] = [:]
        var tokens: [String: String] = [:]
        for name in clients.keys.sorted() {
            let entries = clients[name] ?? [:]
            let header = clientHeaders[name] ?? ConfigurationLocation(file: fileName, line: nil)
            reportUnknownKeys(entries.keys.sorted(), in: entries, known: OptionTable.clientSection.map(\.name), what: "a key of [client-\(name)]")
            let user = entries["user"].map(\.value).flatMap { $0.isEmpty ? nil : $0 }
            if let entry = entries["user"] { sources["client-\(name).user"] = entry.source }
            let hash = secretValue(entries["password-hash"], sourceKey: "client-\(name).password-hash")
            var senders: [String]? = nil
            if let entry = entries["allowed-senders"] {
                sources["client-\(name).allowed-senders"] = entry.source
                let list = Convert.list(entry.value)
                if let bad = list.first(where: { p in
                    if p == "*" { return false }
                    let parts = p.split(separator: "@", omittingEmptySubsequences: false)
                    guard parts.count == 2, !parts[1].isEmpty, !parts[1].contains("*") else { return true }
                    return parts[0].isEmpty || (parts[0].contains("*") && parts[0] != "*")
                }) {
                    problem(
                        "invalid_value", entry.location, option: entry.displayName, value: entry.value,
                        "\(bad) is not an address pattern; valid: *@example.com, scanner@example.com, or * (any sender)")
                } else {
                    senders = list
                }
            }
            var missing: [String] = []
            if user == nil { missing.append("user") }
            if hash == nil && !failed.contains("client-\(name).password-hash") { missing.append("password-hash") }
            if entries["allowed-senders"] == nil || (senders?.isEmpty ?? false) { missing.append("allowed-senders") }
            if !missing.isEmpty {
                problem(
                    "client_incomplete", header, option: "[client-\(name)]", value: nil,
                    "needs \(missing.joined(separator: ", ")) (user and password-hash from `outbox hash-password`, allowed-senders such as *@example.com)"
                )
            }
            if let hash, !ClientIdentity.looksLikeBcrypt(hash.value) {
                let location = entries["password-hash"]?.location ?? header
                problem(
                    "invalid_value", location, option: "client-\(name).password-hash", value: nil,
                    "is not a bcrypt hash ($2b$12$ followed by 53 characters): make one with `outbox hash-password`")
                continue
            }
            if let user {
                if let other = users[user.lowercased()] {
                    problem(
                        "duplicate_client_user", entries["user"]?.location ?? header, option: "client-\(name).user", value: user,
                        "is also the user of [client-\(other)]: each client needs its own user name")
                }
                users[user.lowercased()] = name
            }
            var intakeLimit: Int?
            if let entry = entries["intake-limit-per-minute"] {
                sources["client-\(name).intake-limit-per-minute"] = entry.source
                if let n = Convert.integer(0...100_000_000)(entry.value) {
                    intakeLimit = n > 0 ? n : nil
                } else {
                    problem(
                        "invalid_value", entry.location, option: entry.displayName, value: entry.value,
                        "is not an integer from 0 (no limit) to 100000000")
                }
            }
            let routeNames = configuration.routeNames
            func checkRoute(_ entry: RawEntry, _ route: String) -> Bool {
                guard routeNames.contains(route) else {
                    problem(
                        "unknown_route", entry.location, option: entry.displayName, value: entry.value,
                        "names the route \(route), which is not configured; the routes are \(routeNames.joined(separator: ", ")) ([smtp-client] is default, [smtp-client-NAME] is NAME)"
                    )
                    return false
                }
                return true
            }
            var route: String?
            if let entry = entries["route"] {
                sources["client-\(name).route"] = entry.source
                if !entry.value.isEmpty, checkRoute(entry, entry.value) { route = entry.value }
            }
            var routes: [String]?
            if let entry = entries["routes"] {
                sources["client-\(name).routes"] = entry.source
                let list = Convert.list(entry.value)
                if list.allSatisfy({ checkRoute(entry, $0) }) { routes = list }
            }
            let apiToken = secretValue(entries["api-token"], sourceKey: "client-\(name).api-token")
            if let apiToken, apiToken.value.count < 16, let entry = entries["api-token"] {
                warn(
                    "weak_api_token", entry.location, option: entry.displayName,
                    "\(entry.displayName) is shorter than 16 characters: use a long random token (e.g. openssl rand -hex 24)")
            }
            if let apiToken {
                if configuration.outbox.apiTokenList.contains(apiToken.value) {
                    problem(
                        "duplicate_api_token", entries["api-token"]?.location ?? header, option: "client-\(name).api-token", value: nil,
                        "is also one of [outbox] api-tokens (an operator's token): a client's token must be its own")
                }
                if let other = tokens[apiToken.value] {
                    problem(
                        "duplicate_api_token", entries["api-token"]?.location ?? header, option: "client-\(name).api-token", value: nil,
                        "is also the api-token of [client-\(other)]: each client needs its own token")
                }
                tokens[apiToken.value] = name
            }
            if let user, let hash, let senders, !senders.isEmpty {
                var identity = ClientIdentity(
                    name: name, user: user, passwordHash: hash, allowedSenders: senders, route: route, routes: routes, apiToken: apiToken)
                identity.intakeLimitPerMinute = intakeLimit
                configuration.clients.append(identity)
            }
        }
    }
}

extension ClientIdentity {
    /// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, `$`, and 53 characters of bcrypt's base64.
    package static func looksLikeBcrypt(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard b.count == 60, b[0] == UInt8(ascii: "$"), b[1] == UInt8(ascii: "2"),
            [UInt8(ascii: "a"), UInt8(ascii: "b"), UInt8(ascii: "y")].contains(b[2]),
            b[3] == UInt8(ascii: "$"), b[6] == UInt8(ascii: "$"),
            let cost = Int(String(decoding: b[4..<6], as: UTF8.self)), (4...31).contains(cost)
        else { return false }
        return b[7...].allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2e || $0 == 0x2f
        }
    }
}
