import Foundation

// MARK: - Value converters

enum Convert {
    static func bool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "true": true
        case "false": false
        default: nil
        }
    }

    static func oneOf(_ s: String, _ values: [String]) -> String? {
        values.first { $0.lowercased() == s.lowercased() }
    }

    static func isHTTPURL(_ s: String) -> Bool {
        let lower = s.lowercased()
        for scheme in ["https://", "http://"] where lower.hasPrefix(scheme) {
            let rest = s.dropFirst(scheme.count)
            return !rest.isEmpty && !rest.hasPrefix("/") && !s.contains(where: { $0.isWhitespace })
        }
        return false
    }

    /// A host name, IPv4 address or IPv6 address (bare or in brackets).
    static func isHost(_ s: String) -> Bool {
        guard !s.isEmpty, !s.contains("://") else { return false }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]%")
        return s.allSatisfy { allowed.contains($0) }
    }

    static func isLoopback(_ host: String) -> Bool {
        let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return h == "localhost" || h.hasSuffix(".localhost") || h.hasPrefix("127.") || h == "::1"
    }

    /// `host:port`, host possibly `[v6]`.
    static func isListenAddress(_ s: String) -> Bool {
        guard let colon = s.lastIndex(of: ":") else { return false }
        let host = s[..<colon]
        let port = s[s.index(after: colon)...]
        guard let p = Int(port), (1...65535).contains(p), port.allSatisfy(\.isASCII) else { return false }
        if host.hasPrefix("[") { return host.hasSuffix("]") && host.count > 2 }
        return !host.isEmpty && !host.contains(":") && !host.contains(where: \.isWhitespace)
    }

    static func list(_ s: String) -> [String] {
        s.split(whereSeparator: { $0.isWhitespace || $0 == "," }).map(String.init)
    }

    /// A whole number inside `range`.
    static func integer(_ range: ClosedRange<Int>) -> (String) -> Int? {
        { Int($0).flatMap { range.contains($0) ? $0 : nil } }
    }

    /// A time greater than zero.
    static func positiveTime(_ s: String) -> Duration? {
        TimeValue.parse(s).flatMap { $0 > .zero ? $0 : nil }
    }
}

// MARK: - Interpretation

extension ConfigurationReader {
    mutating func invalid(_ entry: RawEntry, secret: Bool = false, _ message: String) {
        failed.insert(entry.key)
        problem("invalid_value", entry.location, option: entry.displayName, value: secret ? nil : entry.value, message)
    }

    /// Converts an entry's value; records its source; reports an invalid or empty value.
    /// Returns nil when the entry is absent, invalid, or empty for an option without default.
    mutating func typed<T>(
        _ entry: RawEntry?, sourceKey: String, descriptor: OptionDescriptor,
        _ convert: (String) -> T?, invalid message: String
    ) -> T? {
        guard let entry else { return nil }
        sources[sourceKey] = entry.source
        if entry.value.isEmpty {
            if let defaultValue = descriptor.defaultValue {
                failed.insert(entry.key)
                problem(
                    "missing_value", entry.location, option: entry.displayName, value: nil,
                    "has no value; valid values: \(descriptor.validValues) (remove the line to use the default, \(defaultValue))")
            }
            return nil
        }
        if let value = convert(entry.value) { return value }
        invalid(entry, secret: descriptor.isSecret, message)
        return nil
    }

    static let timeMessage = "is not a time in \(TimeValue.formatDescription)"

    mutating func enumMessage(_ entry: RawEntry?, _ values: [String]) -> String {
        var message = "is not one of " + values.joined(separator: ", ")
        if let entry, let guess = Suggest.closest(to: entry.value, among: values) { message += "; did you mean \(guess)?" }
        return message
    }

