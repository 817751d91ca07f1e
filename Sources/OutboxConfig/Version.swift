/// Outbox's own version, as `outbox --version` prints it and every HTTP request's
/// `User-Agent: Outbox/<version>` carries it.
public enum OutboxVersion {
    /// The release this build is, e.g. `0.1.0`.
    public static let current = "0.1.0"
    /// `Outbox/<version>`: the `User-Agent` of every HTTP request (Graph, EWS, token endpoints).
    public static let userAgent = "Outbox/\(current)"
}
