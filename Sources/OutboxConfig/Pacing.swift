/// A route's pacing options as written (`[smtp-client]` and every `[smtp-client-NAME]`): nil
/// when unset (the provider's preset applies), 0 for no limit.
public struct RoutePacingOptions: Sendable, Equatable {
    /// `rate-limit-per-minute`: messages over a sliding minute.
    public var ratePerMinute: Int?
    /// `message-limit-per-day`: messages over a rolling 24 hours.
    public var messagesPerDay: Int?
    /// `recipient-limit-per-day`: recipients over a rolling 24 hours.
    public var recipientsPerDay: Int?
    /// `max-concurrent`: sessions or HTTP requests in flight for the route.
    public var maxConcurrent: Int?

    /// Every option unset.
    public init(ratePerMinute: Int? = nil, messagesPerDay: Int? = nil, recipientsPerDay: Int? = nil, maxConcurrent: Int? = nil) {
        self.ratePerMinute = ratePerMinute
        self.messagesPerDay = messagesPerDay
        self.recipientsPerDay = recipientsPerDay
        self.maxConcurrent = maxConcurrent
    }
}

/// A route's limits in force: its options, or the provider's preset where they are unset.
/// nil means no limit.
public struct RouteLimits: Sendable, Equatable, Hashable {
    /// Messages over a sliding minute.
    public var ratePerMinute: Int?
    /// Messages over a rolling 24 hours.
    public var messagesPerDay: Int?
    /// Recipients over a rolling 24 hours.
    public var recipientsPerDay: Int?
    /// Sessions or HTTP requests in flight for the route (across every instance on PostgreSQL).
    public var maxConcurrent: Int?
    /// Deliveries in flight per sending mailbox within the route (Graph's preset: 4).
    public var mailboxConcurrency: Int?

    /// Limits as given (nil or 0: none).
    public init(
        ratePerMinute: Int? = nil, messagesPerDay: Int? = nil, recipientsPerDay: Int? = nil, maxConcurrent: Int? = nil,
        mailboxConcurrency: Int? = nil
    ) {
        func limit(_ n: Int?) -> Int? { n.flatMap { $0 > 0 ? $0 : nil } }
        self.ratePerMinute = limit(ratePerMinute)
        self.messagesPerDay = limit(messagesPerDay)
        self.recipientsPerDay = limit(recipientsPerDay)
        self.maxConcurrent = limit(maxConcurrent)
        self.mailboxConcurrency = limit(mailboxConcurrency)
    }

    /// True when a message must be counted before it goes (a rate or a daily limit is set).
    public var counts: Bool { ratePerMinute != nil || messagesPerDay != nil || recipientsPerDay != nil }
}

/// The limits a provider publishes, applied to a route that leaves its pacing options unset.
public struct PacingPreset: Sendable, Equatable {
    /// The provider, e.g. `Exchange Online SMTP`.
    public var provider: String
    /// The limits.
    public var limits: RouteLimits
    /// Where the provider publishes them.
    public var source: String

    /// Exchange Online SMTP AUTH client submission: `server` ends with `office365.com` or
    /// `outlook.com`.
    public static let exchangeOnline = PacingPreset(
        provider: "Exchange Online SMTP", limits: RouteLimits(ratePerMinute: 30, recipientsPerDay: 10_000, maxConcurrent: 3),
        source:
            "https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits-1"
    )
    /// Microsoft Graph (Outlook service limits): 4 concurrent requests per mailbox, 10,000
    /// requests per 10 minutes.
    public static let graph = PacingPreset(
        provider: "Microsoft Graph", limits: RouteLimits(ratePerMinute: 1_000, mailboxConcurrency: 4),
        source: "https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits")
    /// Gmail and Google Workspace (`smtp.gmail.com`): the per-user daily limits.
    public static let gmail = PacingPreset(
        provider: "Gmail / Google Workspace", limits: RouteLimits(messagesPerDay: 2_000, recipientsPerDay: 10_000),
        source: "https://support.google.com/a/answer/166852")

    /// The preset for a route's server, when its provider has one.
    public static func preset(for options: SMTPClientOptions) -> PacingPreset? {
        if options.serverType == .graph { return graph }
        guard options.serverType == .smtp, var server = options.server?.lowercased() else { return nil }
        while server.hasSuffix(".") { server.removeLast() }
        if server.hasSuffix("office365.com") || server.hasSuffix("outlook.com") { return exchangeOnline }
        if server == "smtp.gmail.com" { return gmail }
        return nil
    }
}

