import Foundation
import Hummingbird
import Logging
import NIOCore
import Outbox

/// The operator's actions on the queue beyond one retry or cancel (`outbox queue`, the
/// dashboard): purge one message's content, and retry or cancel many messages by id.
extension OutboxAPI {
    /// At most this many ids in one bulk request.
    static let bulkLimit = 1000

    func addQueueRoutes(_ router: Router<OutboxRequestContext>) {
        router.post("/v1/messages/:id/purge") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await self.guarded(request) { try await self.purge(id) }
        }
        router.post("/v1/messages/retry") { [self] request, _ in
            await self.guarded(request) { try await self.bulk(request, .retry) }
        }
        router.post("/v1/messages/cancel") { [self] request, _ in
            await self.guarded(request) { try await self.bulk(request, .cancel) }
        }
        router.post("/v1/messages/purge") { [self] request, _ in
            await self.guarded(request) { try await self.bulk(request, .purge) }
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

    /// `{"ids": [...]}` or `{"filter": {...}, "max": N}` → `{"done": [ids], "conflicts": [{"id",
    /// "status"}], "not_found": [ids]}`, and for a filter `"matched"` and `"next_cursor"` (where
    /// to go on when `max` was reached).
    private func bulk(_ request: Request, _ action: QueueAction) async throws -> Response {
        let body = try await request.body.collect(upTo: 1 << 20)
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw APIError(
                .badRequest, "invalid_json", "the body must be a JSON object {\"ids\": [\"message id\", ...]} or {\"filter\": {...}}")
        }
        let who = "api " + tokenLabel(request)
        if let filterObject = object["filter"] as? [String: Any] {
            let max = try Self.bulkMax(object["max"])
            let filter = try FilterParameters.filter(json: filterObject, defaultLimit: 200, maxLimit: 1000)
            let result = try await bulk(action, filter: filter, max: max, who: who)
            return JSON.response(.ok, result.json)
        }
        guard let ids = object["ids"] as? [String] else {
            throw APIError(.badRequest, "invalid_json", "the body must be a JSON object {\"ids\": [\"message id\", ...]} or {\"filter\": {...}}")
        }
        guard ids.count <= Self.bulkLimit else {
            throw APIError(.badRequest, "too_many_ids", "at most \(Self.bulkLimit) ids per request; \(ids.count) were given")
        }
        let result = try await bulk(action, ids: ids, who: who)
        return JSON.response(.ok, result.json)
    }

    static func bulkMax(_ value: Any?) throws -> Int {
        guard let value else { return bulkFilterLimit }
        guard let n = value as? Int, (1...bulkFilterLimit).contains(n) else {
            throw APIError(.badRequest, "invalid_max", "max must be an integer from 1 to \(bulkFilterLimit)")
        }
        return n
    }

    /// At most this many messages per filtered bulk request (the answer's `next_cursor` goes on).
    static let bulkFilterLimit = 10_000

    /// Applies `action` to each id; one audit line.
    func bulk(_ action: QueueAction, ids: [String], who: String) async throws -> BulkResult {
        var result = BulkResult()
        for id in ids { try await apply(action, id: id, into: &result) }
        if action == .retry, !result.done.isEmpty { await provider?.messagesRetried() }
        audit(action, who: who, requested: ids.count, result: result, filter: nil)
        return result
    }

    /// Applies `action` to the messages `filter` takes, page by page (keyset), up to `max`;
    /// one audit line.
    func bulk(_ action: QueueAction, filter: MessageFilter, max: Int, who: String) async throws -> BulkResult {
        var result = BulkResult()
        var filter = filter
        filter.limit = min(filter.limit, 500)
        var processed = 0
        while processed < max {
            filter.limit = min(filter.limit, max - processed)
            let page = try await storeCall { [filter] store in try await store.list(filter) }
            for message in page.messages { try await apply(action, id: message.id, into: &result) }
            processed += page.messages.count
            result.matched += page.messages.count
            result.nextCursor = page.nextCursor
            guard let next = page.nextCursor else { break }
            filter.cursor = next
        }
        if action == .retry, !result.done.isEmpty { await provider?.messagesRetried() }
        audit(action, who: who, requested: result.matched, result: result, filter: filter)
        return result
    }

    private func apply(_ action: QueueAction, id: String, into result: inout BulkResult) async throws {
        let at = now()
        let change = try await storeCall { store -> StoreChange in
            switch action {
            case .retry: return try await store.retry(id: id, now: at)
            case .cancel: return try await store.cancel(id: id, now: at)
            case .purge: return try await store.purge(id: id, now: at)
            }
        }
        switch change {
        case .done: result.done.append(id)
        case .notFound: result.notFound.append(id)
        case .conflict(let status): result.conflicts.append((id, status))
        }
    }

    /// The audit line of an operator's action: who (a token's position or a dashboard session,
    /// never a secret), what, how many.
    func audit(_ action: QueueAction, who: String, requested: Int, result: BulkResult, filter: MessageFilter?) {
        var metadata: Logger.Metadata = [
            "outbox.audit.who": "\(who)", "outbox.audit.action": "\(action.rawValue)",
            "outbox.requested": "\(requested)", "outbox.done": "\(result.done.count)",
            "outbox.conflicts": "\(result.conflicts.count)", "outbox.not_found": "\(result.notFound.count)",
        ]
        if result.done.count == 1, requested == 1, let id = result.done.first { metadata["outbox.message"] = "\(id)" }
        if filter != nil { metadata["outbox.audit.selection"] = "filter" }
        logger.notice("\(action.rawValue) requested by an operator", metadata: metadata)
    }

    /// Which API token a request carries, as its position in `[outbox] api-tokens` (never the
    /// token itself); `loopback` when none is needed.
    func tokenLabel(_ request: Request) -> String {
        let header = request.headers[.authorization] ?? ""
        let token = header.hasPrefix("Bearer ") ? String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces) : ""
        return tokenLabel(token: token)
    }

    /// A token's label: `token #N` (its position in `[outbox] api-tokens`), or `loopback`.
    func tokenLabel(token: String) -> String {
        guard !token.isEmpty, let index = settings.tokens.firstIndex(where: { Self.constantTimeEqual($0, token) }) else { return "loopback" }
        return "token #\(index + 1)"
    }
}

/// An operator's action on queued messages.
enum QueueAction: String, Sendable {
    /// Put back in the queue now.
    case retry
    /// Stop trying, keep the record.
    case cancel
    /// Remove the content (the record and attempts stay).
    case purge
}

/// What a bulk action did.
struct BulkResult: Sendable {
    var done: [String] = []
    var conflicts: [(id: String, status: MessageStatus)] = []
    var notFound: [String] = []
    /// Messages the filter took (a filtered action).
    var matched = 0
    /// Where a filtered action goes on, or nil when it reached the end.
    var nextCursor: Int64?

    var json: [String: Any] {
        [
            "done": done, "conflicts": conflicts.map { ["id": $0.id, "status": $0.status.rawValue] }, "not_found": notFound,
            "matched": matched, "next_cursor": nextCursor.map { String($0) } ?? NSNull(),
        ]
    }
}
