import Foundation

/// One row of the effective configuration, as `check-config` shows it.
package struct EffectiveOption: Sendable, Equatable {
    /// `smtp-client`, `outbox` or `secret-<name>`.
    package var section: String
    /// The name as `-o` takes it: `port`, `mail.smtp.from`, `outbox.store`, `secret-smtp.password`.
    package var name: String
    /// The value for display; secrets are `********` when set. `(not set)` when absent.
    package var value: String
    package var source: ValueSource
    package var effect: ChangeEffect
    package var isSecret: Bool
    /// For comparing configurations; holds secret values, so never print it.
    var comparable: String
}

/// A difference between two configurations, for the daemon's reload.
public struct ConfigurationChange: Sendable, Equatable {
    /// The option's name as `-o` takes it, e.g. `port` or `outbox.store`.
    public var name: String
    /// When the new value takes effect.
    public var effect: ChangeEffect

    package init(name: String, effect: ChangeEffect) {
        self.name = name
        self.effect = effect
    }
}

extension OutboxConfiguration {
    static let masked = "********"
    static let notSet = "(not set)"

    /// Every option with its effective value, source and effect: `[smtp-client]` in the
    /// reference's order, the understood `mail.*` keys, other `mail.*` keys given, the secret
    /// sections, then `[outbox]`.
    package func effectiveOptions() -> [EffectiveOption] {
        func time(_ d: Duration) -> String { TimeValue.format(d) }
        func text(_ s: String?) -> String { s ?? Self.notSet }
        var rows: [EffectiveOption] = []
        func add(_ section: String, _ name: String, _ value: String, effect: ChangeEffect, sourceKey: String? = nil, secret: Secret?? = nil) {
            if let secret {
                let shown = secret == nil ? Self.notSet : Self.masked
                rows.append(
                    EffectiveOption(
                        section: section, name: name, value: shown, source: source(of: sourceKey ?? name), effect: effect, isSecret: true,
                        comparable: secret?.value ?? "\u{0}"))
            } else {
                rows.append(
                    EffectiveOption(
                        section: section, name: name, value: value, source: source(of: sourceKey ?? name), effect: effect, isSecret: false,
                        comparable: value))
            }
        }
        func routeRows(_ o: SMTPClientOptions, section: String, prefix: String) {
            for d in OptionTable.smtpClient {
                let value: String
                switch d.name {
                case "allow-delegate": value = "\(o.allowDelegate)"
                case "client-id": value = text(o.clientID)
                case "cnx-check-idle-time": value = time(o.cnxCheckIdleTime)
                case "cnx-max-idle-time": value = time(o.cnxMaxIdleTime)
                case "cnx-pool-size": value = "\(o.cnxPoolSize)"
                case "connect-timeout": value = time(o.connectTimeout)
                case "directory-id": value = text(o.directoryID)
                case "enable-authentication": value = "\(o.enableAuthentication)"
                case "enable-debug": value = "\(o.enableDebug)"
                case "exchange-version": value = o.exchangeVersion ?? "(empty)"
                case "password": add(section, prefix + d.name, "", effect: d.effect, secret: .some(o.password)); continue
                case "port": value = "\(o.port)"
                case "protocol-timeout": value = time(o.protocolTimeout)
                case "scope": value = o.effectiveScope == o.scope ? o.scope : "\(o.effectiveScope) (GRAPH; configured \(o.scope))"
                case "secret": value = o.secret
                case "server": value = text(o.server)
                case "server-type": value = o.serverType.rawValue
                case "smtp-connection-security": value = o.smtpConnectionSecurity.rawValue
                case "tenant-authority": value = o.tenantAuthority
                case "token-expiry-margin-time": value = time(o.tokenExpiryMarginTime)
                case "user": value = text(o.user)
                case "grant-type": value = o.grantType?.rawValue ?? "\(Self.notSet) (\(o.effectiveGrantType.rawValue))"
                default: value = "?"
                }
                add(section, prefix + d.name, value, effect: d.effect)
            }
            for d in OptionTable.mailProperties {
                let value: String
                switch d.name {
                case "mail.smtp.auth.mechanisms": value = o.authMechanisms?.joined(separator: " ") ?? Self.notSet
                case "mail.ews.auth.mechanisms": value = o.ewsAuthMechanisms?.joined(separator: " ") ?? Self.notSet
                case "mail.smtp.localhost": value = text(o.localhost)
                case "mail.smtp.from": value = text(o.envelopeFrom)
                case "mail.smtp.sendpartial": value = "\(o.sendPartial)"
                case "mail.smtp.dsn.notify": value = text(o.dsnNotify)
                case "mail.smtp.dsn.ret": value = text(o.dsnRet)
                case "mail.smtp.ssl.trust": value = o.sslTrust.isEmpty ? Self.notSet : o.sslTrust.joined(separator: " ")
                case "mail.smtp.ssl.checkserveridentity": value = "\(o.checkServerIdentity)"
                default: value = "?"
                }
                add(section, prefix + d.name, value, effect: d.effect)
            }
            for d in OptionTable.routeOptions {
                let value: String
                switch d.name {
                case "senders": value = o.senders.isEmpty ? Self.notSet : o.senders.joined(separator: " ")
                case "send-as": value = o.sendAs?.joined(separator: " ") ?? Self.notSet
                default: value = "?"
                }
                add(section, prefix + d.name, value, effect: d.effect)
            }
            for d in OptionTable.pacingOptions {
                // A change compares the value set and the preset, not what other options derive
                // (max-concurrent shows cnx-pool-size when unset).
                rows.append(
                    EffectiveOption(
                        section: section, name: prefix + d.name, value: pacingValue(d.name, options: o),
                        source: source(of: prefix + d.name), effect: d.effect, isSecret: false,
                        comparable: pacingComparable(d.name, options: o)))
            }
        }
        routeRows(smtpClient, section: "smtp-client", prefix: "")
        for key in unusedMailProperties.sorted() {
            let raw = mailProperties[key] ?? ""
            let lower = key.lowercased()
            let looksSecret = ["password", "secret", "token", "credential"].contains { lower.contains($0) }
            if looksSecret {
                add("smtp-client", key, "", effect: .atRestart, secret: .some(raw.isEmpty ? nil : Secret(raw)))
            } else {
                add("smtp-client", key, "\(raw) (not used by Outbox)", effect: .atRestart)
            }
        }
        for name in routes.keys.sorted() {
            guard let options = routes[name] else { continue }
            routeRows(options, section: "smtp-client-\(name)", prefix: "smtp-client-\(name).")
        }
        for name in secretSections.keys.sorted() {
            let d = OptionTable.secretSection[0]
            add("secret-\(name)", "secret-\(name).password", "", effect: d.effect, secret: .some(secretSections[name]?.password))
        }
        for d in OptionTable.outbox {
            let s = outbox
            let value: String
            switch d.name {
            case "data-directory": value = s.dataDirectory
            case "http-listen": value = s.httpListen
            case "http-tls-certificate-file": value = text(s.httpTLSCertificateFile)
            case "http-tls-key-file": value = text(s.httpTLSKeyFile)
            case "store":
                // postgres://user:password@host/db: the password is a secret like any other.
                let masked = Self.maskingURLPassword(s.store)
                if masked != s.store {
                    rows.append(
                        EffectiveOption(
                            section: "outbox", name: "outbox.store", value: masked, source: source(of: "outbox.store"),
                            effect: d.effect, isSecret: true, comparable: s.store))
                    continue
                }
                value = s.store
            case "tls-ca-file": value = text(s.tlsCAFile)
            case "graph-url": value = s.graphURL
            case "google-token-url": value = s.googleTokenURL
            case "api-tokens": add("outbox", "outbox.\(d.name)", "", effect: d.effect, secret: .some(s.apiTokens)); continue
            case "require-api-token": value = "\(s.requireAPIToken)"
            case "max-request-size": value = "\(s.maxRequestSize)"
            case "delivery-concurrency": value = "\(s.deliveryConcurrency)"
            case "lease-time": value = time(s.leaseTime)
            case "retry-initial-delay": value = time(s.retryInitialDelay)
            case "retry-max-delay": value = time(s.retryMaxDelay)
            case "retry-max-age": value = time(s.retryMaxAge)
            case "unknown-outcome-retries": value = "\(s.unknownOutcomeRetries)"
            case "rate-limit-per-minute": value = "\(s.rateLimitPerMinute)"
            case "mailbox-concurrency": value = "\(s.mailboxConcurrency)"
            case "shutdown-deadline": value = time(s.shutdownDeadline)
            case "queue-min-free": value = s.queueMinFree.description
            case "retention-content": value = time(s.retentionContent)
            case "retention-records": value = time(s.retentionRecords)
            case "store-unavailable-wait": value = time(s.storeUnavailableWait)
            case "log-format": value = s.logFormat.rawValue
            case "otel-endpoint": value = text(s.otelEndpoint)
            default: value = "?"
            }
            add("outbox", "outbox.\(d.name)", value, effect: d.effect)
        }
        for d in OptionTable.relay {
            let r = relay
            let value: String
            switch d.name {
            case "listen": value = r.listen.isEmpty ? "(off)" : r.listen.joined(separator: ", ")
            case "listen-tls": value = r.listenTLS.isEmpty ? Self.notSet : r.listenTLS.joined(separator: ", ")
            case "tls-certificate-file": value = text(r.tlsCertificateFile)
            case "tls-key-file": value = text(r.tlsKeyFile)
            case "allowed-networks": value = r.allowedNetworks.isEmpty ? "(none)" : r.allowedNetworks.map(\.description).joined(separator: " ")
            case "require-tls-for-auth": value = "\(r.requireTLSForAuth)"
            case "max-message-size": value = "\(r.maxMessageSize)"
            case "max-recipients": value = "\(r.maxRecipients)"
            case "max-connections": value = "\(r.maxConnections)"
            case "max-connections-per-client": value = "\(r.maxConnectionsPerClient)"
            case "hostname": value = r.hostname ?? "\(r.effectiveHostname) (this machine)"
            case "command-timeout": value = time(r.commandTimeout)
            case "data-timeout": value = time(r.dataTimeout)
            case "session-timeout": value = time(r.sessionTimeout)
            case "auth-failure-limit": value = "\(r.authFailureLimit)"
            case "auth-lockout-time": value = time(r.authLockoutTime)
            case "bounce-copy-to": value = text(r.bounceCopyTo)
            case "add-received-header": value = "\(r.addReceivedHeader)"
            case "add-message-id": value = "\(r.addMessageID)"
            case "add-date": value = "\(r.addDate)"
            default: value = "?"
            }
            add("relay", "relay.\(d.name)", value, effect: d.effect)
        }
        for client in clients {
            let prefix = "client-\(client.name)"
            add(prefix, "\(prefix).user", client.user, effect: .immediately)
            add(prefix, "\(prefix).password-hash", "", effect: .immediately, secret: .some(client.passwordHash))
            add(prefix, "\(prefix).allowed-senders", client.allowedSenders.joined(separator: ", "), effect: .immediately)
            add(prefix, "\(prefix).route", client.route ?? "\(Self.notSet) (by sender, then default)", effect: .immediately)
            add(prefix, "\(prefix).routes", client.mayChoose.isEmpty ? "(none)" : client.mayChoose.joined(separator: ", "), effect: .immediately)
            add(prefix, "\(prefix).api-token", "", effect: .immediately, secret: .some(client.apiToken))
            add(prefix, "\(prefix).intake-limit-per-minute", "\(client.intakeLimitPerMinute ?? 0)", effect: .immediately)
        }
        return rows
    }

