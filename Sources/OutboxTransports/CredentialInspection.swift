import OutboxConfig
import OutboxOAuth

/// Which credentials a transport uses, and the health of its tokens (see ``TokenHealth``), for
/// `Mailer.credentialStates`.
package enum CredentialInspection {
    /// The kind of credentials: `oauth2-azure`, `oauth2-google`, `password` or `none`.
    package static func kind(_ configuration: OutboxConfiguration) -> String {
        let options = configuration.smtpClient
        if options.usesFileTransport { return "none" }
        if options.usesOAuth { return options.isGoogle ? "oauth2-google" : "oauth2-azure" }
        return options.enableAuthentication ? "password" : "none"
    }

    /// The health of the tokens `transport` uses (nil when it uses none): Graph's and EWS's own
    /// token cache, or SMTP XOAUTH2's cache for the configuration's credential set (one per
    /// process and credential set).
    package static func tokenHealth(transport: any MailTransport, configuration: OutboxConfiguration) async -> TokenHealth? {
        if let graph = transport as? GraphTransport { return await graph.tokens.health() }
        if let ews = transport as? EWSTransport {
            if case .bearer(let source, _, _) = ews.auth { return await source.health() }
            return nil
        }
        let options = configuration.smtpClient
        guard transport is SMTPTransport, options.usesXOAUTH2 else { return nil }
        guard
            let source = try? SMTPTokenSources.tokenSource(
                options: options, settings: configuration.outbox, secretSection: configuration.chosenSecretSection)
        else { return nil }
        return await source.health()
    }
}
