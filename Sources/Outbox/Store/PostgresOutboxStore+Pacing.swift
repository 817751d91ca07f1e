import Foundation
import OutboxConfig
import PostgresNIO

/// Pacing shared by every instance: each send is a row of `outbox_route_sends` (route, when,
/// recipients), counted and added in one transaction under a per-route advisory lock, so two
/// instances never both take the last place in a window. Rows older than a day are deleted as
/// they go.
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
}
