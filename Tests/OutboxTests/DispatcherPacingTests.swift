import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import ServiceLifecycle
import Testing

@Suite("Dispatcher: pacing per route and throttling", .serialized)
struct DispatcherPacingTests {
    let content = Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)

    func enqueue(_ store: any OutboxStore, count: Int, at time: ManualQueueClock) async throws -> [String] {
        var ids: [String] = []
        for i in 0..<count {
            let message = NewMessage(from: "s\(i % 5)@example.test", recipients: ["a@example.test"], content: content)
            ids.append(try await store.enqueue(message, now: time.seconds).id)
        }
        return ids
    }

    @Test("a route at rate-limit-per-minute sends its limit in a minute; the rest wait in the queue, no attempt made")
    func rateLimitPerMinute() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let ids = try await enqueue(store, count: 25, at: time)
        let sender = ScriptedSender { _, envelope in
            .success(report(envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: 250) }))
        }
        var settings = DispatcherSettings(concurrency: 8, pollInterval: .milliseconds(10))
        settings.routeLimits = ["default": RouteLimits(ratePerMinute: 10)]
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        var counts: [Int] = []
        try await whileRunning(dispatcher) {
            #expect(try await waitUntil { sender.calls.withLockedValue { $0.count } == 10 })
            try await Task.sleep(for: .milliseconds(400))
            counts.append(sender.calls.withLockedValue { $0.count })
            time.advance(seconds: 30)
            try await Task.sleep(for: .milliseconds(300))
            counts.append(sender.calls.withLockedValue { $0.count })
            time.advance(seconds: 30.5)
            #expect(try await waitUntil { sender.calls.withLockedValue { $0.count } == 20 })
            try await Task.sleep(for: .milliseconds(300))
            counts.append(sender.calls.withLockedValue { $0.count })
            time.advance(seconds: 61)
            #expect(try await waitUntil { try await store.counts()[.delivered] == ids.count })
        }
        #expect(counts == [10, 10, 20])
        // Waiting is not an attempt: every message was sent once.
        for id in ids { #expect(try await store.get(id: id)?.attemptCount == 1) }
    }

    @Test("a throttled route (429 with Retry-After) pauses for the time asked; the message is deferred, not failed, then sent")
    func throttledPausesForRetryAfter() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let ids = try await enqueue(store, count: 6, at: time)
        let throttling = NIOLockedValueBox(true)
        let sender = ScriptedSender { _, envelope in
            if throttling.withLockedValue({ $0 }) {
                return .failure(
                    DeliveryError(
                        kind: .transient, message: "graph: Graph answered 429 ApplicationThrottled", retryAfter: .seconds(40),
                        routeFault: .throttled))
            }
            return .success(report(envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: 250) }))
        }
        let settings = DispatcherSettings(concurrency: 1, pollInterval: .milliseconds(10))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await whileRunning(dispatcher) {
            #expect(try await waitUntil { dispatcher.routeHealth.isPaused })
            let route = try #require(dispatcher.routes.first)
            #expect(route.state == "paused" && route.code == "throttled")
            #expect(route.nextProbeAt == 1_000_040)
            try await Task.sleep(for: .milliseconds(300))
            let throttledCalls = sender.calls.withLockedValue { $0.count }
            #expect(throttledCalls == 1)
            throttling.withLockedValue { $0 = false }
            // Not before the time asked (the route's own back-off would be 5 s).
            time.advance(seconds: 30)
            try await Task.sleep(for: .milliseconds(300))
            #expect(sender.calls.withLockedValue { $0.count } == throttledCalls)
            time.advance(seconds: 11)
            #expect(try await waitUntil { try await store.counts()[.delivered] == ids.count })
        }
        #expect(try await store.counts()[.failed] == nil)
        #expect(!dispatcher.routeHealth.isPaused)
    }

    @Test("a report whose recipient the provider throttled (432 4.3.2 to RCPT) pauses the route")
    func throttledRecipientPauses() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        _ = try await enqueue(store, count: 3, at: time)
        let sender = ScriptedSender { n, envelope in
            var r = report(envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: 250) })
            if n == 1 { r.throttle = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded" }
            return .success(r)
        }
        let settings = DispatcherSettings(concurrency: 1, pollInterval: .milliseconds(10))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await whileRunning(dispatcher) {
            #expect(try await waitUntil { dispatcher.routeHealth.isPaused })
            #expect(dispatcher.routes.first?.code == "throttled")
            try await Task.sleep(for: .milliseconds(300))
            #expect(sender.calls.withLockedValue { $0.count } == 1)
            time.advance(seconds: 6)
            #expect(try await waitUntil { try await store.counts()[.delivered] == 3 })
        }
    }

    @Test("max-concurrent bounds the route's deliveries in flight")
    func maxConcurrent() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let ids = try await enqueue(store, count: 30, at: time)
        let gauge = NIOLockedValueBox((now: 0, peak: 0))
        let sender = SlowSender(gauge: gauge)
        var settings = DispatcherSettings(concurrency: 8, pollInterval: .milliseconds(10))
        settings.routeLimits = ["default": RouteLimits(maxConcurrent: 2)]
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await whileRunning(dispatcher) {
            let done = try await waitUntil { try await store.counts()[.delivered] == ids.count }
            #expect(done)
        }
        #expect(gauge.withLockedValue { $0.peak } == 2)
    }
}

/// A sender that takes 20 ms per message and records the most in flight at once.
private struct SlowSender: MessageSender {
    let gauge: NIOLockedValueBox<(now: Int, peak: Int)>

    func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        gauge.withLockedValue {
            $0.now += 1
            $0.peak = max($0.peak, $0.now)
        }
        try? await Task.sleep(for: .milliseconds(20))
        gauge.withLockedValue { $0.now -= 1 }
        return report((envelope?.recipients ?? []).map { RecipientOutcome(address: $0, status: .accepted, code: 250) })
    }
}
