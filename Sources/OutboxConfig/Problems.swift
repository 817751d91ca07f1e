/// Where a configuration value came from.
public enum ValueSource: Sendable, Equatable, CustomStringConvertible {
    /// The built-in default of the option.
    case `default`
    /// A line of the configuration file.
    case file(name: String, line: Int)
    /// An `-o NAME=VALUE` override on the command line.
    case commandLine
    /// A secret given as `env:NAME`: read from the environment variable `NAME`.
    case environment(variable: String)
    /// A secret given as `file:/path`: read from that file (one trailing newline removed).
    case secretFile(path: String)

    /// `default`, `FILE:LINE`, `-o`, `environment NAME` or `file PATH`.
    public var description: String {
        switch self {
        case .default: "default"
        case .file(let name, let line): "\(name):\(line)"
        case .commandLine: "-o"
        case .environment(let variable): "environment \(variable)"
        case .secretFile(let path): "file \(path)"
        }
    }
}

/// Where a problem or a warning was found: a file and line, the command line (`-o`), or nowhere
/// in particular (a rule broken by built-in defaults).
public struct ConfigurationLocation: Sendable, Equatable, CustomStringConvertible {
    /// The file name as given (for `-o` overrides: `"-o"`), or nil.
    public var file: String?
    /// The 1-based line number, or nil.
    public var line: Int?

    /// A location at `line` of `file`; either may be nil.
    public init(file: String?, line: Int?) {
        self.file = file
        self.line = line
    }

    /// `FILE:LINE`, `FILE`, `line N`, or `configuration` when neither is known.
    public var description: String {
        switch (file, line) {
        case (let f?, let l?): "\(f):\(l)"
        case (let f?, nil): f
        case (nil, let l?): "line \(l)"
        case (nil, nil): "configuration"
        }
    }
}

/// One mistake in a configuration. Its `description` reads like
/// `outbox.cfg:7: port = 70000 is not a port number (1-65535)`.
///
/// `value` is nil whenever the value could be secret (passwords, the values of unknown or
/// misspelt keys, malformed lines), so no description ever contains a secret.
public struct ConfigurationProblem: Sendable, Equatable, CustomStringConvertible {
    /// Stable machine-readable code, e.g. `invalid_value`, `unknown_option`, `missing_option`.
    public var code: String
    /// The file name as given (`-o` for an override), or nil.
    public var file: String?
    /// The 1-based line number, or nil.
    public var line: Int?
    /// The option (or section) involved, if any.
    public var option: String?
    /// The value as given; nil for secrets and anything that might be one.
    public var value: String?
    /// What is wrong and what is valid, e.g. `is not a port number (1-65535)`.
    public var message: String

    /// A problem with every field given; pass nil as `value` for anything that could be secret.
    public init(code: String, file: String?, line: Int?, option: String?, value: String?, message: String) {
        self.code = code
        self.file = file
        self.line = line
        self.option = option
        self.value = value
        self.message = message
    }

    /// ``file`` and ``line`` together.
    public var location: ConfigurationLocation { ConfigurationLocation(file: file, line: line) }

    /// `LOCATION: OPTION = VALUE MESSAGE`, without the parts that are nil.
    public var description: String {
        var text = "\(location): "
        if let option {
            text += option
            if let value { text += " = \(value)" }
            text += " "
        }
        return text + message
    }
}

/// Every problem found in a configuration, all at once. `description` has one line per problem.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The problems, in the order they were found.
    public var problems: [ConfigurationProblem]

    /// An error carrying `problems`.
    public init(problems: [ConfigurationProblem]) {
        self.problems = problems
    }

    /// One line per problem.
    public var description: String {
        problems.map(\.description).joined(separator: "\n")
    }
}

/// A legal but suspicious set-up (e.g. `ssl-tls` on port 587). Never contains a secret.
public struct ConfigurationWarning: Sendable, Equatable, CustomStringConvertible {
    /// Stable code, e.g. `ssl_tls_on_submission_port`, `unused_mail_property`.
    public var code: String
    /// The file name as given (`-o` for an override), or nil.
    public var file: String?
    /// The 1-based line number, or nil.
    public var line: Int?
    /// The option involved, or nil.
    public var option: String?
    /// What is suspicious and why.
    public var message: String

    /// A warning with every field given.
    public init(code: String, file: String?, line: Int?, option: String?, message: String) {
        self.code = code
        self.file = file
        self.line = line
        self.option = option
        self.message = message
    }

    /// `LOCATION: warning: MESSAGE`.
    public var description: String {
        "\(ConfigurationLocation(file: file, line: line)): warning: \(message)"
    }
}
