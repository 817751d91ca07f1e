import Foundation

/// A loaded, validated Outbox configuration.
///
/// File format: sections of `key = value` lines. `[smtp-client]` holds the reference's options
/// and `mail.*` JavaMail-style properties; `[secret-<name>]` holds `password` (a Google
/// application's client secret); `[outbox]` holds Outbox's own settings. Whole-line comments
/// start with `#` or `;` (a `#` or `;` inside a value is part of the value, since passwords may
/// contain them). Keys are case-sensitive; white space around keys and values is ignored.
/// A key set twice in one section is an error. An option set to an empty value is "not set"
/// for options without a default (and for `exchange-version`, means "empty"); for the others
/// it is an error. Booleans and enumerations are matched ignoring case and normalised.
public struct OutboxConfiguration: Sendable {
    /// `[smtp-client]`: the reference's options and the understood `mail.*` properties; the
    /// route named `default`.
    public var smtpClient: SMTPClientOptions
    /// The other routes, `[smtp-client-NAME]` by NAME: each complete on its own (an option it
    /// leaves unset has the reference's default, not the default route's value).
    public var routes: [String: SMTPClientOptions]
    /// The `[secret-<name>]` sections, keyed by `<name>`.
    public var secretSections: [String: SecretSection]
    /// `[outbox]`: Outbox's own settings (data directory, store, HTTP API, queue).
    public var outbox: OutboxSettings
    /// `[relay]`: the SMTP submission listener.
    package var relay: RelaySettings
    /// `[client-NAME]` sections, by name.
    package var clients: [ClientIdentity]
    /// Every `mail.*` key as given (understood or not).
    public var mailProperties: [String: String]
    /// `mail.*` keys that Outbox does not use (kept, and warned about).
    public var unusedMailProperties: [String]
    /// Legal but suspicious settings, for `check-config` and the log.
    public var warnings: [ConfigurationWarning]
    /// Things `check-config` should say that are not warnings (e.g. the Graph scope substitution).
    public var notes: [String]
    /// Where each value came from, keyed by `name` (`[smtp-client]` and `mail.*`),
    /// `outbox.<key>`, `secret-<name>.password`. A key that is absent came from its default.
    public var sources: [String: ValueSource]
    /// The file that was read, or nil when the built-in defaults were used.
    public var fileName: String?

    /// The built-in defaults (the file transport).
    public init() {
        smtpClient = SMTPClientOptions()
        routes = [:]
        secretSections = [:]
        outbox = OutboxSettings()
        relay = RelaySettings()
        clients = []
        mailProperties = [:]
        unusedMailProperties = []
        warnings = []
        notes = []
        sources = [:]
        fileName = nil
    }

    /// Where a value came from (`.default` when it was not given).
    public func source(of key: String) -> ValueSource { sources[key] ?? .default }

    /// The secret section chosen by the `secret` option, if present.
    public var chosenSecretSection: SecretSection? { secretSections[smtpClient.secret] }

    /// Loads `file`, or `./outbox.cfg` when `file` is nil (and the built-in defaults when that
    /// does not exist either), then applies the `-o NAME=VALUE` overrides.
    public static func load(file: String?, overrides: [String], environment: [String: String]) throws(ConfigurationError) -> OutboxConfiguration {
        let path: String
        if let file {
            path = file
        } else {
            path = "outbox.cfg"
            if !FileManager.default.fileExists(atPath: path) {
                var configuration = try parse(text: "", fileName: path, overrides: overrides, environment: environment)
                configuration.fileName = nil
                return configuration
            }
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read (not UTF-8 text, or no permission)" : "does not exist"
            throw ConfigurationError(problems: [
                ConfigurationProblem(
                    code: "unreadable_file", file: path, line: nil, option: nil, value: nil,
                    message: "the configuration file \(reason)")
            ])
        }
        return try parse(text: text, fileName: path, overrides: overrides, environment: environment)
    }

    /// Parses and validates configuration text. `fileName` is used in messages.
    public static func parse(text: String, fileName: String, overrides: [String], environment: [String: String]) throws(ConfigurationError)
        -> OutboxConfiguration
    {
        var reader = ConfigurationReader(fileName: fileName, environment: environment)
        reader.readFile(text)
        reader.readOverrides(overrides)
        var configuration = reader.interpret()
        configuration.fileName = fileName
        if !reader.problems.isEmpty {
            // File order first (by line), then -o overrides, then rules without a line.
            let ordered = reader.problems.enumerated().sorted { a, b in
                func key(_ p: ConfigurationProblem) -> (Int, Int) {
                    if p.file == fileName, let line = p.line { return (0, line) }
                    return p.file == "-o" ? (1, 0) : (2, 0)
                }
                let (ka, kb) = (key(a.element), key(b.element))
                return ka != kb ? ka < kb : a.offset < b.offset
            }.map(\.element)
            throw ConfigurationError(problems: ordered)
        }
        return configuration
    }
}

// MARK: - Reading