    /// Resolves `env:NAME` / `file:/path` / a literal for a secret.
    mutating func secretValue(_ entry: RawEntry?, sourceKey: String) -> Secret? {
        guard let entry else { return nil }
        let value = entry.value
        sources[sourceKey] = entry.source
        if value.hasPrefix("env:") {
            let variable = String(value.dropFirst(4))
            guard !variable.isEmpty else {
                failed.insert(sourceKey)
                problem(
                    "invalid_value", entry.location, option: entry.displayName, value: nil, "= env: names no environment variable (write env:NAME)")
                return nil
            }
            sources[sourceKey] = .environment(variable: variable)
            guard let secret = environment[variable] else {
                failed.insert(sourceKey)
                problem(
                    "missing_secret", entry.location, option: entry.displayName, value: nil,
                    "refers to the environment variable \(variable), which is not set")
                return nil
            }
            return Secret(secret)
        }
        if value.hasPrefix("file:") {
            let path = String(value.dropFirst(5))
            sources[sourceKey] = .secretFile(path: path)
            guard !path.isEmpty, var contents = try? String(contentsOfFile: path, encoding: .utf8) else {
                failed.insert(sourceKey)
                problem(
                    "missing_secret", entry.location, option: entry.displayName, value: nil,
                    "refers to the file \(path), which cannot be read (it must exist and hold UTF-8 text)")
                return nil
            }
            if contents.hasSuffix("\r\n") {
                contents.removeLast(1)
            }  // "\r\n" is one Character
            else if contents.hasSuffix("\n") {
                contents.removeLast()
            }
            return Secret(contents)
        }
        return value.isEmpty ? nil : Secret(value)
    }

    mutating func interpret() -> OutboxConfiguration {
        var configuration = OutboxConfiguration()
        var o = interpretSMTPClientOptions(section: "[smtp-client]")
        interpretMail(&o, &configuration)
        interpretOutbox(&configuration)
        interpretRelay(&configuration)
        interpretSecrets(&configuration)
        configuration.smtpClient = o
        checkRules(configuration)
        interpretRoutes(&configuration)
        interpretClients(&configuration)
        configuration.warnings = warnings
        configuration.notes = notes
        configuration.sources = sources
        return configuration
    }

