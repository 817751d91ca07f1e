import Foundation
import OutboxTransports
import Tracing

/// The dispatcher's side of the delivery log (see ``DeliveryLog``).
extension Dispatcher {
    /// Writes the delivery log's line for one attempt: `sentTo` the recipients it was sent to,
    /// `result` the mailer's report or error, `outcome` what it means for the message; the
    /// line carries `span`'s trace id when tracing is on.
    func logAttempt(
        _ message: StoredMessage, sentTo: [String], result: Result<DeliveryReport, DeliveryError>, outcome: AttemptOutcome,
        span: (any Span)? = nil
    ) {
        // No line is built when none is written (a logger above info).
        guard deliveryLog.isEnabled else { return }
        let attempted = Set(sentTo.map { $0.lowercased() })
        let recipients = outcome.recipients.filter { attempted.contains($0.address.lowercased()) }.map { r in
            DeliveryLogEntry.Recipient(
                address: r.address, result: Self.logResult(r.status), code: r.code, enhancedCode: r.enhancedCode, reply: r.text)
        }
        var report: DeliveryReport?
        var error: String?
        switch result {
        case .success(let r): report = r
        case .failure(let e):
            report = e.report
            error = e.message
        }
        let entry = DeliveryLogEntry(
            time: Date(timeIntervalSince1970: outcome.attempt.startedAt), queueID: message.id, messageID: message.messageID,
            route: message.route, attempt: outcome.attempt.number, from: message.from, recipients: recipients,
            result: outcome.status.rawValue, transport: report?.transport ?? (outcome.attempt.transport.isEmpty ? "-" : outcome.attempt.transport),
            destination: outcome.attempt.destination, reply: outcome.attempt.reply, error: error,
            durationSeconds: outcome.attempt.durationSeconds, bytes: message.size, tls: report?.tls, traceID: span.flatMap(traceID(of:)))
        deliveryLog.record(entry)
    }

    /// A recipient's state in the log's words: delivered, failed, deferred, unknown.
    static func logResult(_ status: RecipientState.Status) -> String {
        switch status {
        case .accepted: "delivered"
        case .rejected: "failed"
        case .deferred, .pending: "deferred"
        case .unknown: "unknown"
        }
    }
}
