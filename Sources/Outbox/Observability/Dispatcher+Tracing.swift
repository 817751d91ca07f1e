import Foundation
import OutboxTransports
import Tracing

/// The delivery attempt's span (`outbox.delivery`): its parent is the submitting request's
/// span when the message was stored with a `traceparent` (W3C Trace Context), so the attempt,
/// minutes later, belongs to the trace that submitted it. The transports' spans (the SMTP
/// connection's set-up, the transaction, HTTP requests) are its children. Without a tracer
/// bootstrapped (`[outbox] otel-endpoint` unset) every span is a no-op.
extension Dispatcher {
    /// Reads the `traceparent` header stored with a message.
    struct TraceparentExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }

    /// Writes a span's context as W3C headers.
    struct TraceparentInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    /// The span's trace id (32 hex digits), for the delivery log; nil when tracing is off.
    func traceID(of span: any Span) -> String? {
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(span.context, into: &carrier, using: TraceparentInjector())
        guard let traceparent = carrier["traceparent"] else { return nil }
        let parts = traceparent.split(separator: "-")
        return parts.count >= 2 ? String(parts[1]) : nil
    }

    /// Starts the attempt's span, with the stored `traceparent` as its parent.
    func startDeliverySpan(_ message: StoredMessage, recipients: Int) -> any Span {
        var context = ServiceContext.topLevel
        if let traceparent = message.traceparent {
            InstrumentationSystem.instrument.extract(["traceparent": traceparent], into: &context, using: TraceparentExtractor())
        }
        let span = startSpan("outbox.delivery", context: context, ofKind: .producer)
        guard span.isRecording else { return span }
        span.attributes["outbox.message.id"] = message.id
        if let messageID = message.messageID { span.attributes["outbox.message_id_header"] = messageID }
        span.attributes["outbox.route"] = message.route
        span.attributes["outbox.attempt"] = message.attemptCount + 1
        span.attributes["outbox.recipient.count"] = recipients
        span.attributes["messaging.message.body.size"] = message.size
        return span
    }

    /// Runs the send with the attempt's span as the task's context (the transports' spans become
    /// its children).
    func withDeliverySpan(
        _ span: any Span, _ send: () async throws(DeliveryError) -> DeliveryReport
    ) async throws(DeliveryError) -> DeliveryReport {
        let result: Result<DeliveryReport, DeliveryError> = await DeliveryLog.$dispatching.withValue(true) {
            await ServiceContext.withValue(span.context) {
                do throws(DeliveryError) {
                    return .success(try await send())
                } catch {
                    return .failure(error)
                }
            }
        }
        return try result.get()
    }

    /// Ends the attempt's span with its result: where it went, the reply code, the outcome.
    func endDeliverySpan(_ span: any Span, result: Result<DeliveryReport, DeliveryError>, outcome: AttemptOutcome) {
        guard span.isRecording else { return span.end() }
        var report: DeliveryReport?
        switch result {
        case .success(let r): report = r
        case .failure(let error):
            report = error.report
            span.attributes["error.type"] = error.routeFault?.rawValue ?? error.kind.rawValue
            if let code = error.smtp?.reply?.code { span.attributes["smtp.reply.code"] = code }
            span.setStatus(SpanStatus(code: .error, message: error.message))
        }
        if let report {
            span.attributes["outbox.transport"] = report.transport
            if let (host, port) = Self.hostAndPort(report.destination) {
                span.attributes["server.address"] = host
                if let port { span.attributes["server.port"] = port }
            }
            if let reply = report.finalReply, let code = Int(reply.prefix(3)) {
                span.attributes[report.transport == "smtp" ? "smtp.reply.code" : "http.response.status_code"] = code
            }
            if let tls = report.tls { span.attributes["outbox.tls"] = tls }
        }
        span.attributes["outbox.result"] = outcome.status.rawValue
        span.end()
    }

    /// `host:port`, `[v6]:port` or a URL's host and port.
    static func hostAndPort(_ destination: String) -> (String, Int?)? {
        if let url = URL(string: destination), let host = url.host, url.scheme != nil {
            return (host, url.port ?? (url.scheme == "https" ? 443 : url.scheme == "http" ? 80 : nil))
        }
        guard let colon = destination.lastIndex(of: ":") else { return destination.isEmpty ? nil : (destination, nil) }
        let host = destination[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return (host, Int(destination[destination.index(after: colon)...]))
    }
}
