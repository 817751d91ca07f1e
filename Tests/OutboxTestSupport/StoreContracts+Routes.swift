import Foundation
import Outbox
import Testing

/// The route contract every store keeps (both stores run it): a message's route and client are
/// stored; a claim for one route takes only that route's due messages; listings filter by route
/// and client; waiting messages are counted by route, held with a reason, and moved.
package func checkRoutes(_ store: any OutboxStore) async throws {
    let suffix = UUID().uuidString.prefix(8)
    let (a, b) = ("ra-\(suffix)", "rb-\(suffix)")
    func new(_ n: Int, route: String, client: String? = nil) -> NewMessage {
        var m = sampleNew(n)
        m.route = route
        m.client = client
        return m
    }
    let a1 = try await store.enqueue(new(1, route: a, client: "app-\(suffix)"), now: 10).id
    let b1 = try await store.enqueue(new(2, route: b), now: 5).id
    let a2 = try await store.enqueue(new(3, route: a), now: 20).id
    #expect(try await store.get(id: a1)?.route == a)
    #expect(try await store.get(id: a1)?.client == "app-\(suffix)")
    #expect(try await store.get(id: b1)?.client == nil)
    // Listings by route and by client.
    #expect(Set(try await store.list(status: nil, limit: 100, after: nil, route: a, client: nil).map(\.id)) == [a1, a2])
    #expect(try await store.list(status: .queued, limit: 100, after: nil, route: nil, client: "app-\(suffix)").map(\.id) == [a1])
    let waiting = try await store.waitingByRoute()
    #expect(waiting[a] == 2 && waiting[b] == 1, "\(waiting)")
    // A claim for route a never takes b's message, though b's is due first.
    let claimed = try await store.claim(limit: 10, owner: "lane-a", now: 100, lease: 60, route: a).map(\.message.id)
    #expect(Set(claimed) == [a1, a2])
    #expect(try await store.get(id: b1)?.status == .queued)
    // Held: b's waiting messages deferred with the reason, still due.
    try await store.holdRoute(b, reason: "route \(b) no longer exists", now: 101)
    let held = try #require(try await store.get(id: b1))
    #expect(held.status == .deferred)
    #expect(held.lastError == "route \(b) no longer exists")
    #expect(try await store.claim(limit: 10, owner: "x", now: 102, lease: 60, route: "nowhere-\(suffix)").isEmpty)
    // Moved: to a, due now; a message being sent is not moved.
    guard case .done(let moved) = try await store.move(id: b1, route: a, now: 103) else {
        Issue.record("a deferred message was not moved")
        return
    }
    #expect(moved.route == a)
    #expect(try await store.claim(limit: 10, owner: "lane-a", now: 104, lease: 60, route: a).map(\.message.id) == [b1])
    guard case .conflict(.sending) = try await store.move(id: a1, route: b, now: 105) else {
        Issue.record("a message being sent was moved")
        return
    }
    guard case .notFound = try await store.move(id: "no-such-\(suffix)", route: b, now: 105) else {
        Issue.record("an unknown id was moved")
        return
    }
}
