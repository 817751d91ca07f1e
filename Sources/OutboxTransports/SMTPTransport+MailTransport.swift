import OutboxConfig
import OutboxSMTP

extension SMTPTransport {
    /// Applies the immediate `[smtp-client]` options (see ``MailTransport/update(options:settings:tokenSource:)``).
    public func update(options: SMTPClientOptions, settings: OutboxSettings, tokenSource: (@Sendable () async throws -> SMTPAccessToken)?) {
        update(
            configuration: SMTPClientConfiguration(options: options, settings: settings, tokenSource: tokenSource),
            envelopeFrom: options.envelopeFrom)
    }

    /// The pool's counters.
    public var poolStatistics: PoolStatistics? { statistics }
}