    /// The reference's options (and Outbox's route options) of one `[smtp-client]` or
    /// `[smtp-client-NAME]` section, from ``smtp``.
    mutating func interpretSMTPClientOptions(section: String) -> SMTPClientOptions {
        var o = SMTPClientOptions()
        let known = OptionTable.smtpClient.map(\.name) + OptionTable.routeOptions.map(\.name) + OptionTable.pacingOptions.map(\.name)
        func d(_ name: String) -> OptionDescriptor { OptionTable.descriptor(smtpClient: name)! }

        // Unknown keys: errors (no value shown: a misspelt "password" would leak).
        for key in smtpOrder where !key.hasPrefix("mail.") && !known.contains(key) {
            guard let entry = smtp[key] else { continue }
            var message = "is not an option of \(section)"
            if let guess = Suggest.closest(to: key, among: known) {
                message += "; did you mean \(guess)?"
            } else {
                message += " (see docs/options.md)"
            }
            problem("unknown_option", entry.location, option: entry.displayName, value: nil, message)
        }

        let timeMessage = Self.timeMessage
        func time(_ s: String) -> Duration? { TimeValue.parse(s) }
        func string(_ s: String) -> String? { s }

        if let v = typed(
            smtp["allow-delegate"], sourceKey: "allow-delegate", descriptor: d("allow-delegate"), Convert.bool, invalid: "is not true or false")
        {
            o.allowDelegate = v
        }
        o.clientID = typed(smtp["client-id"], sourceKey: "client-id", descriptor: d("client-id"), string, invalid: "")
        if let v = typed(
            smtp["cnx-check-idle-time"], sourceKey: "cnx-check-idle-time", descriptor: d("cnx-check-idle-time"), time, invalid: timeMessage)
        {
            o.cnxCheckIdleTime = v
        }
        if let v = typed(smtp["cnx-max-idle-time"], sourceKey: "cnx-max-idle-time", descriptor: d("cnx-max-idle-time"), time, invalid: timeMessage) {
            o.cnxMaxIdleTime = v
        }
        if let v = typed(
            smtp["cnx-pool-size"], sourceKey: "cnx-pool-size", descriptor: d("cnx-pool-size"), { Int($0).flatMap { $0 > 0 ? $0 : nil } },
            invalid: "is not an integer greater than 0")
        {
            o.cnxPoolSize = v
        }
        if let v = typed(smtp["connect-timeout"], sourceKey: "connect-timeout", descriptor: d("connect-timeout"), time, invalid: timeMessage) {
            o.connectTimeout = v
        }
        o.directoryID = typed(smtp["directory-id"], sourceKey: "directory-id", descriptor: d("directory-id"), string, invalid: "")
        if let v = typed(
            smtp["enable-authentication"], sourceKey: "enable-authentication", descriptor: d("enable-authentication"), Convert.bool,
            invalid: "is not true or false")
        {
            o.enableAuthentication = v
        }
        if let v = typed(
            smtp["enable-debug"], sourceKey: "enable-debug", descriptor: d("enable-debug"), Convert.bool, invalid: "is not true or false")
        {
            o.enableDebug = v
        }
        if let entry = smtp["exchange-version"] {
            if entry.value.isEmpty {
                sources["exchange-version"] = entry.source
                o.exchangeVersion = nil
            } else {
                let message = enumMessage(entry, OptionTable.exchangeVersions) + " (or empty, for Exchange 2019)"
                if let v = typed(
                    entry, sourceKey: "exchange-version", descriptor: d("exchange-version"), { Convert.oneOf($0, OptionTable.exchangeVersions) },
                    invalid: message)
                {
                    o.exchangeVersion = v
                }
            }
        }
        o.password = secretValue(smtp["password"], sourceKey: "password")
        if let v = typed(
            smtp["port"], sourceKey: "port", descriptor: d("port"), { Int($0).flatMap { (1...65535).contains($0) ? $0 : nil } },
            invalid: "is not a port number (1-65535)")
        {
            o.port = v
        }
        if let v = typed(smtp["protocol-timeout"], sourceKey: "protocol-timeout", descriptor: d("protocol-timeout"), time, invalid: timeMessage) {
            o.protocolTimeout = v
        }
        if let v = typed(smtp["scope"], sourceKey: "scope", descriptor: d("scope"), string, invalid: "") { o.scope = v }
        if let v = typed(
            smtp["secret"], sourceKey: "secret", descriptor: d("secret"), { $0.contains(where: \.isWhitespace) ? nil : $0 },
            invalid: "contains white space; the secret name must not")
        {
            o.secret = v
        }
        if let entry = smtp["server"],
            let v = typed(
                entry, sourceKey: "server", descriptor: d("server"), { $0.contains(where: \.isWhitespace) ? nil : $0 },
                invalid: "contains white space; give a host name, an IP address, or (for EWS) a URL")
        {
            o.server = v
        }
        let serverTypes = ServerType.allCases.map(\.rawValue)
        if let v = typed(
            smtp["server-type"], sourceKey: "server-type", descriptor: d("server-type"),
            { Convert.oneOf($0, serverTypes).flatMap(ServerType.init(rawValue:)) }, invalid: enumMessage(smtp["server-type"], serverTypes))
        {
            o.serverType = v
        }
        let securities = SMTPConnectionSecurity.allCases.map(\.rawValue)
        if let v = typed(
            smtp["smtp-connection-security"], sourceKey: "smtp-connection-security", descriptor: d("smtp-connection-security"),
            { Convert.oneOf($0, securities).flatMap(SMTPConnectionSecurity.init(rawValue:)) },
            invalid: enumMessage(smtp["smtp-connection-security"], securities))
        {
            o.smtpConnectionSecurity = v
        }
        if let v = typed(
            smtp["tenant-authority"], sourceKey: "tenant-authority", descriptor: d("tenant-authority"),
            { ($0.lowercased().contains("google") || Convert.isHTTPURL($0)) ? $0 : nil },
            invalid:
                "is neither a Microsoft authority URL (such as https://login.microsoftonline.com) nor a Google authority (a string containing \"google\")"
        ) {
            o.tenantAuthority = v
        }
        if let entry = smtp["token-expiry-margin-time"] {
            let parsed = TimeValue.parse(entry.value)
            let message = parsed == nil ? timeMessage : "is not less than one hour (at most 00:59:59)"
            if let v = typed(
                entry, sourceKey: "token-expiry-margin-time", descriptor: d("token-expiry-margin-time"),
                { TimeValue.parse($0).flatMap { $0 < .seconds(3600) ? $0 : nil } }, invalid: message)
            {
                o.tokenExpiryMarginTime = v
            }
        }
        o.user = typed(smtp["user"], sourceKey: "user", descriptor: d("user"), string, invalid: "")
        let grants = GrantType.allCases.map(\.rawValue)
        o.grantType = typed(
            smtp["grant-type"], sourceKey: "grant-type", descriptor: d("grant-type"),
            { Convert.oneOf($0, grants).flatMap(GrantType.init(rawValue:)) }, invalid: enumMessage(smtp["grant-type"], grants))
        interpretRouteOptions(&o)
        interpretPacing(&o)
        return o
    }

