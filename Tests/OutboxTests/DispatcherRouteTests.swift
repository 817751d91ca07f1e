import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import ServiceLifecycle
import Testing

/// A route that is down until `up` is set: each call is counted.
private final class Route: Sendable {
    let up = NIOLockedValueBox(false)
    let fault = NIOLockedValueBox(RouteFault.connectionFailed)
    let calls = NIOLockedValueBox(0)

    var sender: ScriptedSender {
        ScriptedSender { _, envelope in
            self.calls.withLockedValue { $0 += 1 }
            if self.up.withLockedValue({ $0 }) {
                return .success(report(envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: 250) }))
            }
            return .failure(
                DeliveryError(
                    kind: .transient, message: "SMTP connect failed (transient): connection refused",
                    routeFault: self.fault.withLockedValue { $0 }))
        }
    }
    var count: Int { calls.withLockedValue { $0 } }
}

@Suite("Dispatcher: a route's alert holds its messages; one probe retries it", .serialized)
struct DispatcherRouteTests {
    let content = Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)

    func enqueue(_ store: any OutboxStore, count: Int, at time: ManualQueueClock, relayed: Bool = false) async throws -> [String] {
        var ids: [String] = []
        for i in 0..<count {
            var message = NewMessage(from: "s\(i % 7)@example.test", recipients: ["a@example.test"], content: content)
            if relayed { message.origin = MessageOrigin(kind: "relay", client: nil, ret: nil, envid: nil, notify: [""], orcpt: [""]) }
            ids.append(try await store.enqueue(message, now: time.seconds).id)
        }
        return ids
    }

    @Test("server down with many messages: after the first failures only the probe makes attempts; its success sends them all")
    func onlyTheProbeAttempts() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let ids = try await enqueue(store, count: 300, at: time)
        let route = Route()
        let settings = DispatcherSettings(
            concurrency: 8, pollInterval: .milliseconds(10), retry: RetryPolicy(initialDelay: .seconds(1), jitter: 0, maxAge: .seconds(86_400)))
        let dispatcher = Dispatcher(store: store, sender: route.sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        var firstFailures = 0
        var probes: [Int] = []
        try await whileRunning(dispatcher) {
            // The first failures pause the route.
            let paused = try await waitUntil { dispatcher.routeHealth.isPaused }
            #expect(paused)
            // The poll goes on (10 ms) and claims nothing while the probe is not due.
            try await Task.sleep(for: .milliseconds(500))
            firstFailures = route.count
            probes.append(route.count)
            // Not yet due: 4 s of the 5 s back-off.
            time.advance(seconds: 4)
            try await Task.sleep(for: .milliseconds(300))
            probes.append(route.count)
            // Due: one probe, which fails; the next is 10 s later.
            time.advance(seconds: 1)
            _ = try await waitUntil { route.count == firstFailures + 1 && dispatcher.routeHealth.probeInFlight == nil }
            try await Task.sleep(for: .milliseconds(300))
            probes.append(route.count)
            time.advance(seconds: 9)
            try await Task.sleep(for: .milliseconds(300))
            probes.append(route.count)
            time.advance(seconds: 1)
            _ = try await waitUntil { route.count == firstFailures + 2 && dispatcher.routeHealth.probeInFlight == nil }
            try await Task.sleep(for: .milliseconds(300))
            probes.append(route.count)
            #expect(dispatcher.routeHealth.failedProbes == 2)
            // The server is back: the next probe (20 s later) succeeds and every held message goes.
            route.up.withLockedValue { $0 = true }
            time.advance(seconds: 20)
            let done = try await waitUntil { try await store.counts()[.delivered] == ids.count }
            #expect(done)
        }
        #expect(firstFailures >= 1 && firstFailures <= 16, "the first failures: \(firstFailures)")
        #expect(probes == [firstFailures, firstFailures, firstFailures + 1, firstFailures + 1, firstFailures + 2])
        #expect(try await store.counts()[.delivered] == ids.count)
        #expect(route.count == firstFailures + 2 + ids.count)
        #expect(!dispatcher.routeHealth.isPaused && dispatcher.routeHealth.alertsRaised == 1)
        // Held waits are not attempts: only messages that were really sent count more than one.
        var attempts = 0
        for id in ids { attempts += try #require(try await store.get(id: id)).attemptCount }
        #expect(attempts == route.count)
    }

    @Test("a configuration change probes a paused route at once, whatever its back-off")
    func configurationChangeProbesNow() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let ids = try await enqueue(store, count: 20, at: time)
        let route = Route()
        route.fault.withLockedValue { $0 = .authenticationFailed }
        let settings = DispatcherSettings(concurrency: 4, pollInterval: .milliseconds(10))
        let dispatcher = Dispatcher(store: store, sender: route.sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await whileRunning(dispatcher) {
            let paused = try await waitUntil { dispatcher.routeHealth.isPaused }
            #expect(paused)
            #expect(dispatcher.routes.first?.state == "paused")
            #expect(dispatcher.routes.first?.code == "authentication_failed")
            // The operator fixes the password; the clock does not move (the probe was 5 s away).
            route.up.withLockedValue { $0 = true }
            dispatcher.routeConfigurationChanged()
            let done = try await waitUntil { try await store.counts()[.delivered] == ids.count }
            #expect(done)
        }
        #expect(try await store.counts()[.delivered] == ids.count)
        #expect(dispatcher.routes.first?.state == "ok")
        #expect(try await store.counts()[.failed] ?? 0 == 0)
    }

    @Test("held messages past the maximum age fail with the alert's reason, without attempts of their own")
    func heldMessagesExpire() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let ids = try await enqueue(store, count: 40, at: time, relayed: true)
        let route = Route()
        route.fault.withLockedValue { $0 = .authenticationFailed }
        let settings = DispatcherSettings(
            concurrency: 2, pollInterval: .milliseconds(10), retry: RetryPolicy(initialDelay: .seconds(1), jitter: 0, maxAge: .seconds(3600)),
            bounce: BounceSettings(hostname: "mx.example.test"))
        let dispatcher = Dispatcher(store: store, sender: route.sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await whileRunning(dispatcher) {
            let paused = try await waitUntil { dispatcher.routeHealth.isPaused }
            #expect(paused)
            try await Task.sleep(for: .milliseconds(200))
            // An hour later (the probe's back-off is shorter: it runs too, and its message fails).
            time.advance(seconds: 3601)
            let done = try await waitUntil { try await store.counts()[.failed] == ids.count }
            #expect(done)
        }
        #expect(try await store.counts()[.failed] == ids.count)
        for id in ids {
            let m = try #require(try await store.get(id: id))
            #expect(m.lastError?.contains("connection refused") == true, "\(m.lastError ?? "")")
            #expect(m.lastError?.contains("maximum age is 3600 s") == true, "\(m.lastError ?? "")")
        }
        // Each sender got a delivery status notification that gives the alert's reason.
        let notifications = try await store.claim(limit: 100, owner: "check", now: time.seconds + 1, lease: 60).filter {
            $0.message.id.hasPrefix("dsn-")
        }
        #expect(notifications.count == ids.count)
        for dsn in notifications {
            let text = String(decoding: dsn.content, as: UTF8.self)
            #expect(text.contains("4.4.7"))
            #expect(text.contains("connection refused"), "\(text)")
        }
        // Sent at most by the first failures and one probe; the rest failed without an attempt.
        #expect(route.count <= 2 + 2 * settings.concurrency + 1)
    }
}
