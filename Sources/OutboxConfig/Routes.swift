import Foundation

/// Route names: `[smtp-client]` is the route `default`; `[smtp-client-NAME]` is route NAME.
package enum RouteName {
    /// The route of `[smtp-client]`.
    package static let defaultRoute = "default"

    /// What is valid, for messages.
    package static let validText = "letters, digits, '-' and '_' (e.g. [smtp-client-billing])"

    /// True for a name of letters, digits, `-` and `_` (ASCII).
    package static func isValid(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x5f
            }
    }

    /// Why `name` cannot name a route section; nil when it can.
    package static func problem(_ name: String) -> (code: String, message: String)? {
        if name == defaultRoute {
            return ("reserved_route_name", "is not a route section: the route default is [smtp-client]; name the others [smtp-client-NAME]")
        }
        guard isValid(name) else { return ("invalid_route_name", "is not a route name: use \(validText)") }
        return nil
    }
}

extension OptionTable {
    /// Outbox's own options of a route, valid in `[smtp-client]` and in every
    /// `[smtp-client-NAME]` (the reference has no option for them).
    package static let routeOptions: [OptionDescriptor] = [
        .init(
            name: "senders", section: .route, type: .list, defaultValue: nil,
            validValues: "Address patterns separated by commas or spaces: *@billing.example.com, helpdesk@example.com",
            effect: .immediately, referenceEffect: nil,
            summary:
                "Envelope senders whose messages take this route (in the spirit of Postfix's sender-dependent relayhost). Routes are chosen, first match wins: the authenticated client's route ([client-NAME] route), the route an HTTP submission asks for (one of the client's routes), a route whose senders match the envelope sender (routes in name order), then default."
        ),
        .init(
            name: "send-as", section: .route, type: .list, defaultValue: nil,
            validValues: "Addresses (or *@domain patterns) separated by commas or spaces",
            effect: .immediately, referenceEffect: nil,
            summary:
                "GRAPH and EWS: the From addresses this route sends as their own mailbox. A From in the list goes out through that mailbox (Graph: /users/{from}/sendMail, the application permission applies; EWS: the item is created in that mailbox). Any other From than user is sent on behalf of it from user's mailbox, with From and Sender headers, when allow-delegate = true, and refused (naming the route and the address) when it is false. Unset: with allow-delegate = true any From is sent from user's mailbox, as before."
        ),
    ]

    /// Looks up one of ``routeOptions``.
    package static func descriptor(route name: String) -> OptionDescriptor? {
        routeOptions.first { $0.name == name }
    }
}

extension OutboxConfiguration {
    /// Every route's name: `default` first, then the `[smtp-client-NAME]` routes by name.
    public var routeNames: [String] { [RouteName.defaultRoute] + routes.keys.sorted() }

    /// The options of route `name` (`default`: `[smtp-client]`), or nil when there is none.
    public func options(forRoute name: String) -> SMTPClientOptions? {
        name == RouteName.defaultRoute ? smtpClient : routes[name]
    }

    /// This configuration as seen by route `name`'s transport: its options in `smtpClient`
    /// (with their sources under the plain option names) and no other route. Nil when there is
    /// no such route.
    public func forRoute(_ name: String) -> OutboxConfiguration? {
        guard let options = options(forRoute: name) else { return nil }
        var projected = self
        projected.routes = [:]
        guard name != RouteName.defaultRoute else { return projected }
        projected.smtpClient = options
        let prefix = "smtp-client-\(name)."
        var sources: [String: ValueSource] = [:]
        for (key, source) in self.sources {
            if key.hasPrefix(prefix) {
                sources[String(key.dropFirst(prefix.count))] = source
            } else if key.contains(".") && !key.hasPrefix("mail.") {
                sources[key] = source
            }
        }
        projected.sources = sources
        return projected
    }

    /// The route a message takes, first match wins: the client's choice of `requested` (one of
    /// its routes; any existing route for an operator, `client` nil), the client's own `route`,
    /// a route whose `senders` match `sender`, then `default`.
    package func chooseRoute(client: ClientIdentity?, requested: String?, sender: String) -> Result<String, RouteRefusal> {
        RouteTable(self).choose(client: client, requested: requested, sender: sender)
    }
}

/// Why a route cannot be used for a message.
package struct RouteRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// `unknown_route` or `route_not_allowed`.
    package var code: String
    /// Names the route and what is allowed.
    package var description: String
}

