import Logging
import NIOConcurrencyHelpers

/// A connection the pool can hold; implemented by the SMTP connection.
package protocol PoolableConnection: AnyObject, Sendable {
    /// Time left until the credential this connection authenticated with (an OAuth token)
    /// expires, nil when there is none. Read once, right after the factory returns; the pool
    /// turns it into an instant of its own clock, so any clock (a test clock too) works.
    var credentialLifetime: Duration? { get }
    /// NOOP; throws when the reply is not 250 or the connection is dead.
    func noop() async throws
    /// RSET; throws when the reply is not 250 or the connection is dead.
    func reset() async throws
    /// QUIT, then close. Never throws.
    func close() async
}

/// Opens connections for the pool.
package protocol PoolConnectionFactory: Sendable {
    associatedtype Connection: PoolableConnection
    /// Opens, greets, EHLOs, STARTTLSes and authenticates with the settings of `generation`
    /// (see ``ConnectionPool/updateGeneration(_:)``). Throw an error conforming to
    /// ``ConnectionPoolRefusalError`` when the server refuses with 421 / too many connections.
    func makeConnection(generation: Int) async throws -> Connection
}

/// Thrown by a `withConnection` body (or used to pick a release disposition): the connection is
/// unusable and must be closed, not reused.
package protocol ConnectionPoolDiscardingError: Error {}

/// Thrown by a `withConnection` body or by the factory: the server said 421 or "too many
/// connections" (421 4.7.0, 432 4.3.2...). The connection is closed and the pool shrinks.
package protocol ConnectionPoolRefusalError: ConnectionPoolDiscardingError {}

/// Errors of the pool itself. The description says what happened and what to do.
package struct ConnectionPoolError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Stable codes (snake_case); extensible.
    package struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        package var rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        package var description: String { rawValue }

        /// The pool is shutting down or shut down; no connection is handed out.
        package static let shutdown = Code(rawValue: "pool_shutdown")
        /// A new connection's credential expires within token-expiry-margin-time.
        package static let credentialExpiresTooSoon = Code(rawValue: "credential_expires_too_soon")
    }

    package let code: Code

    package init(code: Code) { self.code = code }

    package static let shutdown = ConnectionPoolError(code: .shutdown)
    package static let credentialExpiresTooSoon = ConnectionPoolError(code: .credentialExpiresTooSoon)

    package var description: String {
        switch code {
        case .shutdown:
            "SMTP connection pool is shut down: no connection is handed out any more"
        case .credentialExpiresTooSoon:
            "new SMTP connection's access token expires within token-expiry-margin-time: "
                + "obtain tokens that live longer than the margin, or lower token-expiry-margin-time"
        default:
            "SMTP connection pool: \(code)"
        }
    }
}

/// A connection handed out by ``ConnectionPool/lease()``; give it back with
/// ``ConnectionPool/release(_:_:)`` exactly once.
package struct ConnectionPoolLease<Connection: PoolableConnection>: Sendable {
    package let connection: Connection
    package let connectionID: PoolConnectionID
}

extension PoolReleaseDisposition {
    /// The disposition for a transaction that threw `error`: ``ConnectionPoolRefusalError`` →
    /// `.serverRefused`; ``ConnectionPoolDiscardingError`` or `CancellationError` → `.discard`
    /// (the conversation's state is unknown); anything else → `.needsReset` (RSET before reuse).
    package init(for error: any Error) {
        if error is any ConnectionPoolRefusalError {
            self = .serverRefused
        } else if error is any ConnectionPoolDiscardingError || error is CancellationError {
            self = .discard
        } else {
            self = .needsReset
        }
    }
}