    mutating func interpretMail(_ o: inout SMTPClientOptions, _ configuration: inout OutboxConfiguration) {
        func d(_ name: String) -> OptionDescriptor { OptionTable.descriptor(smtpClient: name)! }
        let understood = OptionTable.mailProperties.map(\.name)
        for key in smtpOrder where key.hasPrefix("mail.") {
            guard let entry = smtp[key] else { continue }
            configuration.mailProperties[key] = entry.value
            if !understood.contains(key) {
                sources[key] = entry.source
                configuration.unusedMailProperties.append(key)
                var message = "\(entry.displayName) is kept but not used by Outbox"
                if let guess = Suggest.closest(to: key, among: understood) { message += "; did you mean \(guess)?" }
                warn("unused_mail_property", entry.location, option: entry.displayName, message)
            }
        }
        let mechanisms: (String) -> [String]? = { s in
            let list = Convert.list(s).map { $0.uppercased() }
            return list.isEmpty || list.contains(where: { !$0.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" } }) ? nil : list
        }
        let mechanismMessage = "is not a space-separated list of SASL mechanism names (e.g. XOAUTH2, or PLAIN LOGIN)"
        o.authMechanisms = typed(
            smtp["mail.smtp.auth.mechanisms"], sourceKey: "mail.smtp.auth.mechanisms", descriptor: d("mail.smtp.auth.mechanisms"), mechanisms,
            invalid: mechanismMessage)
        o.ewsAuthMechanisms = typed(
            smtp["mail.ews.auth.mechanisms"], sourceKey: "mail.ews.auth.mechanisms", descriptor: d("mail.ews.auth.mechanisms"), mechanisms,
            invalid: mechanismMessage)
        o.localhost = typed(
            smtp["mail.smtp.localhost"], sourceKey: "mail.smtp.localhost", descriptor: d("mail.smtp.localhost"),
            { Convert.isHost($0) ? $0 : nil }, invalid: "is not a host name or address literal (e.g. mail.example.com or [192.0.2.1])")
        o.envelopeFrom = typed(
            smtp["mail.smtp.from"], sourceKey: "mail.smtp.from", descriptor: d("mail.smtp.from"),
            { s in
                let parts = s.split(separator: "@", omittingEmptySubsequences: false)
                let bad = s.contains(where: { $0.isWhitespace || $0 == "<" || $0 == ">" || $0.asciiValue.map { $0 < 32 || $0 == 127 } == true })
                return parts.count == 2 && !parts[0].isEmpty && !parts[1].isEmpty && !bad ? s : nil
            }, invalid: "is not an e-mail address (local@domain, without <>)")
        if let v = typed(
            smtp["mail.smtp.sendpartial"], sourceKey: "mail.smtp.sendpartial", descriptor: d("mail.smtp.sendpartial"), Convert.bool,
            invalid: "is not true or false")
        {
            o.sendPartial = v
        }
        o.dsnNotify = typed(
            smtp["mail.smtp.dsn.notify"], sourceKey: "mail.smtp.dsn.notify", descriptor: d("mail.smtp.dsn.notify"),
            { s in
                let items = s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces).uppercased() }
                if items == ["NEVER"] { return "NEVER" }
                guard !items.isEmpty, Set(items).count == items.count, items.allSatisfy({ ["SUCCESS", "FAILURE", "DELAY"].contains($0) }) else {
                    return nil
                }
                return items.joined(separator: ",")
            }, invalid: "is not NEVER or a comma-separated combination of SUCCESS, FAILURE, DELAY")
        o.dsnRet = typed(
            smtp["mail.smtp.dsn.ret"], sourceKey: "mail.smtp.dsn.ret", descriptor: d("mail.smtp.dsn.ret"), { Convert.oneOf($0, ["FULL", "HDRS"]) },
            invalid: "is not one of FULL, HDRS")
        if let v = typed(
            smtp["mail.smtp.ssl.trust"], sourceKey: "mail.smtp.ssl.trust", descriptor: d("mail.smtp.ssl.trust"),
            { s in
                let hosts = Convert.list(s)
                return hosts.allSatisfy { $0 == "*" || Convert.isHost($0) } ? hosts : nil
            }, invalid: "is not a space-separated list of host names (or *)")
        {
            o.sslTrust = v
        }
        if let v = typed(
            smtp["mail.smtp.ssl.checkserveridentity"], sourceKey: "mail.smtp.ssl.checkserveridentity",
            descriptor: d("mail.smtp.ssl.checkserveridentity"), Convert.bool, invalid: "is not true or false")
        {
            o.checkServerIdentity = v
        }
    }