/// What choosing a route needs from the configuration: the routes and their `senders`.
package struct RouteTable: Sendable, Equatable {
    /// Every route's name, `default` first.
    package var names: [String]
    /// Each route's `senders` patterns (routes without any are absent), in name order.
    package var senders: [(route: String, patterns: [String])] {
        names.compactMap { name in patternsByRoute[name].map { (name, $0) } }
    }
    private var patternsByRoute: [String: [String]]

    /// The routes of `configuration`.
    package init(_ configuration: OutboxConfiguration) {
        names = configuration.routeNames
        var patterns: [String: [String]] = [:]
        for name in names {
            if let list = configuration.options(forRoute: name)?.senders, !list.isEmpty { patterns[name] = list }
        }
        patternsByRoute = patterns
    }

    /// Only the default route.
    package static let single = RouteTable(OutboxConfiguration())

    /// See ``OutboxConfiguration/chooseRoute(client:requested:sender:)``.
    package func choose(client: ClientIdentity?, requested: String?, sender: String) -> Result<String, RouteRefusal> {
        if let requested {
            guard names.contains(requested) else {
                return .failure(
                    RouteRefusal(
                        code: "unknown_route",
                        description: "there is no route \(requested); the routes are \(names.joined(separator: ", "))"))
            }
            if let client {
                guard client.mayChoose.contains(requested) else {
                    let allowed = client.mayChoose.isEmpty ? "none" : client.mayChoose.joined(separator: ", ")
                    return .failure(
                        RouteRefusal(
                            code: "route_not_allowed",
                            description:
                                "client \(client.name) may not choose route \(requested) (its routes: \(allowed); set routes in [client-\(client.name)])"
                        ))
                }
            }
            return .success(requested)
        }
        if let route = client?.route, names.contains(route) { return .success(route) }
        if !sender.isEmpty {
            for (route, patterns) in senders where ClientIdentity.matches(sender, patterns: patterns) {
                return .success(route)
            }
        }
        return .success(RouteName.defaultRoute)
    }

    package static func == (a: RouteTable, b: RouteTable) -> Bool {
        a.names == b.names && a.patternsByRoute == b.patternsByRoute
    }
}

extension ConfigurationReader {
    /// `senders` and `send-as` of the section in ``smtp``.
    mutating func interpretRouteOptions(_ o: inout SMTPClientOptions) {
        func patterns(_ key: String) -> [String]? {
            guard let entry = smtp[key] else { return nil }
            sources[key] = entry.source
            let list = Convert.list(entry.value)
            if let bad = list.first(where: { !ClientIdentity.isAddressPattern($0, allowStar: false) }) {
                invalid(entry, "\(bad) is not an address pattern; valid: *@example.com or helpdesk@example.com")
                return nil
            }
            return list
        }
        if let list = patterns("senders") { o.senders = list }
        if let list = patterns("send-as") { o.sendAs = list.isEmpty ? nil : list }
        if o.sendAs != nil, o.serverType == .smtp, !failed.contains("server-type") {
            warn(
                "option_unused", location("send-as"), option: "send-as",
                "send-as has no effect with server-type = SMTP (the SMTP server decides who may send as whom)")
        }
    }

    /// Every `[smtp-client-NAME]` section: read like `[smtp-client]` (an option left unset has
    /// the reference's default), checked by the same rules; problems and warnings name the
    /// route's options as `-o` does (`smtp-client-NAME.port`), sources are kept under those
    /// names.
    mutating func interpretRoutes(_ configuration: inout OutboxConfiguration) {
        let saved = (smtp, smtpOrder, failed, sources)
        var collected: [String: ValueSource] = [:]
        for name in routeSections.keys.sorted() {
            let prefix = "smtp-client-\(name)."
            smtp = routeSections[name] ?? [:]
            smtpOrder = routeOrders[name] ?? []
            failed = []
            sources = [:]
            sectionLocation = routeHeaders[name]
            let (problemCount, warningCount, noteCount) = (problems.count, warnings.count, notes.count)
            var scratch = configuration
            scratch.mailProperties = [:]
            scratch.unusedMailProperties = []
            var o = interpretSMTPClientOptions(section: "[smtp-client-\(name)]")
            interpretMail(&o, &scratch)
            scratch.smtpClient = o
            checkRules(scratch)
            func rename(_ option: String?) -> String? {
                guard let option else { return nil }
                for known in ["[", "smtp-client-", "secret-", "outbox.", "relay.", "client-"] where option.hasPrefix(known) { return option }
                return prefix + option
            }
            for i in problemCount..<problems.count { problems[i].option = rename(problems[i].option) }
            for i in warningCount..<warnings.count { warnings[i].option = rename(warnings[i].option) }
            for i in noteCount..<notes.count { notes[i] = "[smtp-client-\(name)] " + notes[i] }
            for (key, source) in sources { collected[prefix + key] = source }
            configuration.routes[name] = o
        }
        sectionLocation = nil
        (smtp, smtpOrder, failed) = (saved.0, saved.1, saved.2)
        sources = saved.3.merging(collected) { a, _ in a }
    }
}

extension ClientIdentity {
    /// `*@domain`, `local@domain`, or (when `allowStar`) `*`.
    package static func isAddressPattern(_ p: String, allowStar: Bool) -> Bool {
        if p == "*" { return allowStar }
        let parts = p.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[1].isEmpty, !parts[1].contains("*") else { return false }
        return !parts[0].isEmpty && (!parts[0].contains("*") || parts[0] == "*")
    }
}
