import Foundation
import Hummingbird
import HummingbirdAuth
import NIOCore
import Outbox

/// The web dashboard at `/` (README, "Dashboard"): pages rendered on the server from the
/// store's counters and keyset listings, and the operator's actions (retry, cancel, purge) with
/// a confirmation step, a CSRF token and an audit line each.
///
/// Access follows the API: where the API needs a token, a login form takes one of
/// `[outbox] api-tokens` and opens a session (HttpOnly, SameSite=Strict, Secure under HTTPS);
/// without tokens (loopback) no login is asked, and the Host check refuses other names.
extension OutboxAPI {
    func addDashboardRoutes(_ router: Router<OutboxRequestContext>) {
        let ui = router.group()
        ui.add(middleware: SessionMiddleware<OutboxRequestContext>(storage: sessionDriver, configuration: sessionConfiguration))
        ui.get("/") { [self] request, context in await page(request, context) { try await self.overview($0) } }
        ui.get("/messages") { [self] request, context in await page(request, context) { try await self.messages(request, $0) } }
        ui.get("/messages/:id") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await page(request, context) { try await self.messageDetail(id, request, $0) }
        }
        ui.get("/messages/:id/raw") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await page(request, context) { _ in try await self.raw(id) }
        }
        ui.get("/messages/:id/confirm") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await page(request, context) { try self.confirmOne(id, request, $0) }
        }
        ui.post("/messages/:id/:action") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            let name = context.parameters.get("action") ?? ""
            return await action(request, context) { session, _ in try await self.actOne(id, name, session) }
        }
        ui.get("/actions/confirm") { [self] request, context in await page(request, context) { try await self.confirmBulk(request, $0) } }
        ui.post("/actions/bulk") { [self] request, context in
            await action(request, context) { session, form in try await self.actBulk(form, session) }
        }
        ui.get("/credentials") { [self] request, context in await page(request, context) { try await self.credentials($0) } }
        ui.get("/login") { [self] request, context in await loginForm(request, context) }
        ui.post("/login") { [self] request, context in await login(request, context) }
        ui.post("/logout") { [self] request, context in
            await action(request, context) { _, _ in
                context.sessions.clearSession()
                return .redirect(to: "/login", type: .normal)
            }
        }
    }

    var sessionConfiguration: SessionMiddlewareConfiguration {
        SessionMiddlewareConfiguration(
            sessionCookieParameters: SessionCookieParameters(name: "outbox_session", path: "/", secure: secureCookies, sameSite: .strict),
            keyPrefix: "outbox.dashboard.", defaultSessionExpiration: .seconds(8 * 3600))
    }

    /// The session of a request, opened at once on loopback without tokens (so that forms have
    /// a CSRF token); nil when a login is needed.
    private func session(_ context: OutboxRequestContext) -> DashboardSession? {
        if let session = context.sessions.session, session.authenticated { return session }
        guard !settings.requireToken else { return nil }
        let session = DashboardSession(who: "loopback", csrf: DashboardAccess.newToken())
        context.sessions.createSession(session)
        return session
    }

    /// A GET page: Host check, session (else the login page), errors as an HTML page.
    private func page(
        _ request: Request, _ context: OutboxRequestContext, _ body: (DashboardSession) async throws -> Response
    ) async -> Response {
        if let refusal = DashboardAccess.hostRefusal(request, requireToken: settings.requireToken) { return htmlError(refusal) }
        guard let session = session(context) else { return .redirect(to: "/login", type: .normal) }
        do {
            return try await body(session)
        } catch let error as APIError {
            return htmlError(error)
        } catch {
            return htmlError(storeRefusal(error))
        }
    }

    /// A POST action: Host check, a session (403 without one), the form's CSRF token (403 when
    /// missing or wrong).
    private func action(
        _ request: Request, _ context: OutboxRequestContext, _ body: (DashboardSession, [String: [String]]) async throws -> Response
    ) async -> Response {
        if let refusal = DashboardAccess.hostRefusal(request, requireToken: settings.requireToken) { return htmlError(refusal) }
        guard let session = context.sessions.session, session.authenticated else {
            return htmlError(APIError(.forbidden, "no_session", "this action needs a dashboard session: log in first"))
        }
        var request = request
        let form = FormData.parse(String(buffer: (try? await request.collectBody(upTo: 1 << 20)) ?? ByteBuffer()))
        guard DashboardAccess.csrfMatches(session: session, form: form["csrf"]?.first) else {
            logger.notice("dashboard action refused: missing or wrong CSRF token", metadata: ["outbox.audit.who": "\(session.who)"])
            return htmlError(APIError(.forbidden, "invalid_csrf_token", "the form's CSRF token is missing or wrong: reload the page and try again"))
        }
        do {
            return try await body(session, form)
        } catch let error as APIError {
            return htmlError(error)
        } catch {
            return htmlError(storeRefusal(error))
        }
    }

    /// How long the login form's pre-session lasts.
    static let loginFormLifetime = Duration.seconds(30 * 60)

    /// The login form, with the pre-session's CSRF token (a new pre-session when the request
    /// has none); without tokens, or already logged in, the overview.
    private func loginForm(_ request: Request, _ context: OutboxRequestContext) async -> Response {
        if let refusal = DashboardAccess.hostRefusal(request, requireToken: settings.requireToken) { return htmlError(refusal) }
        if !settings.requireToken || context.sessions.session?.authenticated == true { return .redirect(to: "/", type: .normal) }
        return loginPage(.ok, context, problem: nil)
    }

    private func loginPage(_ status: HTTPResponse.Status, _ context: OutboxRequestContext, problem: String?) -> Response {
        let csrf: String
        if let session = context.sessions.session, !session.authenticated {
            csrf = session.csrf
        } else {
            let session = DashboardSession.preLogin()
            context.sessions.createSession(session, expiresIn: Self.loginFormLifetime)
            csrf = session.csrf
        }
        var view: [String: Any] = ["title": "Log in", "loginCSRF": csrf]
        if let problem { view["problem"] = problem }
        return html(status, "login", view)
    }

    /// The login POST: the pre-session's CSRF token (login CSRF), then the operator token; a
    /// success opens a new session (a new id: the pre-session's id is not carried over).
    private func login(_ request: Request, _ context: OutboxRequestContext) async -> Response {
        if let refusal = DashboardAccess.hostRefusal(request, requireToken: settings.requireToken) { return htmlError(refusal) }
        guard settings.requireToken else { return .redirect(to: "/", type: .normal) }
        var request = request
        let form = FormData.parse(String(buffer: (try? await request.collectBody(upTo: 64 * 1024)) ?? ByteBuffer()))
        guard DashboardAccess.csrfMatches(session: context.sessions.session, form: form["csrf"]?.first) else {
            logger.notice("dashboard login refused: missing or wrong CSRF token")
            context.sessions.clearSession()
            return loginPage(
                .forbidden, context,
                problem: "The login form was not sent by this page, or it expired (invalid_csrf_token): log in again from this page.")
        }
        let token = form["token"]?.first ?? ""
        let label = tokenLabel(token: token)
        guard label != "loopback" else {
            logger.notice("dashboard login refused: wrong token")
            return loginPage(.unauthorized, context, problem: "That token is not one of [outbox] api-tokens.")
        }
        context.sessions.createSession(DashboardSession(who: label, csrf: DashboardAccess.newToken()))
        logger.notice("dashboard login", metadata: ["outbox.audit.who": "\(label)"])
        return .redirect(to: "/", type: .normal)
    }

    // MARK: - Pages

    private func overview(_ session: DashboardSession) async throws -> Response {
        let at = now()
        let counts = try await storeCall { try await $0.countsByRoute() }
        let points = try await storeCall { try await $0.rates(since: at - 3600) }
        let oldest = try await storeCall { try await $0.oldestWaiting() }
        let routes = await provider?.routes() ?? []
        let waiting = counts.values.reduce(0) { $0 + ($1[.queued] ?? 0) + ($1[.deferred] ?? 0) + ($1[.sending] ?? 0) }
        let delivered = points.filter { $0.minute >= at - 3600 }.reduce(0) { $0 + $1.delivered }
        let failed = points.filter { $0.minute >= at - 3600 }.reduce(0) { $0 + $1.failed }
        let alerts = routes.filter { $0.state == "paused" }.map {
            ["route": $0.route, "code": $0.code ?? "", "message": $0.message ?? "", "since": DashboardViews.time($0.since)]
        }
        var view = base("Overview", session, nav: "overview")
        view["refresh"] = 10
        view["now"] = DashboardViews.time(at)
        view["alerts"] = alerts
        view["waiting"] = DashboardViews.number(waiting)
        view["oldest"] = oldest.map { DashboardViews.age(at - $0) } ?? "none"
        view["deliveredHour"] = DashboardViews.number(delivered)
        view["failedHour"] = DashboardViews.number(failed)
        view["deliveredRate"] = String(format: "%.2f", Double(delivered) / 3600)
        view["failedRate"] = String(format: "%.2f", Double(failed) / 3600)
        view["statuses"] = MessageStatus.allCases.map(\.rawValue)
        view["countRows"] = DashboardViews.countRows(counts, routes: routes.map(\.route))
        view["chart"] = DashboardViews.chart(points, now: at)
        view["routes"] = routes.map(DashboardViews.route)
        return html(.ok, "overview", view)
    }

    private func messages(_ request: Request, _ session: DashboardSession) async throws -> Response {
        var filter = try FilterParameters.filter(query: request.uri.query, defaultLimit: 50, maxLimit: 200)
        filter.newestFirst = true
        let page = try await storeCall { [filter] store in try await store.list(filter) }
        var view = base("Messages", session, nav: "messages")
        for (k, v) in DashboardViews.form(filter) { view[k] = v }
        view["rows"] = page.messages.map(DashboardViews.row)
        view["next"] = page.nextCursor.map { String($0) } ?? ""
        view["more"] = page.nextCursor != nil
        view["filterQuery"] = DashboardViews.query(filter)
        view["notice"] = notice(request)
        return html(.ok, "messages", view)
    }

    private func messageDetail(_ id: String, _ request: Request, _ session: DashboardSession) async throws -> Response {
        guard let message = try await storeCall({ try await $0.get(id: id) }) else {
            throw APIError(.notFound, "not_found", "no message has the id \(id)")
        }
        let head = message.contentPurged ? nil : try await storeCall { try await $0.content(id: id, headOnly: true) }
        var view = base("Message \(id.prefix(8))", session, nav: "messages")
        for (k, v) in DashboardViews.detail(message, head: head) { view[k] = v }
        view["notice"] = notice(request)
        return html(.ok, "message", view)
    }

    private func raw(_ id: String) async throws -> Response {
        guard let message = try await storeCall({ try await $0.get(id: id) }), !message.contentPurged,
            let content = try await storeCall({ try await $0.content(id: id, headOnly: false) })
        else {
            throw APIError(.notFound, "not_found", "message \(id) does not exist or its content was purged")
        }
        let name = id.filter { $0.isLetter || $0.isNumber || $0 == "-" }
        return Response(
            status: .ok,
            headers: [.contentType: "message/rfc822", .contentDisposition: "attachment; filename=\"\(name).eml\"", .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: content)))
    }

    private func confirmOne(_ id: String, _ request: Request, _ session: DashboardSession) throws -> Response {
        let action = try Self.queueAction(request.uri.queryParameters.get("action") ?? "")
        var view = base("Confirm", session, nav: "messages")
        view["heading"] = "\(action.rawValue.capitalized) message \(id.prefix(8))?"
        view["question"] = Self.explain(action, what: "message \(id)")
        view["action"] = "/messages/\(id)/\(action.rawValue)"
        view["button"] = action.rawValue.capitalized
        view["danger"] = action != .retry
        view["back"] = "/messages/\(id)"
        view["fields"] = [[String: String]]()
        return html(.ok, "confirm", view)
    }

    private func actOne(_ id: String, _ name: String, _ session: DashboardSession) async throws -> Response {
        let action = try Self.queueAction(name)
        let result = try await bulk(action, ids: [id], who: "dashboard \(session.who)")
        if !result.notFound.isEmpty { throw APIError(.notFound, "not_found", "no message has the id \(id)") }
        let notice = result.done.isEmpty ? "conflict-\(action.rawValue)" : "done-\(action.rawValue)"
        return .redirect(to: "/messages/\(FormData.encode(id))?notice=\(notice)", type: .normal)
    }

    private func confirmBulk(_ request: Request, _ session: DashboardSession) async throws -> Response {
        let action = try Self.queueAction(request.uri.queryParameters.get("action") ?? "")
        let filter = try FilterParameters.filter(query: request.uri.query)
        var view = base("Confirm", session, nav: "messages")
        view["heading"] = "\(action.rawValue.capitalized) every message this filter takes?"
        let described = DashboardViews.query(filter)
        view["question"] = Self.explain(
            action, what: "up to \(Self.bulkFilterLimit) messages taken by the filter \(described.isEmpty ? "(none: every message)" : described)")
        view["action"] = "/actions/bulk"
        view["button"] = "\(action.rawValue.capitalized) them"
        view["danger"] = action != .retry
        view["back"] = "/messages?\(described)"
        view["fields"] = DashboardViews.fields(filter) + [["name": "action", "value": action.rawValue]]
        return html(.ok, "confirm", view)
    }

    private func actBulk(_ form: [String: [String]], _ session: DashboardSession) async throws -> Response {
        let action = try Self.queueAction(form["action"]?.first ?? "")
        var values = form
        values["csrf"] = nil
        values["action"] = nil
        var filter = try FilterParameters.filter(values, defaultLimit: 200, maxLimit: 500)
        filter.newestFirst = false
        let result = try await bulk(action, filter: filter, max: Self.bulkFilterLimit, who: "dashboard \(session.who)")
        var view = base("Done", session, nav: "messages")
        view["heading"] = "\(action.rawValue.capitalized): done"
        view["summary"] =
            "\(result.matched) messages matched; \(result.done.count) changed, \(result.conflicts.count) not in a state that allows it."
        view["hasConflicts"] = !result.conflicts.isEmpty
        view["conflicts"] = result.conflicts.prefix(100).map { ["id": $0.id, "status": $0.status.rawValue] }
        let query = DashboardViews.query(filter)
        if let next = result.nextCursor {
            view["more"] = "/actions/confirm?action=\(action.rawValue)&\(query)&cursor=\(next)"
        }
        view["back"] = "/messages?\(query)"
        return html(.ok, "result", view)
    }

    private func credentials(_ session: DashboardSession) async throws -> Response {
        var options: [String: String] = [:]
        if let configuration = await provider?.status()["configuration"] as? [[String: String]] {
            // Only names that never hold a secret are read.
            for option in configuration where ["server-type", "authentication-method", "user", "server", "tenant"].contains(option["name"] ?? "") {
                options[option["name"] ?? ""] = option["value"] ?? ""
            }
        }
        let routes = await provider?.routes() ?? [RouteStatus.healthy(MessageFilter.defaultRoute)]
        var view = base("Credentials", session, nav: "credentials")
        let states = await provider?.credentials() ?? []
        view["routes"] = routes.map { route -> [String: Any] in
            let token = states.first { $0.route == route.route }
            let paused = route.state == "paused" && ["authentication_failed", "credentials_unavailable"].contains(route.code ?? "")
            let failing = token?.failing == true || paused
            var lastError = ""
            if let token, let code = token.lastErrorCode {
                lastError = "\(code): \(token.lastError ?? "") (at \(DashboardViews.time(token.lastErrorAt?.timeIntervalSince1970)))"
            } else if route.state == "paused" {
                lastError = "\(route.code ?? ""): \(route.message ?? "") (since \(DashboardViews.time(route.since)))"
            }
            return [
                "route": route.route, "serverType": options["server-type"] ?? "SMTP",
                "method": token?.kind ?? options["authentication-method"].flatMap { $0.isEmpty ? nil : $0 } ?? "password or none",
                "user": options["user"] ?? "",
                "state": failing ? "failing" : (route.state == "paused" ? "route paused" : "ok"), "bad": failing,
                "lastRefresh": token?.lastRefresh.map { DashboardViews.time($0.timeIntervalSince1970) } ?? "",
                "expiry": token?.expiresAt.map { DashboardViews.time($0.timeIntervalSince1970) } ?? "",
                "lastError": lastError,
            ]
        }
        return html(.ok, "credentials", view)
    }

    // MARK: - Helpers

    static func queueAction(_ name: String) throws -> QueueAction {
        guard let action = QueueAction(rawValue: name) else {
            throw APIError(.badRequest, "invalid_action", "action \"\(name)\" is not retry, cancel or purge")
        }
        return action
    }

    static func explain(_ action: QueueAction, what: String) -> String {
        switch action {
        case .retry: "Put \(what) back in the queue, due now (failed, unknown and deferred messages only)."
        case .cancel: "Stop trying \(what); the record stays (queued and deferred messages only)."
        case .purge: "Remove the content of \(what); the record and attempts stay (finished messages only). This cannot be undone."
        }
    }

    private func notice(_ request: Request) -> String? {
        switch request.uri.queryParameters.get("notice") ?? "" {
        case "done-retry": "Queued again: it is due now."
        case "done-cancel": "Cancelled."
        case "done-purge": "The content was purged."
        case let n where n.hasPrefix("conflict-"): "Nothing changed: the message's state does not allow it."
        default: nil
        }
    }

    private func base(_ title: String, _ session: DashboardSession, nav: String) -> [String: Any] {
        ["title": title, "nav": [nav: true], "session": ["who": session.who, "csrf": session.csrf], "csrf": session.csrf]
    }

    private func html(_ status: HTTPResponse.Status, _ template: String, _ view: [String: Any]) -> Response {
        Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
                HTTPFields.Element.Name("X-Frame-Options")!: "DENY", HTTPFields.Element.Name("Referrer-Policy")!: "no-referrer",
            ],
            body: ResponseBody(byteBuffer: ByteBuffer(string: DashboardTemplates.render(template, view))))
    }

    private func htmlError(_ error: APIError) -> Response {
        var response = html(error.status, "error", ["title": "Error", "heading": "\(error.status.code) \(error.code)", "message": error.message])
        for field in error.headers { response.headers.append(field) }
        return response
    }
}

extension RouteStatus {
    /// A route with no alert (a process without a dispatcher).
    static func healthy(_ route: String) -> RouteStatus {
        RouteStatus(RouteHealth(route: route))
    }
}
