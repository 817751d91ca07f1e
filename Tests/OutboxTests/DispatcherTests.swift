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

/// A sender that answers from a script and records each envelope it was given.
final class ScriptedSender: MessageSender, Sendable {
    let calls = NIOLockedValueBox<[[String]]>([])
    let answer: @Sendable (Int, Envelope) -> Result<DeliveryReport, DeliveryError>

    init(_ answer: @escaping @Sendable (Int, Envelope) -> Result<DeliveryReport, DeliveryError>) { self.answer = answer }

    func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        let envelope = envelope!
        let n = calls.withLockedValue {
            $0.append(envelope.recipients); return $0.count
        }
        switch answer(n, envelope) {
        case .success(let r): return r
        case .failure(let e): throw e
        }
    }
}

func report(_ outcomes: [RecipientOutcome]) -> DeliveryReport {
    DeliveryReport(
        transport: "test", destination: "test:25", messageID: nil, recipients: outcomes, finalReply: "250 ok",
        startedAt: Date(), durationSeconds: 0)
}

/// Runs the dispatcher until `done` holds (or 30 s), then shuts it down gracefully.
func runDispatcher(_ dispatcher: Dispatcher, until done: @escaping @Sendable () async throws -> Bool) async throws {
    let group = ServiceGroup(configuration: .init(services: [.init(service: dispatcher)], logger: Logger(label: "test")))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if try await done() { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
    }
}