struct RawEntry {
    var key: String
    /// The name as written by the user: the key in a file, the whole NAME of `-o NAME=VALUE`.
    var displayName: String
    var value: String
    var source: ValueSource
    var location: ConfigurationLocation
}

private enum CurrentSection {
    case smtpClient, outbox, relay
    case route(String)
    case client(String)
    case secret(String)
    case ignored
}

struct ConfigurationReader {
    let fileName: String
    let environment: [String: String]
    var problems: [ConfigurationProblem] = []
    var warnings: [ConfigurationWarning] = []
    var notes: [String] = []
    var sources: [String: ValueSource] = [:]
    var smtp: [String: RawEntry] = [:]
    var smtpOrder: [String] = []
    var outbox: [String: RawEntry] = [:]
    var outboxOrder: [String] = []
    var relay: [String: RawEntry] = [:]
    var relayOrder: [String] = []
    var clients: [String: [String: RawEntry]] = [:]
    var clientHeaders: [String: ConfigurationLocation] = [:]
    var secrets: [String: [String: RawEntry]] = [:]
    var secretHeaders: [String: ConfigurationLocation] = [:]
    /// `[smtp-client-NAME]` sections (routes), by NAME, with their keys in the order given.
    var routeSections: [String: [String: RawEntry]] = [:]
    var routeOrders: [String: [String]] = [:]
    var routeHeaders: [String: ConfigurationLocation] = [:]
    /// Options whose value was invalid: cross-option rules involving them are skipped.
    var failed: Set<String> = []
    /// While a route's section is read: its header, where rules without a line point.
    var sectionLocation: ConfigurationLocation?

    init(fileName: String, environment: [String: String]) {
        self.fileName = fileName
        self.environment = environment
    }

    mutating func problem(_ code: String, _ location: ConfigurationLocation, option: String?, value: String?, _ message: String) {
        problems.append(ConfigurationProblem(code: code, file: location.file, line: location.line, option: option, value: value, message: message))
    }

    mutating func warn(_ code: String, _ location: ConfigurationLocation, option: String?, _ message: String) {
        warnings.append(ConfigurationWarning(code: code, file: location.file, line: location.line, option: option, message: message))
    }

