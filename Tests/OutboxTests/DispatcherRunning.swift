import Logging
import Outbox
import ServiceLifecycle

/// Runs the dispatcher while `body` runs, then shuts it down gracefully.
func whileRunning(_ dispatcher: Dispatcher, _ body: () async throws -> Void) async throws {
    let group = ServiceGroup(configuration: .init(services: [.init(service: dispatcher)], logger: Logger(label: "test")))
    let running = Task { try await group.run() }
    do {
        try await body()
    } catch {
        await group.triggerGracefulShutdown()
        _ = await running.result
        throw error
    }
    await group.triggerGracefulShutdown()
    try await running.value
}

/// Polls `condition` every 20 ms for up to 20 s; false when it never held.
func waitUntil(_ condition: () async throws -> Bool) async throws -> Bool {
    for _ in 0..<1000 {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return false
}
