import SQLiteNIO

/// What a store's error means for a client waiting on it, in one place: the HTTP API and the
/// listener map these to their answers (507 / `452 4.3.1` for a full disk).
package enum StoreFailure: Sendable, Equatable {
    /// The disk (or the database's) is full: intake must wait for space.
    case insufficientStorage
    /// Anything else.
    case other

    /// Classifies an error thrown by a store.
    package static func classify(_ error: any Error) -> StoreFailure {
        if let error = error as? StoreError, error.code == .insufficientStorage { return .insufficientStorage }
        if let error = error as? SQLiteError, error.reason == .full { return .insufficientStorage }
        return .other
    }
}
