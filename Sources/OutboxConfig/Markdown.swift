extension OptionTable {
    /// The environment variable that makes the docs test rewrite `docs/options.md`.
    package static let regenerateVariable = "OUTBOX_REGENERATE_DOCS"

    /// `docs/options.md`: the option reference generated from this table.
    package static func markdownReference() -> String {
        func cell(_ s: String?) -> String {
            guard let s, !s.isEmpty else { return "—" }
            return s.replacingOccurrences(of: "|", with: "\\|")
        }
        func code(_ s: String?) -> String {
            guard let s, !s.isEmpty else { return "—" }
            return "`\(s)`"
        }
        func table(_ rows: [OptionDescriptor]) -> [String] {
            var out = ["| Option | Type | Default | Valid values | Takes effect |", "|---|---|---|---|---|"]
            for d in rows {
                out.append(
                    "| [`\(d.name)`](#\(anchor(d))) | \(d.type.rawValue) | \(code(d.defaultValue)) | \(cell(d.validValues)) | \(d.effect.rawValue) |")
            }
            return out
        }
        func details(_ rows: [OptionDescriptor], prefix: String = "") -> [String] {
            var out: [String] = []
            for d in rows {
                out.append("")
                out.append("### \(prefix)\(d.name)")
                out.append("")
                out.append("- Type: \(d.type.rawValue)\(d.isSecret ? " (secret: never printed)" : "")")
                out.append("- Default: \(code(d.defaultValue))")
                out.append("- Valid values: \(d.validValues)")
                var effect = "- Takes effect: \(d.effect.rawValue)"
                if let reference = d.referenceEffect { effect += " (reference: \"\(reference)\")" }
                out.append(effect)
                out.append("")
                out.append(d.summary)
                if let note = d.outboxNote {
                    out.append("")
                    out.append("Outbox: \(note)")
                }
            }
            return out
        }
        var lines: [String] = [
            "# Outbox configuration options",
            "",
            "<!-- Generated from OptionTable (Sources/OutboxConfig/OptionTable.swift) by OptionTable.markdownReference().",
            "     Do not edit by hand: run `\(regenerateVariable)=1 swift test --filter OptionsDocTests` to rewrite it. -->",
            "",
            "Outbox reads an INI-style file (default `./outbox.cfg`) of `key = value` lines in sections:",
            "",
            "- `[smtp-client]`: the options of the smtp-client option reference, with the same names, values and defaults,",
            "  plus `grant-type` and JavaMail-style `mail.*` properties.",
            "- `[secret-<name>]`: `password`, a Google application's client secret, chosen by the `secret` option (default `smtp`).",
            "- `[outbox]`: Outbox's own settings, which the reference has no option for.",
            "",
            "Lines starting with `#` or `;` are comments (only whole lines: a `#` inside a value is part of it).",
            "Keys are case-sensitive; white space around keys and values is ignored; a key set twice in a section is an error.",
            "Booleans and enumerated values are matched ignoring case. Times are `hh:mm:ss`: hours any whole number,",
            "minutes and seconds two digits each, 00-59. An empty value means \"not set\" for options without a default",
            "(and the empty version for `exchange-version`); for other options it is an error.",
            "",
            "Secrets (`password`, and `password` in `[secret-<name>]`) may be given as `env:NAME` (read from the environment",
            "variable `NAME`) or `file:/path` (the file's contents, one trailing newline removed). Secrets are never printed:",
            "not in errors, not in `outbox check-config`, not in debug transcripts.",
            "",
            "Command-line overrides: `outbox check-config -o NAME=VALUE` (and the daemon's `-o`) sets an `[smtp-client]` option or",
            "`mail.*` key; `-o outbox.KEY=VALUE` sets an `[outbox]` setting; `-o secret-NAME.password=VALUE` a secret section's password.",
            "",
            "## When a change takes effect",
            "",
            "- `immediately`: a reload applies it to the next connection, request or token check.",
            "- `at-next-cycle`: a reload applies it from the next delivery cycle (the next message taken from the queue).",
            "- `at-restart`: a reload reports it; it applies after Outbox restarts.",
            "",
            "`token-expiry-margin-time` is \"See the description\" in the reference; Outbox applies it immediately, at the next token check.",
            "`mail.*` properties take effect at restart; each `[outbox]` setting says when in its table.",
            "",
            "What SIGHUP does (`outbox serve`): it re-reads the file and puts in force every change whose column says",
            "`immediately` or `at-next-cycle`; the others keep their running values and are listed in `GET /v1/status`",
            "under `pending_restart`. When a transport option changed (`server-type`, `server`, `port`, `user`, the",
            "timeouts, `enable-authentication`, `enable-debug`, `token-expiry-margin-time`, `exchange-version`), Outbox",
            "builds a new transport with them, whatever the server type: messages already being sent finish on the old",
            "one, which is then closed; the next message goes through the new one (`transport_generation` in",
            "`/v1/status` counts these). A reload is refused whole, with the reason in `last_reload_error`, when the",
            "file is invalid, when the new transport cannot be built, or when it removes `server` from a configuration",
            "that sends to a server (Outbox would otherwise write the mail to files).",
            "",
            "## [smtp-client]",
            "",
        ]
        lines += table(smtpClient)
        lines += details(smtpClient)
        lines += pacingIntro()
        lines += table(pacingOptions)
        lines += details(pacingOptions)
        lines += pacingPresets()
        lines += [
            "",
            "## mail.* properties",
            "",
            "Options of `[smtp-client]` whose names start with `mail.` are JavaMail-style properties, passed through as in the",
            "reference's product. Outbox understands the ones below; any other `mail.*` key is kept and reported as not used.",
            "",
        ]
        lines += table(mailProperties)
        lines += details(mailProperties)
        lines += [
            "", "## Routes: [smtp-client-\\<route\\>]", "",
            "`[smtp-client]` is the route `default`. Each `[smtp-client-NAME]` section (NAME: letters, digits, `-` and `_`)",
            "defines route NAME with every option above: an option it leaves unset takes the reference's default, not",
            "the default route's value. Each route has its own transport, connection pool, token cache and credentials",
            "(its `secret` names its own `[secret-<name>]`). Override with `-o smtp-client-NAME.KEY=VALUE`.",
            "A message's route is chosen when it is queued, first match wins: the authenticated client's `route`",
            "(`[client-NAME]`), the `\"route\"` an HTTP submission asks for (one of the client's `routes`; any route for an",
            "operator's token), a route whose `senders` match the envelope sender, then `default`. The route is stored",
            "with the message. On SIGHUP each route reloads under its options' take-effect rules; a route added appears, a",
            "route removed disappears and its queued messages wait (deferred, with a route alert) until it comes back or an",
            "operator moves them (`outbox queue move ID --route R`, `POST /v1/messages/{id}/route`).",
            "",
            "```ini", "[smtp-client-billing]", "server = smtp.example.com", "port = 587",
            "smtp-connection-security = start-tls-required", "enable-authentication = true", "user = billing@example.com",
            "password = env:BILLING_PASSWORD", "senders = *@billing.example.com", "```",
            "",
            "These options of Outbox's own are valid in `[smtp-client]` and in every route:", "",
        ]
        lines += table(routeOptions)
        lines += details(routeOptions)
        lines += ["", "## [secret-\\<name\\>]", ""]
        lines += table(secretSection)
        lines += details(secretSection, prefix: "secret-NAME.")
        lines += ["", "## [outbox]", "", "Outbox's own settings; override with `-o outbox.KEY=VALUE`.", ""]
        lines += table(outbox)
        lines += details(outbox, prefix: "outbox.")
        lines += [
            "", "## [relay]", "",
            "The SMTP submission listener of `outbox serve` (RFC 6409): applications, printers and other devices hand it mail",
            "over SMTP, and it goes into the same durable queue as the HTTP API's. Override with `-o relay.KEY=VALUE`.",
            "SIGHUP re-reads `[relay]` (except the listen addresses) and every `[client-NAME]`; a reload that would make an",
            "open relay is refused and the running configuration stays.", "",
        ]
        lines += table(relay)
        lines += details(relay, prefix: "relay.")
        lines += [
            "", "## [client-\\<name\\>]", "",
            "An identity that may authenticate to the relay (AUTH PLAIN or LOGIN, over TLS). One section per client;",
            "`outbox hash-password` makes the hash. Override with `-o client-NAME.KEY=VALUE`.", "",
            "```ini", "[client-scanner]", "user = scanner@example.com",
            "# outbox hash-password < password.txt", "password-hash = $2b$12$OQmzGmxZl8G.yTsLT7QunOUVEp7EdnjN2LCXshj3UlLRTplx8U.He",
            "allowed-senders = *@example.com", "```", "",
        ]
        lines += table(clientSection)
        lines += details(clientSection, prefix: "client-NAME.")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Pacing per route: what the options do.
    static func pacingIntro() -> [String] {
        [
            "", "## Pacing per route", "",
            "Outbox's own options of `[smtp-client]` (and of every route): each route is paced to its provider's limits.",
            "Unset takes the provider's preset (below), 0 means no limit. With PostgreSQL the limits hold across every",
            "instance on the queue (each send is counted in the table `route_sends`, under a lock per route); with SQLite",
            "within the process. A route at its limit claims nothing until its window frees: its messages wait in the",
            "queue, due, while other routes go on. `[outbox] rate-limit-per-minute` and `mailbox-concurrency` (per sending",
            "mailbox, per instance) still apply within each route: a message goes when both allow it. `check-config`",
            "prints the limits in force and where a preset comes from.", "",
        ]
    }

    /// Pacing per route: the providers' presets with their sources, and throttling.
    static func pacingPresets() -> [String] {
        var lines = [
            "", "Presets, applied to the options a route leaves unset:", "", "| provider | when | limits | source |", "| --- | --- | --- | --- |",
        ]
        for (preset, when) in [
            (PacingPreset.exchangeOnline, "`server` ends with `office365.com` or `outlook.com` (SMTP)"),
            (PacingPreset.graph, "`server-type = GRAPH`"), (PacingPreset.gmail, "`server = smtp.gmail.com`"),
        ] {
            let l = preset.limits
            var limits: [String] = []
            if let r = l.ratePerMinute { limits.append("\(r) messages/minute") }
            if let m = l.messagesPerDay { limits.append("\(m) messages/day") }
            if let r = l.recipientsPerDay { limits.append("\(r) recipients/day") }
            if let c = l.maxConcurrent { limits.append("\(c) connections") }
            if let c = l.mailboxConcurrency { limits.append("\(c) concurrent requests per mailbox") }
            lines.append("| \(preset.provider) | \(when) | \(limits.joined(separator: ", ")) | <\(preset.source)> |")
        }
        lines += [
            "", "Google's limits are per user over a rolling 24 hours (Workspace accounts; trial accounts have 500 messages a day);",
            "Graph's 1,000 a minute is its 10,000 requests per 10 minutes per app and mailbox.", "",
            "**Throttling.** A provider that answers `432 4.3.2`, `421 4.7.x`, `454 4.7.0`, Gmail's `550 5.4.5`, Exchange Online's",
            "`554 5.2.0 ... SubmissionQuotaExceeded`, HTTP 429 (or 503 with `Retry-After`) or EWS's `ErrorServerBusy` throttles",
            "the route: that route alone pauses, for the time asked (`Retry-After`, `BackOffMilliseconds`) or with back-off",
            "(5 s doubling to 5 minutes), its message is deferred, not failed, and `/v1/status` shows the route `paused` with",
            "the code `throttled`. A `452 4.5.3` (too many recipients) is not throttling: the remaining recipients go at once",
            "in a further transaction on the same route (RFC 5321 §4.5.3.1.10).",
        ]
        return lines
    }

    static func anchor(_ d: OptionDescriptor) -> String {
        let prefix: String =
            switch d.section {
            case .outbox: "outbox"
            case .secret: "secret-name"
            case .relay: "relay"
            case .client: "client-name"
            case .smtpClient, .mailProperty, .route: ""
            }
        return prefix + d.name.lowercased().filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
    }
}
