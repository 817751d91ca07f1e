import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxTestSupport
import Testing

@Suite("Store failures and health")
struct StoreHealthTests {
    @Test("SQLSTATEs map to full disk, unavailable, schema missing or other")
    func sqlStates() {
        #expect(StoreFailure.classify(sqlState: "53100") == .insufficientStorage)
        for state in ["53200", "53300", "57P01", "57P02", "57P03", "08006", "08001", "08P01"] {
            #expect(StoreFailure.classify(sqlState: state) == .unavailable, "\(state)")
        }
        for state in ["42P01", "42703"] { #expect(StoreFailure.classify(sqlState: state) == .schemaMissing, "\(state)") }
        for state in ["23505", "22P02", "40001", ""] { #expect(StoreFailure.classify(sqlState: state) == .other, "\(state)") }
    }

    @Test("store errors keep their failure through a round trip, and a cancelled call is unavailable")
    func storeErrors() {
        for failure in [StoreFailure.insufficientStorage, .unavailable, .schemaMissing, .other] {
            #expect(StoreFailure.classify(StoreError(failure: failure, "x")) == failure)
        }
        #expect(StoreError(.unavailable, "x").code.rawValue == "store_unavailable")
        #expect(StoreError(.schemaMissing, "x").code.rawValue == "store_schema_missing")
        #expect(StoreFailure.classify(CancellationError()) == .unavailable)
        #expect(StoreFailure.describe(StoreError(.unavailable, "PostgreSQL closed the connection")) == "PostgreSQL closed the connection")
    }

    @Test("an outage is logged when it starts, every 30 s while it lasts and when it ends; not per call")
    func outageLines() {
        let recorder = LogRecorder()
        let clock = NIOLockedValueBox(1000.0)
        let health = StoreHealth(kind: "postgres", logger: recorder.logger(), now: { clock.withLockedValue { $0 } })
        #expect(health.condition == .healthy)
        #expect(health.problem == nil)
        for _ in 0..<50 {
            health.failed(StoreError(.unavailable, "PostgreSQL closed the connection"))
            clock.withLockedValue { $0 += 0.5 }
        }
        // 25 s: one line.
        #expect(recorder.messages.count == 1, "\(recorder.messages)")
        #expect(recorder.messages.first?.contains("is unavailable: PostgreSQL closed the connection") == true)
        #expect(health.condition == .unavailable)
        #expect(health.problem?.contains("unavailable for 25 s") == true, "\(health.problem ?? "nil")")
        for _ in 0..<20 {
            health.failed(StoreError(.unavailable, "no answer"))
            clock.withLockedValue { $0 += 0.5 }
        }
        // 35 s: a reminder at 30 s.
        #expect(recorder.messages.count == 2, "\(recorder.messages)")
        #expect(recorder.messages.last?.contains("still unavailable after 30 s") == true)
        // Other failures are the caller's to log.
        #expect(health.failed(StoreError(.failed, "duplicate key")) == .other)
        #expect(recorder.messages.count == 2)
        health.succeeded()
        health.succeeded()
        #expect(recorder.messages.count == 3, "\(recorder.messages)")
        #expect(recorder.messages.last?.contains("answers again after 35 s unavailable; 70 calls failed meanwhile") == true)
        #expect(health.condition == .healthy)
    }

    @Test("a missing schema is logged once, however many calls fail")
    func schemaLine() {
        let recorder = LogRecorder()
        let health = StoreHealth(kind: "postgres", logger: recorder.logger())
        for _ in 0..<100 { health.failed(StoreError(.schemaMissing, "PostgreSQL answered SQLSTATE 42P01: relation does not exist")) }
        #expect(recorder.recorded.count == 1)
        #expect(recorder.recorded.first?.level == .error)
        #expect(recorder.messages.first?.contains("schema is missing or not Outbox's") == true)
        #expect(health.condition == .schemaMissing)
        #expect(health.problem?.contains("42P01") == true)
    }

    @Test("a call that does not answer within the wait is cancelled and refused as unavailable")
    func boundedCall() async throws {
        let cancelled = NIOLockedValueBox(false)
        let health = StoreHealth(kind: "postgres", wait: .milliseconds(200), logger: Logger(label: "test"))
        let outcome: Result<Int, any Error>
        do {
            outcome = .success(
                try await health.call {
                    await withTaskCancellationHandler {
                        // Never answers on its own (an hour), unless cancelled.
                        try? await Task.sleep(for: .seconds(3600))
                    } onCancel: {
                        cancelled.withLockedValue { $0 = true }
                    }
                    return 1
                })
        } catch {
            outcome = .failure(error)
        }
        guard case .failure(let error) = outcome else {
            Issue.record("the call answered \(outcome)")
            return
        }
        #expect((error as? StoreError)?.code == .unavailable)
        #expect("\(error)".contains("did not answer within 0.2 s"), "\(error)")
        #expect(cancelled.withLockedValue { $0 }, "the waiting call is cancelled")
        #expect(health.condition == .unavailable)
        // A call that answers ends the outage.
        #expect(try await health.call { 7 } == 7)
        #expect(health.condition == .healthy)
    }
}