extension SMTPClientOptions {
    /// The provider's preset for this route (see ``PacingPreset/preset(for:)``).
    public var pacingPreset: PacingPreset? { PacingPreset.preset(for: self) }

    /// The limits in force: each option set (0: none), else the preset's value. For SMTP,
    /// `max-concurrent` is at most `cnx-pool-size`.
    public var routeLimits: RouteLimits {
        let preset = pacingPreset?.limits ?? RouteLimits()
        var concurrent = pacing.maxConcurrent ?? preset.maxConcurrent
        if serverType == .smtp, !usesFileTransport, concurrent.map({ $0 == 0 || $0 > cnxPoolSize }) ?? true {
            concurrent = concurrent == 0 ? 0 : min(concurrent ?? cnxPoolSize, cnxPoolSize)
        }
        return RouteLimits(
            ratePerMinute: pacing.ratePerMinute ?? preset.ratePerMinute,
            messagesPerDay: pacing.messagesPerDay ?? preset.messagesPerDay,
            recipientsPerDay: pacing.recipientsPerDay ?? preset.recipientsPerDay,
            maxConcurrent: concurrent,
            mailboxConcurrency: preset.mailboxConcurrency)
    }

    /// The SMTP pool's size: `cnx-pool-size`, lowered to `max-concurrent` (or the preset's).
    public var effectivePoolSize: Int { min(cnxPoolSize, routeLimits.maxConcurrent ?? cnxPoolSize) }
}

extension OptionTable {
    /// Pacing per route: valid in `[smtp-client]` and every `[smtp-client-NAME]`.
    package static let pacingOptions: [OptionDescriptor] = [
        .init(
            name: "rate-limit-per-minute", section: .smtpClient, type: .integer, defaultValue: nil,
            validValues: "An integer, 0 for no limit; unset: the provider's preset", effect: .atNextCycle, referenceEffect: nil,
            summary:
                "Messages this route sends over a sliding minute, across every instance on one PostgreSQL queue (within the process with SQLite). Messages over it wait in the queue; other routes go on. Unset: the provider's preset (Exchange Online SMTP 30, Graph 1000), else no limit. [outbox] rate-limit-per-minute (per sending mailbox, per instance) still applies within the route."
        ),
        .init(
            name: "message-limit-per-day", section: .smtpClient, type: .integer, defaultValue: nil,
            validValues: "An integer, 0 for no limit; unset: the provider's preset", effect: .atNextCycle, referenceEffect: nil,
            summary:
                "Messages this route sends over a rolling 24 hours, shared like rate-limit-per-minute. Unset: the provider's preset (Gmail 2000), else no limit."
        ),
        .init(
            name: "recipient-limit-per-day", section: .smtpClient, type: .integer, defaultValue: nil,
            validValues: "An integer, 0 for no limit; unset: the provider's preset", effect: .atNextCycle, referenceEffect: nil,
            summary:
                "Recipients this route sends to over a rolling 24 hours (a message to 5 counts 5), shared like rate-limit-per-minute. Unset: the provider's preset (Exchange Online SMTP and Gmail 10000), else no limit."
        ),
        .init(
            name: "max-concurrent", section: .smtpClient, type: .integer, defaultValue: nil,
            validValues: "An integer, 0 for no limit; unset: the provider's preset", effect: .atNextCycle, referenceEffect: nil,
            summary:
                "SMTP sessions or HTTP requests in flight for this route, across every instance on one PostgreSQL queue (within the process with SQLite); for SMTP at most cnx-pool-size (the pool is made no larger). A connection idle in an instance's pool is not in flight: against a provider that counts open connections, keep cnx-max-idle-time short when several instances share a route. Unset: the provider's preset (Exchange Online SMTP 3), else cnx-pool-size for SMTP and no limit otherwise. [outbox] mailbox-concurrency (per sending mailbox) still applies within the route; Graph's preset is 4 per mailbox."
        ),
    ]

    /// Looks up one of ``pacingOptions``.
    package static func descriptor(pacing name: String) -> OptionDescriptor? {
        pacingOptions.first { $0.name == name }
    }
}

