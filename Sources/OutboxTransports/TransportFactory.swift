import Logging
import NIOCore
import NIOPosix
import OutboxConfig
import OutboxOAuth
import OutboxSMTP

extension SMTPClientConfiguration {
    /// The SMTP engine's settings from the smtp-client options and `[outbox]`.
    /// `tokenSource` supplies XOAUTH2 access tokens; without one, XOAUTH2 gets them from
    /// OutboxOAuth (`SMTPTokenSources`: Azure or Google per `tenant-authority`, cached per
    /// credential set).
    public init(
        options: SMTPClientOptions, settings: OutboxSettings,
        tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil
    ) {
        let security: ConnectionSecurity
        switch options.smtpConnectionSecurity {
        case .none: security = .none
        case .startTLS: security = .startTLS
        case .startTLSRequired: security = .startTLSRequired
        case .sslTLS: security = .implicitTLS
        }
        var credentials: SMTPCredentials?
        if options.enableAuthentication, let user = options.user {
            let wantsXOAUTH2 = (options.authMechanisms ?? []).contains("XOAUTH2")
            if wantsXOAUTH2, let tokenSource {
                credentials = .oauth2(user: user, token: tokenSource)
            } else if wantsXOAUTH2 {
                credentials = .oauth2(user: user, token: SMTPTokenSources.smtpTokenSource(options: options, settings: settings, secretSection: nil))
            } else {
                credentials = .password(user: user, password: SMTPSecret(options.password?.value ?? ""))
            }
        }
        // JavaMail: a timeout of 0 means none; a long one stands in for "none".
        let forever: Duration = .seconds(365 * 24 * 3600)
        self.init(
            host: options.server ?? "localhost",
            port: options.port,
            security: security,
            connectTimeout: options.connectTimeout == .zero ? forever : options.connectTimeout,
            protocolTimeout: options.protocolTimeout == .zero ? forever : options.protocolTimeout,
            credentials: credentials,
            authMechanisms: options.authMechanisms,
            localHostname: options.localhost,
            tlsCAFile: settings.tlsCAFile,
            trustedHosts: options.sslTrust,
            checkServerIdentity: options.checkServerIdentity,
            sendPartial: options.sendPartial,
            dsnNotify: options.dsnNotify,
            dsnRet: options.dsnRet,
            enableDebug: options.enableDebug)
    }
}

extension PoolConfiguration {
    /// `cnx-pool-size` (lowered to the route's `max-concurrent` or its preset's),
    /// `cnx-check-idle-time`, `cnx-max-idle-time`, `token-expiry-margin-time`.
    public init(options: SMTPClientOptions) {
        self.init(
            size: options.effectivePoolSize, checkIdleTime: options.cnxCheckIdleTime,
            maxIdleTime: options.cnxMaxIdleTime, tokenExpiryMargin: options.tokenExpiryMarginTime)
    }
}

/// Chooses and builds the transport that `server-type` and `server` call for.
public enum TransportFactory {
    /// The transport cannot be built from the configuration: the code of the error behind it
    /// (an OAuth or delivery code) and what to fix.
    public struct Unavailable: Error, CustomStringConvertible, Sendable {
        /// The underlying error's code, e.g. `oauth_misconfigured`.
        public var code: String
        /// What went wrong and which option to fix.
        public var description: String
    }

    /// The transport for `server-type` and `server`: the file transport for SMTP without a
    /// server, SMTP through a connection pool, Graph or EWS. `tokenSource` replaces the built-in
    /// OAuth2 tokens for SMTP's XOAUTH2. Throws ``Unavailable`` when Graph or EWS cannot be set up
    /// from the configuration (e.g. missing OAuth settings or a wrong EWS URL).
    public static func make(
        configuration: OutboxConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "outbox"),
        tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil,
        route: String = "default"
    ) throws -> any MailTransport {
        let options = configuration.smtpClient
        SMTPTokenSources.remember(secretSection: configuration.chosenSecretSection)
        switch options.serverType {
        case .smtp:
            if options.usesFileTransport {
                return FileTransport(dataDirectory: configuration.outbox.dataDirectory)
            }
            var source = tokenSource
            var rejected: (@Sendable () async -> Void)?
            if source == nil, options.usesXOAUTH2 {
                let oauth = SMTPTokenSources.smtpTokenSourceWithRefresh(
                    options: options, settings: configuration.outbox,
                    secretSection: configuration.chosenSecretSection)
                source = oauth.token
                rejected = oauth.rejected
            }
            let smtp = SMTPClientConfiguration(options: options, settings: configuration.outbox, tokenSource: source)
            return SMTPTransport(
                configuration: smtp, pool: PoolConfiguration(options: options),
                envelopeFrom: options.envelopeFrom, eventLoopGroup: eventLoopGroup, logger: logger,
                onAuthenticationRejected: rejected)
        case .graph:
            do throws(OAuthError) {
                return try GraphTransport(
                    configuration: configuration,
                    tokenCache: TokenCache(clock: ContinuousClock(), margin: options.tokenExpiryMarginTime),
                    logger: logger, route: route)
            } catch {
                throw Unavailable(code: error.code.rawValue, description: "server-type = GRAPH: \(error.description)")
            }
        case .ews:
            do throws(DeliveryError) {
                return try EWSTransport(
                    configuration: configuration,
                    tokenCache: TokenCache(clock: ContinuousClock(), margin: options.tokenExpiryMarginTime),
                    logger: logger, route: route)
            } catch {
                throw Unavailable(
                    code: error.kind == .permanent || error.routeFault == .configuration ? "transport_misconfigured" : "transport_unavailable",
                    description: "server-type = EWS: \(error.message)")
            }
        }
    }
}
