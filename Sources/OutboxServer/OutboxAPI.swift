import Foundation
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Outbox
import OutboxConfig
import Prometheus

/// The HTTP API's settings that a reload may change at once.
package struct APISettings: Sendable, Equatable {
    /// Bearer tokens accepted.
    package var tokens: [String]
    /// Require a token (always true when listening beyond loopback).
    package var requireToken: Bool
    /// The largest request body.
    package var maxRequestSize: Int
    /// The `[client-NAME]` identities with an `api-token`: they may submit and see their own
    /// messages only.
    package var clients: [ClientIdentity] = []
    /// The routes, to choose each submission's.
    package var routes: RouteTable = .single

    package init(tokens: [String] = [], requireToken: Bool = false, maxRequestSize: Int = 26_214_400) {
        self.tokens = tokens
        self.requireToken = requireToken
        self.maxRequestSize = maxRequestSize
    }

    /// From `[outbox]`, the clients' tokens and the routes.
    package init(_ configuration: OutboxConfiguration) {
        self.init(configuration.outbox)
        clients = configuration.clients.filter { $0.apiToken != nil }
        routes = RouteTable(configuration)
    }

    /// From `[outbox]`; tokens are required when `listen` is not a loopback address.
    package init(_ settings: OutboxSettings) {
        self.init(
            tokens: settings.apiTokenList,
            requireToken: settings.requireAPIToken || !APISettings.isLoopback(listen: settings.httpListen),
            maxRequestSize: settings.maxRequestSize)
    }

    /// Defaults, with tokens required unless `listen` is a loopback address.
    package init(configurationListen listen: String) {
        self.init(requireToken: !APISettings.isLoopback(listen: listen))
    }

    package static func isLoopback(listen: String) -> Bool {
        guard let colon = listen.lastIndex(of: ":") else { return false }
        let host = listen[..<colon].lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host == "localhost" || host.hasPrefix("127.") || host == "::1"
    }
}

/// What `GET /v1/status` and `GET /readyz` need from the daemon.
package protocol DaemonStatusProvider: Sendable {
    /// The configuration in force, pending-restart options, instance, transport.
    func status() async -> [String: any Sendable]
    /// nil when the transport is reachable, else why not.
    func transportProblem() async -> String?
    /// The routes and their alerts (none by default).
    func routes() async -> [RouteStatus]
    /// An operator retried messages by hand: a paused route tries again now.
    func messagesRetried() async
    /// Each route's credentials and token health (none by default).
    func credentials() async -> [CredentialState]
}