extension ConfigurationReader {
    /// The pacing options of the section being read (``smtp``).
    mutating func interpretPacing(_ o: inout SMTPClientOptions) {
        func d(_ name: String) -> OptionDescriptor { OptionTable.descriptor(pacing: name)! }
        func limit(_ name: String) -> Int? {
            typed(
                smtp[name], sourceKey: name, descriptor: d(name), Convert.integer(0...100_000_000),
                invalid: "is not an integer from 0 (no limit) to 100000000")
        }
        o.pacing = RoutePacingOptions(
            ratePerMinute: limit("rate-limit-per-minute"), messagesPerDay: limit("message-limit-per-day"),
            recipientsPerDay: limit("recipient-limit-per-day"), maxConcurrent: limit("max-concurrent"))
    }
}

extension OutboxConfiguration {
    /// The effective value of a pacing option, as `check-config` shows it: the value set, or
    /// the preset's with its source, or none.
    package func pacingValue(_ name: String, options o: SMTPClientOptions) -> String {
        let set: Int?
        let effective: Int?
        let limits = o.routeLimits
        switch name {
        case "rate-limit-per-minute": (set, effective) = (o.pacing.ratePerMinute, limits.ratePerMinute)
        case "message-limit-per-day": (set, effective) = (o.pacing.messagesPerDay, limits.messagesPerDay)
        case "recipient-limit-per-day": (set, effective) = (o.pacing.recipientsPerDay, limits.recipientsPerDay)
        case "max-concurrent": (set, effective) = (o.pacing.maxConcurrent, limits.maxConcurrent)
        default: return "?"
        }
        let text = effective.map(String.init) ?? "0 (no limit)"
        if let set {
            if name == "max-concurrent", set != effective ?? 0 { return "\(text) (set \(set); at most cnx-pool-size)" }
            return set == 0 ? "0 (no limit)" : text
        }
        if let preset = o.pacingPreset, let effective, effective != (name == "max-concurrent" ? o.cnxPoolSize : nil) {
            return "\(effective) (preset: \(preset.provider), \(preset.source))"
        }
        return text
    }

    /// What a reload compares for a pacing option: the value set and the route's preset.
    package func pacingComparable(_ name: String, options o: SMTPClientOptions) -> String {
        let set: Int?
        switch name {
        case "rate-limit-per-minute": set = o.pacing.ratePerMinute
        case "message-limit-per-day": set = o.pacing.messagesPerDay
        case "recipient-limit-per-day": set = o.pacing.recipientsPerDay
        case "max-concurrent": set = o.pacing.maxConcurrent
        default: set = nil
        }
        return "\(set.map(String.init) ?? "unset") \(o.pacingPreset?.provider ?? "")"
    }

    /// How the route's pacing combines with `[outbox] rate-limit-per-minute` and
    /// `mailbox-concurrency`, for `check-config`'s notes.
    package func pacingNote(options o: SMTPClientOptions) -> String? {
        let limits = o.routeLimits
        var parts: [String] = []
        if let r = limits.ratePerMinute { parts.append("\(r) messages/minute") }
        if let m = limits.messagesPerDay { parts.append("\(m) messages/day") }
        if let r = limits.recipientsPerDay { parts.append("\(r) recipients/day") }
        if let c = limits.maxConcurrent { parts.append("\(c) in flight") }
        let mailboxConcurrency = outbox.mailboxConcurrency > 0 ? outbox.mailboxConcurrency : limits.mailboxConcurrency
        var mailbox: [String] = []
        if outbox.rateLimitPerMinute > 0 { mailbox.append("\(outbox.rateLimitPerMinute) messages/minute") }
        if let mailboxConcurrency { mailbox.append("\(mailboxConcurrency) in flight") }
        guard !parts.isEmpty || !mailbox.isEmpty else { return nil }
        var note = "pacing: "
        note += parts.isEmpty ? "no route limit" : parts.joined(separator: ", ") + " for the route"
        if o.pacingPreset != nil, o.pacing == RoutePacingOptions() { note += " (the provider's preset)" }
        if !mailbox.isEmpty {
            note += "; within it, per sending mailbox and per instance ([outbox]): " + mailbox.joined(separator: ", ")
            note += ". A message goes when both allow it: the stricter limit wins"
        }
        return note
    }
}
