import Foundation
import OutboxMIME
import OutboxTransports

extension DeliveryLog {
    /// True inside the dispatcher's sends: the dispatcher writes their lines (with the queue id
    /// and the attempt number), so the mailer does not write a second one.
    @TaskLocal static var dispatching = false
}

/// The mailer's side of the delivery log: a direct `Mailer.send` (the library, `outbox send`)
/// writes its line too, without a queue id.
extension Mailer {
    /// Writes the line of a direct send, unless the dispatcher is the caller (`send` calls it
    /// only when the log is on).
    func logDirectSend(
        _ content: any MailContent, envelope: Envelope?, result: Result<DeliveryReport, DeliveryError>, duration: Duration
    ) {
        guard !DeliveryLog.dispatching else { return }
        let given = envelope ?? (try? content.envelope())
        var report: DeliveryReport?
        var error: DeliveryError?
        switch result {
        case .success(let r): report = r
        case .failure(let e):
            error = e
            report = e.report
        }
        var recipients =
            report?.recipients.map { r in
                DeliveryLogEntry.Recipient(
                    address: r.address, result: Self.logResult(r.status), code: r.code, enhancedCode: r.enhancedCode, reply: r.text)
            } ?? []
        if recipients.isEmpty, let error {
            let status = Self.logResult(error.kind)
            recipients = (given?.recipients ?? []).map {
                DeliveryLogEntry.Recipient(address: $0, result: status, code: error.smtp?.reply?.code, enhancedCode: nil, reply: nil)
            }
        }
        let outcome: String
        if let error, !recipients.contains(where: { $0.result == "delivered" }) {
            outcome = Self.logResult(error.kind)
        } else if recipients.contains(where: { $0.result == "delivered" }) {
            outcome = "delivered"
        } else if recipients.contains(where: { $0.result == "deferred" || $0.result == "unknown" }) {
            outcome = "deferred"
        } else {
            outcome = "failed"
        }
        deliveryLog.record(
            DeliveryLogEntry(
                time: report?.startedAt ?? Date().addingTimeInterval(-duration.seconds), queueID: nil,
                messageID: report?.messageID ?? (content as? Message)?.messageID, route: RouteHealth.defaultRoute, attempt: nil,
                from: given?.from ?? "", recipients: recipients, result: outcome, transport: report?.transport ?? transportName,
                destination: report?.destination, reply: report?.finalReply, error: error?.message,
                durationSeconds: report?.durationSeconds ?? duration.seconds, bytes: content.knownByteCount, tls: report?.tls,
                traceID: nil))
    }

    static func logResult(_ status: RecipientOutcome.Status) -> String {
        switch status {
        case .accepted: "delivered"
        case .rejected: "failed"
        case .deferred: "deferred"
        case .unknown: "unknown"
        }
    }

    static func logResult(_ kind: DeliveryError.Kind) -> String {
        switch kind {
        case .transient: "deferred"
        case .permanent: "failed"
        case .outcomeUnknown: "unknown"
        }
    }
}
