import Foundation
import Logging
import NIOConcurrencyHelpers
import OutboxMIME
import OutboxSMTPGrammar
import OutboxTransports
import ServiceLifecycle

/// What an attempt's result means for the message (pure): per-recipient states, the next
/// attempt, the delivery status notification, the DSN parameters passed on.
extension Dispatcher {
    /// The delivery status notification to the sender of a relayed message whose recipients
    /// failed for good in this attempt, and how many recipients it reports; nil when none is due
    /// (the null sender never gets one).
    static func notification(message: StoredMessage, content: [UInt8], outcome: AttemptOutcome, settings: BounceSettings)
        -> (message: NewMessage, failures: Int)?
    {
        let failures = Bounce.failures(message: message, outcome: outcome)
        guard !failures.isEmpty else { return nil }
        // Derived from the message and attempt, so a repeated record cannot queue it twice.
        let id = "dsn-\(message.id)-\(outcome.attempt.number)"
        var notification = Bounce.make(message: message, original: content, failures: failures, settings: settings, id: id)
        notification.idempotencyKey = id
        return (notification, failures.count)
    }

    /// A relayed message's DSN parameters, for the transport to pass on; nil when it had none.
    /// `recipients`: the message's, in the order they were stored (the order of the lists).
    static func dsn(_ origin: MessageOrigin, recipients: [String]) -> SMTPDSNParameters? {
        var notify: [String: String] = [:]
        var orcpt: [String: String] = [:]
        for (i, address) in recipients.enumerated() {
            if i < origin.notify.count, !origin.notify[i].isEmpty { notify[address.lowercased()] = origin.notify[i] }
            if i < origin.orcpt.count, !origin.orcpt[i].isEmpty { orcpt[address.lowercased()] = origin.orcpt[i] }
        }
        if origin.ret == nil && origin.envid == nil && notify.isEmpty && orcpt.isEmpty { return nil }
        return SMTPDSNParameters(ret: origin.ret, envid: origin.envid, notify: notify, orcpt: orcpt)
    }

    /// The outcome of one attempt, from the mailer's report or error: per-recipient states, the
    /// message's new status and, for a retry, when. Pure.
    package static func evaluate(
        message: StoredMessage, sentTo: [String], result: Result<DeliveryReport, DeliveryError>,
        policy: RetryPolicy, now: QueueInstant, startedAt: QueueInstant, duration: Duration, random: Double,
        instance: String
    ) -> AttemptOutcome {
        var recipients = message.recipients
        let attempted = Set(sentTo.map { $0.lowercased() })
        func apply(_ outcomes: [RecipientOutcome]) {
            for o in outcomes {
                guard let i = recipients.firstIndex(where: { $0.address.lowercased() == o.address.lowercased() }) else { continue }
                let status: RecipientState.Status =
                    switch o.status {
                    case .accepted: .accepted
                    case .rejected: .rejected
                    case .deferred: .deferred
                    case .unknown: .unknown
                    }
                recipients[i] = RecipientState(
                    address: recipients[i].address, status: status, code: o.code, enhancedCode: o.enhancedCode, text: o.text)
            }
        }
        var attempt = AttemptRecord(
            number: message.attemptCount + 1, startedAt: startedAt.secondsSince1970, durationSeconds: duration.seconds,
            transport: "", outcome: "", recipients: sentTo, instance: instance)
        var errorText: String?
        var serverDelay: Duration?
        var routeFault: RouteFault?
        switch result {
        case .success(let report):
            attempt.transport = report.transport
            attempt.destination = report.destination
            attempt.reply = report.finalReply
            apply(report.recipients)
        case .failure(let error):
            let status: RecipientState.Status =
                switch error.kind {
                case .transient: .deferred
                case .permanent: .rejected
                case .outcomeUnknown: .unknown
                }
            for i in recipients.indices where attempted.contains(recipients[i].address.lowercased()) {
                recipients[i] = RecipientState(
                    address: recipients[i].address, status: status,
                    code: error.smtp?.reply.map { $0.code }, text: error.message)
            }
            if let report = error.report {
                attempt.transport = report.transport
                attempt.destination = report.destination
                attempt.reply = report.finalReply
                apply(report.recipients.filter { $0.status != .deferred || error.kind != .outcomeUnknown })
            }
            attempt.error = error.message
            errorText = error.message
            routeFault = error.routeFault
            if let wait = error.retryAfter {
                serverDelay = wait
            }
        }
        let unknown = recipients.contains { $0.status == .unknown && attempted.contains($0.address.lowercased()) }
        let open = recipients.filter(\.isOpen)
        let accepted = recipients.contains { $0.status == .accepted }
        let rejected = recipients.filter { $0.status == .rejected }
        if errorText == nil, !rejected.isEmpty {
            errorText = "refused for " + rejected.map { "\($0.address) (\($0.code.map(String.init) ?? "") \($0.text ?? ""))" }.joined(separator: ", ")
        }
        if open.isEmpty {
            attempt.outcome = accepted ? (rejected.isEmpty ? "delivered" : "partial") : "failed"
            return AttemptOutcome(
                status: accepted ? .delivered : .failed, recipients: recipients, attempt: attempt,
                nextAttemptAt: nil, lastError: errorText, unknown: unknown)
        }
        if unknown, !policy.allowsAnotherTry(unknownCount: message.unknownCount + 1) {
            attempt.outcome = "unknown"
            return AttemptOutcome(
                status: .unknown, recipients: recipients, attempt: attempt, nextAttemptAt: nil,
                lastError: (errorText ?? "") + " (the outcome is unknown; not retried: check the recipients' mailboxes)",
                unknown: true)
        }
        let failures = message.attemptCount - message.unknownCount + 1
        let ageBase = QueueInstant(secondsSince1970: message.ageBase)
        // The route's fault: the message is held with its route (due again at once, no back-off
        // of its own) and fails only past the maximum age.
        let decision =
            routeFault != nil
            ? policy.decideHeld(now: now, ageBase: ageBase)
            : policy.decide(failures: unknown ? 1 : max(1, failures), now: now, ageBase: ageBase, serverDelay: serverDelay, random: random)
        switch decision {
        case .retry(let at):
            attempt.outcome = unknown ? "unknown" : (accepted ? "partial" : "deferred")
            return AttemptOutcome(
                status: .deferred, recipients: recipients, attempt: attempt, nextAttemptAt: at.secondsSince1970,
                lastError: errorText, unknown: unknown)
        case .giveUp(let reason):
            attempt.outcome = "failed"
            return AttemptOutcome(
                status: .failed, recipients: recipients, attempt: attempt, nextAttemptAt: nil,
                lastError: (errorText.map { $0 + "; " } ?? "") + "gave up: " + reason, unknown: unknown)
        }
    }
}