    mutating func interpretOutbox(_ configuration: inout OutboxConfiguration) {
        var s = OutboxSettings()
        reportUnknownKeys(outboxOrder, in: outbox, known: OptionTable.outbox.map(\.name), what: "a setting of [outbox]")
        func d(_ name: String) -> OptionDescriptor { OptionTable.descriptor(outbox: name)! }
        let urlMessage = "is not an https:// or http:// URL"
        if let v = typed(outbox["data-directory"], sourceKey: "outbox.data-directory", descriptor: d("data-directory"), { $0 }, invalid: "") {
            s.dataDirectory = v
        }
        if let v = typed(
            outbox["http-listen"], sourceKey: "outbox.http-listen", descriptor: d("http-listen"), { Convert.isListenAddress($0) ? $0 : nil },
            invalid: "is not host:port with a port 1-65535 (e.g. 127.0.0.1:8025 or [::1]:8025)")
        {
            s.httpListen = v
        }
        if let v = typed(
            outbox["store"], sourceKey: "outbox.store", descriptor: d("store"),
            { v in
                let lower = v.lowercased()
                if lower.hasPrefix("postgres://") || lower.hasPrefix("postgresql://") { return v.count > "postgres://".count ? v : nil }
                return Convert.oneOf(v, ["sqlite", "memory"])
            }, invalid: "is not one of sqlite, memory or a postgres://user:password@host:port/database URL")
        {
            s.store = v
        }
        for (name, keyPath) in [
            ("http-tls-certificate-file", \OutboxSettings.httpTLSCertificateFile), ("http-tls-key-file", \OutboxSettings.httpTLSKeyFile),
        ] {
            s[keyPath: keyPath] = typed(
                outbox[name], sourceKey: "outbox.\(name)", descriptor: d(name),
                { path in
                    var isDirectory: ObjCBool = false
                    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else { return nil }
                    return FileManager.default.isReadableFile(atPath: path) ? path : nil
                }, invalid: "is not an existing, readable file (PEM)")
        }
        let tlsKeys = ["http-tls-certificate-file", "http-tls-key-file"]
        if (s.httpTLSCertificateFile == nil) != (s.httpTLSKeyFile == nil), !tlsKeys.contains(where: { failed.contains($0) }) {
            let (given, missing) = s.httpTLSCertificateFile != nil ? (tlsKeys[0], tlsKeys[1]) : (tlsKeys[1], tlsKeys[0])
            if let entry = outbox[given] {
                problem(
                    "http_tls_incomplete", entry.location, option: entry.displayName, value: entry.value,
                    "is set but \(missing) is not: HTTPS needs both the certificate and its private key")
            }
        }
        s.tlsCAFile = typed(
            outbox["tls-ca-file"], sourceKey: "outbox.tls-ca-file", descriptor: d("tls-ca-file"),
            { path in
                var isDirectory: ObjCBool = false
                return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue ? path : nil
            }, invalid: "is not an existing file (a PEM file of CA certificates)")
        if let v = typed(
            outbox["graph-url"], sourceKey: "outbox.graph-url", descriptor: d("graph-url"), { Convert.isHTTPURL($0) ? $0 : nil }, invalid: urlMessage)
        {
            s.graphURL = v
        }
        if let v = typed(
            outbox["google-token-url"], sourceKey: "outbox.google-token-url", descriptor: d("google-token-url"), { Convert.isHTTPURL($0) ? $0 : nil },
            invalid: urlMessage)
        {
            s.googleTokenURL = v
        }
        s.apiTokens = secretValue(outbox["api-tokens"], sourceKey: "outbox.api-tokens")
        if let v = typed(
            outbox["require-api-token"], sourceKey: "outbox.require-api-token", descriptor: d("require-api-token"), Convert.bool,
            invalid: "is not true or false")
        {
            s.requireAPIToken = v
        }
        let integer = Convert.integer
        let positiveTime = Convert.positiveTime
        func time(_ v: String) -> Duration? { TimeValue.parse(v) }
        if let v = typed(
            outbox["max-request-size"], sourceKey: "outbox.max-request-size", descriptor: d("max-request-size"), integer(1024...Int(Int32.max)),
            invalid: "is not a number of bytes from 1024 to 2147483647")
        {
            s.maxRequestSize = v
        }
        if let v = typed(
            outbox["delivery-concurrency"], sourceKey: "outbox.delivery-concurrency", descriptor: d("delivery-concurrency"), integer(1...1000),
            invalid: "is not an integer from 1 to 1000")
        {
            s.deliveryConcurrency = v
        }
        if let v = typed(
            outbox["lease-time"], sourceKey: "outbox.lease-time", descriptor: d("lease-time"), positiveTime,
            invalid: Self.timeMessage + " greater than 00:00:00")
        {
            s.leaseTime = v
        }
        if let v = typed(
            outbox["retry-initial-delay"], sourceKey: "outbox.retry-initial-delay", descriptor: d("retry-initial-delay"), time,
            invalid: Self.timeMessage)
        {
            s.retryInitialDelay = v
        }
        if let v = typed(
            outbox["retry-max-delay"], sourceKey: "outbox.retry-max-delay", descriptor: d("retry-max-delay"), time, invalid: Self.timeMessage)
        {
            s.retryMaxDelay = v
        }
        if let v = typed(outbox["retry-max-age"], sourceKey: "outbox.retry-max-age", descriptor: d("retry-max-age"), time, invalid: Self.timeMessage)
        {
            s.retryMaxAge = v
        }
        if let v = typed(
            outbox["unknown-outcome-retries"], sourceKey: "outbox.unknown-outcome-retries", descriptor: d("unknown-outcome-retries"), integer(0...10),
            invalid: "is not an integer from 0 to 10")
        {
            s.unknownOutcomeRetries = v
        }
        if let v = typed(
            outbox["rate-limit-per-minute"], sourceKey: "outbox.rate-limit-per-minute", descriptor: d("rate-limit-per-minute"),
            integer(0...1_000_000), invalid: "is not an integer from 0 (no limit) to 1000000")
        {
            s.rateLimitPerMinute = v
        }
        if let v = typed(
            outbox["mailbox-concurrency"], sourceKey: "outbox.mailbox-concurrency", descriptor: d("mailbox-concurrency"), integer(0...1000),
            invalid: "is not an integer from 0 (no limit) to 1000")
        {
            s.mailboxConcurrency = v
        }
        if let v = typed(
            outbox["shutdown-deadline"], sourceKey: "outbox.shutdown-deadline", descriptor: d("shutdown-deadline"), time, invalid: Self.timeMessage)
        {
            s.shutdownDeadline = v
        }
        if let v = typed(
            outbox["queue-min-free"], sourceKey: "outbox.queue-min-free", descriptor: d("queue-min-free"), QueueMinFree.parse,
            invalid: "is not auto, a byte count (8388608), a size with a unit (100MiB, 2GiB, 500MB) or a share of the disk below 100% (5%)")
        {
            s.queueMinFree = v
        }
        if let v = typed(
            outbox["retention-content"], sourceKey: "outbox.retention-content", descriptor: d("retention-content"), time, invalid: Self.timeMessage)
        {
            s.retentionContent = v
        }
        if let v = typed(
            outbox["retention-records"], sourceKey: "outbox.retention-records", descriptor: d("retention-records"), time, invalid: Self.timeMessage)
        {
            s.retentionRecords = v
        }
        if let v = typed(
            outbox["store-unavailable-wait"], sourceKey: "outbox.store-unavailable-wait", descriptor: d("store-unavailable-wait"),
            Convert.positiveTime, invalid: "is not a time greater than 0 in \(TimeValue.formatDescription)")
        {
            s.storeUnavailableWait = v
        }
        if let v = typed(
            outbox["log-format"], sourceKey: "outbox.log-format", descriptor: d("log-format"),
            { Convert.oneOf($0, LogFormat.allCases.map(\.rawValue)).flatMap(LogFormat.init(rawValue:)) }, invalid: "is not logfmt or json")
        {
            s.logFormat = v
        }
        s.otelEndpoint = typed(
            outbox["otel-endpoint"], sourceKey: "outbox.otel-endpoint", descriptor: d("otel-endpoint"), { Convert.isHTTPURL($0) ? $0 : nil },
            invalid: urlMessage)
        configuration.outbox = s
    }

    /// Reports each key of `order` that is not one of `known`, with the closest known one.
    mutating func reportUnknownKeys(_ order: [String], in entries: [String: RawEntry], known: [String], what: String) {
        for key in order where !known.contains(key) {
            guard let entry = entries[key] else { continue }
            var message = "is not \(what) (valid: \(known.joined(separator: ", ")))"
            if let guess = Suggest.closest(to: key, among: known) { message += "; did you mean \(guess)?" }
            problem("unknown_option", entry.location, option: entry.displayName, value: nil, message)
        }
    }

    mutating func interpretSecrets(_ configuration: inout OutboxConfiguration) {
        for name in secrets.keys.sorted() {
            let entries = secrets[name] ?? [:]
            for key in entries.keys.sorted() where key != "password" {
                guard let entry = entries[key] else { continue }
                problem(
                    "unknown_option", entry.location, option: entry.displayName, value: nil,
                    "is not a key of [secret-\(name)]; its only key is password (the Google application's client secret)")
            }
            let password = secretValue(entries["password"], sourceKey: "secret-\(name).password")
            configuration.secretSections[name] = SecretSection(name: name, password: password)
        }
    }
}