/// The routes of the HTTP API (see openapi.yaml at the repository's root).
package final class OutboxAPI: Sendable {
    package let store: any OutboxStore
    private let settingsBox: NIOLockedValueBox<APISettings>
    private let providerBox: NIOLockedValueBox<(any DaemonStatusProvider)?>
    var provider: (any DaemonStatusProvider)? { providerBox.withLockedValue { $0 } }
    private let storageBox = NIOLockedValueBox<StorageGuard?>(nil)
    private var storage: StorageGuard? { storageBox.withLockedValue { $0 } }
    /// Bounds the store calls and tells an outage (OutboxAPI+Store.swift).
    let healthBox: NIOLockedValueBox<StoreHealth>
    let logger: Logger
    package let registry: PrometheusCollectorRegistry
    private let submitted: Counter
    private let duplicates: Counter
    private let badRequests: Counter
    private let unauthorized: Counter
    private let queueGauges: [MessageStatus: Gauge]
    private let routeMetrics: RouteMetrics
    private let tokenMetrics: TokenMetrics
    let now: @Sendable () -> Double
    /// The dashboard's sessions, in memory (a restart logs every operator out).
    let sessionDriver = MemoryPersistDriver(ContinuousClock())
    private let secureCookiesBox = NIOLockedValueBox(false)
    /// The dashboard's session cookie is marked Secure (the listener serves HTTPS).
    package var secureCookies: Bool {
        get { secureCookiesBox.withLockedValue { $0 } }
        set { secureCookiesBox.withLockedValue { $0 = newValue } }
    }

    package init(
        store: any OutboxStore, settings: APISettings, provider: (any DaemonStatusProvider)? = nil,
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        logger: Logger = Logger(label: "outbox.http"), now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.store = store
        self.healthBox = NIOLockedValueBox(StoreHealth(kind: store.kind, logger: logger))
        self.settingsBox = NIOLockedValueBox(settings)
        self.providerBox = NIOLockedValueBox(provider)
        self.logger = logger
        self.registry = registry
        self.now = now
        self.submitted = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "outbox", metricName: "messages_submitted", unitName: "total", helpText: "Messages accepted by POST /v1/messages"))
        self.duplicates = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "outbox", metricName: "idempotent_replays", unitName: "total",
                helpText: "Submissions answered from an earlier one with the same Idempotency-Key"))
        self.badRequests = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "outbox", metricName: "http_bad_requests", unitName: "total", helpText: "Requests refused with a 4xx answer"))
        self.unauthorized = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "outbox", metricName: "http_unauthorized", unitName: "total", helpText: "Requests refused for a missing or wrong API token"
            ))
        var gauges: [MessageStatus: Gauge] = [:]
        for status in MessageStatus.allCases {
            gauges[status] = registry.makeGauge(
                descriptor: MetricNameDescriptor(
                    namespace: "outbox", metricName: "queue_messages", unitName: "count", helpText: "Messages in the store by status"),
                labels: [("status", status.rawValue)])
        }
        self.queueGauges = gauges
        self.routeMetrics = RouteMetrics(registry: registry)
        self.tokenMetrics = Self.tokenMetrics(registry: registry)
    }

    package var settings: APISettings { settingsBox.withLockedValue { $0 } }

    /// Connects the daemon that answers `/v1/status` and the transport part of `/readyz`.
    package func attach(_ provider: any DaemonStatusProvider) { providerBox.withLockedValue { $0 = provider } }

    /// Applies new tokens and limits at once (reload).
    package func update(_ settings: APISettings) { settingsBox.withLockedValue { $0 = settings } }

    package func makeRouter() -> Router<OutboxRequestContext> {
        let router = Router(context: OutboxRequestContext.self)
        router.add(middleware: APIErrorMiddleware())
        router.get("/healthz") { _, _ in JSON.response(.ok, ["status": "ok"]) }
        router.get("/readyz") { [self] _, _ in await self.readiness() }
        router.get("/metrics") { [self] request, _ in
            await self.guarded(request) { try await self.metrics() }
        }
        router.get("/v1/status") { [self] request, _ in
            await self.guarded(request) { try await self.statusResponse() }
        }
        router.post("/v1/messages") { [self] request, _ in
            await self.guarded(request, clients: true) { caller in try await self.submit(request, caller: caller) }
        }
        router.get("/v1/messages") { [self] request, _ in
            await self.guarded(request, clients: true) { caller in try await self.list(request, caller: caller) }
        }
        router.get("/v1/messages/:id") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await self.guarded(request, clients: true) { caller in try await self.getMessage(id, caller: caller) }
        }
        router.post("/v1/messages/:id/retry") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await self.guarded(request) { try await self.change(id, retry: true) }
        }
        router.delete("/v1/messages/:id") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await self.guarded(request) { try await self.change(id, retry: false) }
        }
        addQueueRoutes(router)
        addDashboardRoutes(router)
        addRouteRoutes(router)
        return router
    }

    /// Who is asking: an operator (an `[outbox] api-tokens` token, or no token where none is
    /// required), or a `[client-NAME]` by its `api-token`.
    enum Caller: Sendable {
        case operatorToken
        case client(ClientIdentity)

        var client: ClientIdentity? {
            if case .client(let c) = self { return c }
            return nil
        }
    }

    /// The client whose `api-token` the request carries, if any.
    func client(of request: Request, _ settings: APISettings) -> ClientIdentity? {
        let header = request.headers[.authorization] ?? ""
        guard header.hasPrefix("Bearer ") else { return nil }
        let token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        guard !token.isEmpty else { return nil }
        return settings.clients.first { $0.apiToken.map { Self.constantTimeEqual($0.value, token) } ?? false }
    }

    /// For an operator's route: a client's token is refused (403 `client_forbidden`).
    func guarded(_ request: Request, _ handler: () async throws -> Response) async -> Response {
        await guarded(request, clients: false) { _ in try await handler() }
    }

    /// Checks the token, runs the handler with the caller, turns errors into JSON answers.
    /// `clients`: whether a client's `api-token` may use the route.
    func guarded(_ request: Request, clients: Bool, _ handler: (Caller) async throws -> Response) async -> Response {
        let settings = self.settings
        if let refusal = DashboardAccess.hostRefusal(request, requireToken: settings.requireToken) { return refusal.response }
        if let client = client(of: request, settings) {
            guard clients else {
                badRequests.increment()
                return APIError(
                    .forbidden, "client_forbidden",
                    "the token of [client-\(client.name)] may submit messages and read its own; this needs an operator's token ([outbox] api-tokens)"
                ).response
            }
            return await run(.client(client), handler)
        }
        if settings.requireToken {
            let header = request.headers[.authorization] ?? ""
            let token = header.hasPrefix("Bearer ") ? String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces) : ""
            guard !settings.tokens.isEmpty else {
                unauthorized.increment()
                return APIError(.unauthorized, "no_tokens_configured", "this API requires a token but [outbox] api-tokens is empty").response
            }
            guard !token.isEmpty, settings.tokens.contains(where: { Self.constantTimeEqual($0, token) }) else {
                unauthorized.increment()
                var r = APIError(
                    .unauthorized, token.isEmpty ? "missing_token" : "invalid_token",
                    token.isEmpty
                        ? "send an API token from [outbox] api-tokens as Authorization: Bearer TOKEN"
                        : "the API token is not one of [outbox] api-tokens"
                ).response
                r.headers[.wwwAuthenticate] = "Bearer"
                return r
            }
        }
        return await run(.operatorToken, handler)
    }

    private func run(_ caller: Caller, _ handler: (Caller) async throws -> Response) async -> Response {
        do {
            return try await handler(caller)
        } catch let error as APIError {
            if error.status.code < 500 { badRequests.increment() }
            logger.debug("request refused", metadata: ["http.status": "\(error.status.code)", "http.error": "\(error.code)"])
            return error.response
        } catch {
            return storeRefusal(error).response
        }
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var diff: UInt8 = 0
        for i in x.indices { diff |= x[i] ^ y[i] }
        return diff == 0
    }

    // MARK: - Handlers

    /// Connects the guard of the queue's disk: submissions are refused (507) while it refuses
    /// intake, and `/readyz` says not ready.
    package func attach(storage: StorageGuard) {
        storageBox.withLockedValue { $0 = storage }
    }

    /// 507 Insufficient Storage (RFC 4918), for a queue below `queue-min-free`.
    static let insufficientStorage = HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage")

    /// The refusal for a submission of `size` bytes when the queue's disk has no room for it.
    func storageRefusal(size: Int) -> APIError? {
        guard let storage else { return nil }
        let intake = storage.intake
        guard !intake.admits(size: size) else { return nil }
        storage.countRefusal()
        let why =
            intake.isOpen
            ? "the message (\(size) bytes) does not fit in the space the queue has left before [outbox] queue-min-free; \(intake.explanation)"
            : intake.explanation
        return .retryLater(Self.insufficientStorage, "insufficient_storage", why + "; try again later", after: 60)
    }

    /// 503 only when the instance cannot take mail: the store does not answer, or the queue's
    /// disk refuses intake. A route whose alert holds its messages, or whose server cannot be
    /// reached, makes it `degraded` (200): messages are still accepted and wait, and one route's
    /// expired secret does not take every instance out of a load balancer.
    private func readiness() async -> Response {
        var fatal: [String] = []
        if let storage, !storage.intake.isOpen { fatal.append(storage.intake.explanation) }
        if let problem = await storeProblem() { fatal.append(problem) }
        if !fatal.isEmpty { return JSON.response(.serviceUnavailable, ["status": "not ready", "problems": fatal]) }
        var problems: [[String: Any]] = []
        if let provider {
            problems += await provider.routes().filter { $0.state != "ok" }.map(Readiness.problem)
            problems += await provider.credentials().compactMap(CredentialsReport.problem)
            if let problem = await provider.transportProblem() {
                problems.append(["route": RouteHealth.defaultRoute, "code": "unreachable", "message": problem, "since": JSON.iso(now())])
            }
        }
        if problems.isEmpty { return JSON.response(.ok, ["status": "ready", "store": store.kind]) }
        return JSON.response(.ok, ["status": "degraded", "store": store.kind, "problems": problems])
    }

    private func metrics() async throws -> Response {
        let counts = try? await storeCall({ try await $0.counts() })
        if let counts {
            for status in MessageStatus.allCases { queueGauges[status]?.set(Double(counts[status] ?? 0)) }
        }
        if let provider {
            let waiting = (try? await storeCall { try await $0.waitingByRoute() }) ?? [:]
            routeMetrics.update(await provider.routes(), waiting: waiting)
            tokenMetrics.update(await provider.credentials())
        }
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer)))
    }

    private func statusResponse() async throws -> Response {
        var body: [String: Any] = [:]
        if let provider { for (k, v) in await provider.status() { body[k] = v } }
        let counts = try await storeCall { try await $0.counts() }
        body["queue"] = Dictionary(uniqueKeysWithValues: MessageStatus.allCases.map { ($0.rawValue, counts[$0] ?? 0) })
        if let provider {
            let routes = await provider.routes()
            let waiting = (try? await storeCall { try await $0.waitingByRoute() }) ?? [:]
            let details = body["route_transports"] as? [String: [String: any Sendable]] ?? [:]
            body["route_transports"] = nil
            body["routes"] = routes.map { route -> [String: Any] in
                var entry = Readiness.status(route, held: waiting[route.route] ?? 0)
                entry["waiting"] = waiting[route.route] ?? 0
                for (key, value) in details[route.route] ?? [:] { entry[key] = value }
                return entry
            }
            body["held"] = routes.filter { $0.state != "ok" }.reduce(0) { $0 + (waiting[$1.route] ?? 0) }
            body["credentials"] = await provider.credentials().map(CredentialsReport.status)
        }
        body["store"] = store.kind
        return JSON.response(.ok, body)
    }

    private func submit(_ request: Request, caller: Caller) async throws -> Response {
        // A client over its intake-limit-per-minute (counted with its SMTP submissions): 429.
        if let client = caller.client,
            let wait = IntakeLimiter.shared.wait(client: client.name, limit: client.intakeLimitPerMinute, now: Date().timeIntervalSince1970)
        {
            throw APIError.retryLater(
                .tooManyRequests, "intake_limit",
                "[client-\(client.name)] submitted its intake-limit-per-minute (\(client.intakeLimitPerMinute ?? 0)); try again in \(Int(wait.rounded(.up))) s",
                after: Int(wait.rounded(.up)))
        }
        let limit = settings.maxRequestSize
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit {
            throw APIError(.contentTooLarge, "too_large", "the request body is \(declared) bytes; the limit ([outbox] max-request-size) is \(limit)")
        }
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: limit)
        } catch {
            throw APIError(.contentTooLarge, "too_large", "the request body is larger than the limit ([outbox] max-request-size) of \(limit) bytes")
        }
        let body = Array(buffer.readableBytesView)
        let contentType = (request.headers[.contentType] ?? "").lowercased()
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        let query = request.uri.queryParameters
        var message: NewMessage
        var requestedRoute = query.get("route")
        switch mediaType {
        case "application/json":
            if let unexpected = ["from", "to", "route"].first(where: { query.get($0) != nil }) {
                throw APIError(
                    .badRequest, "unexpected_parameter",
                    "the query parameter \(unexpected) is only for message/rfc822 bodies; put it in the JSON (\"\(unexpected)\")")
            }
            let (parsed, route) = try await Submission.fromJSON(body)
            message = parsed
            if let route { requestedRoute = route }
        case "message/rfc822":
            let to = query.getAll("to").flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
            message = try await Submission.fromRFC822(body, from: query.get("from"), to: to)
        case "":
            throw APIError(.unsupportedMediaType, "missing_content_type", "set Content-Type: application/json or message/rfc822")
        default:
            throw APIError(
                .unsupportedMediaType, "unsupported_content_type", "Content-Type \(mediaType) is not accepted: use application/json or message/rfc822"
            )
        }
        if let key = request.headers[HTTPFields.Element.Name("Idempotency-Key")!] {
            guard !key.isEmpty, key.count <= 255, key.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }) else {
                throw APIError(.badRequest, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII characters without spaces")
            }
            message.idempotencyKey = key
            // JSON is compared by content, so a retry that orders its keys differently is the same request.
            var canonical = body
            if mediaType == "application/json", let object = try? JSONSerialization.jsonObject(with: Data(body)),
                let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            {
                canonical = Array(data)
            }
            message.requestHash = Digest.fnv1a([Array(mediaType.utf8), Array((request.uri.query ?? "").utf8), canonical])
        }
        message.traceparent = TraceContext.traceparent(request.headers[HTTPFields.Element.Name("traceparent")!])
        try route(&message, requested: requestedRoute, caller: caller)
        if let refusal = storageRefusal(size: message.content.count) { throw refusal }
        let result: EnqueueResult
        do {
            let (message, at) = (message, self.now())
            result = try await storeCall { try await $0.enqueue(message, now: at) }
        } catch  where StoreFailure.classify(error) == .insufficientStorage {
            storage?.countRefusal()
            throw APIError.retryLater(
                Self.insufficientStorage, "insufficient_storage", "the queue's disk is full: the message was not queued; try again later", after: 60)
        }
        if !result.created {
            if result.requestHash != message.requestHash {
                throw APIError(.conflict, "idempotency_key_reused", "the Idempotency-Key was used for a different request (message \(result.id))")
            }
            duplicates.increment()
            return JSON.response(
                .accepted, ["id": result.id, "status": result.status.rawValue, "idempotent_replay": true],
                headers: [HTTPFields.Element.Name("Idempotent-Replayed")!: "true", .location: "/v1/messages/\(result.id)"])
        }
        submitted.increment()
        if let client = caller.client {
            IntakeLimiter.shared.record(client: client.name, limit: client.intakeLimitPerMinute, now: Date().timeIntervalSince1970)
        }
        return JSON.response(.accepted, ["id": result.id, "status": result.status.rawValue], headers: [.location: "/v1/messages/\(result.id)"])
    }

    private func list(_ request: Request, caller: Caller) async throws -> Response {
        var filter = try FilterParameters.filter(query: request.uri.query)
        if let route = filter.route, !RouteName.isValid(route) {
            throw APIError(.badRequest, "invalid_route", "route \"\(route)\" is not a route name (\(RouteName.validText))")
        }
        // A client sees its own messages only.
        filter.client = caller.client?.name
        let page = try await storeCall { [filter] in try await $0.list(filter) }
        let next: Any = page.nextCursor.map { String($0) } ?? NSNull()
        return JSON.response(.ok, ["messages": page.messages.map { Self.summary($0) }, "next_cursor": next])
    }

    private func getMessage(_ id: String, caller: Caller) async throws -> Response {
        guard let message = try await storeCall({ try await $0.get(id: id) }), caller.client.map({ $0.name == message.client }) ?? true else {
            throw APIError(.notFound, "not_found", "no message has the id \(id)")
        }
        return JSON.response(.ok, Self.detail(message))
    }

    private func change(_ id: String, retry: Bool) async throws -> Response {
        let at = self.now()
        let result = try await storeCall { retry ? try await $0.retry(id: id, now: at) : try await $0.cancel(id: id, now: at) }
        switch result {
        case .done(let message):
            if retry { await provider?.messagesRetried() }
            return JSON.response(.ok, Self.detail(message))
        case .notFound:
            throw APIError(.notFound, "not_found", "no message has the id \(id)")
        case .conflict(let status):
            if retry, try await storeCall({ try await $0.get(id: id) })?.contentPurged == true {
                throw APIError(.conflict, "content_purged", "message \(id) is \(status.rawValue) and its content was purged: it cannot be sent again")
            }
            throw APIError(
                .conflict, "invalid_state",
                retry
                    ? "message \(id) is \(status.rawValue); only failed, unknown or deferred messages can be retried"
                    : "message \(id) is \(status.rawValue); only queued or deferred messages can be cancelled")
        }
    }

    // MARK: - JSON shapes

    static func summary(_ m: StoredMessage) -> [String: Any] {
        [
            "id": m.id, "status": m.status.rawValue, "from": m.from, "recipients": m.recipients.map(\.address),
            "message_id": m.messageID ?? NSNull(), "created_at": JSON.iso(m.createdAt), "attempt_count": m.attemptCount,
            "possible_duplicate": m.possibleDuplicate, "content_purged": m.contentPurged, "subject": m.subject ?? NSNull(), "route": m.route,
            "client": m.client ?? NSNull(),
        ]
    }

    static func detail(_ m: StoredMessage) -> [String: Any] {
        var d = summary(m)
        d["recipients"] = m.recipients.map { r -> [String: Any] in
            [
                "address": r.address, "status": r.status.rawValue, "code": r.code ?? NSNull(), "enhanced_code": r.enhancedCode ?? NSNull(),
                "text": r.text ?? NSNull(),
            ]
        }
        d["updated_at"] = JSON.iso(m.updatedAt)
        d["next_attempt_at"] = m.status.isFinal ? NSNull() : JSON.iso(m.nextAttemptAt)
        d["unknown_outcomes"] = m.unknownCount
        d["last_error"] = m.lastError ?? NSNull()
        d["size"] = m.size
        d["idempotency_key"] = m.idempotencyKey ?? NSNull()
        d["attempts"] = m.attempts.map { a -> [String: Any] in
            [
                "number": a.number, "time": JSON.iso(a.startedAt), "duration_seconds": a.durationSeconds, "transport": a.transport,
                "destination": a.destination ?? NSNull(), "reply": a.reply ?? NSNull(), "error": a.error ?? NSNull(),
                "outcome": a.outcome, "recipients": a.recipients, "instance": a.instance ?? NSNull(),
            ]
        }
        return d
    }
}
