/// Settings of the SMTP connection pool.
///
/// Maps the smtp-client options `cnx-pool-size`, `cnx-check-idle-time`, `cnx-max-idle-time` and
/// `token-expiry-margin-time`; the refusal settings (`refusalCoolDown`,
/// `growAfterSuccessfulSends`) have no option yet and use the defaults below.
public struct PoolConfiguration: Sendable, Hashable {
    /// `cnx-pool-size`: the maximum number of connections at once, counting connections being
    /// opened, open (idle, checked or leased) and being closed (QUIT in flight). Greater than 0.
    public var size: Int

    /// `cnx-check-idle-time`: a connection idle for at least this long is checked with NOOP
    /// (250 expected) before it is handed out. `.zero` checks every reuse. A connection that was
    /// just opened is never checked: its greeting, EHLO and AUTH have just succeeded.
    public var checkIdleTime: Duration

    /// `cnx-max-idle-time`: an idle connection is closed (QUIT) by a timer once it has been idle
    /// this long. `.zero` means "never keep an idle connection": a released connection that no
    /// waiter takes at once is closed immediately.
    public var maxIdleTime: Duration

    /// `token-expiry-margin-time`: a connection whose credential expires at `E` is retired at
    /// `E - tokenExpiryMargin`: never handed out from then on, closed by a timer if idle, closed
    /// on release if leased.
    public var tokenExpiryMargin: Duration

    /// After the server refuses because of too many connections (421, 432 4.3.2...) the pool's
    /// effective size shrinks to the number of connections alive (at least 1) for this long,
    /// then returns to `size` at once.
    public var refusalCoolDown: Duration

    /// While shrunk, every this many clean (successful) releases grow the effective size by one,
    /// up to `size` (which also ends the cool-down). `0` disables growth by sends: only the end of
    /// the cool-down restores the size.
    public var growAfterSuccessfulSends: Int

    /// Settings as described on each property. Traps when `size` is not greater than 0, or when a
    /// duration or `growAfterSuccessfulSends` is negative.
    public init(
        size: Int = 10,
        checkIdleTime: Duration = .seconds(30),
        maxIdleTime: Duration = .seconds(300),
        tokenExpiryMargin: Duration = .seconds(10),
        refusalCoolDown: Duration = .seconds(60),
        growAfterSuccessfulSends: Int = 10
    ) {
        precondition(size > 0, "cnx-pool-size must be greater than 0, got \(size)")
        precondition(checkIdleTime >= .zero, "cnx-check-idle-time must not be negative")
        precondition(maxIdleTime >= .zero, "cnx-max-idle-time must not be negative")
        precondition(tokenExpiryMargin >= .zero, "token-expiry-margin-time must not be negative")
        precondition(refusalCoolDown >= .zero, "refusalCoolDown must not be negative")
        precondition(growAfterSuccessfulSends >= 0, "growAfterSuccessfulSends must not be negative")
        self.size = size
        self.checkIdleTime = checkIdleTime
        self.maxIdleTime = maxIdleTime
        self.tokenExpiryMargin = tokenExpiryMargin
        self.refusalCoolDown = refusalCoolDown
        self.growAfterSuccessfulSends = growAfterSuccessfulSends
    }
}

/// A snapshot of the pool, for metrics and tests.
public struct PoolStatistics: Sendable, Hashable {
    /// Connections being opened (factory running).
    public var connecting = 0
    /// Connections open and available.
    public var idle = 0
    /// Connections being checked (RSET and/or NOOP) before being handed out.
    public var checking = 0
    /// Connections handed out to callers.
    public var leased = 0
    /// Connections being closed (QUIT in flight); they still count against the size.
    public var closing = 0
    /// Callers waiting for a connection.
    public var waiting = 0
    /// The current maximum number of connections (smaller than `size` after a refusal).
    public var effectiveSize = 0
    /// Connections successfully opened since the pool started.
    public var created = 0
    /// Connection attempts that failed since the pool started.
    public var connectFailures = 0
    /// Close actions issued since the pool started.
    public var closed = 0
    /// NOOP checks started / failed.
    public var noopChecks = 0
    /// NOOP checks that failed.
    public var noopFailures = 0
    /// RSETs started before reuse of a connection released after a failed transaction.
    public var resets = 0
    /// Checks (RSET or NOOP) that failed, whatever the step.
    public var checkFailures = 0
    /// Refusals (421, too many connections) reported.
    public var refusals = 0

    /// Connections open: idle, being checked or leased.
    public var open: Int { idle + checking + leased }
    /// Every connection the pool holds, the number limited by the size.
    public var total: Int { connecting + open + closing }

    /// Every counter zero.
    public init() {}
}
