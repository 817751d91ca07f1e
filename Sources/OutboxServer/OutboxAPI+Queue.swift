import Foundation
import Hummingbird
import NIOCore
import Outbox

/// The operator's actions on the queue beyond one retry or cancel (`outbox queue`, the
/// dashboard): purge one message's content, and retry or cancel many messages by id.
extension OutboxAPI {
    /// At most this many ids in one bulk request.
    static let bulkLimit = 1000

    func addQueueRoutes(_ router: Router<BasicRequestContext>) {
        router.post("/v1/messages/:id/purge") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await self.guarded(request) { try await self.purge(id) }
        }
        router.post("/v1/messages/retry") { [self] request, _ in
            await self.guarded(request) { try await self.bulk(request, retry: true) }
        }
        router.post("/v1/messages/cancel") { [self] request, _ in
            await self.guarded(request) { try await self.bulk(request, retry: false) }
        }
    }

    private func purge(_ id: String) async throws -> Response {
        let at = now()
        switch try await storeCall({ try await $0.purge(id: id, now: at) }) {
        case .done(let message):
            logger.notice("message content purged by an operator", metadata: ["outbox.message": "\(id)"])
            return JSON.response(.ok, Self.detail(message))
        case .notFound:
            throw APIError(.notFound, "not_found", "no message has the id \(id)")
        case .conflict(let status):
            throw APIError(
                .conflict, "invalid_state",
                "message \(id) is \(status.rawValue); only a delivered, failed, unknown or cancelled message's content can be purged (cancel it first)"
            )
        }
    }

    /// `{"ids": [...]}` → `{"done": [ids], "conflicts": [{"id", "status"}], "not_found": [ids]}`.
    private func bulk(_ request: Request, retry: Bool) async throws -> Response {
        let body = try await request.body.collect(upTo: 1 << 20)
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
            let ids = object["ids"] as? [String]
        else {
            throw APIError(.badRequest, "invalid_json", "the body must be a JSON object {\"ids\": [\"message id\", ...]}")
        }
        guard ids.count <= Self.bulkLimit else {
            throw APIError(.badRequest, "too_many_ids", "at most \(Self.bulkLimit) ids per request; \(ids.count) were given")
        }
        var done: [String] = []
        var conflicts: [[String: Any]] = []
        var notFound: [String] = []
        for id in ids {
            let at = now()
            switch try await storeCall({ retry ? try await $0.retry(id: id, now: at) : try await $0.cancel(id: id, now: at) }) {
            case .done: done.append(id)
            case .notFound: notFound.append(id)
            case .conflict(let status): conflicts.append(["id": id, "status": status.rawValue])
            }
        }
        if retry, !done.isEmpty { await provider?.messagesRetried() }
        logger.notice(
            "\(retry ? "retry" : "cancel") requested by an operator",
            metadata: ["outbox.requested": "\(ids.count)", "outbox.done": "\(done.count)"])
        return JSON.response(.ok, ["done": done, "conflicts": conflicts, "not_found": notFound])
    }
}