@Suite("Dispatcher", .serialized)
struct DispatcherTests {
    @Test("a partly accepted message is retried only for the recipients that failed transiently; rejected ones are not retried")
    func perRecipientRetry() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let id = try await store.enqueue(
            NewMessage(
                from: "s@example.test", recipients: ["a@example.test", "b@example.test", "c@example.test"],
                content: Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)),
            now: time.seconds
        ).id
        let sender = ScriptedSender { n, envelope in
            if n == 1 {
                return .success(
                    report([
                        RecipientOutcome(address: "a@example.test", status: .accepted, code: 250),
                        RecipientOutcome(address: "b@example.test", status: .deferred, code: 451, text: "greylisted"),
                        RecipientOutcome(address: "c@example.test", status: .rejected, code: 550, text: "no such user"),
                    ]))
            }
            return .success(report(envelope.recipients.map { RecipientOutcome(address: $0, status: .accepted, code: 250) }))
        }
        let settings = DispatcherSettings(
            concurrency: 2, pollInterval: .milliseconds(20),
            retry: RetryPolicy(initialDelay: .seconds(10), jitter: 0, maxAge: .seconds(1000)))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await runDispatcher(dispatcher) {
            let m = try await store.get(id: id)
            if m?.status == .deferred { time.advance(seconds: 11) }
            return m?.status == .delivered
        }
        let m = try #require(try await store.get(id: id))
        #expect(sender.calls.withLockedValue { $0 } == [["a@example.test", "b@example.test", "c@example.test"], ["b@example.test"]])
        #expect(m.status == .delivered)
        #expect(m.recipients.map(\.status) == [.accepted, .accepted, .rejected])
        #expect(m.attempts.map(\.outcome) == ["partial", "partial"])
        #expect(m.attemptCount == 2 && !m.possibleDuplicate)
    }

    @Test("permanent failures fail at once; transient ones back off and fail after the maximum age")
    func failures() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let content = Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)
        let permanent = try await store.enqueue(
            NewMessage(from: "p@example.test", recipients: ["a@example.test"], content: content), now: time.seconds
        ).id
        let transient = try await store.enqueue(
            NewMessage(from: "t@example.test", recipients: ["a@example.test"], content: content), now: time.seconds
        ).id
        let sender = ScriptedSender { _, envelope in
            envelope.from == "p@example.test"
                ? .failure(DeliveryError(kind: .permanent, message: "554 5.7.1 relay denied"))
                : .failure(DeliveryError(kind: .transient, message: "421 busy"))
        }
        let settings = DispatcherSettings(
            pollInterval: .milliseconds(20), retry: RetryPolicy(initialDelay: .seconds(10), maxDelay: .seconds(40), jitter: 0, maxAge: .seconds(100)))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await runDispatcher(dispatcher) {
            let t = try await store.get(id: transient)
            if t?.status == .deferred, let next = t?.nextAttemptAt, next > time.seconds { time.advance(seconds: next - time.seconds) }
            return t?.status == .failed
        }
        let p = try #require(try await store.get(id: permanent))
        #expect(p.status == .failed && p.attemptCount == 1)
        #expect(p.lastError?.contains("554") == true)
        let t = try #require(try await store.get(id: transient))
        #expect(t.status == .failed)
        // Delays 10, 20, 40, 40 (capped): attempts at 0, 10, 30, 70; the next (110) would pass the age of 100.
        #expect(t.attempts.map(\.startedAt).map { $0 - 1_000_000 } == [0, 10, 30, 70])
        #expect(t.lastError?.contains("maximum age") == true)
    }

    @Test("an unknown outcome is retried once, marked as a possible duplicate, then marked unknown")
    func unknownOutcome() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let content = Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)
        let id = try await store.enqueue(NewMessage(from: "s@example.test", recipients: ["a@example.test"], content: content), now: time.seconds).id
        let sender = ScriptedSender { _, _ in .failure(DeliveryError(kind: .outcomeUnknown, message: "connection lost after the final dot")) }
        let settings = DispatcherSettings(
            pollInterval: .milliseconds(20), retry: RetryPolicy(initialDelay: .seconds(5), jitter: 0, unknownOutcomeRetries: 1))
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await runDispatcher(dispatcher) {
            let m = try await store.get(id: id)
            if m?.status == .deferred { time.advance(seconds: 6) }
            return m?.status == .unknown
        }
        let m = try #require(try await store.get(id: id))
        #expect(sender.calls.withLockedValue { $0.count } == 2)
        #expect(m.status == .unknown && m.possibleDuplicate && m.unknownCount == 2)
        #expect(m.attempts.map(\.outcome) == ["unknown", "unknown"])
    }

    @Test("a server's requested delay (429 / ServerBusy) is a floor for the next attempt")
    func serverDelayFloor() {
        let message = StoredMessage(
            id: "m", sequence: 1, status: .sending, from: "s@example.test", recipients: [RecipientState(address: "a@example.test")],
            messageID: nil, idempotencyKey: nil, requestHash: nil, size: 10, createdAt: 0, updatedAt: 0, ageBase: 0,
            nextAttemptAt: 0, attemptCount: 0, unknownCount: 0, possibleDuplicate: false, attempts: [], lastError: nil,
            leaseOwner: "t", leaseUntil: 100)
        let policy = RetryPolicy(initialDelay: .seconds(10), jitter: 0, maxAge: .seconds(10_000))
        let busy = DeliveryError(kind: .transient, message: "429 too many requests", retryAfter: .seconds(120))
        let outcome = Dispatcher.evaluate(
            message: message, sentTo: ["a@example.test"], result: .failure(busy), policy: policy,
            now: QueueInstant(secondsSince1970: 1000), startedAt: QueueInstant(secondsSince1970: 1000), duration: .zero, random: 0.5, instance: "t")
        #expect(outcome.status == .deferred && outcome.nextAttemptAt == 1120)
        let plain = Dispatcher.evaluate(
            message: message, sentTo: ["a@example.test"], result: .failure(DeliveryError(kind: .transient, message: "421")),
            policy: policy, now: QueueInstant(secondsSince1970: 1000), startedAt: QueueInstant(secondsSince1970: 1000), duration: .zero, random: 0.5,
            instance: "t")
        #expect(plain.nextAttemptAt == 1010)
        #expect(plain.recipients.first?.status == .deferred)
    }

    @Test("the rate limit per sending mailbox keeps messages in the queue")
    func rateLimit() async throws {
        let (store, dir) = try await makeTempStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let time = ManualQueueClock(secondsSince1970: 1_000_000)
        let content = Array("From: s@example.test\r\nTo: a@example.test\r\nSubject: x\r\n\r\nx\r\n".utf8)
        for _ in 0..<5 {
            _ = try await store.enqueue(NewMessage(from: "s@example.test", recipients: ["a@example.test"], content: content), now: time.seconds)
        }
        let sender = ScriptedSender { _, e in .success(report(e.recipients.map { RecipientOutcome(address: $0, status: .accepted) })) }
        let settings = DispatcherSettings(concurrency: 4, pollInterval: .milliseconds(20), ratePerMinute: 3)
        let dispatcher = Dispatcher(store: store, sender: sender, settings: settings, instanceID: "t", clock: time, random: { 0.5 })
        try await runDispatcher(dispatcher) {
            let counts = try await store.counts()
            return counts[.delivered] == 3 && counts[.queued] == 2
        }
        let counts = try await store.counts()
        #expect(counts[.delivered] == 3)
        #expect(counts[.queued] == 2)
        #expect(sender.calls.withLockedValue { $0.count } == 3)
    }
}
