import OutboxMIME
import OutboxSMTP

extension SMTPTransport {
    /// Delivers `content` over a pooled connection (see the type's description for when a message
    /// goes out a second time); a failure is a `DeliveryError` whose kind says whether to retry.
    ///
    /// Recipients refused with `452 4.5.3` (too many recipients) while others were taken go at
    /// once in a further transaction on the same route, as RFC 5321 §4.5.3.1.10 describes, until
    /// all are sent or a transaction takes none. A delivery the provider throttled
    /// (``Throttling``) with no recipient taken fails with ``RouteFault/throttled``; when some
    /// were taken, the report's ``DeliveryReport/throttle`` says so.
    public func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        var report = try await sendTransaction(content, envelope: envelope)
        func tooMany(_ outcome: RecipientOutcome) -> Bool {
            outcome.status == .deferred && Throttling.isTooManyRecipients(code: outcome.code, enhancedCode: outcome.enhancedCode, text: outcome.text)
        }
        // (The common case, no recipient left for another transaction, copies no report.)
        if report.recipients.contains(where: tooMany) {
            var round = report
            while round.recipients.contains(where: { $0.status == .accepted }) {
                let rest = round.recipients.filter(tooMany)
                guard !rest.isEmpty, let from = envelope?.from ?? (try? content.envelope().from) else { break }
                do {
                    round = try await sendTransaction(
                        content, envelope: Envelope(from: from, recipients: rest.map(\.address), dsn: envelope?.dsn))
                } catch {
                    // The rest stay deferred: the queue tries them again.
                    break
                }
                report.attempts += round.attempts
                report.throttle = report.throttle ?? round.throttle
                for outcome in round.recipients {
                    if let i = report.recipients.firstIndex(where: { $0.address == outcome.address }) { report.recipients[i] = outcome }
                }
            }
        }
        if let throttle = report.throttle, !report.recipients.contains(where: { $0.status == .accepted }) {
            throw DeliveryError(
                kind: .transient, message: "the provider throttles the route: \(throttle)", report: report, routeFault: .throttled)
        }
        return report
    }
}