    /// What changed from `old` to this configuration, each with when the change takes effect.
    /// The daemon's reload applies `immediately`/`atNextCycle` changes and reports `atRestart` ones.
    /// `scheme://user:password@host...` with the password replaced by the mask.
    static func maskingURLPassword(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].firstIndex(of: "@") else { return url }
        let userInfo = url[scheme.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<url.index(after: colon)]) + masked + String(url[at...])
    }

    /// The options whose effective value differs between `old` and this configuration (secrets
    /// compared by value, never shown), including options present in only one of them, each with
    /// when its change takes effect.
    public func changes(from old: OutboxConfiguration) -> [ConfigurationChange] {
        let before = Dictionary(old.effectiveOptions().map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let after = effectiveOptions()
        var result: [ConfigurationChange] = []
        var seen = Set<String>()
        for row in after {
            seen.insert(row.name)
            if before[row.name]?.comparable != row.comparable { result.append(ConfigurationChange(name: row.name, effect: row.effect)) }
        }
        for row in old.effectiveOptions() where !seen.contains(row.name) {
            result.append(ConfigurationChange(name: row.name, effect: row.effect))
        }
        return result
    }
}

/// `outbox check-config`: the logic behind the command, so it can be unit-tested.
package enum CheckConfig {
    package struct Result: Sendable {
        /// Text for standard output.
        package var output: String
        /// 0: valid; 2: invalid.
        package var exitCode: Int32
    }

    /// Loads the configuration (see ``OutboxConfiguration/load(file:overrides:environment:)``) and
    /// renders the report as a table or as JSON.
    package static func run(file: String?, overrides: [String], environment: [String: String], json: Bool) -> Result {
        do {
            let configuration = try OutboxConfiguration.load(file: file, overrides: overrides, environment: environment)
            return Result(output: json ? renderJSON(configuration) : renderTable(configuration), exitCode: 0)
        } catch {
            return Result(output: json ? renderJSON(error) : renderProblems(error), exitCode: 2)
        }
    }

    /// The table: option, value (secrets masked), source, when a change takes effect; then notes
    /// and warnings.
    package static func renderTable(_ configuration: OutboxConfiguration) -> String {
        var lines: [String] = []
        if let file = configuration.fileName {
            lines.append("Configuration: \(file)")
        } else {
            lines.append("Configuration: no file (./outbox.cfg not found): built-in defaults")
        }
        lines.append("")
        let header = ["OPTION", "VALUE", "SOURCE", "TAKES EFFECT"]
        var table = [header]
        var section = ""
        var sectionStarts: [Int: String] = [:]
        for row in configuration.effectiveOptions() {
            if row.section != section {
                section = row.section
                sectionStarts[table.count] = "[\(section)]"
            }
            table.append([row.name, row.value, row.source.description, row.effect.words])
        }
        var widths = [0, 0, 0, 0]
        for row in table { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        for (index, row) in table.enumerated() {
            if let title = sectionStarts[index] { lines.append(title) }
            var line = ""
            for (i, cell) in row.enumerated() {
                line += i == row.count - 1 ? cell : cell.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0)
            }
            lines.append(line)
        }
        if !configuration.notes.isEmpty {
            lines.append("")
            lines.append("Notes:")
            lines += configuration.notes.map { "  \($0)" }
        }
        lines.append("")
        if configuration.warnings.isEmpty {
            lines.append("No warnings.")
        } else {
            lines.append("Warnings:")
            lines += configuration.warnings.map { "  \($0.description)" }
        }
        lines.append("Configuration is valid.")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The problems, one a line, then a summary.
    package static func renderProblems(_ error: ConfigurationError) -> String {
        let count = error.problems.count
        return error.problems.map(\.description).joined(separator: "\n")
            + "\nConfiguration is not valid: \(count) problem\(count == 1 ? "" : "s").\n"
    }

    struct JSONReport: Encodable {
        struct Option: Encodable { var section, name, value, source, effect: String; var secret: Bool }
        struct Item: Encodable {
            var code: String; var file: String?; var line: Int?; var option: String?; var value: String?; var message: String; var text: String
        }
        var valid: Bool
        var file: String?
        var options: [Option]
        var notes: [String]
        var warnings: [Item]
        var problems: [Item]
    }

    package static func renderJSON(_ configuration: OutboxConfiguration) -> String {
        let report = JSONReport(
            valid: true, file: configuration.fileName,
            options: configuration.effectiveOptions().map {
                .init(
                    section: $0.section, name: $0.name, value: $0.value, source: $0.source.description, effect: $0.effect.rawValue,
                    secret: $0.isSecret)
            },
            notes: configuration.notes,
            warnings: configuration.warnings.map {
                .init(code: $0.code, file: $0.file, line: $0.line, option: $0.option, value: nil, message: $0.message, text: $0.description)
            },
            problems: [])
        return encode(report)
    }

    package static func renderJSON(_ error: ConfigurationError) -> String {
        let report = JSONReport(
            valid: false, file: nil, options: [], notes: [], warnings: [],
            problems: error.problems.map {
                .init(code: $0.code, file: $0.file, line: $0.line, option: $0.option, value: $0.value, message: $0.message, text: $0.description)
            })
        return encode(report)
    }

    static func encode(_ report: JSONReport) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(report), let text = String(data: data, encoding: .utf8) else { return "{}\n" }
        return text + "\n"
    }
}

/// Printing a configuration (or dumping it) shows the effective values with secrets masked,
/// including `mail.*` keys that look like secrets.
extension OutboxConfiguration: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// `OutboxConfiguration(name=value, ...)` with every effective option; secrets are masked.
    public var description: String {
        "OutboxConfiguration(" + effectiveOptions().map { "\($0.name)=\($0.value)" }.joined(separator: ", ") + ")"
    }

    /// The same text as ``description``: secrets masked.
    public var debugDescription: String { description }

    /// One child per effective option, with secrets masked, so `dump` shows no secret.
    public var customMirror: Mirror {
        Mirror(self, children: effectiveOptions().map { (label: $0.name as String?, value: $0.value as Any) }, displayStyle: .struct)
    }
}
