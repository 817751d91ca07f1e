/// The link from the option table's rows to the fields that hold their values, so that a reload
/// applies exactly the options whose "Changes Take Effect" allows it, and no option is
/// forgotten: `OptionFieldsTests` checks that every row of `[smtp-client]`, its `mail.*`
/// properties and `[outbox]` has a field here.
package struct OptionField: Sendable {
    /// Copies the option's value from one configuration into another.
    package let copy: @Sendable (_ from: OutboxConfiguration, _ to: inout OutboxConfiguration) -> Void

    package init(_ copy: @escaping @Sendable (_ from: OutboxConfiguration, _ to: inout OutboxConfiguration) -> Void) {
        self.copy = copy
    }
}

extension OptionTable {
    /// The field of every option a reload can apply, keyed by the option's name as
    /// ``OutboxConfiguration/changes(from:)`` reports it (`[outbox]` keys with their `outbox.`
    /// prefix: `[outbox] rate-limit-per-minute` is not a route's).
    package static let fields: [String: OptionField] = {
        var f: [String: OptionField] = [:]
        // [smtp-client]
        f["allow-delegate"] = OptionField { $1.smtpClient.allowDelegate = $0.smtpClient.allowDelegate }
        f["client-id"] = OptionField { $1.smtpClient.clientID = $0.smtpClient.clientID }
        f["cnx-check-idle-time"] = OptionField { $1.smtpClient.cnxCheckIdleTime = $0.smtpClient.cnxCheckIdleTime }
        f["cnx-max-idle-time"] = OptionField { $1.smtpClient.cnxMaxIdleTime = $0.smtpClient.cnxMaxIdleTime }
        f["cnx-pool-size"] = OptionField { $1.smtpClient.cnxPoolSize = $0.smtpClient.cnxPoolSize }
        f["connect-timeout"] = OptionField { $1.smtpClient.connectTimeout = $0.smtpClient.connectTimeout }
        f["directory-id"] = OptionField { $1.smtpClient.directoryID = $0.smtpClient.directoryID }
        f["enable-authentication"] = OptionField { $1.smtpClient.enableAuthentication = $0.smtpClient.enableAuthentication }
        f["enable-debug"] = OptionField { $1.smtpClient.enableDebug = $0.smtpClient.enableDebug }
        f["exchange-version"] = OptionField { $1.smtpClient.exchangeVersion = $0.smtpClient.exchangeVersion }
        f["password"] = OptionField { $1.smtpClient.password = $0.smtpClient.password }
        f["port"] = OptionField { $1.smtpClient.port = $0.smtpClient.port }
        f["protocol-timeout"] = OptionField { $1.smtpClient.protocolTimeout = $0.smtpClient.protocolTimeout }
        f["scope"] = OptionField { $1.smtpClient.scope = $0.smtpClient.scope }
        f["secret"] = OptionField { $1.smtpClient.secret = $0.smtpClient.secret }
        f["server"] = OptionField { $1.smtpClient.server = $0.smtpClient.server }
        f["server-type"] = OptionField { $1.smtpClient.serverType = $0.smtpClient.serverType }
        f["smtp-connection-security"] = OptionField { $1.smtpClient.smtpConnectionSecurity = $0.smtpClient.smtpConnectionSecurity }
        f["tenant-authority"] = OptionField { $1.smtpClient.tenantAuthority = $0.smtpClient.tenantAuthority }
        f["token-expiry-margin-time"] = OptionField { $1.smtpClient.tokenExpiryMarginTime = $0.smtpClient.tokenExpiryMarginTime }
        f["user"] = OptionField { $1.smtpClient.user = $0.smtpClient.user }
        f["grant-type"] = OptionField { $1.smtpClient.grantType = $0.smtpClient.grantType }
        // mail.* properties
        f["mail.smtp.auth.mechanisms"] = OptionField { $1.smtpClient.authMechanisms = $0.smtpClient.authMechanisms }
        f["mail.ews.auth.mechanisms"] = OptionField { $1.smtpClient.ewsAuthMechanisms = $0.smtpClient.ewsAuthMechanisms }
        f["mail.smtp.localhost"] = OptionField { $1.smtpClient.localhost = $0.smtpClient.localhost }
        f["mail.smtp.from"] = OptionField { $1.smtpClient.envelopeFrom = $0.smtpClient.envelopeFrom }
        f["mail.smtp.sendpartial"] = OptionField { $1.smtpClient.sendPartial = $0.smtpClient.sendPartial }
        f["mail.smtp.dsn.notify"] = OptionField { $1.smtpClient.dsnNotify = $0.smtpClient.dsnNotify }
        f["mail.smtp.dsn.ret"] = OptionField { $1.smtpClient.dsnRet = $0.smtpClient.dsnRet }
        f["mail.smtp.ssl.trust"] = OptionField { $1.smtpClient.sslTrust = $0.smtpClient.sslTrust }
        f["mail.smtp.ssl.checkserveridentity"] = OptionField {
            $1.smtpClient.checkServerIdentity = $0.smtpClient.checkServerIdentity
        }
        // Outbox's route options
        f["senders"] = OptionField { $1.smtpClient.senders = $0.smtpClient.senders }
        f["send-as"] = OptionField { $1.smtpClient.sendAs = $0.smtpClient.sendAs }
        // pacing, in every route
        f["rate-limit-per-minute"] = OptionField { $1.smtpClient.pacing.ratePerMinute = $0.smtpClient.pacing.ratePerMinute }
        f["message-limit-per-day"] = OptionField { $1.smtpClient.pacing.messagesPerDay = $0.smtpClient.pacing.messagesPerDay }
        f["recipient-limit-per-day"] = OptionField { $1.smtpClient.pacing.recipientsPerDay = $0.smtpClient.pacing.recipientsPerDay }
        f["max-concurrent"] = OptionField { $1.smtpClient.pacing.maxConcurrent = $0.smtpClient.pacing.maxConcurrent }
        // [outbox]
        f["outbox.data-directory"] = OptionField { $1.outbox.dataDirectory = $0.outbox.dataDirectory }
        f["outbox.http-listen"] = OptionField { $1.outbox.httpListen = $0.outbox.httpListen }
        f["outbox.store"] = OptionField { $1.outbox.store = $0.outbox.store }
        f["outbox.tls-ca-file"] = OptionField { $1.outbox.tlsCAFile = $0.outbox.tlsCAFile }
        f["outbox.graph-url"] = OptionField { $1.outbox.graphURL = $0.outbox.graphURL }
        f["outbox.google-token-url"] = OptionField { $1.outbox.googleTokenURL = $0.outbox.googleTokenURL }
        f["outbox.api-tokens"] = OptionField { $1.outbox.apiTokens = $0.outbox.apiTokens }
        f["outbox.require-api-token"] = OptionField { $1.outbox.requireAPIToken = $0.outbox.requireAPIToken }
        f["outbox.max-request-size"] = OptionField { $1.outbox.maxRequestSize = $0.outbox.maxRequestSize }
        f["outbox.delivery-concurrency"] = OptionField { $1.outbox.deliveryConcurrency = $0.outbox.deliveryConcurrency }
        f["outbox.lease-time"] = OptionField { $1.outbox.leaseTime = $0.outbox.leaseTime }
        f["outbox.retry-initial-delay"] = OptionField { $1.outbox.retryInitialDelay = $0.outbox.retryInitialDelay }
        f["outbox.retry-max-delay"] = OptionField { $1.outbox.retryMaxDelay = $0.outbox.retryMaxDelay }
        f["outbox.retry-max-age"] = OptionField { $1.outbox.retryMaxAge = $0.outbox.retryMaxAge }
        f["outbox.unknown-outcome-retries"] = OptionField { $1.outbox.unknownOutcomeRetries = $0.outbox.unknownOutcomeRetries }
        f["outbox.rate-limit-per-minute"] = OptionField { $1.outbox.rateLimitPerMinute = $0.outbox.rateLimitPerMinute }
        f["outbox.mailbox-concurrency"] = OptionField { $1.outbox.mailboxConcurrency = $0.outbox.mailboxConcurrency }
        f["outbox.shutdown-deadline"] = OptionField { $1.outbox.shutdownDeadline = $0.outbox.shutdownDeadline }
        f["outbox.queue-min-free"] = OptionField { $1.outbox.queueMinFree = $0.outbox.queueMinFree }
        f["outbox.retention-content"] = OptionField { $1.outbox.retentionContent = $0.outbox.retentionContent }
        f["outbox.retention-records"] = OptionField { $1.outbox.retentionRecords = $0.outbox.retentionRecords }
        f["outbox.store-unavailable-wait"] = OptionField { $1.outbox.storeUnavailableWait = $0.outbox.storeUnavailableWait }
        f["outbox.http-tls-certificate-file"] = OptionField { $1.outbox.httpTLSCertificateFile = $0.outbox.httpTLSCertificateFile }
        f["outbox.http-tls-key-file"] = OptionField { $1.outbox.httpTLSKeyFile = $0.outbox.httpTLSKeyFile }
        f["outbox.log-format"] = OptionField { $1.outbox.logFormat = $0.outbox.logFormat }
        f["outbox.otel-endpoint"] = OptionField { $1.outbox.otelEndpoint = $0.outbox.otelEndpoint }
        return f
    }()
}

