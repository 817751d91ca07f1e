import Foundation
import OutboxSMTP
import Tracing

/// An instant for a span's start or end given as a wall-clock date.
package struct TraceInstant: TracerInstant {
    package var nanosecondsSinceEpoch: UInt64

    package init(_ date: Date) {
        nanosecondsSinceEpoch = UInt64(max(0, date.timeIntervalSince1970 * 1_000_000_000))
    }

    package static func < (lhs: TraceInstant, rhs: TraceInstant) -> Bool { lhs.nanosecondsSinceEpoch < rhs.nanosecondsSinceEpoch }
}

/// The SMTP transport's spans, children of the delivery attempt's span (the task's
/// `ServiceContext`): the set-up of a connection opened for this delivery (`smtp.connect`,
/// `smtp.greeting`, `smtp.ehlo`, `smtp.starttls`, `smtp.tls`, `smtp.auth`, from its step timings)
/// and `smtp.transaction` (MAIL, RCPT, DATA). Attributes follow OpenTelemetry's conventions
/// (`server.address`, `server.port`, `network.peer.address`, `tls.protocol.version`); the AUTH
/// mechanism is named, never its payload.
enum SMTPTracing {
    /// Reports the set-up of `connection` when this delivery (started at `since`) is its first
    /// and the connection was opened during it.
    static func connectionOpened(_ connection: SMTPConnection, since: Date) {
        guard connection.openedAt >= since.addingTimeInterval(-0.001), connection.claimFirstUse() else { return }
        var at = connection.openedAt
        let configuration = connection.configuration
        for (step, duration) in connection.stepTimings {
            let end = at.addingTimeInterval(Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
            let span = startSpan("smtp.\(step)", at: TraceInstant(at), ofKind: .client)
            span.attributes["server.address"] = configuration.host
            span.attributes["server.port"] = configuration.port
            span.attributes["smtp.connection.id"] = connection.id
            switch step {
            case "connect":
                if let peer = connection.remoteAddress { span.attributes["network.peer.address"] = peer }
            case "tls", "starttls":
                if let version = connection.tlsInfo?.version {
                    span.attributes["tls.protocol.version"] = version.replacingOccurrences(of: "TLSv", with: "")
                }
            case "auth":
                if let mechanism = connection.authMechanism { span.attributes["smtp.auth.mechanism"] = mechanism.rawValue }
            default: break
            }
            span.end(at: TraceInstant(end))
            at = end
        }
    }

    /// True when no instrument is bootstrapped or bound to the task: every span would be a
    /// no-op. (A comparison of types; finding the tracer itself costs a lock and protocol
    /// conformance lookups, for every message.)
    static var isOff: Bool { type(of: InstrumentationSystem.instrument) == NoOpInstrument.self }

    /// Starts the transaction's span on `connection`.
    static func startTransaction(_ connection: SMTPConnection, recipients: Int?) -> any Span {
        let span = startSpan("smtp.transaction", ofKind: .client)
        // Attributes only for a span that records (no tracer bootstrapped: a no-op span would
        // still build them, for every message).
        guard span.isRecording else { return span }
        span.attributes["server.address"] = connection.configuration.host
        span.attributes["server.port"] = connection.configuration.port
        span.attributes["smtp.connection.id"] = connection.id
        if let recipients { span.attributes["outbox.recipient.count"] = recipients }
        return span
    }

    /// Ends the transaction's span with the server's final reply.
    static func end(_ span: (any Span)?, _ result: SMTPTransactionResult) {
        guard let span else { return }
        guard span.isRecording else { return span.end() }
        if let reply = result.finalReply { span.attributes["smtp.reply.code"] = reply.code }
        span.attributes["outbox.recipient.accepted"] = result.recipients.filter(\.accepted).count
        if !result.delivered { span.setStatus(SpanStatus(code: .error, message: result.finalReply?.description)) }
        span.end()
    }

    /// Ends the transaction's span with its error (the reply code, the error's code; never a secret).
    static func end(_ span: (any Span)?, _ error: SMTPError) {
        guard let span else { return }
        guard span.isRecording else { return span.end() }
        if let code = error.reply?.code { span.attributes["smtp.reply.code"] = code }
        span.attributes["error.type"] = error.code.rawValue
        span.setStatus(SpanStatus(code: .error, message: error.message))
        span.end()
    }
}
