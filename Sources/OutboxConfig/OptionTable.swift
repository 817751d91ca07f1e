/// When a change to an option takes effect, as data for the daemon's reload.
///
/// - `immediately`: a reload applies it to the next connection, request or token check.
/// - `atRestart`: a reload reports it; it applies only after Outbox restarts.
/// - `atNextCycle`: applies to the next delivery cycle, i.e. the next message taken from the
///   queue after the reload (the reference's "next (POP) cycle").
public enum ChangeEffect: String, Sendable, CaseIterable, Codable {
    case immediately
    case atRestart = "at-restart"
    case atNextCycle = "at-next-cycle"

    /// Words for tables: "immediately", "at restart", "at next cycle".
    public var words: String {
        switch self {
        case .immediately: "immediately"
        case .atRestart: "at restart"
        case .atNextCycle: "at next cycle"
        }
    }
}

/// The section an option lives in.
package enum ConfigSection: String, Sendable, CaseIterable {
    case smtpClient = "smtp-client"
    /// `mail.*` JavaMail-style properties inside `[smtp-client]`.
    case mailProperty = "smtp-client mail.*"
    case outbox = "outbox"
    /// `[secret-<name>]`.
    case secret = "secret-<name>"
    /// `[relay]`: the SMTP submission listener.
    case relay = "relay"
    /// `[client-<name>]`: an identity of the relay.
    case client = "client-<name>"
    /// Outbox's own options of a route: `[smtp-client]` and `[smtp-client-<route>]`.
    case route = "smtp-client-<route>"
}

/// The kind of value an option takes.
package enum OptionType: String, Sendable {
    case boolean, time, integer, port, string, enumeration, secret, url, list
}

/// One row of the option reference: everything about an option except its parsing code.
package struct OptionDescriptor: Sendable, Equatable {
    package var name: String
    package var section: ConfigSection
    package var type: OptionType
    /// The default as written in a file; nil when there is none.
    package var defaultValue: String?
    /// The valid values, as the reference states them.
    package var validValues: String
    package var effect: ChangeEffect
    /// The reference's "Changes Take Effect" text, when the reference has the option.
    package var referenceEffect: String?
    package var isSecret: Bool
    /// What the option does (from the reference, or Outbox's own words).
    package var summary: String
    /// How Outbox reads it, where that needs saying.
    package var outboxNote: String?

    package init(
        name: String, section: ConfigSection, type: OptionType, defaultValue: String?, validValues: String,
        effect: ChangeEffect, referenceEffect: String?, isSecret: Bool = false, summary: String, outboxNote: String? = nil
    ) {
        self.name = name
        self.section = section
        self.type = type
        self.defaultValue = defaultValue
        self.validValues = validValues
        self.effect = effect
        self.referenceEffect = referenceEffect
        self.isSecret = isSecret
        self.summary = summary
        self.outboxNote = outboxNote
    }
}

