import OutboxConfig

/// Who a GRAPH or EWS route sends a message as, from its From address (pure).
///
/// - From is `user` (or `user` is not an address): the user's own mailbox.
/// - `send-as` set and From in it (an address or `*@domain`): as that mailbox (Graph:
///   `/users/{from}/sendMail`, the application permission applies).
/// - Any other From: on behalf of it from `user`'s mailbox, when `allow-delegate = true`
///   (Graph adds a `Sender: user` header when a `send-as` list is set; without a list the
///   message goes as before, with its own From only); refused otherwise, naming the route and
///   the address.
package struct SendAsPolicy: Sendable, Equatable {
    /// What to do with one message.
    package enum Decision: Sendable, Equatable {
        /// From is the user's own address.
        case own
        /// As the mailbox `from` (in `send-as`).
        case sendAs(String)
        /// On behalf of `from`, from the user's mailbox, with a `Sender` header naming the user.
        case onBehalf(String)
        /// `allow-delegate` without a `send-as` list: from the user's mailbox with its own From.
        case delegate(String)
    }

    /// The route's name, for refusals.
    package var route: String
    /// `user`.
    package var user: String
    /// `allow-delegate`.
    package var allowDelegate: Bool
    /// `send-as`; nil: not set.
    package var sendAs: [String]?

    package init(route: String, user: String, allowDelegate: Bool, sendAs: [String]?) {
        self.route = route
        self.user = user
        self.allowDelegate = allowDelegate
        self.sendAs = sendAs
    }

    package init(route: String, options: SMTPClientOptions) {
        self.init(route: route, user: options.user ?? "", allowDelegate: options.allowDelegate, sendAs: options.sendAs)
    }

    /// The decision for a message from `from`; a permanent ``DeliveryError`` naming the route
    /// and the address when it may not be sent. `component`: `graph` or `ews`.
    package func decide(from: String, component: String) throws(DeliveryError) -> Decision {
        guard user.contains("@"), !from.isEmpty, from.lowercased() != user.lowercased() else { return .own }
        if let sendAs {
            if ClientIdentity.matches(from, patterns: sendAs) { return .sendAs(from) }
            if allowDelegate { return .onBehalf(from) }
            throw DeliveryError(
                kind: .permanent,
                message:
                    "\(component): route \(route) refuses the message from \(from): it is neither user = \(user) nor in send-as (\(sendAs.joined(separator: ", "))), and allow-delegate = false; add it to send-as, or set allow-delegate = true to send on its behalf"
            )
        }
        if allowDelegate { return .delegate(from) }
        throw DeliveryError(
            kind: .permanent,
            message:
                "\(component): route \(route) refuses the message from \(from), another mailbox than user = \(user); set allow-delegate = true to send on its behalf, or list it in send-as (the mailbox needs Send As or Send on Behalf on \(from))"
        )
    }
}
