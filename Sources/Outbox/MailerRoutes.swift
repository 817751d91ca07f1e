import Logging
import NIOConcurrencyHelpers
import OutboxConfig
import OutboxMIME
import OutboxSMTP
import OutboxTransports
import ServiceLifecycle

/// The daemon's routes: one ``Mailer`` per route (`[smtp-client]` is `default`, each
/// `[smtp-client-NAME]` is NAME), each with its own transport, pool, token cache and
/// credentials. The dispatcher sends each message through its stored route.
///
/// A `Service`: `run()` runs every route's mailer, and each one a reload adds. A reload
/// (``reload(_:)``) applies each kept route's changes under its options' take-effect rules,
/// starts the routes added and retires the routes removed (their sends in flight finish, then
/// their transports close). It is all or none: when one route's new transport cannot be built,
/// nothing changes.
package final class MailerRoutes: Service, MessageSender, Sendable {
    private let state: NIOLockedValueBox<State>
    private let logger: Logger
    private let tokenSource: (@Sendable () async throws -> SMTPAccessToken)?
    private let starts: (stream: AsyncStream<Mailer>, continuation: AsyncStream<Mailer>.Continuation)

    private struct State {
        var mailers: [String: Mailer]
    }

    /// What a reload did to the routes.
    package struct ReloadResult: Sendable {
        /// Changes that wait for a restart, named as `-o` names them (`smtp-client-NAME.KEY`).
        package var waiting: [ConfigurationChange]
        /// Routes that appeared, were removed, or had options put in force.
        package var added: [String]
        package var removed: [String]
        package var changed: [String]
    }

    /// A mailer for each route of `configuration`. Throws `TransportFactory.Unavailable` when a
    /// route's transport cannot be built.
    package init(
        configuration: OutboxConfiguration, logger: Logger, tokenSource: (@Sendable () async throws -> SMTPAccessToken)? = nil
    ) throws {
        var mailers: [String: Mailer] = [:]
        for name in configuration.routeNames {
            guard let projected = configuration.forRoute(name) else { continue }
            mailers[name] = try Mailer(configuration: projected, route: name, logger: logger, tokenSource: tokenSource)
        }
        self.state = NIOLockedValueBox(State(mailers: mailers))
        self.logger = logger
        self.tokenSource = tokenSource
        self.starts = AsyncStream.makeStream(of: Mailer.self)
        for mailer in mailers.values { starts.continuation.yield(mailer) }
    }

    /// The route names, `default` first.
    package var names: [String] {
        state.withLockedValue { s in
            s.mailers.keys.sorted { a, b in a == "default" ? b != "default" : (b == "default" ? false : a < b) }
        }
    }

    /// The mailer of route `name`, or nil.
    package func mailer(_ name: String) -> Mailer? { state.withLockedValue { $0.mailers[name] } }

    /// The default route's mailer.
    package var defaultMailer: Mailer { mailer("default")! }

    /// Runs every route's mailer (and each one a reload adds) until graceful shutdown.
    package func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for await mailer in starts.stream {
                    group.addTask { try? await mailer.run() }
                }
                await group.waitForAll()
            }
        } onGracefulShutdown: {
            // Each mailer refuses new sends once its own shutdown begins.
            self.starts.continuation.finish()
        }
    }

    /// Sends through the default route (``MessageSender``).
    package func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        try await send(content, envelope: envelope, route: "default")
    }

    /// Sends through route `route`; a route that is not configured (removed by a reload) is a
    /// transient failure of the route (its messages wait for it).
    package func send(_ content: any MailContent, envelope: Envelope?, route: String) async throws(DeliveryError) -> DeliveryReport {
        guard let mailer = mailer(route) else {
            throw DeliveryError(
                kind: .transient, message: "route \(route) no longer exists: the message waits until it comes back or is moved to another route",
                routeFault: .configuration)
        }
        return try await mailer.send(content, envelope: envelope)
    }

    /// Applies `new` to every route (see the type's documentation). Throws, and changes
    /// nothing, when a route's reload is refused; the refusal names the route.
    package func reload(_ new: OutboxConfiguration) throws(Mailer.ReloadRefused) -> ReloadResult {
        let current = state.withLockedValue { $0.mailers }
        var prepared: [(String, Mailer, Mailer.PreparedReload)] = []
        var built: [String: Mailer] = [:]
        var refusal: Mailer.ReloadRefused?
        for name in new.routeNames {
            guard let projected = new.forRoute(name) else { continue }
            if let mailer = current[name] {
                do throws(Mailer.ReloadRefused) {
                    prepared.append((name, mailer, try mailer.prepareReload(projected)))
                } catch {
                    refusal = Mailer.ReloadRefused(code: error.code, description: "route \(name): \(error.description)")
                    break
                }
            } else {
                do {
                    built[name] = try Mailer(configuration: projected, route: name, logger: logger, tokenSource: tokenSource)
                } catch {
                    refusal = Mailer.ReloadRefused(
                        code: (error as? TransportFactory.Unavailable)?.code ?? "transport_unavailable",
                        description: "route \(name) cannot be added: its transport cannot be built: \(error)")
                    break
                }
            }
        }
        if let refusal {
            let (discarded, unused) = (prepared.map(\.2), Array(built.values))
            Task {
                for p in discarded { await p.discard() }
                for mailer in unused { await mailer.shutdown() }
            }
            throw refusal
        }
        var result = ReloadResult(waiting: [], added: built.keys.sorted(), removed: [], changed: [])
        for (name, mailer, p) in prepared {
            let waiting = mailer.commit(p)
            let prefix = name == "default" ? "" : "smtp-client-\(name)."
            result.waiting += waiting.filter { !$0.name.contains(".") || $0.name.hasPrefix("mail.") }.map {
                ConfigurationChange(name: prefix + $0.name, effect: $0.effect)
            }
            if p.changedAnything { result.changed.append(name) }
        }
        let removed = state.withLockedValue { s -> [Mailer] in
            var removed: [Mailer] = []
            for (name, mailer) in s.mailers where new.options(forRoute: name) == nil {
                removed.append(mailer)
                s.mailers[name] = nil
            }
            for (name, mailer) in built { s.mailers[name] = mailer }
            return removed
        }
        for mailer in built.values { starts.continuation.yield(mailer) }
        result.removed = removed.map(\.route).sorted()
        for mailer in removed {
            // Sends in flight finish on it (the route's lane lets them); then its connections close.
            Task {
                for _ in 0..<600 where mailer.sendsInFlight > 0 { try? await Task.sleep(for: .milliseconds(100)) }
                await mailer.shutdown()
            }
        }
        if !result.added.isEmpty || !result.removed.isEmpty {
            logger.notice(
                "routes reloaded",
                metadata: [
                    "outbox.routes_added": "\(result.added.joined(separator: ","))",
                    "outbox.routes_removed": "\(result.removed.joined(separator: ","))",
                ])
        }
        return result
    }

    /// Stops every route's mailer.
    package func shutdown() async {
        let mailers = state.withLockedValue { Array($0.mailers.values) }
        starts.continuation.finish()
        for mailer in mailers { await mailer.shutdown() }
    }
}
