import Foundation
import HummingbirdBcrypt
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import OutboxConfig

/// Checks AUTH credentials against the `[client-NAME]` identities.
///
/// bcrypt runs on its own small thread pool, never on an event loop, and at most
/// `maxPending` checks wait for it: an AUTH flood gets 454 (try later) instead of a queue
/// that grows without bound. Failures are counted per client address and per user within
/// `auth-lockout-time`: each one is answered more slowly than the last (up to 4 s), and after
/// `auth-failure-limit` of them AUTH is refused (454 4.7.0) until the window has passed.
package final class RelayAuthenticator: Sendable {
    private let pool: NIOThreadPool
    private let state = NIOLockedValueBox(Throttle())
    private let pending = NIOLockedValueBox(0)
    package let maxPending: Int
    private let logger: Logger
    /// A real bcrypt hash to check unknown users against, so a wrong user name costs as much
    /// time as a wrong password (no user enumeration by timing).
    private let decoyHash: String
    /// The delay per earlier failure (tests shorten it).
    let failureDelay: Duration

    struct Throttle {
        var failures: [String: [ContinuousClock.Instant]] = [:]
        var lockedUntil: [String: ContinuousClock.Instant] = [:]
    }

    package init(
        threads: Int = max(1, System.coreCount / 2), maxPending: Int = 64, failureDelay: Duration = .milliseconds(500),
        logger: Logger
    ) {
        self.pool = NIOThreadPool(numberOfThreads: threads)
        self.pool.start()
        self.maxPending = maxPending
        self.failureDelay = failureDelay
        self.logger = logger
        // At `outbox hash-password`'s default cost, so an unknown user takes as long as a known one.
        self.decoyHash = Bcrypt.hash(UUID().uuidString, cost: 12)
    }

    package func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    /// Checks `user`/`password` from `client` against `clients`.
    package func verify(
        user: String, password: String, client: String, clients: [ClientIdentity], limit: Int,
        window: Duration
    ) async -> RelayStateMachine.AuthOutcome {
        let keys = ["address:" + client, "user:" + user.lowercased()]
        let now = ContinuousClock.now
        let locked = state.withLockedValue { s -> Bool in
            keys.contains { key in (s.lockedUntil[key].map { $0 > now }) ?? false }
        }
        if locked {
            logger.warning("relay AUTH refused: too many failures", metadata: ["relay.client": "\(client)", "relay.user": "\(user)"])
            return .lockedOut
        }
        let admitted = pending.withLockedValue { n -> Bool in
            if n >= maxPending { return false }
            n += 1
            return true
        }
        guard admitted else {
            logger.warning("relay AUTH deferred: \(maxPending) checks already waiting", metadata: ["relay.client": "\(client)"])
            return .temporaryFailure
        }
        defer { pending.withLockedValue { $0 -= 1 } }
        let identity = clients.first { $0.user.lowercased() == user.lowercased() }
        let hash = identity?.passwordHash.value ?? decoyHash
        let ok: Bool
        do {
            ok = try await pool.runIfActive { Bcrypt.verify(password, hash: hash) }
        } catch {
            return .temporaryFailure
        }
        if ok, let identity {
            state.withLockedValue { s in for key in keys { s.failures[key] = nil } }
            return .success(identity)
        }
        // A failure: count it, slow down, maybe lock out.
        let (count, lockedOut) = state.withLockedValue { s -> (Int, Bool) in
            if s.failures.count > 10_000 { s.failures.removeAll(); s.lockedUntil = s.lockedUntil.filter { $0.value > now } }
            var worst = 0
            var lock = false
            for key in keys {
                var list = (s.failures[key] ?? []).filter { now - $0 < window }
                list.append(now)
                s.failures[key] = list
                worst = max(worst, list.count)
                if list.count >= limit {
                    s.lockedUntil[key] = now + window
                    lock = true
                }
            }
            return (worst, lock)
        }
        logger.warning("relay AUTH failed", metadata: ["relay.client": "\(client)", "relay.user": "\(user)", "relay.failures": "\(count)"])
        try? await Task.sleep(for: failureDelay * min(count, 8))
        return lockedOut && count > limit ? .lockedOut : .invalid
    }
}
