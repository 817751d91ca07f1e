import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// How the connection is secured (`smtp-connection-security`).
public enum ConnectionSecurity: String, Sendable, Hashable, CaseIterable {
    /// `none`: clear text.
    case none = "none"
    /// `start-tls`: upgrade with STARTTLS when the server offers it, else stay in clear text.
    case startTLS = "start-tls"
    /// `start-tls-required`: STARTTLS or fail; never fall back to clear text.
    case startTLSRequired = "start-tls-required"
    /// `ssl-tls`: TLS from the first byte (RFC 8314 implicit TLS).
    case implicitTLS = "ssl-tls"
}

/// Everything one SMTP connection needs: where, how securely, as whom, and how patiently.
public struct SMTPClientConfiguration: Sendable {
    /// The server's host name or IP address (`server`). A host name is also the name the
    /// server's certificate must carry (see `checkServerIdentity`).
    public var host: String
    /// The server's TCP port (`port`).
    public var port: Int
    /// Clear text, STARTTLS or implicit TLS (`smtp-connection-security`).
    public var security: ConnectionSecurity
    /// Covers the TCP connect and the TLS handshake (`connect-timeout`).
    public var connectTimeout: Duration
    /// Covers every wait for a reply and every stalled write (`protocol-timeout`).
    public var protocolTimeout: Duration
    /// The wait for the reply to the final dot: RFC 5321 §4.5.3.2 recommends 10 minutes, so
    /// Outbox waits max(protocol-timeout, 10 minutes) there: a server that is still filtering a
    /// large message must not be cut off and then get the message a second time.
    public var dataTerminationTimeout: Duration { max(protocolTimeout, .seconds(600)) }
    /// Credentials for AUTH, when `enable-authentication = true`.
    public var credentials: SMTPCredentials?
    /// `mail.smtp.auth.mechanisms`: preference list; the first one the server offers is used.
    public var authMechanisms: [String]
    /// The EHLO name (`mail.smtp.localhost`); nil = this machine's host name.
    public var localHostname: String?
    /// `[outbox] tls-ca-file`: a PEM file of extra trusted CAs, beside the system's.
    public var tlsCAFile: String?
    /// `mail.smtp.ssl.trust`: hosts whose certificate is accepted without a trusted CA
    /// (`*` = every host). Logged as a warning whenever it applies.
    public var trustedHosts: [String]
    /// `mail.smtp.ssl.checkserveridentity`: check the certificate against the host name.
    public var checkServerIdentity: Bool
    /// `mail.smtp.sendpartial`: deliver to the accepted recipients when others are refused.
    /// Outbox defaults to true (per-recipient results; the queue retries only the failed ones);
    /// false gives JavaMail's all-or-nothing behaviour (RSET when any recipient is refused).
    public var sendPartial: Bool
    /// `mail.smtp.dsn.notify` (e.g. `SUCCESS,FAILURE`) and `mail.smtp.dsn.ret` (`FULL`/`HDRS`),
    /// sent only when the server announces DSN.
    public var dsnNotify: String?
    /// `mail.smtp.dsn.ret` (`FULL` or `HDRS`), sent as `RET=` on MAIL FROM when the server
    /// announces DSN and the envelope has no `ret` of its own; nil: not sent.
    public var dsnRet: String?
    /// `enable-debug`: log the whole transcript, secrets redacted.
    public var enableDebug: Bool
    /// The TLS context of this configuration, built once for all its connections (a new
    /// configuration, as a reload makes, builds its own: a renewed CA file is read again).
    let tlsContexts = SMTPTLSContextCache()

    /// A configuration for `host`. `authMechanisms` nil means JavaMail's default list
    /// (``SASLMechanism/javaMailDefault``); both timeouts default to 300 seconds.
    public init(
        host: String,
        port: Int = 25,
        security: ConnectionSecurity = .none,
        connectTimeout: Duration = .seconds(300),
        protocolTimeout: Duration = .seconds(300),
        credentials: SMTPCredentials? = nil,
        authMechanisms: [String]? = nil,
        localHostname: String? = nil,
        tlsCAFile: String? = nil,
        trustedHosts: [String] = [],
        checkServerIdentity: Bool = true,
        sendPartial: Bool = true,
        dsnNotify: String? = nil,
        dsnRet: String? = nil,
        enableDebug: Bool = false
    ) {
        self.host = host
        self.port = port
        self.security = security
        self.connectTimeout = connectTimeout
        self.protocolTimeout = protocolTimeout
        self.credentials = credentials
        self.authMechanisms = authMechanisms ?? SASLMechanism.javaMailDefault
        self.localHostname = localHostname
        self.tlsCAFile = tlsCAFile
        self.trustedHosts = trustedHosts
        self.checkServerIdentity = checkServerIdentity
        self.sendPartial = sendPartial
        self.dsnNotify = dsnNotify
        self.dsnRet = dsnRet
        self.enableDebug = enableDebug
    }

    /// Whether `mail.smtp.ssl.trust` names this host.
    public var hostIsTrustedWithoutCA: Bool {
        trustedHosts.contains("*") || trustedHosts.contains { $0.caseInsensitiveCompare(host) == .orderedSame }
    }

    /// The TLS client configuration: TLS 1.2 at least, the system's trust store plus the CA
    /// file, host-name checking, unless `mail.smtp.ssl.trust` names the host.
    public func makeTLSConfiguration() -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let tlsCAFile {
            tls.additionalTrustRoots = [.file(tlsCAFile)]
        }
        if hostIsTrustedWithoutCA {
            tls.certificateVerification = .none
        } else if !checkServerIdentity {
            tls.certificateVerification = .noHostnameVerification
        } else {
            tls.certificateVerification = .fullVerification
        }
        return tls
    }
}

extension Duration {
    var timeAmount: TimeAmount {
        let (seconds, attoseconds) = self.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Holds the TLS context made from one configuration, as async-http-client's SSLContextCache
/// does: building one reads the CA files and the system's trust store, which a connection must
/// not pay for each time. Keyed by the TLS configuration (best-effort equality), so a copy of
/// the configuration changed in place does not reuse a context that no longer fits.
final class SMTPTLSContextCache: Sendable {
    private let entry = NIOLockedValueBox<(configuration: TLSConfiguration, context: NIOSSLContext)?>(nil)

    func context(for configuration: TLSConfiguration) throws -> NIOSSLContext {
        if let cached = entry.withLockedValue({ $0 }), cached.configuration.bestEffortEquals(configuration) {
            return cached.context
        }
        let context = try NIOSSLContext(configuration: configuration)
        entry.withLockedValue { $0 = (configuration, context) }
        return context
    }
}
