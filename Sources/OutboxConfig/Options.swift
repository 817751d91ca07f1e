/// `server-type`: the protocol used to send.
public enum ServerType: String, Sendable, CaseIterable, Codable {
    case smtp = "SMTP"
    case ews = "EWS"
    case graph = "GRAPH"
}

/// `smtp-connection-security`.
public enum SMTPConnectionSecurity: String, Sendable, CaseIterable, Codable {
    /// Clear text.
    case none = "none"
    /// STARTTLS when the server offers it, clear text otherwise.
    case startTLS = "start-tls"
    /// STARTTLS, and fail when the server does not offer it or it fails.
    case startTLSRequired = "start-tls-required"
    /// TLS from the first byte (implicit TLS, normally port 465).
    case sslTLS = "ssl-tls"
}

/// `grant-type`: the OAuth2 grant for Microsoft tokens.
public enum GrantType: String, Sendable, CaseIterable, Codable {
    /// Resource owner password credentials (ROPC): `user` and `password` are the mailbox's.
    case password = "password"
    /// Client credentials: `password` is the application's client secret.
    case clientCredentials = "client_credentials"
}

/// The typed values of every `[smtp-client]` option, plus the `mail.*` keys Outbox understands.
public struct SMTPClientOptions: Sendable, Equatable {
    /// `allow-delegate`: send on behalf of another mailbox through Graph (the `From` address may
    /// differ from `user`).
    public var allowDelegate = false
    /// `client-id`: the Azure or Google application's client ID for OAuth2. nil: not set.
    public var clientID: String?
    /// `cnx-check-idle-time`: a pooled connection idle for longer than this gets a NOOP before it
    /// is used; zero checks it before every use.
    public var cnxCheckIdleTime: Duration = .seconds(30)
    /// `cnx-max-idle-time`: a pooled connection idle for this long is closed; zero closes a
    /// connection as soon as it is idle.
    public var cnxMaxIdleTime: Duration = .seconds(300)
    /// `cnx-pool-size`: the most SMTP connections open at once, so the most messages sent in
    /// parallel.
    public var cnxPoolSize = 10
    /// Zero means no timeout (as in JavaMail).
    public var connectTimeout: Duration = .seconds(300)
    /// `directory-id`: the Azure Directory (tenant) ID for Microsoft OAuth2. nil: not set.
    public var directoryID: String?
    /// `enable-authentication`: log in with `user` and `password` (or an OAuth2 token).
    public var enableAuthentication = false
    /// `enable-debug`: log the protocol transcript; passwords and tokens show as `<redacted>`.
    public var enableDebug = false
    /// nil when the option is set empty ("leave it empty for Exchange 2019").
    public var exchangeVersion: String? = "Exchange2010"
    /// `password`: the login password, Google refresh token or Azure client secret, depending on
    /// the server type and grant. nil: not set.
    public var password: Secret?
    /// `port`: the mail server's TCP port (1-65535).
    public var port = 25
    /// Zero means no timeout (as in JavaMail).
    public var protocolTimeout: Duration = .seconds(300)
    /// The scope as configured; use ``effectiveScope`` for the token request.
    public var scope = OptionTable.defaultOutlookScope
    /// `secret`: the name of the `[secret-<name>]` section holding the Google client secret.
    public var secret = "smtp"
    /// Host name or IP address (SMTP), or the EWS URL (EWS). nil: not set.
    public var server: String?
    /// `server-type`: SMTP, EWS or Graph.
    public var serverType: ServerType = .smtp
    /// `smtp-connection-security`: clear text, STARTTLS (optional or required) or implicit TLS.
    public var smtpConnectionSecurity: SMTPConnectionSecurity = .none
    /// `tenant-authority`: the OAuth2 authority; any value containing "google" selects Google.
    public var tenantAuthority = OptionTable.defaultTenantAuthority
    /// `token-expiry-margin-time`: an access token expiring within this margin is renewed, and a
    /// connection whose token expires within it is not reused.
    public var tokenExpiryMarginTime: Duration = .seconds(10)
    /// `user`: the login name; for Graph, the mailbox that sends. nil: not set.
    public var user: String?
    /// nil when not set: see ``effectiveGrantType``.
    public var grantType: GrantType?

