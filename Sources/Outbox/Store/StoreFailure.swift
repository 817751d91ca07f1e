import PostgresNIO
import SQLiteNIO

/// What a store's error means for a client waiting on it, in one place: the HTTP API, the
/// listener and the dispatcher map these to their answers and their waits.
///
/// | failure | HTTP | SMTP listener |
/// | --- | --- | --- |
/// | ``insufficientStorage`` | 507 `insufficient_storage` + Retry-After | `452 4.3.1` |
/// | ``unavailable`` | 503 `store_unavailable` + Retry-After | `451 4.3.0` |
/// | ``schemaMissing`` | 503 `store_schema_missing` + Retry-After | `451 4.3.0` |
/// | ``other`` | 500 `internal_error` | `451 4.3.0` |
package enum StoreFailure: Sendable, Equatable {
    /// The disk (or the database's) is full: intake must wait for space (SQLite's `SQLITE_FULL`,
    /// PostgreSQL's `53100`).
    case insufficientStorage
    /// The store does not answer, or cannot take work now: connection refused or lost, the
    /// server shutting down or starting (`57P01`, `57P02`, `57P03`), a connection error (class
    /// `08`), out of memory or connections (`53200`, `53300`), or no answer within
    /// `store-unavailable-wait`. Temporary: the same call may work later.
    case unavailable
    /// The store answers, but Outbox's tables are not there or are not Outbox's (the database
    /// was replaced or emptied under the daemon): `42P01`, `42703`, or an unknown schema
    /// version. It does not heal by waiting.
    case schemaMissing
    /// Anything else.
    case other

    /// Classifies an error thrown by a store.
    package static func classify(_ error: any Error) -> StoreFailure {
        if let error = error as? StoreError {
            switch error.code {
            case .insufficientStorage: return .insufficientStorage
            case .unavailable: return .unavailable
            case .schemaMissing: return .schemaMissing
            default: return .other
            }
        }
        if let error = error as? SQLiteError, error.reason == .full { return .insufficientStorage }
        if let error = error as? PSQLError { return classify(postgres: error) }
        // postgres-nio's pool gives up on connecting (its circuit breaker) with an error of its
        // own module, not a PSQLError.
        if String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError") { return .unavailable }
        if error is CancellationError { return .unavailable }
        return .other
    }

    static func classify(postgres error: PSQLError) -> StoreFailure {
        switch error.code {
        case .server:
            return classify(sqlState: error.serverInfo?[.sqlState] ?? "")
        case .serverClosedConnection, .connectionError, .uncleanShutdown, .poolClosed, .clientClosedConnection, .queryCancelled:
            return .unavailable
        default:
            return .other
        }
    }

    /// The meaning of a PostgreSQL SQLSTATE (Appendix A of the PostgreSQL manual).
    package static func classify(sqlState: String) -> StoreFailure {
        switch sqlState {
        case "53100": return .insufficientStorage
        case "53200", "53300", "53000", "57P01", "57P02", "57P03", "57P05", "58000", "58030": return .unavailable
        case "42P01", "42703", "3F000": return .schemaMissing
        default: return sqlState.hasPrefix("08") ? .unavailable : .other
        }
    }

    /// A description of a store error fit for a log line: what happened, the SQLSTATE and the
    /// server's own message for PostgreSQL, never postgres-nio's generic text, a query or its
    /// values.
    package static func describe(_ error: any Error) -> String {
        if let error = error as? StoreError { return error.message }
        if let error = error as? PSQLError {
            switch error.code {
            case .server:
                let state = error.serverInfo?[.sqlState] ?? "?"
                let message = error.serverInfo?[.message] ?? "no message"
                return "PostgreSQL answered SQLSTATE \(state): \(message)"
            case .connectionError:
                let cause = error.underlying.map { ": \(String(describing: $0).prefix(200))" } ?? ""
                return "the connection to PostgreSQL failed\(cause)"
            case .serverClosedConnection, .uncleanShutdown:
                return "PostgreSQL closed the connection"
            case .poolClosed, .clientClosedConnection:
                return "the connection to PostgreSQL was closed"
            case .queryCancelled:
                return "the call to PostgreSQL was cancelled"
            default:
                return "PostgreSQL error \(error.code)"
            }
        }
        if String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError") {
            return "PostgreSQL has refused connections for a while (the connection pool waits before trying again)"
        }
        if let error = error as? SQLiteError { return "SQLite: \(error.message)" }
        if error is CancellationError { return "the call was cancelled" }
        return String(describing: error).prefix(300).description
    }
}

extension StoreError {
    /// The error for a failure, with `message` as its text.
    package init(failure: StoreFailure, _ message: String) {
        switch failure {
        case .insufficientStorage: self.init(.insufficientStorage, message)
        case .unavailable: self.init(.unavailable, message)
        case .schemaMissing: self.init(.schemaMissing, message)
        case .other: self.init(.failed, message)
        }
    }
}

extension StoreError.Code {
    /// Any other failure of the database (its message says what).
    public static let failed = StoreError.Code(rawValue: "store_failed")
    /// The store did not answer within `store-unavailable-wait`, or refused work for now
    /// (PostgreSQL stopped, restarting, out of connections or memory).
    public static let unavailable = StoreError.Code(rawValue: "store_unavailable")
    /// The store's tables are missing or are not Outbox's: the database was replaced or emptied.
    public static let schemaMissing = StoreError.Code(rawValue: "store_schema_missing")
}
