/// Identifies one connection of the pool. Assigned by `PoolStateMachine` in increasing order.
package struct PoolConnectionID: Hashable, Sendable, Comparable, CustomStringConvertible {
    package let rawValue: Int
    package init(_ rawValue: Int) { self.rawValue = rawValue }
    package static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    package var description: String { "pool-connection-\(rawValue)" }
}

/// How a leased connection comes back to the pool.
package enum PoolReleaseDisposition: Sendable, Hashable {
    /// The transaction completed (or none was started): reuse as is.
    case clean
    /// The transaction failed half-way (e.g. a 5xx to RCPT or DATA): send RSET before reuse.
    case needsReset
    /// The connection is unusable (I/O error, unexpected reply, cancelled mid-command): close it.
    case discard
    /// The server said 421 or "too many connections" (e.g. 421 4.7.0, 432 4.3.2): close it and
    /// shrink the pool (see ``PoolConfiguration/refusalCoolDown``).
    case serverRefused
}

/// Why the pool closes a connection.
package enum PoolCloseReason: Sendable, Hashable {
    case idleTimeout
    case credentialExpiring
    case staleGeneration
    case checkFailed
    case discarded
    case serverRefused
    case shutdown
}

/// The timers of the pool. Scheduling a timer that is already scheduled replaces it.
enum PoolTimer: Hashable, Sendable {
    /// Closes an idle connection at min(idle since + max idle time, credential expiry - margin).
    case idle(PoolConnectionID)
    /// Ends the shrink after a refusal.
    case coolDown
}

/// Why a waiting request fails.
enum PoolRequestFailure: Hashable, Sendable {
    case cancelled
    case shutdown
    /// The connection attempt with this id failed; the runner knows the error.
    case connectionFailed(PoolConnectionID)
    /// A new connection's credential expires within the token expiry margin.
    case credentialExpiresTooSoon
}