    // mail.* properties Outbox understands
    /// `mail.smtp.auth.mechanisms`, split on white space (and commas), uppercased. nil: not set.
    public var authMechanisms: [String]?
    /// `mail.ews.auth.mechanisms`, like ``authMechanisms``.
    public var ewsAuthMechanisms: [String]?
    /// `mail.smtp.localhost`: the EHLO name.
    public var localhost: String?
    /// `mail.smtp.from`: envelope sender override.
    public var envelopeFrom: String?
    /// `mail.smtp.sendpartial`. Outbox defaults to true (per-recipient delivery and retries);
    /// JavaMail's default is false (all or nothing).
    public var sendPartial = true
    /// `mail.smtp.dsn.notify`, normalised to upper case (`NEVER` or e.g. `SUCCESS,FAILURE`).
    public var dsnNotify: String?
    /// `mail.smtp.dsn.ret`: `FULL` or `HDRS`.
    public var dsnRet: String?
    /// `mail.smtp.ssl.trust`: hosts trusted without certificate verification; `"*"` means all.
    public var sslTrust: [String] = []
    /// `mail.smtp.ssl.checkserveridentity` (Outbox default true).
    public var checkServerIdentity = true

    // Outbox's own route options (``OptionTable/routeOptions``)
    /// `senders`: envelope-sender patterns (`*@billing.example.com`, `helpdesk@example.com`)
    /// whose messages take this route.
    public var senders: [String] = []
    /// `send-as`: the From addresses (or `*@domain` patterns) GRAPH and EWS send as their own
    /// mailbox; nil: not set.
    public var sendAs: [String]?
    /// Pacing: `rate-limit-per-minute`, `message-limit-per-day`, `recipient-limit-per-day`,
    /// `max-concurrent` (``OptionTable/pacingOptions``); see ``routeLimits``.
    public var pacing = RoutePacingOptions()

    /// Every option at its default.
    public init() {}

    /// `tenant-authority` contains "google" (any case): Gmail.
    public var isGoogle: Bool { tenantAuthority.lowercased().contains("google") }

    /// OAuth 2.0 is used: SMTP with authentication on and XOAUTH2 in `mail.smtp.auth.mechanisms`,
    /// or EWS with XOAUTH2 in `mail.ews.auth.mechanisms`. (GRAPH always uses OAuth 2.0 tokens;
    /// see ``usesOAuth``.)
    public var usesXOAUTH2: Bool {
        switch serverType {
        case .smtp: enableAuthentication && (authMechanisms ?? []).contains("XOAUTH2")
        case .ews: (ewsAuthMechanisms ?? []).contains("XOAUTH2")
        case .graph: false
        }
    }

    /// Tokens are needed: XOAUTH2 or GRAPH.
    public var usesOAuth: Bool { usesXOAUTH2 || serverType == .graph }

    /// The scope for Microsoft token requests: the Graph scope for GRAPH when `scope` is the
    /// default outlook scope, else `scope`.
    public var effectiveScope: String {
        if serverType == .graph && scope == OptionTable.defaultOutlookScope { return OptionTable.graphScope }
        return scope
    }

    /// The grant actually used for Microsoft: `grant-type` if set, client_credentials for GRAPH,
    /// password (ROPC) otherwise. (Google always uses its refresh_token grant.)
    public var effectiveGrantType: GrantType {
        grantType ?? (serverType == .graph ? .clientCredentials : .password)
    }

    /// SMTP with no `server`: Outbox writes messages to files (the file transport).
    public var usesFileTransport: Bool { serverType == .smtp && server == nil }
}

/// A `[secret-<name>]` section.
public struct SecretSection: Sendable, Equatable {
    /// The `<name>` part.
    public var name: String
    /// The Google application's client secret.
    public var password: Secret?

    /// A section named `name` holding `password`.
    public init(name: String, password: Secret?) {
        self.name = name
        self.password = password
    }
}

