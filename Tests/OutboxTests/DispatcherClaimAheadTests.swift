import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import ServiceLifecycle
import Testing

/// A sender that holds every send until its gate opens; on each send it notes how much of the
/// message's lease was left (from the store, by the message's one recipient).
private final class GatedSender: MessageSender, Sendable {
    let store: any OutboxStore
    let time: ManualQueueClock
    let open = NIOLockedValueBox(false)
    /// Recipient and lease seconds left, per send, in order.
    let sends = NIOLockedValueBox<[(String, Double)]>([])

    init(store: any OutboxStore, time: ManualQueueClock) {
        self.store = store
        self.time = time
    }

    func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        let recipient = envelope!.recipients[0]
        let sending = (try? await store.list(status: .sending, limit: 100, after: nil)) ?? []
        let leaseLeft = sending.first { $0.recipients.first?.address == recipient }?.leaseUntil.map { $0 - time.seconds } ?? -1
        sends.withLockedValue { $0.append((recipient, leaseLeft)) }
        while !open.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
        return report([RecipientOutcome(address: recipient, status: .accepted)])
    }
}

private func enqueue(_ store: any OutboxStore, count: Int, now: Double) async throws -> [String] {
    let content = Array("From: s@example.test\r\nTo: x@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)
    var ids: [String] = []
    for i in 0..<count {
        ids.append(try await store.enqueue(NewMessage(from: "s@example.test", recipients: ["r\(i)@example.test"], content: content), now: now).id)
    }
    return ids
}

/// The dispatcher claims ahead of its deliveries: up to `concurrency` claimed messages wait for a
/// slot, so a freed slot starts the next one without waiting for a claim's commit.
@Suite("Dispatcher: claims ahead", .serialized, .timeLimit(.minutes(1)))
struct DispatcherClaimAheadTests {
    @Test("at most concurrency messages send and as many more wait claimed; on shutdown the waiting ones go back at once, untouched")
    func claimAheadAndShutdown() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        _ = try await enqueue(store, count: 10, now: time.seconds)
        let sender = GatedSender(store: store, time: time)
        let dispatcher = Dispatcher(
            store: store, sender: sender,
            settings: DispatcherSettings(concurrency: 2, pollInterval: .milliseconds(20)),
            instanceID: "t", clock: time, random: { 0.5 })
        let group = ServiceGroup(configuration: .init(services: [.init(service: dispatcher)], logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            await eventually { (try? await store.counts()[.sending]) == 4 && sender.sends.withLockedValue { $0.count } == 2 }
            // Held there: no more claims, no more sends.
            try await Task.sleep(for: .milliseconds(150))
            #expect(try await store.counts()[.sending] == 4)
            #expect(sender.sends.withLockedValue { $0.count } == 2)
            await group.triggerGracefulShutdown()
            // The two waiting ones are back in the queue while the two sending still run.
            await eventually { (try? await store.counts()[.queued]) == 8 }
            #expect(try await store.counts()[.sending] == 2)
            sender.open.withLockedValue { $0 = true }
            try await tasks.waitForAll()
        }
        let counts = try await store.counts()
        #expect(counts[.delivered] == 2 && counts[.queued] == 8 && counts[.sending] == nil)
        let queued = try await store.list(status: .queued, limit: 100, after: nil)
        #expect(queued.allSatisfy { $0.attemptCount == 0 && $0.unknownCount == 0 && !$0.possibleDuplicate && $0.leaseOwner == nil })
    }

    @Test("a claimed message that waited past half its lease goes back and is claimed anew: every send starts with at least half a lease")
    func staleClaimIsClaimedAnew() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        _ = try await enqueue(store, count: 3, now: time.seconds)
        let sender = GatedSender(store: store, time: time)
        let dispatcher = Dispatcher(
            store: store, sender: sender,
            settings: DispatcherSettings(concurrency: 1, lease: .seconds(100), pollInterval: .milliseconds(20)),
            instanceID: "t", clock: time, random: { 0.5 })
        try await runDispatcher(dispatcher) {
            if sender.sends.withLockedValue({ $0.count }) == 1, !sender.open.withLockedValue({ $0 }),
                (try await store.counts()[.sending]) == 2
            {
                // One sending, one waiting; the first takes 60 s of the 100 s lease.
                time.advance(seconds: 60)
                sender.open.withLockedValue { $0 = true }
            }
            return try await store.counts()[.delivered] == 3
        }
        let sends = sender.sends.withLockedValue { $0 }
        #expect(Set(sends.map(\.0)) == ["r0@example.test", "r1@example.test", "r2@example.test"])
        #expect(sends.count == 3)
        #expect(sends.allSatisfy { $0.1 >= 50 }, "a send started with less than half its lease left: \(sends)")
    }

    @Test(
        "a message taken over past its unknown-outcome allowance is recorded at once, not left waiting (a shutdown release would clear the take-over)"
    )
    func takenOverPastTheAllowanceIsRecordedAtOnce() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        // r0: claimed by an instance that crashed, for 10 s.
        let ids = try await enqueue(store, count: 1, now: time.seconds)
        #expect(try await store.claim(limit: 1, owner: "crashed", now: time.seconds, lease: 10).count == 1)
        let content = Array("Subject: x\r\n\r\nx\r\n".utf8)
        for r in ["r1@example.test", "r2@example.test"] {
            _ = try await store.enqueue(NewMessage(from: "s@example.test", recipients: [r], content: content), now: time.seconds)
        }
        let sender = GatedSender(store: store, time: time)
        // No unknown outcome is retried.
        let settings = DispatcherSettings(concurrency: 2, pollInterval: .milliseconds(20), retry: RetryPolicy(unknownOutcomeRetries: 0))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        let group = ServiceGroup(configuration: .init(services: [.init(service: dispatcher)], logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // r1 and r2 take both slots; then r0's lease runs out and a claim ahead takes it over.
            await eventually { sender.sends.withLockedValue { $0.count } == 2 }
            time.advance(seconds: 20)
            await eventually { (try? await store.get(id: ids[0]))?.status == .unknown }
            await group.triggerGracefulShutdown()
            sender.open.withLockedValue { $0 = true }
            try await tasks.waitForAll()
        }
        let r0 = try #require(try await store.get(id: ids[0]))
        #expect(r0.status == .unknown && r0.leaseOwner == nil)
        #expect(!sender.sends.withLockedValue { $0.map(\.0) }.contains("r0@example.test"))
        // After the shutdown nothing brings r0 back.
        #expect(try await store.claim(limit: 10, owner: "later", now: time.seconds + 1000, lease: 60).allSatisfy { $0.message.id != ids[0] })
    }
}

/// Polls `condition` every 10 ms for at most 10 s.
private func eventually(_ condition: @Sendable () async -> Bool) async {
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try? await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("condition not met within 10 s")
}