    mutating func readFile(_ text: String) {
        var current: CurrentSection? = nil
        var lineNumber = 0
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            let location = ConfigurationLocation(file: fileName, line: lineNumber)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else {
                    problem("syntax", location, option: nil, value: nil, "a section header must look like [smtp-client]")
                    current = .ignored
                    continue
                }
                let name = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                if name == "smtp-client" {
                    current = .smtpClient
                } else if name.hasPrefix("smtp-client-") {
                    let route = String(name.dropFirst("smtp-client-".count))
                    if let refusal = RouteName.problem(route) {
                        problem(refusal.code, location, option: "[\(name)]", value: route, refusal.message)
                        current = .ignored
                    } else {
                        current = .route(route)
                        if routeHeaders[route] == nil { routeHeaders[route] = location }
                        if routeSections[route] == nil { routeSections[route] = [:] }
                    }
                } else if name == "outbox" {
                    current = .outbox
                } else if name == "relay" {
                    current = .relay
                } else if name.hasPrefix("client-"), name.count > "client-".count, !name.contains(where: \.isWhitespace) {
                    let clientName = String(name.dropFirst("client-".count))
                    current = .client(clientName)
                    if clientHeaders[clientName] == nil { clientHeaders[clientName] = location }
                    if clients[clientName] == nil { clients[clientName] = [:] }
                } else if name.hasPrefix("secret-"), name.count > "secret-".count, !name.contains(where: \.isWhitespace) {
                    let secretName = String(name.dropFirst("secret-".count))
                    current = .secret(secretName)
                    if secretHeaders[secretName] == nil { secretHeaders[secretName] = location }
                    if secrets[secretName] == nil { secrets[secretName] = [:] }
                } else {
                    var message =
                        "is not a section Outbox knows; valid sections: [smtp-client], [smtp-client-<route>], [secret-<name>], [outbox], [relay], [client-<name>]"
                    if let guess = Suggest.closest(to: name, among: ["smtp-client", "outbox", "secret-smtp", "relay", "client-name"]) {
                        message += "; did you mean [\(guess)]?"
                    }
                    problem("unknown_section", location, option: "[\(name)]", value: nil, message)
                    current = .ignored
                }
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                // The line is not echoed: it could be a secret.
                problem("syntax", location, option: nil, value: nil, "is not `key = value`, a [section] header or a comment (starting with # or ;)")
                continue
            }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty else {
                problem("syntax", location, option: nil, value: nil, "has a value but no key before the =")
                continue
            }
            let entry = RawEntry(key: key, displayName: key, value: value, source: .file(name: fileName, line: lineNumber), location: location)
            switch current {
            case nil:
                problem(
                    "outside_section", location, option: key, value: nil,
                    "is outside any section; put [smtp-client] (or [outbox], [secret-<name>]) above it")
            case .ignored:
                continue
            case .smtpClient:
                if let previous = smtp[key] {
                    problem(
                        "duplicate_option", location, option: key, value: nil,
                        "is set twice in [smtp-client] (first at line \(previous.location.line ?? 0))")
                } else {
                    smtp[key] = entry
                    smtpOrder.append(key)
                }
            case .outbox:
                if let previous = outbox[key] {
                    problem(
                        "duplicate_option", location, option: key, value: nil,
                        "is set twice in [outbox] (first at line \(previous.location.line ?? 0))")
                } else {
                    outbox[key] = entry
                    outboxOrder.append(key)
                }
            case .route(let name):
                if let previous = routeSections[name]?[key] {
                    problem(
                        "duplicate_option", location, option: key, value: nil,
                        "is set twice in [smtp-client-\(name)] (first at line \(previous.location.line ?? 0))")
                } else {
                    routeSections[name, default: [:]][key] = entry
                    routeOrders[name, default: []].append(key)
                }
            case .relay:
                if let previous = relay[key] {
                    problem(
                        "duplicate_option", location, option: key, value: nil,
                        "is set twice in [relay] (first at line \(previous.location.line ?? 0))")
                } else {
                    relay[key] = entry
                    relayOrder.append(key)
                }
            case .client(let name):
                if let previous = clients[name]?[key] {
                    problem(
                        "duplicate_option", location, option: key, value: nil,
                        "is set twice in [client-\(name)] (first at line \(previous.location.line ?? 0))")
                } else {
                    clients[name, default: [:]][key] = entry
                }
            case .secret(let name):
                if let previous = secrets[name]?[key] {
                    problem(
                        "duplicate_option", location, option: key, value: nil,
                        "is set twice in [secret-\(name)] (first at line \(previous.location.line ?? 0))")
                } else {
                    secrets[name, default: [:]][key] = entry
                }
            }
        }
    }

    /// `-o NAME=VALUE`: `NAME` is an `[smtp-client]` option or `mail.*` key; `outbox.KEY` an
    /// `[outbox]` key; `smtp-client-ROUTE.KEY` an option of route ROUTE;
    /// `secret-<name>.password` a secret section's password. Overrides replace
    /// file values.
    mutating func readOverrides(_ overrides: [String]) {
        let location = ConfigurationLocation(file: "-o", line: nil)
        for text in overrides {
            guard let equals = text.firstIndex(of: "=") else {
                problem(
                    "syntax", location, option: nil, value: nil,
                    "an override must be NAME=VALUE (e.g. -o port=587 or -o outbox.http-listen=127.0.0.1:8025)")
                continue
            }
            let name = text[..<equals].trimmingCharacters(in: .whitespaces)
            let value = text[text.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else {
                problem("syntax", location, option: nil, value: nil, "an override must be NAME=VALUE; the name is empty")
                continue
            }
            if name.hasPrefix("outbox.") {
                let key = String(name.dropFirst("outbox.".count))
                if outbox[key] == nil { outboxOrder.append(key) }
                outbox[key] = RawEntry(key: key, displayName: name, value: value, source: .commandLine, location: location)
            } else if name.hasPrefix("relay.") {
                let key = String(name.dropFirst("relay.".count))
                if relay[key] == nil { relayOrder.append(key) }
                relay[key] = RawEntry(key: key, displayName: name, value: value, source: .commandLine, location: location)
            } else if name.hasPrefix("client-"), let dot = name.firstIndex(of: "."), name[..<dot].count > "client-".count {
                let section = String(name[name.index(name.startIndex, offsetBy: "client-".count)..<dot])
                let key = String(name[name.index(after: dot)...])
                if clientHeaders[section] == nil { clientHeaders[section] = location }
                clients[section, default: [:]][key] = RawEntry(key: key, displayName: name, value: value, source: .commandLine, location: location)
            } else if name.hasPrefix("smtp-client-"), let dot = name.firstIndex(of: "."), name[..<dot].count > "smtp-client-".count {
                let route = String(name[name.index(name.startIndex, offsetBy: "smtp-client-".count)..<dot])
                let key = String(name[name.index(after: dot)...])
                if let refusal = RouteName.problem(route) {
                    problem(refusal.code, location, option: String(name[..<dot]), value: route, refusal.message)
                    continue
                }
                if routeHeaders[route] == nil { routeHeaders[route] = location }
                if routeSections[route]?[key] == nil { routeOrders[route, default: []].append(key) }
                routeSections[route, default: [:]][key] = RawEntry(
                    key: key, displayName: name, value: value, source: .commandLine, location: location)
            } else if name.hasPrefix("secret-"), let dot = name.firstIndex(of: "."), name[..<dot].count > "secret-".count {
                let section = String(name[name.index(name.startIndex, offsetBy: "secret-".count)..<dot])
                let key = String(name[name.index(after: dot)...])
                if secretHeaders[section] == nil { secretHeaders[section] = location }
                secrets[section, default: [:]][key] = RawEntry(key: key, displayName: name, value: value, source: .commandLine, location: location)
            } else {
                if smtp[name] == nil { smtpOrder.append(name) }
                smtp[name] = RawEntry(key: name, displayName: name, value: value, source: .commandLine, location: location)
            }
        }
    }
}