/// `[outbox]`: Outbox's own settings, which the reference has no option for.
public struct OutboxSettings: Sendable, Equatable {
    /// `data-directory`.
    public var dataDirectory = "./outbox-data"
    /// `tls-ca-file`: PEM file of a private CA; nil: the system's trust store.
    public var tlsCAFile: String?
    /// `http-listen`: host:port.
    public var httpListen = "127.0.0.1:8025"
    /// `http-tls-certificate-file`: the HTTP listener's certificate chain (PEM); nil: plain HTTP.
    public var httpTLSCertificateFile: String?
    /// `http-tls-key-file`: the private key of that certificate (PEM).
    public var httpTLSKeyFile: String?
    /// `store`: `sqlite`, `memory` or a `postgres://` URL.
    public var store = "sqlite"
    /// `graph-url`.
    public var graphURL = "https://graph.microsoft.com/v1.0"
    /// `google-token-url`.
    public var googleTokenURL = "https://oauth2.googleapis.com/token"
    /// `api-tokens`: the HTTP API's bearer tokens, separated by spaces or commas.
    public var apiTokens: Secret?
    /// `require-api-token`: on loopback too.
    public var requireAPIToken = false
    /// `max-request-size` in bytes.
    public var maxRequestSize = 26_214_400
    /// `delivery-concurrency`.
    public var deliveryConcurrency = 8
    /// `lease-time`.
    public var leaseTime: Duration = .seconds(300)
    /// `retry-initial-delay`.
    public var retryInitialDelay: Duration = .seconds(30)
    /// `retry-max-delay`.
    public var retryMaxDelay: Duration = .seconds(3600)
    /// `retry-max-age`.
    public var retryMaxAge: Duration = .seconds(86_400)
    /// `unknown-outcome-retries`.
    public var unknownOutcomeRetries = 1
    /// `rate-limit-per-minute`; 0: none.
    public var rateLimitPerMinute = 0
    /// `mailbox-concurrency`; 0: none.
    public var mailboxConcurrency = 0
    /// `shutdown-deadline`.
    public var shutdownDeadline: Duration = .seconds(20)
    /// `queue-min-free`.
    public var queueMinFree: QueueMinFree = .auto
    /// `retention-content`.
    public var retentionContent: Duration = .seconds(7 * 86_400)
    /// `retention-records`.
    public var retentionRecords: Duration = .seconds(30 * 86_400)
    /// `store-unavailable-wait`.
    public var storeUnavailableWait: Duration = .seconds(5)
    /// `log-format`: the delivery log's line format.
    public var logFormat: LogFormat = .logfmt
    /// `otel-endpoint`: the OTLP/HTTP collector traces go to; nil: no tracing.
    public var otelEndpoint: String?

    /// The API tokens, split.
    public var apiTokenList: [String] {
        (apiTokens?.value ?? "").split(whereSeparator: { $0.isWhitespace || $0 == "," }).map(String.init)
    }

    /// Every setting at its default.
    public init() {}
}

/// `[outbox] log-format`: how the delivery log writes its lines.
public enum LogFormat: String, Sendable, Equatable, CaseIterable {
    /// `key=value` pairs (logfmt), values with spaces or quotes in double quotes.
    case logfmt
    /// One JSON object a line.
    case json
}

/// `[outbox] queue-min-free`: the free space the queue keeps on its disk.
public enum QueueMinFree: Sendable, Equatable, CustomStringConvertible {
    /// 100 MiB or 5% of the disk, whichever is larger.
    case auto
    /// A number of bytes.
    case bytes(Int64)
    /// A share of the disk, in percent (0-100).
    case percent(Double)

    /// The bytes to keep free on a disk of `capacity` bytes.
    public func bytes(ofCapacity capacity: Int64) -> Int64 {
        switch self {
        case .auto: max(100 * 1024 * 1024, Int64((Double(capacity) * 0.05).rounded(.up)))
        case .bytes(let n): n
        case .percent(let p): Int64((Double(capacity) * p / 100).rounded(.up))
        }
    }

    /// As written in a file: `auto`, `8388608`, `5%`.
    public var description: String {
        switch self {
        case .auto: "auto"
        case .bytes(let n): "\(n)"
        case .percent(let p): p == p.rounded() ? "\(Int(p))%" : "\(p)%"
        }
    }

    /// Parses `auto`, a byte count, a size with a unit (`KiB`, `MiB`, `GiB`, `TiB`; `KB`, `MB`,
    /// `GB`, `TB` in powers of 1000; `K`, `M`, `G` as binary) or a percentage.
    public static func parse(_ text: String) -> QueueMinFree? {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t.lowercased() == "auto" { return .auto }
        if t.hasSuffix("%") {
            guard let p = Double(t.dropLast().trimmingCharacters(in: .whitespaces)), p >= 0, p < 100 else { return nil }
            return .percent(p)
        }
        let digits = t.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let number = Int64(digits) else { return nil }
        let unit = t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let factors: [String: Int64] = [
            "": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "tib": 1 << 40,
            "kb": 1_000, "mb": 1_000_000, "gb": 1_000_000_000, "tb": 1_000_000_000_000,
        ]
        guard let factor = factors[unit] else { return nil }
        let (value, overflow) = number.multipliedReportingOverflow(by: factor)
        return overflow ? nil : .bytes(value)
    }
}