/// The SMTP connection pool: runs `PoolStateMachine`'s actions. State changes happen under a
/// lock; I/O (open, RSET/NOOP, QUIT) and timers run as child tasks of ``run()``, which must be
/// running for the pool to make progress.
package final class ConnectionPool<Factory: PoolConnectionFactory, C: Clock>: Sendable where C.Duration == Duration {
    package typealias Connection = Factory.Connection
    package typealias Lease = ConnectionPoolLease<Connection>
    typealias Machine = PoolStateMachine<Int, C.Instant>

    enum Work: Sendable {
        case make(PoolConnectionID, generation: Int)
        case check(PoolConnectionID, Connection, reset: Bool, noop: Bool)
        case close(PoolConnectionID, Connection, PoolCloseReason)
        case timer(PoolTimer, token: Int, deadline: C.Instant)
    }

    struct TimerEntry {
        var token: Int
        var cancel: CheckedContinuation<Void, Never>?
    }

    /// What a release on the hot path did.
    private enum HandBack {
        case no, kept
        case resume(Waiter)
    }

    /// Who learns a lease request's answer: a task waiting in `lease()`, or the hand-back of
    /// `lease(_:handBack:)`, called where the connection is given.
    enum Waiter {
        case task(UnsafeContinuation<Lease, any Error>)
        case handBack(@Sendable (Result<Lease, any Error>) -> Void)

        func resume(with result: Result<Lease, any Error>) {
            switch self {
            case .task(let continuation): continuation.resume(with: result)
            case .handBack(let handBack): handBack(result)
            }
        }
    }

    /// A lease request: being registered by `lease()` (an answer that comes meanwhile is kept), or
    /// waiting.
    enum Request {
        case registering
        case answered(Result<Lease, any Error>)
        case waiting(Waiter)
    }

    /// Continuations to resume once the lock is released.
    struct Effects {
        var answers: [(Waiter, Result<Lease, any Error>)] = []
        var runner: (CheckedContinuation<[Work]?, Never>, [Work]?)?
        var timerCancels: [CheckedContinuation<Void, Never>] = []
        var shutdownWaiters: [CheckedContinuation<Void, Never>] = []

        func resume() {
            for (waiter, result) in answers { waiter.resume(with: result) }
            if let (continuation, work) = runner { continuation.resume(returning: work) }
            for continuation in timerCancels { continuation.resume() }
            for continuation in shutdownWaiters { continuation.resume() }
        }
    }

    struct State {
        var machine: Machine
        var nextRequestID = 0
        var requests: [Int: Request] = [:]
        var connections: [PoolConnectionID: Connection] = [:]
        /// Errors of failed connection attempts, only during the event that reports them.
        var connectErrors: [PoolConnectionID: any Error] = [:]
        var timers: [PoolTimer: TimerEntry] = [:]
        var nextTimerToken = 0
        var pendingWork: [Work] = []
        var workWaiter: CheckedContinuation<[Work]?, Never>?
        var workFinished = false
        var runStarted = false
        var shutdownWaiters: [CheckedContinuation<Void, Never>] = []
        var shutDown = false

        /// Answers a lease request: returns who to tell (after the lock), or nil when `lease()` is
        /// still registering it and will pick the answer up itself.
        mutating func answer(_ request: Int, with result: Result<Lease, any Error>) -> Waiter? {
            switch requests[request] {
            case .waiting(let waiter):
                requests[request] = nil
                return waiter
            case .registering:
                requests[request] = .answered(result)
                return nil
            case .answered, nil:
                preconditionFailure("answer to request \(request), unknown or answered already")
            }
        }

        mutating func apply(_ actions: [Machine.Action]) -> Effects {
            var effects = Effects()
            for action in actions {
                switch action {
                case .makeConnection(let id, let generation):
                    pendingWork.append(.make(id, generation: generation))
                case .lease(let id, let request):
                    guard let connection = connections[id] else {
                        preconditionFailure("lease of unknown \(id) to request \(request)")
                    }
                    let lease = Lease(connection: connection, connectionID: id)
                    if let waiter = answer(request, with: .success(lease)) {
                        effects.answers.append((waiter, .success(lease)))
                    }
                case .check(let id, _, let reset, let noop):
                    pendingWork.append(.check(id, connections[id]!, reset: reset, noop: noop))
                case .close(let id, let reason):
                    pendingWork.append(.close(id, connections[id]!, reason))
                case .failRequest(let request, let failure):
                    let error: any Error
                    switch failure {
                    case .cancelled: error = CancellationError()
                    case .shutdown: error = ConnectionPoolError.shutdown
                    case .credentialExpiresTooSoon: error = ConnectionPoolError.credentialExpiresTooSoon
                    case .connectionFailed(let id): error = connectErrors[id]!
                    }
                    if let waiter = answer(request, with: .failure(error)) {
                        effects.answers.append((waiter, .failure(error)))
                    }
                case .scheduleTimer(let timer, let deadline):
                    if let cancel = timers[timer]?.cancel { effects.timerCancels.append(cancel) }
                    nextTimerToken += 1
                    timers[timer] = TimerEntry(token: nextTimerToken, cancel: nil)
                    pendingWork.append(.timer(timer, token: nextTimerToken, deadline: deadline))
                case .cancelTimer(let timer):
                    if let cancel = timers.removeValue(forKey: timer)?.cancel { effects.timerCancels.append(cancel) }
                case .shutdownComplete:
                    shutDown = true
                    workFinished = true
                    effects.shutdownWaiters += shutdownWaiters
                    shutdownWaiters = []
                    effects.timerCancels += timers.values.compactMap(\.cancel)
                    timers = [:]
                }
            }
            connectErrors = [:]
            if let waiter = workWaiter, !pendingWork.isEmpty || workFinished {
                workWaiter = nil
                effects.runner = (waiter, pendingWork.isEmpty ? nil : pendingWork)
                pendingWork = []
            }
            return effects
        }
    }

    private let state: NIOLockedValueBox<State>
    private let factory: Factory
    private let clock: C
    private let logger: Logger

    package init(
        configuration: PoolConfiguration,
        factory: Factory,
        clock: C,
        generation: Int = 0,
        logger: Logger = Logger(label: "outbox.smtp.pool")
    ) {
        self.state = NIOLockedValueBox(State(machine: Machine(configuration: configuration, generation: generation)))
        self.factory = factory
        self.clock = clock
        self.logger = logger
    }

    package var configuration: PoolConfiguration { state.withLockedValue { $0.machine.configuration } }
    package var generation: Int { state.withLockedValue { $0.machine.generation } }
    package var statistics: PoolStatistics { state.withLockedValue { $0.machine.statistics } }
    /// Lease requests parked with their continuation or hand-back (past registering), for tests.
    var parkedRequests: Int {
        state.withLockedValue { $0.requests.values.count { if case .waiting = $0 { true } else { false } } }
    }

    // MARK: - Leasing

    /// Runs `body` with a pooled connection. Returning means the transaction left the connection
    /// clean; throwing picks ``PoolReleaseDisposition/init(for:)``: a
    /// ``ConnectionPoolRefusalError`` closes it and shrinks the pool, a
    /// ``ConnectionPoolDiscardingError`` closes it, another error has RSET sent before reuse.
    /// Waits (FIFO, cancellable) while the pool is full; throws ``ConnectionPoolError/shutdown``
    /// after shutdown began, or the factory's error when opening a connection for it failed.
    package func withConnection<R: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> R
    ) async throws -> R {
        let lease = try await self.lease()
        let result: R
        do {
            result = try await body(lease.connection)
        } catch {
            self.release(lease, PoolReleaseDisposition(for: error))
            throw error
        }
        self.release(lease, .clean)
        return result
    }

    /// Waits for a connection (FIFO); cancelling the task removes it from the queue and throws
    /// `CancellationError`.
    package func lease() async throws -> Lease {
        let (requestID, immediate) = try register()
        if let immediate { return try immediate.get() }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Lease, any Error>) in
                wait(requestID, .task(continuation))
            }
        } onCancel: {
            self.event { $0.machine.cancelled(requestID) }
        }
    }

    /// Like ``lease()``, for a caller that has its work ready before it has a connection: when it
    /// has to wait, the connection is given to `handBack` right where it becomes free (the thread
    /// that releases it: for SMTP the connection's event loop, at the previous message's final
    /// dot), so that work can start there, with no task woken first. `handBack` gets the lease and
    /// the caller's continuation, and must resume the continuation exactly once (at once, or when
    /// the work it started ends). When a connection is free at once, `immediate` makes the
    /// result without suspending. Waiting is FIFO and cancellable as in ``lease()``.
    package func lease<T>(
        immediate: (Lease) -> T,
        handBack: @escaping @Sendable (Lease, UnsafeContinuation<T, any Error>) -> Void
    ) async throws -> T {
        let (requestID, answer) = try register()
        if let answer { return immediate(try answer.get()) }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
                wait(
                    requestID,
                    .handBack({ result in
                        switch result {
                        case .success(let lease): handBack(lease, continuation)
                        case .failure(let error): continuation.resume(throwing: error)
                        }
                    }))
            }
        } onCancel: {
            self.event { $0.machine.cancelled(requestID) }
        }
    }

    /// Registers a lease request. When an idle connection can be handed out at once (no NOOP
    /// due, no waiter ahead), returns it, with no continuation and no cancellation handler.
    private func register() throws -> (Int, Result<Lease, any Error>?) {
        if Task.isCancelled { throw CancellationError() }
        let (requestID, immediate, effects) = state.withLockedValue { state -> (Int, Result<Lease, any Error>?, Effects) in
            state.nextRequestID += 1
            let requestID = state.nextRequestID
            state.requests[requestID] = .registering
            let effects = state.apply(state.machine.leaseRequested(requestID, now: clock.now))
            guard case .answered(let result) = state.requests[requestID] else { return (requestID, nil, effects) }
            state.requests[requestID] = nil
            return (requestID, result, effects)
        }
        effects.resume()
        return (requestID, immediate)
    }

    /// The request waits with `waiter`, unless it was answered meanwhile.
    private func wait(_ requestID: Int, _ waiter: Waiter) {
        let answer = state.withLockedValue { state -> Result<Lease, any Error>? in
            guard case .answered(let result) = state.requests[requestID] else {
                state.requests[requestID] = .waiting(waiter)
                return nil
            }
            state.requests[requestID] = nil
            return result
        }
        if let answer { waiter.resume(with: answer) }
    }

    /// Gives a leased connection back, exactly once per lease (a second release of the same lease
    /// is a programming error and traps).
    package func release(_ lease: Lease, _ disposition: PoolReleaseDisposition = .clean) {
        if disposition != .clean {
            logger.debug(
                "smtp pool release",
                metadata: [
                    "smtp.connection_id": "\(lease.connectionID.rawValue)", "smtp.pool.disposition": "\(disposition)",
                ])
        }
        if disposition == .clean {
            // The hot path under load: straight to the next waiter, no actions, no effects.
            let handed = state.withLockedValue { state -> HandBack in
                guard let request = state.machine.releasedCleanToWaiter(lease.connectionID, now: clock.now) else { return .no }
                return state.answer(request, with: .success(lease)).map { .resume($0) } ?? .kept
            }
            switch handed {
            case .no: break
            case .kept: return
            case .resume(let waiter):
                waiter.resume(with: .success(lease))
                return
            }
        }
        event { $0.machine.released(lease.connectionID, disposition, now: clock.now) }
    }

    /// The server refused with 421 / too many connections outside a `withConnection` body.
    package func reportServerRefusal() {
        event { $0.machine.serverRefused(now: clock.now) }
    }

    /// Options that take effect immediately changed (server, port, user, timeouts...): new
    /// connections are opened with `makeConnection(generation: generation)`; idle connections of
    /// another generation are closed now, leased ones when released.
    package func updateGeneration(_ generation: Int) {
        event { $0.machine.generationChanged(to: generation, now: clock.now) }
    }

    // MARK: - Lifecycle

    /// Runs the pool's I/O and timers until shutdown completes. Call once. Cancelling it begins a
    /// graceful shutdown and returns when that completes.
    package func run() async {
        let first = state.withLockedValue { state in
            defer { state.runStarted = true }
            return !state.runStarted
        }
        guard first else {
            logger.error("ConnectionPool.run() called more than once; ignoring this call")
            return
        }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                while let batch = await self.nextWork() {
                    for work in batch {
                        group.addTask { await self.perform(work) }
                    }
                }
            }
        } onCancel: {
            self.beginShutdown()
        }
    }

    /// Graceful shutdown: new callers and waiters fail with ``ConnectionPoolError/shutdown``,
    /// leased connections finish and are closed when released, idle ones are closed now.
    /// Returns when every connection is closed (``run()`` must be running).
    package func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let effects = state.withLockedValue { state -> Effects in
                if state.shutDown {
                    var effects = Effects()
                    effects.shutdownWaiters.append(continuation)
                    return effects
                }
                state.shutdownWaiters.append(continuation)
                return state.apply(state.machine.shutdown())
            }
            effects.resume()
        }
    }

    /// Begins the graceful shutdown without waiting for it.
    package func beginShutdown() {
        event { $0.machine.shutdown() }
    }

    // MARK: - Internals

    private func event(_ body: (inout State) -> [Machine.Action]) {
        let effects = state.withLockedValue { state in state.apply(body(&state)) }
        effects.resume()
    }

    private func nextWork() async -> [Work]? {
        await withCheckedContinuation { (continuation: CheckedContinuation<[Work]?, Never>) in
            let ready: [Work]?? = state.withLockedValue { state in
                if !state.pendingWork.isEmpty {
                    defer { state.pendingWork = [] }
                    return .some(state.pendingWork)
                }
                if state.workFinished { return .some(nil) }
                state.workWaiter = continuation
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    private func perform(_ work: Work) async {
        switch work {
        case .make(let id, let generation):
            do {
                let connection = try await factory.makeConnection(generation: generation)
                let lifetime = connection.credentialLifetime
                event { state in
                    state.connections[id] = connection
                    return state.machine.connectionEstablished(id, credentialLifetime: lifetime, now: clock.now)
                }
            } catch {
                let refused = error is any ConnectionPoolRefusalError
                logger.debug(
                    "smtp pool connect failed",
                    metadata: [
                        "smtp.connection_id": "\(id.rawValue)", "smtp.pool.refused": "\(refused)",
                    ])
                event { state in
                    state.connectErrors[id] = error
                    return state.machine.connectionFailed(id, refused: refused, now: clock.now)
                }
            }
        case .check(let id, let connection, let reset, let noop):
            do {
                if reset { try await connection.reset() }
                if noop { try await connection.noop() }
                event { $0.machine.checkSucceeded(id, now: clock.now) }
            } catch {
                logger.debug("smtp pool check failed", metadata: ["smtp.connection_id": "\(id.rawValue)"])
                event { $0.machine.checkFailed(id, now: clock.now) }
            }
        case .close(let id, let connection, let reason):
            logger.debug(
                "smtp pool close",
                metadata: [
                    "smtp.connection_id": "\(id.rawValue)", "smtp.pool.close_reason": "\(reason)",
                ])
            await connection.close()
            event { state in
                state.connections[id] = nil
                return state.machine.connectionClosed(id, now: clock.now)
            }
        case .timer(let timer, let token, let deadline):
            await runTimer(timer, token: token, deadline: deadline)
        }
    }

    /// Sleeps until `deadline` unless the state machine cancels the timer first (the entry's
    /// continuation is resumed) or run() is cancelled.
    private func runTimer(_ timer: PoolTimer, token: Int, deadline: C.Instant) async {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { [clock] in
                do {
                    try await clock.sleep(until: deadline, tolerance: nil)
                    return true
                } catch {
                    return false
                }
            }
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let registered = self.state.withLockedValue { state in
                        guard state.timers[timer]?.token == token else { return false }
                        state.timers[timer]!.cancel = continuation
                        return true
                    }
                    if !registered { continuation.resume() }
                }
                return false
            }
            let fired = await group.next()!
            group.cancelAll()
            let (cancel, effects) = state.withLockedValue { state -> (CheckedContinuation<Void, Never>?, Effects) in
                guard state.timers[timer]?.token == token else { return (nil, Effects()) }
                let entry = state.timers.removeValue(forKey: timer)!
                guard fired else { return (entry.cancel, Effects()) }
                return (entry.cancel, state.apply(state.machine.timerFired(timer, now: clock.now)))
            }
            cancel?.resume()
            effects.resume()
        }
    }
}