/// The one table of every option. The parser, `check-config` and `docs/options.md` all read it.
package enum OptionTable {
    package static let defaultOutlookScope = "https://outlook.office.com/.default"
    package static let graphScope = "https://graph.microsoft.com/.default"
    package static let defaultTenantAuthority = "https://login.microsoftonline.com"
    package static let exchangeVersions = [
        "Exchange2010", "Exchange2010_SP1", "Exchange2010_SP2", "Exchange2010_SP3",
        "Exchange2013", "Office365", "Exchange2016",
    ]

    /// The `[smtp-client]` options of the reference, in its order, then `grant-type`.
    package static let smtpClient: [OptionDescriptor] = [
        .init(
            name: "allow-delegate", section: .smtpClient, type: .boolean, defaultValue: "false", validValues: "true, false",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Enables or disables sending emails on behalf of another user account, when the smtp-client is using the Graph API. Ensure that you enable the Send As or/and Send On Behalf permission in the Exchange mailboxes before enabling this feature.",
            outboxNote:
                "Also for EWS. A message whose From is another address than user is refused (permanently, before any request) while this is false; when true, Graph sends it from user's mailbox with its own From, and EWS names that mailbox in the item's t:From (Exchange decides Send As or Send on Behalf, and answers ErrorSendAsDenied when user has neither right)."
        ),
        .init(
            name: "client-id", section: .smtpClient, type: .string, defaultValue: nil,
            validValues:
                "A valid Client ID of the Microsoft Azure or Google application provided by the customer after the mailbox is registered in Microsoft Azure or Google",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Specifies the Client ID of the registered Microsoft Azure application for the Office 365 or the Google application for the Gmail account in the SMTP client. This parameter takes effect only when the mail.<server-type>.auth.mechanisms is set to XOAUTH2 or type is GRAPH."
        ),
        .init(
            name: "cnx-check-idle-time", section: .smtpClient, type: .time, defaultValue: "00:00:30",
            validValues: "Any valid time in hh:mm:ss format",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Specifies the amount of time an SMTP connection can stay idle before the connection is checked: a connection idle for longer than this gets a NOOP command before it is used. With 00:00:00 the connection is checked each time before it is used; this is expensive and some SMTP servers do not support it very well."
        ),
        .init(
            name: "cnx-max-idle-time", section: .smtpClient, type: .time, defaultValue: "00:05:00", validValues: "Any time period in hh:mm:ss format",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Specifies the amount of time an SMTP connection can stay idle before it is closed. Make sure the value of this option is less than the SMTP server's timeout value.",
            outboxNote: "00:00:00 means a connection is closed as soon as it is idle (no reuse); Outbox warns about it."),
        .init(
            name: "cnx-pool-size", section: .smtpClient, type: .integer, defaultValue: "10", validValues: "Any integer greater than 0",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary: "Specifies the pool size for the SMTP connection: the maximum number of messages sent in parallel."),
        .init(
            name: "connect-timeout", section: .smtpClient, type: .time, defaultValue: "00:05:00",
            validValues: "Any time period in the hh:mm:ss format",
            effect: .immediately, referenceEffect: "Immediately",
            summary:
                "The timeout for establishing the connection to the SMTP server. Also applies to the HTTP connection for OAuth2 token requests and Graph API requests.",
            outboxNote: "The reference marks it discontinued in 8.5.205.03; Outbox keeps it and uses it for TCP/TLS and HTTP connects."),
        .init(
            name: "directory-id", section: .smtpClient, type: .string, defaultValue: nil,
            validValues:
                "A valid Microsoft Azure application Directory (tenant) ID provided by the customer after the mailbox is registered in Microsoft Azure",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Specifies the Directory (tenant) ID of the registered Microsoft Azure application for the Office 365 mailbox in the SMTP client. This parameter takes effect only when the mail.<server-type>.auth.mechanisms is set to XOAUTH2 or type is GRAPH."
        ),
        .init(
            name: "enable-authentication", section: .smtpClient, type: .boolean, defaultValue: "false", validValues: "true, false",
            effect: .immediately, referenceEffect: "Immediately",
            summary:
                "Enables the use of authentication with the corporate e-mail server. With a value of true, the options user and password are used to log in to the corporate e-mail server.",
            outboxNote:
                "Applies to SMTP and EWS (Basic or, with mail.ews.auth.mechanisms = XOAUTH2, a Bearer token): with false, no credentials and no Authorization header are sent, and a server that wants them answers 401. GRAPH always authenticates with its token."
        ),
        .init(
            name: "enable-debug", section: .smtpClient, type: .boolean, defaultValue: "false", validValues: "true, false",
            effect: .immediately, referenceEffect: "Immediately",
            summary: "Enables or disables protocol logging (SMTP transcript, Graph logging).",
            outboxNote:
                "Unlike the reference's product, Outbox never prints passwords or tokens in the transcript: AUTH lines show <redacted>. For GRAPH and EWS (and their token requests) each HTTP exchange is logged: method, URL (its query redacted), status, headers and time taken, Authorization and cookie values redacted, at most 2 KiB of each body, and never the token endpoint's bodies."
        ),
        .init(
            name: "exchange-version", section: .smtpClient, type: .enumeration, defaultValue: "Exchange2010",
            validValues:
                "A valid Exchange server version: Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2010_SP3, Exchange2013, Office365, Exchange2016, or empty",
            effect: .atNextCycle, referenceEffect: "At the next POP cycle",
            summary:
                "Specifies the version of the Exchange corporate server (EWS only). For Exchange 2019 support, leave this option empty or set it to Exchange2016."
        ),
        .init(
            name: "password", section: .smtpClient, type: .secret, defaultValue: nil, validValues: "A valid password or refresh_token",
            effect: .atRestart, referenceEffect: "At start/restart", isSecret: true,
            summary:
                "The password used to authenticate the user (with enable-authentication = true). For Gmail with XOAUTH2, the refresh_token of the SMTP account. For GRAPH (or grant-type client_credentials), the Azure application secret.",
            outboxNote: "May be given as env:NAME (environment variable) or file:/path (file contents, trailing newline removed). Never printed."),
        .init(
            name: "port", section: .smtpClient, type: .port, defaultValue: "25", validValues: "Any valid port number (1-65535)",
            effect: .immediately, referenceEffect: "Immediately",
            summary: "Specifies the port number for connecting to the corporate e-mail server."),
        .init(
            name: "protocol-timeout", section: .smtpClient, type: .time, defaultValue: "00:05:00",
            validValues: "Any time period in the hh:mm:ss format",
            effect: .immediately, referenceEffect: "Immediately",
            summary:
                "The timeout for the server's reply to each protocol message; raise it for large messages. Also applies to OAuth2 token requests and Graph API requests."
        ),
        .init(
            name: "scope", section: .smtpClient, type: .url, defaultValue: defaultOutlookScope,
            validValues: "https://graph.microsoft.com/.default for the Office 365 Graph API; https://outlook.office.com/.default for Office 365",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Specifies the access token scope. Takes effect only when the protocol type is EWS (or SMTP) and mail.<server-type>.auth.mechanisms is XOAUTH2, or type is GRAPH.",
            outboxNote:
                "With server-type GRAPH and the default scope, Outbox requests https://graph.microsoft.com/.default instead. An explicit scope that cannot work for the server type (a Graph scope for SMTP/EWS, a non-Graph scope for GRAPH) is an error."
        ),
        .init(
            name: "secret", section: .smtpClient, type: .string, defaultValue: "smtp", validValues: "Any string without white space",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary: "Names the [secret-<name>] section that holds the Google application's client secret. Gmail only, when XOAUTH2 is enabled."),
        .init(
            name: "server", section: .smtpClient, type: .string, defaultValue: nil,
            validValues: "Any valid host name or IP address (for EWS: the EWS URL)",
            effect: .immediately, referenceEffect: "Immediately",
            summary:
                "Specifies the name of the corporate SMTP server. If connecting to Exchange Server with EWS, the value must be the EWS URL, not the host name or IP address.",
            outboxNote: "With server-type SMTP and no server, Outbox uses its file transport (messages are written to the data directory)."),
        .init(
            name: "server-type", section: .smtpClient, type: .enumeration, defaultValue: "SMTP", validValues: "SMTP, EWS, GRAPH",
            effect: .atNextCycle, referenceEffect: "At the next cycle",
            summary: "Specifies the protocol used to send messages to a corporate e-mail server."),
        .init(
            name: "smtp-connection-security", section: .smtpClient, type: .enumeration, defaultValue: "none",
            validValues: "none, start-tls, start-tls-required, ssl-tls",
            effect: .atRestart, referenceEffect: "At restart",
            summary:
                "Sets the level of security used: none (clear text), start-tls (STARTTLS when offered), start-tls-required (fail unless STARTTLS succeeds), ssl-tls (TLS from the first byte). No effect for EWS and GRAPH."
        ),
        .init(
            name: "tenant-authority", section: .smtpClient, type: .url, defaultValue: defaultTenantAuthority,
            validValues:
                "The valid Microsoft authority server is https://login.microsoftonline.com. The valid Google authority server is a case-insensitive string that contains \"google\".",
            effect: .atRestart, referenceEffect: "At start/restart",
            summary:
                "Specifies the authority server of the registered Microsoft Azure application (Office 365) or the Google application (Gmail). Takes effect only when mail.<server-type>.auth.mechanisms is XOAUTH2 or type is GRAPH.",
            outboxNote: "Other Microsoft clouds may be given as an https:// URL."),
        .init(
            name: "token-expiry-margin-time", section: .smtpClient, type: .time, defaultValue: "00:00:10",
            validValues: "Any less than one hour period in hh:mm:ss format",
            effect: .immediately, referenceEffect: "See the description",
            summary:
                "Specifies the amount of time an SMTP connection remains connected before its access token expires and the server closes the connection. Takes effect only when mail.<server-type>.auth.mechanisms is XOAUTH2.",
            outboxNote:
                "Outbox applies a change immediately: it is used at the next token check (a token expiring within the margin is renewed, a connection whose token expires within it is not reused)."
        ),
        .init(
            name: "user", section: .smtpClient, type: .string, defaultValue: nil, validValues: "Any valid logon user name",
            effect: .immediately, referenceEffect: "Immediately",
            summary:
                "Specifies the name used to log in to the corporate e-mail server (with enable-authentication = true). For GRAPH, the mailbox that sends (/users/{user})."
        ),
        .init(
            name: "grant-type", section: .smtpClient, type: .enumeration, defaultValue: nil, validValues: "password, client_credentials",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "The OAuth2 grant used to get Microsoft tokens. Not in the reference page; present in the vendor's current option list: \"if the type is GRAPH or grant-type is client_credentials, [password] is used for the Azure application secret\".",
            outboxNote:
                "Unset: password (ROPC) for SMTP/EWS XOAUTH2 with Microsoft, client_credentials for GRAPH. GRAPH only works with client_credentials; Google only with its refresh_token grant, so grant-type must be unset for Google."
        ),
    ]

    /// The `mail.*` JavaMail-style properties that Outbox understands. Any other `mail.*` key
    /// is kept (``OutboxConfiguration/mailProperties``) and reported as not used.
    package static let mailProperties: [OptionDescriptor] = [
        .init(
            name: "mail.smtp.auth.mechanisms", section: .mailProperty, type: .list, defaultValue: nil,
            validValues: "Space-separated SASL mechanisms in order of preference, e.g. XOAUTH2 or PLAIN LOGIN",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "SMTP AUTH mechanisms to consider, in order. Only the first one supported by both sides is used. XOAUTH2 turns on OAuth 2.0 for SMTP. Unset: LOGIN PLAIN (JavaMail's default list without DIGEST-MD5 and NTLM)."
        ),
        .init(
            name: "mail.ews.auth.mechanisms", section: .mailProperty, type: .list, defaultValue: nil,
            validValues: "XOAUTH2 (Bearer tokens), NTLM or NEGOTIATE (Windows authentication, NTLMv2, https only), or unset (Basic)",
            effect: .atRestart, referenceEffect: nil,
            summary: "XOAUTH2 turns on OAuth 2.0 Bearer tokens for EWS.",
            outboxNote:
                "Exchange on-premises offers Windows authentication (Negotiate/NTLM) on its EWS virtual directory by default, not Basic. Unset, Outbox sends Basic with user and password; when the server's 401 offers NTLM or Negotiate and not Basic, Outbox switches to NTLMv2 (in the scheme offered: NTLM, else raw NTLM in Negotiate) from then on. NTLM or NEGOTIATE speaks NTLMv2 from the first request and never sends the password in Basic. user is DOMAIN\\user or user@domain (a UPN). NTLM is used over https only: an http:// server with NTLM is refused (a configuration error with NTLM set; a permanent delivery error when an http server offers only NTLM). NTLM authenticates a connection, so NTLM requests share one kept-alive HTTP/1.1 connection, one at a time; a new connection (the server closed it, or it was idle for 60 s) is authenticated again. Not supported: Kerberos, NTLMv1, and Extended Protection for Authentication (channel binding): on a server that requires it the login fails. A wrong password is a permanent error. `outbox probe` with server-type = EWS shows the schemes offered and the one used."
        ),
        .init(
            name: "mail.smtp.localhost", section: .mailProperty, type: .string, defaultValue: nil,
            validValues: "A host name or address literal such as [192.0.2.1]",
            effect: .atRestart, referenceEffect: nil,
            summary: "The name sent in EHLO/HELO. Unset: this machine's host name."),
        .init(
            name: "mail.smtp.from", section: .mailProperty, type: .string, defaultValue: nil,
            validValues: "An e-mail address",
            effect: .atRestart, referenceEffect: nil,
            summary: "The envelope sender (MAIL FROM) for every message, overriding the message's own."),
        .init(
            name: "mail.smtp.sendpartial", section: .mailProperty, type: .boolean, defaultValue: "true", validValues: "true, false",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "If true (Outbox's default), a message is sent to the accepted recipients even when some are refused, each refused recipient is reported on its own and only those are retried; if false (JavaMail's default), the message is not sent when any recipient is refused."
        ),
        .init(
            name: "mail.smtp.dsn.notify", section: .mailProperty, type: .string, defaultValue: nil,
            validValues: "NEVER, or a comma-separated combination of SUCCESS, FAILURE, DELAY",
            effect: .atRestart, referenceEffect: nil,
            summary: "The NOTIFY parameter of RCPT TO (delivery status notifications, RFC 3461)."),
        .init(
            name: "mail.smtp.dsn.ret", section: .mailProperty, type: .enumeration, defaultValue: nil, validValues: "FULL, HDRS",
            effect: .atRestart, referenceEffect: nil,
            summary: "The RET parameter of MAIL FROM (RFC 3461): return the full message or only its headers."),
        .init(
            name: "mail.smtp.ssl.trust", section: .mailProperty, type: .list, defaultValue: nil,
            validValues: "Space-separated host names to trust without certificate verification, or * for all",
            effect: .atRestart, referenceEffect: nil,
            summary: "Hosts whose TLS certificate is trusted without verification. Dangerous: use [outbox] tls-ca-file for a private CA instead."),
        .init(
            name: "mail.smtp.ssl.checkserveridentity", section: .mailProperty, type: .boolean, defaultValue: "true", validValues: "true, false",
            effect: .atRestart, referenceEffect: nil,
            summary: "Whether the server's certificate must match its host name.",
            outboxNote: "Outbox's default is true (JavaMail's is false)."),
    ]

    /// Outbox's own settings, section `[outbox]` (override with `-o outbox.KEY=VALUE`).
    package static let outbox: [OptionDescriptor] = [
        .init(
            name: "data-directory", section: .outbox, type: .string, defaultValue: "./outbox-data", validValues: "A directory path",
            effect: .atRestart, referenceEffect: nil,
            summary: "Where Outbox keeps its queue store and, with the file transport, the messages it writes."),
        .init(
            name: "http-listen", section: .outbox, type: .string, defaultValue: "127.0.0.1:8025",
            validValues: "host:port, e.g. 127.0.0.1:8025 or [::1]:8025",
            effect: .atRestart, referenceEffect: nil,
            summary: "The address Outbox's HTTP API listens on."),
        .init(
            name: "http-tls-certificate-file", section: .outbox, type: .string, defaultValue: nil,
            validValues: "Path of an existing PEM file (the certificate chain, leaf first)",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "With http-tls-key-file: the HTTP listener (API and dashboard) serves HTTPS with this certificate. Unset: plain HTTP."),
        .init(
            name: "http-tls-key-file", section: .outbox, type: .string, defaultValue: nil,
            validValues: "Path of an existing PEM file (the private key)",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "The private key of http-tls-certificate-file; both are set, or neither. Outbox refuses to start when the key does not match the certificate."
        ),
        .init(
            name: "store", section: .outbox, type: .string, defaultValue: "sqlite", validValues: "sqlite, memory, or a postgres:// URL",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "The queue store: sqlite (in the data directory), memory (lost at exit; for tests) or postgres://user:password@host:port/database (several instances share one queue)."
        ),
        .init(
            name: "tls-ca-file", section: .outbox, type: .string, defaultValue: nil, validValues: "Path of an existing PEM file",
            effect: .atRestart, referenceEffect: nil,
            summary: "Extra CA certificates (PEM) to trust, for a mail server with a certificate from a private CA. Unset: the system's trust store."),
        .init(
            name: "graph-url", section: .outbox, type: .url, defaultValue: "https://graph.microsoft.com/v1.0",
            validValues: "An https:// or http:// URL",
            effect: .atRestart, referenceEffect: nil,
            summary: "The Microsoft Graph API base URL (other national clouds, or a test server)."),
        .init(
            name: "google-token-url", section: .outbox, type: .url, defaultValue: "https://oauth2.googleapis.com/token",
            validValues: "An https:// or http:// URL",
            effect: .atRestart, referenceEffect: nil,
            summary: "Google's OAuth2 token endpoint."),
        .init(
            name: "api-tokens", section: .outbox, type: .secret, defaultValue: nil,
            validValues: "Tokens separated by spaces or commas (or env:NAME, file:/path)",
            effect: .immediately, referenceEffect: nil, isSecret: true,
            summary: "Bearer tokens accepted by the HTTP API (Authorization: Bearer TOKEN). Required when http-listen is not a loopback address.",
            outboxNote: "Never printed."),
        .init(
            name: "require-api-token", section: .outbox, type: .boolean, defaultValue: "false", validValues: "true, false",
            effect: .immediately, referenceEffect: nil,
            summary: "Require an API token on loopback too (always required elsewhere)."),
        .init(
            name: "max-request-size", section: .outbox, type: .integer, defaultValue: "26214400", validValues: "Bytes, 1024 or more",
            effect: .immediately, referenceEffect: nil,
            summary: "The largest HTTP request body accepted (a submitted message with its attachments as base64)."),
        .init(
            name: "delivery-concurrency", section: .outbox, type: .integer, defaultValue: "8", validValues: "An integer from 1 to 1000",
            effect: .atNextCycle, referenceEffect: nil,
            summary:
                "Deliveries in flight at once in this instance, per route: each route ([smtp-client] and every [smtp-client-NAME]) has its own claim loop with this many, so one route's backlog never takes another's slots."
        ),
        .init(
            name: "lease-time", section: .outbox, type: .time, defaultValue: "00:05:00", validValues: TimeValue.formatDescription,
            effect: .atNextCycle, referenceEffect: nil,
            summary: "How long a dispatcher's claim on a message lasts; another instance takes over a crashed one's messages after it."),
        .init(
            name: "retry-initial-delay", section: .outbox, type: .time, defaultValue: "00:00:30", validValues: TimeValue.formatDescription,
            effect: .atNextCycle, referenceEffect: nil,
            summary: "The delay after a first transient failure; each further failure doubles it (with 20 % jitter)."),
        .init(
            name: "retry-max-delay", section: .outbox, type: .time, defaultValue: "01:00:00", validValues: TimeValue.formatDescription,
            effect: .atNextCycle, referenceEffect: nil,
            summary: "The longest delay between two attempts."),
        .init(
            name: "retry-max-age", section: .outbox, type: .time, defaultValue: "24:00:00", validValues: TimeValue.formatDescription,
            effect: .atNextCycle, referenceEffect: nil,
            summary: "A message still failing transiently this long after submission fails for good."),
        .init(
            name: "unknown-outcome-retries", section: .outbox, type: .integer, defaultValue: "1", validValues: "An integer from 0 to 10",
            effect: .atNextCycle, referenceEffect: nil,
            summary:
                "How often a message whose outcome is unknown (connection lost after the final dot, or a crash while sending) is sent again before it is marked unknown."
        ),
        .init(
            name: "rate-limit-per-minute", section: .outbox, type: .integer, defaultValue: "0", validValues: "An integer, 0 for no limit",
            effect: .atNextCycle, referenceEffect: nil,
            summary: "Messages a minute per sending mailbox (Exchange Online allows 30); messages over the limit wait in the queue."),
        .init(
            name: "mailbox-concurrency", section: .outbox, type: .integer, defaultValue: "0", validValues: "An integer, 0 for no limit",
            effect: .atNextCycle, referenceEffect: nil,
            summary: "Deliveries in flight at once per sending mailbox (Graph allows 4)."),
        .init(
            name: "shutdown-deadline", section: .outbox, type: .time, defaultValue: "00:00:20", validValues: TimeValue.formatDescription,
            effect: .atRestart, referenceEffect: nil,
            summary: "On SIGTERM or SIGINT, how long in-flight deliveries may finish before the rest are released back to the queue."),
        .init(
            name: "queue-min-free", section: .outbox, type: .string, defaultValue: "auto",
            validValues:
                "auto; a byte count (8388608), a size with a unit (512KiB, 100MiB, 2GiB; KB, MB, GB are powers of 1000) or a share of the disk (5%)",
            effect: .immediately, referenceEffect: nil,
            summary:
                "Free space the queue keeps on the data directory's disk (SQLite). Below it, delivered messages' content is purged, oldest first; if that is not enough, new submissions are refused (HTTP 507, SMTP 452 4.3.1) while deliveries go on. auto: 100 MiB or 5% of the disk, whichever is larger."
        ),
        .init(
            name: "retention-content", section: .outbox, type: .time, defaultValue: "168:00:00", validValues: TimeValue.formatDescription,
            effect: .atNextCycle, referenceEffect: nil,
            summary:
                "How long a delivered, failed or cancelled message keeps its content; then the content is purged (its record and attempts stay). 00:00:00 purges it at once."
        ),
        .init(
            name: "retention-records", section: .outbox, type: .time, defaultValue: "720:00:00", validValues: TimeValue.formatDescription,
            effect: .atNextCycle, referenceEffect: nil,
            summary: "How long a delivered, failed or cancelled message's record and attempts are kept; then they are deleted."),
        .init(
            name: "store-unavailable-wait", section: .outbox, type: .time, defaultValue: "00:00:05",
            validValues: TimeValue.formatDescription + ", greater than 0", effect: .immediately, referenceEffect: nil,
            summary:
                "How long a request waits for a PostgreSQL store that does not answer (stopped, restarting, out of connections). Past it the request is refused as a temporary failure (HTTP 503 store_unavailable with Retry-After, SMTP 451 4.3.0) and the store call is cancelled, so nothing is queued; a client that retries with the same Idempotency-Key gets the message once."
        ),
        .init(
            name: "log-format", section: .outbox, type: .enumeration, defaultValue: "logfmt", validValues: "logfmt, json",
            effect: .immediately, referenceEffect: nil,
            summary:
                "The format of the delivery log (logger outbox.delivery): one line per delivery attempt with the queue id, Message-ID, route, sender, each recipient's result, the server's reply or HTTP status, duration, bytes and TLS. logfmt (key=value) or json (one object a line)."
        ),
        .init(
            name: "otel-endpoint", section: .outbox, type: .url, defaultValue: nil,
            validValues: "An https:// or http:// URL (an OTLP/HTTP collector)",
            effect: .atRestart, referenceEffect: nil,
            summary:
                "Turns on OpenTelemetry traces: spans of each delivery attempt (connection, TLS, AUTH, the transaction or HTTP request) are exported with OTLP/HTTP (protobuf) to this collector, e.g. http://127.0.0.1:4318 (/v1/traces is added when the URL has no path). Unset: no tracing."
        ),
    ]

    /// The one key of a `[secret-<name>]` section.
    package static let secretSection: [OptionDescriptor] = [
        .init(
            name: "password", section: .secret, type: .secret, defaultValue: nil, validValues: "The Google application's client_secret",
            effect: .atRestart, referenceEffect: "At start/restart (smtp-client)", isSecret: true,
            summary:
                "The client_secret of the Google application, for Gmail with XOAUTH2. The section is chosen by the smtp-client option secret (default smtp: [secret-smtp]).",
            outboxNote: "May be given as env:NAME or file:/path. Never printed.")
    ]

    /// Looks up a descriptor of `[smtp-client]` (including understood `mail.*` keys).
    package static func descriptor(smtpClient name: String) -> OptionDescriptor? {
        smtpClient.first { $0.name == name } ?? mailProperties.first { $0.name == name }
    }

    /// Looks up a descriptor of `[outbox]`.
    package static func descriptor(outbox name: String) -> OptionDescriptor? {
        outbox.first { $0.name == name }
    }
}