/// What a reload does with a new configuration: the configuration now in force, and the
/// changes it applied and left waiting.
package struct ReloadPlan: Sendable {
    /// The old configuration with every change applied whose take-effect time allows it now
    /// (immediately, or at the next cycle); the others keep their old values.
    package var configuration: OutboxConfiguration
    /// Changes now in force (take effect immediately or at the next cycle).
    package var applied: [ConfigurationChange]
    /// Changes that wait for a restart.
    package var waiting: [ConfigurationChange]
}

extension OutboxConfiguration {
    /// Plans a reload from `self` (the configuration in force) to `new`, driven by the option
    /// table's take-effect column: an option that takes effect immediately or at the next cycle
    /// gets its new value, one that takes effect at restart keeps the old one. A changed
    /// option without a field in ``OptionTable/fields`` waits for a restart (and the unit tests
    /// fail), so a new option cannot be applied half-way. `[relay]` and `[client-*]` are taken
    /// whole from `new`: the listener applies their take-effect times itself.
    package func planReload(to new: OutboxConfiguration) -> ReloadPlan {
        var merged = self
        var applied: [ConfigurationChange] = []
        var waiting: [ConfigurationChange] = []
        for change in new.changes(from: self) {
            if change.name.hasPrefix("smtp-client-") { continue }  // the routes, below
            if change.name.hasPrefix("relay.") || change.name.hasPrefix("client-") {
                // Applied (or reported) by the listener, from `merged.relay` and `merged.clients`.
                if change.effect == .atRestart { waiting.append(change) } else { applied.append(change) }
                continue
            }
            if change.effect != .atRestart, let field = OptionTable.fields[change.name] {
                field.copy(new, &merged)
                merged.sources[change.name] = new.sources[change.name]
                applied.append(change)
            } else {
                waiting.append(change)
            }
        }
        merged.relay = new.relay
        merged.clients = new.clients
        // Routes: one added or removed is applied whole; one kept is planned like [smtp-client].
        var routes: [String: SMTPClientOptions] = [:]
        for (name, options) in new.routes {
            let prefix = "smtp-client-\(name)."
            guard let before = forRoute(name), let after = new.forRoute(name) else {
                routes[name] = options
                applied.append(ConfigurationChange(name: "smtp-client-\(name)", effect: .immediately))
                for (key, source) in new.sources where key.hasPrefix(prefix) { merged.sources[key] = source }
                continue
            }
            let plan = before.planReload(to: after)
            routes[name] = plan.configuration.smtpClient
            let isRouteOption: (ConfigurationChange) -> Bool = { !$0.name.contains(".") || $0.name.hasPrefix("mail.") }
            for change in plan.applied where isRouteOption(change) {
                applied.append(ConfigurationChange(name: prefix + change.name, effect: change.effect))
                merged.sources[prefix + change.name] = new.sources[prefix + change.name]
            }
            waiting += plan.waiting.filter(isRouteOption).map { ConfigurationChange(name: prefix + $0.name, effect: $0.effect) }
        }
        for name in self.routes.keys where new.routes[name] == nil {
            applied.append(ConfigurationChange(name: "smtp-client-\(name)", effect: .immediately))
            merged.sources = merged.sources.filter { !$0.key.hasPrefix("smtp-client-\(name).") }
        }
        merged.routes = routes
        return ReloadPlan(configuration: merged, applied: applied, waiting: waiting)
    }
}