/// The pure logic of the SMTP connection pool: events in, actions out, no I/O, no clock.
///
/// Every event takes `now` where time matters; the runner (``ConnectionPool``) performs the
/// returned actions and reports their outcome as further events. Invariants:
/// - connections (being opened + open + being closed) never exceed the effective size;
/// - waiters are served first-come first-served; a request is either waiting, being served by a
///   connection under check, leased, or gone;
/// - a connection is handed out only if its generation is current and its credential is not
///   within the expiry margin.
///
/// Decisions:
/// - Connections are opened on demand (one per waiter not already covered by a connection being
///   opened); no minimum is kept, so a retired or idle-closed connection is replaced when a caller
///   next needs one. The idle connection used most recently is handed out first.
/// - A connection being closed (QUIT in flight) still counts against the size.
/// - NOOP when idle for longer than `checkIdleTime` (zero: every reuse), never on a connection's first use,
///   except after another connection died under use or failed its check: every connection idle at that
///   moment is checked before its next use.
///   A dirty release (`.needsReset`) makes the next hand-out send RSET first (then NOOP if due).
///   A failed RSET/NOOP closes the connection and puts the request back at the head of the queue.
/// - `maxIdleTime == .zero`: a released connection that no waiter takes is closed at once.
/// - Credential: retired at expiry - margin (idle: timer; leased: on release; never handed out
///   from then on). A new connection whose credential is already within the margin fails the
///   oldest waiter with `credentialExpiresTooSoon` instead of reconnecting in a loop.
/// - A failed connection attempt fails the oldest waiter with its error (no retry loop), except a
///   refusal while other connections are alive: the waiters then wait for those.
/// - Refusal (421 / 432 / too many connections): effective size = min(current, max(1, alive
///   connections)) for `refusalCoolDown`; each `growAfterSuccessfulSends` clean releases add one;
///   the end of the cool-down (or growing back to `size`) restores the full size.
/// - Generation: idle connections of another generation close at once, connections being
///   opened, checked or leased close when that finishes; new ones use the current generation.
/// - Shutdown: waiters and new requests fail with `.shutdown`; requests under check fail too;
///   idle connections close at once, the others when opened/checked/released;
///   `shutdownComplete` once no connection is left.
struct PoolStateMachine<RequestID: Hashable & Sendable, Instant: InstantProtocol>: Sendable
where Instant.Duration == Duration {

    enum Action: Hashable, Sendable {
        /// Open a connection with the factory settings of `generation`; report
        /// `connectionEstablished` or `connectionFailed`.
        case makeConnection(PoolConnectionID, generation: Int)
        /// Give the connection to the request.
        case lease(PoolConnectionID, to: RequestID)
        /// Before giving the connection to the request: RSET if `reset`, then NOOP if `noop`
        /// (each expecting 250); report `checkSucceeded` or `checkFailed`.
        case check(PoolConnectionID, for: RequestID, reset: Bool, noop: Bool)
        /// QUIT and close; report `connectionClosed`.
        case close(PoolConnectionID, reason: PoolCloseReason)
        /// Fail the waiting request.
        case failRequest(RequestID, PoolRequestFailure)
        case scheduleTimer(PoolTimer, at: Instant)
        case cancelTimer(PoolTimer)
        /// Shutdown finished: every connection is closed, every request answered.
        case shutdownComplete
    }

    struct Connection: Sendable {
        enum State: Sendable, Hashable {
            case connecting
            case idle
            /// `request` is nil when the request was cancelled or failed during the check.
            case checking(request: RequestID?, noop: Bool)
            case leased(RequestID)
            case closing
        }
        var state: State
        var generation: Int
        /// Last time the connection was known good: opened, released or checked.
        var lastUsed: Instant
        /// credential expiry - margin; nil without a credential that expires.
        var retireAt: Instant?
        /// Opened and never handed out yet (no NOOP needed).
        var fresh = true
        var needsReset = false
        var hasIdleTimer = false
        /// Another connection died under use, or failed its check, while this one sat idle: the
        /// server may have dropped this one too (a restart, a network change), so its next use
        /// is checked with NOOP whatever its idle time, and a dead one is replaced without
        /// costing a sender its attempt.
        var suspect = false
    }

    struct Shrink: Sendable, Hashable {
        var size: Int
        var until: Instant
        var successes: Int
    }

    enum Lifecycle: Sendable, Hashable { case running, shuttingDown, shutDown }

    let configuration: PoolConfiguration
    private(set) var generation: Int
    private(set) var connections: [PoolConnectionID: Connection] = [:]
    private(set) var waiters: [RequestID] = []
    private(set) var shrink: Shrink?
    private(set) var lifecycle: Lifecycle = .running
    private var nextConnectionID = 0
    private var counters = PoolStatistics()

    init(configuration: PoolConfiguration, generation: Int = 0) {
        self.configuration = configuration
        self.generation = generation
    }

    var effectiveSize: Int { shrink?.size ?? configuration.size }

    var statistics: PoolStatistics {
        var s = counters
        s.connecting = 0; s.idle = 0; s.checking = 0; s.leased = 0; s.closing = 0
        for connection in connections.values {
            switch connection.state {
            case .connecting: s.connecting += 1
            case .idle: s.idle += 1
            case .checking: s.checking += 1
            case .leased: s.leased += 1
            case .closing: s.closing += 1
            }
        }
        s.waiting = waiters.count
        s.effectiveSize = effectiveSize
        return s
    }

    // MARK: - Events

    /// A caller wants a connection.
    mutating func leaseRequested(_ request: RequestID, now: Instant) -> [Action] {
        switch lifecycle {
        case .shuttingDown, .shutDown:
            return [.failRequest(request, .shutdown)]
        case .running:
            precondition(!waiters.contains(request), "request \(request) is already waiting")
            var actions: [Action] = []
            waiters.append(request)
            serveWaiters(now: now, &actions)
            return actions
        }
    }

    /// The caller's task was cancelled. Leases already handed out are not affected.
    mutating func cancelled(_ request: RequestID) -> [Action] {
        if let index = waiters.firstIndex(of: request) {
            waiters.remove(at: index)
            return [.failRequest(request, .cancelled)]
        }
        for (id, connection) in connections {
            switch connection.state {
            case .checking(request: request, let noop):
                connections[id]!.state = .checking(request: nil, noop: noop)
                return [.failRequest(request, .cancelled)]
            case .connecting, .idle, .checking, .leased, .closing:
                continue
            }
        }
        return []
    }

    /// The factory opened the connection. `credentialLifetime` is the time left until its
    /// credential (OAuth token) expires, nil when it has none.
    mutating func connectionEstablished(
        _ id: PoolConnectionID, credentialLifetime: Duration?, now: Instant
    ) -> [Action] {
        guard var connection = connections[id], connection.state == .connecting else {
            preconditionFailure("\(id) established but not connecting")
        }
        counters.created += 1
        connection.lastUsed = now
        connection.retireAt = credentialLifetime.map { now.advanced(by: $0 - configuration.tokenExpiryMargin) }
        connection.state = .idle
        connections[id] = connection
        var actions: [Action] = []
        switch lifecycle {
        case .shuttingDown, .shutDown:
            close(id, .shutdown, &actions)
            return actions
        case .running:
            break
        }
        if connection.generation != generation {
            close(id, .staleGeneration, &actions)
        } else if let retireAt = connection.retireAt, retireAt <= now {
            // Useless from birth: fail one waiter rather than reconnecting in a loop.
            close(id, .credentialExpiring, &actions)
            if !waiters.isEmpty {
                actions.append(.failRequest(waiters.removeFirst(), .credentialExpiresTooSoon))
            }
        }
        serveWaiters(now: now, &actions)
        settleIdleConnections(now: now, &actions)
        return actions
    }

    /// The factory failed. `refused` when the server said 421 / too many connections.
    /// The oldest waiter gets the error (so a dead server never makes the pool spin), except on a
    /// refusal while other connections are alive: waiters then wait for those.
    mutating func connectionFailed(_ id: PoolConnectionID, refused: Bool, now: Instant) -> [Action] {
        guard let connection = connections[id], connection.state == .connecting else {
            preconditionFailure("\(id) failed but not connecting")
        }
        connections[id] = nil
        counters.connectFailures += 1
        var actions: [Action] = []
        switch lifecycle {
        case .shuttingDown, .shutDown:
            finishShutdownIfDone(&actions)
            return actions
        case .running:
            break
        }
        if refused {
            shrinkPool(now: now, &actions)
        }
        if !waiters.isEmpty && !(refused && aliveCount > 0) {
            actions.append(.failRequest(waiters.removeFirst(), .connectionFailed(id)))
        }
        serveWaiters(now: now, &actions)
        settleIdleConnections(now: now, &actions)
        return actions
    }

    /// RSET/NOOP answered 250.
    mutating func checkSucceeded(_ id: PoolConnectionID, now: Instant) -> [Action] {
        guard var connection = connections[id], case .checking(let request, _) = connection.state else {
            preconditionFailure("\(id) check succeeded but not checking")
        }
        connection.needsReset = false
        connection.suspect = false
        connection.lastUsed = now
        connection.state = .idle
        connections[id] = connection
        var actions: [Action] = []
        switch lifecycle {
        case .shuttingDown, .shutDown:
            // The request was failed when the shutdown began.
            close(id, .shutdown, &actions)
            return actions
        case .running:
            break
        }
        if let reason = expiry(of: connection, now: now) {
            close(id, reason, &actions)
            if let request { waiters.insert(request, at: 0) }
        } else if let request {
            connections[id]!.state = .leased(request)
            connections[id]!.fresh = false
            actions.append(.lease(id, to: request))
        }
        serveWaiters(now: now, &actions)
        settleIdleConnections(now: now, &actions)
        return actions
    }

    /// RSET/NOOP failed (not 250, or the connection is dead): the connection is closed and the
    /// request served by another one, without telling the caller.
    mutating func checkFailed(_ id: PoolConnectionID, now: Instant) -> [Action] {
        guard let connection = connections[id], case .checking(let request, let noop) = connection.state else {
            preconditionFailure("\(id) check failed but not checking")
        }
        counters.checkFailures += 1
        if noop { counters.noopFailures += 1 }
        var actions: [Action] = []
        close(id, .checkFailed, &actions)
        suspectIdleConnections()
        switch lifecycle {
        case .shuttingDown, .shutDown:
            return actions
        case .running:
            break
        }
        if let request {
            waiters.insert(request, at: 0)
        }
        serveWaiters(now: now, &actions)
        settleIdleConnections(now: now, &actions)
        return actions
    }

    /// The caller gives the connection back.
    mutating func released(_ id: PoolConnectionID, _ disposition: PoolReleaseDisposition, now: Instant) -> [Action] {
        guard var connection = connections[id], case .leased = connection.state else {
            preconditionFailure("\(id) released but not leased")
        }
        connection.lastUsed = now
        connection.state = .idle
        var actions: [Action] = []
        switch disposition {
        case .clean:
            connection.needsReset = false
            connections[id] = connection
            countSuccessfulSend(&actions)
        case .needsReset:
            connection.needsReset = true
            connections[id] = connection
        case .discard:
            connections[id] = connection
            close(id, .discarded, &actions)
            suspectIdleConnections()
        case .serverRefused:
            connections[id] = connection
            close(id, .serverRefused, &actions)
            if lifecycle == .running { shrinkPool(now: now, &actions) }
        }
        if connections[id]!.state == .idle {
            switch lifecycle {
            case .shuttingDown, .shutDown:
                close(id, .shutdown, &actions)
                return actions
            case .running:
                if connection.generation != generation {
                    close(id, .staleGeneration, &actions)
                } else if let retireAt = connection.retireAt, retireAt <= now {
                    close(id, .credentialExpiring, &actions)
                }
            }
        }
        serveWaiters(now: now, &actions)
        settleIdleConnections(now: now, &actions)
        return actions
    }

    /// The common case of `released(id, .clean, now:)` taken without building actions: the pool
    /// is full and running normally, someone waits, and the connection needs no check (it was
    /// used just now), so it goes straight to the first waiter. Returns that request, or nil
    /// (nothing changed) when `released` must decide. The outcome is the same as `released`'s
    /// `[.lease(id, to: request)]` (the tests compare both on the same states).
    mutating func releasedCleanToWaiter(_ id: PoolConnectionID, now: Instant) -> RequestID? {
        guard lifecycle == .running, shrink == nil, !waiters.isEmpty,
            connections.count >= effectiveSize,
            configuration.checkIdleTime > .zero,
            var connection = connections[id], case .leased = connection.state,
            connection.generation == generation
        else { return nil }
        if let retireAt = connection.retireAt, retireAt <= now { return nil }
        let request = waiters.removeFirst()
        connection.lastUsed = now
        connection.needsReset = false
        connection.fresh = false
        connection.state = .leased(request)
        connections[id] = connection
        return request
    }

    /// The server refused with 421 / too many connections, reported outside a release.
    mutating func serverRefused(now: Instant) -> [Action] {
        switch lifecycle {
        case .shuttingDown, .shutDown:
            return []
        case .running:
            var actions: [Action] = []
            shrinkPool(now: now, &actions)
            return actions
        }
    }

    /// QUIT done, the connection is gone: its slot is free.
    mutating func connectionClosed(_ id: PoolConnectionID, now: Instant) -> [Action] {
        guard let connection = connections[id], connection.state == .closing else {
            preconditionFailure("\(id) closed but not closing")
        }
        connections[id] = nil
        var actions: [Action] = []
        switch lifecycle {
        case .shuttingDown, .shutDown:
            finishShutdownIfDone(&actions)
        case .running:
            serveWaiters(now: now, &actions)
            settleIdleConnections(now: now, &actions)
        }
        return actions
    }

    mutating func timerFired(_ timer: PoolTimer, now: Instant) -> [Action] {
        var actions: [Action] = []
        switch timer {
        case .idle(let id):
            // The timer is not cancelled when its connection is handed out (that would cost a
            // timer per message): a connection in use when it fires just loses it, and gets a
            // new one (from its new last use) when it is idle again.
            guard var connection = connections[id], connection.hasIdleTimer else { return [] }
            connection.hasIdleTimer = false
            connections[id] = connection
            guard connection.state == .idle else { return [] }
            if let reason = expiry(of: connection, now: now) {
                close(id, reason, &actions)
            }
        case .coolDown:
            guard let shrink, now >= shrink.until else { return [] }
            self.shrink = nil
        }
        switch lifecycle {
        case .shuttingDown, .shutDown:
            break
        case .running:
            serveWaiters(now: now, &actions)
            settleIdleConnections(now: now, &actions)
        }
        return actions
    }

    /// Options that take effect immediately changed: new connections use `newGeneration`; idle
    /// connections of another generation close now, the others when they come back.
    mutating func generationChanged(to newGeneration: Int, now: Instant) -> [Action] {
        generation = newGeneration
        var actions: [Action] = []
        switch lifecycle {
        case .shuttingDown, .shutDown:
            return actions
        case .running:
            break
        }
        for id in connections.keys.sorted() where connections[id]!.state == .idle && connections[id]!.generation != generation {
            close(id, .staleGeneration, &actions)
        }
        serveWaiters(now: now, &actions)
        settleIdleConnections(now: now, &actions)
        return actions
    }

    /// Graceful shutdown: waiters and new callers fail, idle connections close now, leased ones
    /// when released, connections being opened or checked when that finishes.
    mutating func shutdown() -> [Action] {
        switch lifecycle {
        case .shuttingDown, .shutDown:
            return []
        case .running:
            break
        }
        lifecycle = .shuttingDown
        var actions: [Action] = []
        for request in waiters {
            actions.append(.failRequest(request, .shutdown))
        }
        waiters.removeAll()
        for id in connections.keys.sorted() {
            switch connections[id]!.state {
            case .checking(.some(let request), let noop):
                connections[id]!.state = .checking(request: nil, noop: noop)
                actions.append(.failRequest(request, .shutdown))
            case .idle:
                close(id, .shutdown, &actions)
            case .connecting, .checking(request: .none, _), .leased, .closing:
                break
            }
        }
        if shrink != nil {
            shrink = nil
            actions.append(.cancelTimer(.coolDown))
        }
        finishShutdownIfDone(&actions)
        return actions
    }

    // MARK: - Internals

    private var aliveCount: Int {
        connections.values.count(where: { connection in
            switch connection.state {
            case .idle, .checking, .leased: true
            case .connecting, .closing: false
            }
        })
    }

    private mutating func finishShutdownIfDone(_ actions: inout [Action]) {
        if lifecycle == .shuttingDown && connections.isEmpty {
            lifecycle = .shutDown
            actions.append(.shutdownComplete)
        }
    }

    private mutating func close(_ id: PoolConnectionID, _ reason: PoolCloseReason, _ actions: inout [Action]) {
        if connections[id]!.hasIdleTimer {
            connections[id]!.hasIdleTimer = false
            actions.append(.cancelTimer(.idle(id)))
        }
        connections[id]!.state = .closing
        counters.closed += 1
        actions.append(.close(id, reason: reason))
    }

    /// Why an idle connection may no longer be used, nil if it may.
    private func expiry(of connection: Connection, now: Instant) -> PoolCloseReason? {
        if connection.generation != generation { return .staleGeneration }
        if let retireAt = connection.retireAt, retireAt <= now { return .credentialExpiring }
        if configuration.maxIdleTime > .zero && connection.lastUsed.duration(to: now) >= configuration.maxIdleTime {
            return .idleTimeout
        }
        return nil
    }

    /// Hands idle connections to waiters in order, then opens connections for the waiters left,
    /// within the effective size.
    private mutating func serveWaiters(now: Instant, _ actions: inout [Action]) {
        guard lifecycle == .running else { return }
        while !waiters.isEmpty, let id = takeIdleConnection(now: now, &actions) {
            handOut(id, to: waiters.removeFirst(), now: now, &actions)
        }
        var connecting = connections.values.count(where: { $0.state == .connecting })
        while waiters.count > connecting && connections.count < effectiveSize {
            let id = PoolConnectionID(nextConnectionID)
            nextConnectionID += 1
            connections[id] = Connection(state: .connecting, generation: generation, lastUsed: now)
            actions.append(.makeConnection(id, generation: generation))
            connecting += 1
        }
    }

    /// Marks every idle connection for a NOOP before its next use (see `Connection.suspect`).
    private mutating func suspectIdleConnections() {
        for (id, connection) in connections where connection.state == .idle {
            connections[id]!.suspect = true
        }
    }

    /// The most recently used usable idle connection (so the others age out); unusable ones met
    /// on the way are closed.
    private mutating func takeIdleConnection(now: Instant, _ actions: inout [Action]) -> PoolConnectionID? {
        // A scan, not a sort: this runs for every message.
        while true {
            var best: (id: PoolConnectionID, lastUsed: Instant)?
            for (id, connection) in connections where connection.state == .idle {
                if let current = best,
                    connection.lastUsed < current.lastUsed || (connection.lastUsed == current.lastUsed && id < current.id)
                {
                    continue
                }
                best = (id, connection.lastUsed)
            }
            guard let best else { return nil }
            guard let reason = expiry(of: connections[best.id]!, now: now) else { return best.id }
            close(best.id, reason, &actions)
        }
    }

    private mutating func handOut(_ id: PoolConnectionID, to request: RequestID, now: Instant, _ actions: inout [Action]) {
        var connection = connections[id]!
        // "idle for longer than" the setting (strictly); 00:00:00 checks before every use.
        let idle = connection.lastUsed.duration(to: now)
        let noop = connection.suspect || (!connection.fresh && (configuration.checkIdleTime == .zero || idle > configuration.checkIdleTime))
        let reset = connection.needsReset
        if noop || reset {
            if noop { counters.noopChecks += 1 }
            if reset { counters.resets += 1 }
            connection.state = .checking(request: request, noop: noop)
            actions.append(.check(id, for: request, reset: reset, noop: noop))
        } else {
            connection.state = .leased(request)
            connection.fresh = false
            actions.append(.lease(id, to: request))
        }
        connections[id] = connection
    }

    /// Gives every idle connection without a timer its timer, or closes it when the max idle time
    /// is zero.
    private mutating func settleIdleConnections(now: Instant, _ actions: inout [Action]) {
        var unsettled: [PoolConnectionID] = []
        for (id, connection) in connections where connection.state == .idle && !connection.hasIdleTimer {
            unsettled.append(id)
        }
        guard !unsettled.isEmpty else { return }
        for id in unsettled.sorted() {
            let connection = connections[id]!
            if let reason = expiry(of: connection, now: now) {
                close(id, reason, &actions)
                continue
            }
            if configuration.maxIdleTime == .zero {
                close(id, .idleTimeout, &actions)
                continue
            }
            var deadline = connection.lastUsed.advanced(by: configuration.maxIdleTime)
            if let retireAt = connection.retireAt, retireAt < deadline { deadline = retireAt }
            connections[id]!.hasIdleTimer = true
            actions.append(.scheduleTimer(.idle(id), at: deadline))
        }
    }

    private mutating func shrinkPool(now: Instant, _ actions: inout [Action]) {
        counters.refusals += 1
        let size = min(effectiveSize, max(1, aliveCount))
        let until = now.advanced(by: configuration.refusalCoolDown)
        shrink = Shrink(size: size, until: until, successes: 0)
        actions.append(.scheduleTimer(.coolDown, at: until))
    }

    private mutating func countSuccessfulSend(_ actions: inout [Action]) {
        guard var shrink, configuration.growAfterSuccessfulSends > 0 else { return }
        shrink.successes += 1
        if shrink.successes >= configuration.growAfterSuccessfulSends {
            shrink.size += 1
            shrink.successes = 0
        }
        if shrink.size >= configuration.size {
            self.shrink = nil
            actions.append(.cancelTimer(.coolDown))
        } else {
            self.shrink = shrink
        }
    }
}
