import Metrics
import NIOConcurrencyHelpers
import OutboxTransports

/// The mailer's metrics, created once, with bounded labels (route, transport, result, reply
/// class).
struct MailerMetrics: Sendable {
    /// The route's name: a label of every metric.
    let route: String
    let open: Gauge
    let idle: Gauge
    let inUse: Gauge
    let created: Counter
    let noopChecks: Counter
    let noopFailures: Counter
    let latency: Timer
    private let last = NIOLockedValueBox(PoolStatistics())

    init(route: String) {
        self.route = route
        let label = [("route", route)]
        open = Gauge(label: "outbox_smtp_connections_open", dimensions: label)
        idle = Gauge(label: "outbox_smtp_connections_idle", dimensions: label)
        inUse = Gauge(label: "outbox_smtp_connections_in_use", dimensions: label)
        created = Counter(label: "outbox_smtp_connections_created_total", dimensions: label)
        noopChecks = Counter(label: "outbox_smtp_noop_checks_total", dimensions: label)
        noopFailures = Counter(label: "outbox_smtp_noop_failures_total", dimensions: label)
        latency = Timer(label: "outbox_send_duration_seconds", dimensions: label, preferredDisplayUnit: .seconds)
    }

    /// The message counters made so far, by their labels (a bounded set: 5 results x 4 classes
    /// x the transports), so a send looks one up instead of asking the metrics factory.
    private let counters = NIOLockedValueBox([CounterKey: Counter]())

    private struct CounterKey: Hashable {
        var result: String
        var replyClass: String
        var transport: String
    }

    /// `result`: delivered, partial, rejected, deferred, unknown; `class`: 2xx, 4xx, 5xx, none.
    func messages(result: String, replyClass: String, transport: String) -> Counter {
        let key = CounterKey(result: result, replyClass: replyClass, transport: transport)
        return counters.withLockedValue { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(
                label: "outbox_messages_total", dimensions: [("result", result), ("class", replyClass), ("transport", transport), ("route", route)])
            counters[key] = counter
            return counter
        }
    }

    func record(_ report: DeliveryReport, duration: Duration) {
        let result: String
        if report.allAccepted {
            result = "delivered"
        } else if report.recipients.contains(where: { $0.status == .accepted }) {
            result = "partial"
        } else if report.anyRejected {
            result = "rejected"
        } else {
            result = "deferred"
        }
        let replyClass: String
        switch report.finalReply?.utf8.first {
        case UInt8(ascii: "2"): replyClass = "2xx"
        case UInt8(ascii: "3"): replyClass = "3xx"
        case UInt8(ascii: "4"): replyClass = "4xx"
        case UInt8(ascii: "5"): replyClass = "5xx"
        default: replyClass = "none"
        }
        messages(result: result, replyClass: replyClass, transport: report.transport).increment()
        latency.recordNanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    func record(_ error: DeliveryError, transport: String, duration: Duration) {
        let result: String
        switch error.kind {
        case .permanent: result = "rejected"
        case .transient: result = "deferred"
        case .outcomeUnknown: result = "unknown"
        }
        let replyClass = error.smtp?.replyCode.map { "\($0 / 100)xx" } ?? "none"
        messages(result: result, replyClass: replyClass, transport: transport).increment()
        latency.recordNanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    func record(_ stats: PoolStatistics) {
        open.record(stats.open)
        idle.record(stats.idle)
        inUse.record(stats.leased)
        let previous = last.withLockedValue { previous -> PoolStatistics in
            defer { previous = stats }
            return previous
        }
        if stats.created > previous.created { created.increment(by: stats.created - previous.created) }
        if stats.noopChecks > previous.noopChecks { noopChecks.increment(by: stats.noopChecks - previous.noopChecks) }
        if stats.noopFailures > previous.noopFailures { noopFailures.increment(by: stats.noopFailures - previous.noopFailures) }
    }
}
