import Foundation
import OutboxConfig
import PostgresNIO

/// Pacing shared by every instance: each send is a row of `outbox_route_sends` (route, when,
/// recipients), counted and added in one transaction under a per-route advisory lock, so two
/// instances never both take the last place in a window. Rows older than a day are deleted as
/// they go. A route's `max-concurrent` is shared the same way: each delivery in flight holds a
/// row of `outbox_route_slots` until it ends, or until its claim's lease would have run out (an
/// instance that dies holding one frees it then).
extension PostgresOutboxStore: SharedPacing {
    package func reserveSends(route: String, recipients: [Int], limits: RouteLimits, now: Double) async throws -> (granted: Int, wait: Double) {
        try await tracked { client in
            try await client.withTransaction(logger: Self.logger) { connection in
                try await connection.query(
                    "SELECT pg_advisory_xact_lock(7270002, hashtext(\(route)))", logger: Self.logger)
                let span: Double = limits.messagesPerDay != nil || limits.recipientsPerDay != nil ? 86_400 : 60
                try await connection.query(
                    "DELETE FROM outbox_route_sends WHERE route = \(route) AND sent_at <= \(now - 86_400)", logger: Self.logger)
                var window = PacingWindow()
                let rows = try await connection.query(
                    "SELECT sent_at, recipients FROM outbox_route_sends WHERE route = \(route) AND sent_at > \(now - span) ORDER BY sent_at",
                    logger: Self.logger)
                for try await (at, count) in rows.decode((Double, Int).self) {
                    window.record(recipients: count, at: at, limits: limits)
                }
                var granted = 0
                var wait = 0.0
                for count in recipients {
                    wait = window.wait(recipients: count, limits: limits, now: now)
                    if wait > 0 { break }
                    window.record(recipients: count, at: now, limits: limits)
                    try await connection.query(
                        "INSERT INTO outbox_route_sends (route, sent_at, recipients) VALUES (\(route), \(now), \(count))",
                        logger: Self.logger)
                    granted += 1
                }
                return (granted, wait)
            }
        }
    }

    package func acquireSlot(route: String, limit: Int, holder: String, until: Double, now: Double) async throws -> Int? {
        try await tracked { client in
            try await client.withTransaction(logger: Self.logger) { connection in
                try await connection.query(
                    "SELECT pg_advisory_xact_lock(7270003, hashtext(\(route)))", logger: Self.logger)
                try await connection.query(
                    "DELETE FROM outbox_route_slots WHERE route = \(route) AND until <= \(now)", logger: Self.logger)
                var taken = Set<Int>()
                for try await slot in try await connection.query(
                    "SELECT slot FROM outbox_route_slots WHERE route = \(route)", logger: Self.logger
                ).decode(Int.self) {
                    taken.insert(slot)
                }
                // A limit lowered by a reload counts the slots still held above it.
                guard taken.count < limit, let free = (0..<limit).first(where: { !taken.contains($0) }) else { return nil }
                try await connection.query(
                    "INSERT INTO outbox_route_slots (route, slot, holder, until) VALUES (\(route), \(free), \(holder), \(until))",
                    logger: Self.logger)
                return free
            }
        }
    }

    package func releaseSlot(route: String, slot: Int, holder: String) async throws {
        _ = try await tracked { client in
            try await client.query(
                "DELETE FROM outbox_route_slots WHERE route = \(route) AND slot = \(slot) AND holder = \(holder)", logger: Self.logger)
        }
    }
}
