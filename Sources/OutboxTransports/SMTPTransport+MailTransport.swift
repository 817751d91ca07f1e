import OutboxSMTP

extension SMTPTransport {
    /// The pool's counters.
    public var poolStatistics: PoolStatistics? { statistics }
}
