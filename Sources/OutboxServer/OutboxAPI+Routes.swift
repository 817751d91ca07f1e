import Foundation
import Hummingbird
import NIOCore
import Outbox
import OutboxConfig

/// Routes in the HTTP API: choosing a submission's route, and moving waiting messages to
/// another route (`POST /v1/messages/{id}/route`, `POST /v1/messages/route`).
extension OutboxAPI {
    func addRouteRoutes(_ router: Router<OutboxRequestContext>) {
        router.post("/v1/messages/:id/route") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await self.guarded(request) { try await self.move(request, id: id) }
        }
        router.post("/v1/messages/route") { [self] request, _ in
            await self.guarded(request) { try await self.moveMany(request) }
        }
    }

    /// Sets the route of a submission (see `RouteTable.choose`) and, for a client's token, its
    /// name, after checking the envelope sender against its `allowed-senders`.
    func route(_ message: inout NewMessage, requested: String?, caller: Caller) throws(APIError) {
        let client = caller.client
        if let client {
            guard message.from.isEmpty || client.allows(sender: message.from) else {
                throw APIError(
                    .forbidden, "sender_not_allowed",
                    "[client-\(client.name)] may not send from \(message.from) (its allowed-senders: \(client.allowedSenders.joined(separator: ", ")))"
                )
            }
            message.client = client.name
        }
        switch settings.routes.choose(client: client, requested: requested, sender: message.from) {
        case .success(let route): message.route = route
        case .failure(let refusal):
            throw APIError(refusal.code == "route_not_allowed" ? .forbidden : .badRequest, refusal.code, refusal.description)
        }
    }

    /// The `{"route": "..."}` of a move request, checked against the routes configured.
    private func requestedRoute(_ object: [String: Any]) throws(APIError) -> String {
        guard let route = object["route"] as? String, !route.isEmpty else {
            throw APIError(.badRequest, "invalid_json", "the body must be a JSON object with \"route\": the route to move to")
        }
        let names = settings.routes.names
        guard names.contains(route) else {
            throw APIError(.badRequest, "unknown_route", "there is no route \(route); the routes are \(names.joined(separator: ", "))")
        }
        return route
    }

    private func body(_ request: Request) async throws -> [String: Any] {
        let buffer = try await request.body.collect(upTo: 1 << 20)
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: buffer)) as? [String: Any] else {
            throw APIError(.badRequest, "invalid_json", "the body must be a JSON object, e.g. {\"route\": \"billing\"}")
        }
        return object
    }

    /// `POST /v1/messages/{id}/route` `{"route": R}`: a queued or deferred message goes to R,
    /// due now.
    private func move(_ request: Request, id: String) async throws -> Response {
        let route = try requestedRoute(try await body(request))
        let at = now()
        switch try await storeCall({ try await $0.move(id: id, route: route, now: at) }) {
        case .done(let message):
            logger.notice("message moved to another route by an operator", metadata: ["outbox.message": "\(id)", "outbox.route": "\(route)"])
            return JSON.response(.ok, Self.detail(message))
        case .notFound:
            throw APIError(.notFound, "not_found", "no message has the id \(id)")
        case .conflict(let status):
            throw APIError(
                .conflict, "invalid_state", "message \(id) is \(status.rawValue); only a queued or deferred message can be moved to another route")
        }
    }

    /// `POST /v1/messages/route` `{"route": R, "ids": [...]}` or `{"route": R, "from_route": F}`
    /// (every waiting message of F, e.g. a removed route) → `{"done", "conflicts", "not_found"}`.
    private func moveMany(_ request: Request) async throws -> Response {
        let object = try await body(request)
        let route = try requestedRoute(object)
        var ids = object["ids"] as? [String] ?? []
        if let from = object["from_route"] as? String {
            guard ids.isEmpty else { throw APIError(.badRequest, "invalid_json", "give either \"ids\" or \"from_route\", not both") }
            var cursor: Int64?
            for status in [MessageStatus.queued, .deferred] {
                cursor = nil
                while true {
                    let page = try await storeCall { [cursor] store in
                        try await store.list(status: status, limit: 500, after: cursor, route: from, client: nil)
                    }
                    ids += page.map(\.id)
                    guard page.count == 500, ids.count <= Self.bulkLimit else { break }
                    cursor = page.last?.sequence
                }
            }
        } else if object["ids"] == nil {
            throw APIError(.badRequest, "invalid_json", "the body must be {\"route\": R, \"ids\": [...]} or {\"route\": R, \"from_route\": F}")
        }
        guard ids.count <= Self.bulkLimit else {
            throw APIError(.badRequest, "too_many_ids", "at most \(Self.bulkLimit) messages per request; \(ids.count) were given or found")
        }
        var done: [String] = []
        var conflicts: [[String: Any]] = []
        var notFound: [String] = []
        for id in ids {
            let at = now()
            switch try await storeCall({ try await $0.move(id: id, route: route, now: at) }) {
            case .done: done.append(id)
            case .notFound: notFound.append(id)
            case .conflict(let status): conflicts.append(["id": id, "status": status.rawValue])
            }
        }
        logger.notice(
            "messages moved to another route by an operator",
            metadata: ["outbox.route": "\(route)", "outbox.requested": "\(ids.count)", "outbox.done": "\(done.count)"])
        return JSON.response(.ok, ["done": done, "conflicts": conflicts, "not_found": notFound])
    }
}
