import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import ServiceLifecycle
import Testing

/// Sends by route: `blocked` routes hang until released, `down` routes fail with a route fault,
/// the others accept. Records every (route, recipient) sent.
private final class RoutedSender: MessageSender, Sendable {
    let sent = NIOLockedValueBox<[(route: String, rcpt: String)]>([])
    let blocked = NIOLockedValueBox<Set<String>>([])
    let down = NIOLockedValueBox<Set<String>>([])

    func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        try await send(content, envelope: envelope, route: "default")
    }

    func send(_ content: any MailContent, envelope: Envelope?, route: String) async throws(DeliveryError) -> DeliveryReport {
        while blocked.withLockedValue({ $0.contains(route) }), !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
        if down.withLockedValue({ $0.contains(route) }) {
            throw DeliveryError(kind: .transient, message: "connection refused", routeFault: .connectionFailed)
        }
        let rcpt = envelope?.recipients.first ?? ""
        sent.withLockedValue { $0.append((route, rcpt)) }
        return report(envelope!.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: 250) })
    }

    func count(_ route: String) -> Int { sent.withLockedValue { $0.filter { $0.route == route }.count } }
}

@Suite("Dispatcher: one lane per route", .serialized)
struct DispatcherLaneTests {
    let content = Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)

    func enqueue(_ store: any OutboxStore, route: String, count: Int, at time: ManualQueueClock) async throws -> [String] {
        var ids: [String] = []
        for i in 0..<count {
            var message = NewMessage(from: "s@example.test", recipients: ["\(route)-\(i)@example.test"], content: content)
            message.route = route
            ids.append(try await store.enqueue(message, now: time.seconds).id)
        }
        return ids
    }

    @Test("a route whose sends hang with a backlog, and a paused route, never delay another route's messages")
    func lanesAreIndependent() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let sender = RoutedSender()
        sender.blocked.withLockedValue { $0 = ["slow"] }
        sender.down.withLockedValue { $0 = ["broken"] }
        // The slow route's backlog is queued first (due first), far more than the concurrency.
        let slow = try await enqueue(store, route: "slow", count: 200, at: time)
        _ = try await enqueue(store, route: "broken", count: 50, at: time)
        let fast = try await enqueue(store, route: "fast", count: 40, at: time)
        let settings = DispatcherSettings(
            concurrency: 4, pollInterval: .milliseconds(10), shutdownDeadline: .seconds(1), retry: RetryPolicy(initialDelay: .seconds(1), jitter: 0))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        dispatcher.setRoutes(["default", "slow", "broken", "fast"])
        // When the fast route is done, what the others did by then; then the slow one is let go
        // (its sends end only when released), so the dispatcher can stop.
        let seen = NIOLockedValueBox<(slow: Int, statuses: [String])?>(nil)
        try await runDispatcher(dispatcher) {
            guard sender.count("fast") == fast.count, dispatcher.routeHealth("broken")?.isPaused == true else { return false }
            var delivered = 0
            for id in fast where try await store.get(id: id)?.status == .delivered { delivered += 1 }
            guard delivered == fast.count else { return false }
            seen.withLockedValue { $0 = (sender.count("slow"), dispatcher.routes.map { "\($0.route)=\($0.state)" }) }
            sender.blocked.withLockedValue { $0 = [] }
            return true
        }
        let snapshot = try #require(seen.withLockedValue { $0 }, "the fast route's messages did not all go while the slow one hung")
        #expect(snapshot.slow == 0, "the slow route's sends were still hanging")
        #expect(snapshot.statuses.contains("broken=paused") && snapshot.statuses.contains("fast=ok"), "\(snapshot.statuses)")
        #expect(dispatcher.routeHealth("fast")?.isPaused == false)
        #expect(try await store.get(id: slow[199])?.status != .delivered)
    }

    @Test("messages of a route that is not configured wait, deferred with the route alert; configured again, they go")
    func missingRoute() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let sender = RoutedSender()
        let gone = try await enqueue(store, route: "gone", count: 3, at: time)
        let settings = DispatcherSettings(concurrency: 2, pollInterval: .milliseconds(10))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await runDispatcher(dispatcher) {
            try await store.get(id: gone[2])?.lastError?.contains("route gone no longer exists") == true
        }
        for id in gone {
            let m = try #require(try await store.get(id: id))
            #expect(m.status == .deferred)
            #expect(m.lastError?.contains("route gone no longer exists") == true)
        }
        #expect(dispatcher.routes.contains { $0.route == "gone" && $0.state == "missing" && $0.code == "route_missing" })
        #expect(sender.count("gone") == 0)
        // The route comes back (a reload): its messages go.
        let again = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t2", clock: time, random: { 0.5 })
        again.setRoutes(["default", "gone"])
        try await runDispatcher(again) { sender.count("gone") == 3 }
        for id in gone { #expect(try await store.get(id: id)?.status == .delivered) }
        // Moved by an operator: a waiting message goes to another route.
        let moved = try await enqueue(store, route: "nowhere", count: 1, at: time)[0]
        guard case .done(let m) = try await store.move(id: moved, route: "default", now: time.seconds) else {
            Issue.record("the move was refused")
            return
        }
        #expect(m.route == "default")
        let third = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t3", clock: time, random: { 0.5 })
        try await runDispatcher(third) { sender.count("default") == 1 }
        #expect(try await store.get(id: moved)?.status == .delivered)
        guard case .conflict(.delivered) = try await store.move(id: moved, route: "gone", now: time.seconds) else {
            Issue.record("a delivered message was moved")
            return
        }
    }
}
