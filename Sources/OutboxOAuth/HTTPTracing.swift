import Foundation
import Tracing

/// One client span per HTTP request (Graph, EWS, token endpoints, upload sessions), named by
/// its method as OpenTelemetry's HTTP conventions say, a child of the task's context (the
/// delivery attempt's span). Attributes: `http.request.method`, `server.address`,
/// `server.port`, `url.full` without its query, `http.response.status_code`. Never a header or
/// a body: tokens and secrets travel there.
enum HTTPTracing {
    /// Takes the method and URL, not the request: a copy of a request with a streamed body
    /// (EWS's CreateItem) held while it is executed stalled the stream (the EWS tests time out).
    static func start(method: String, url text: String) -> any Span {
        let span = startSpan(method, ofKind: .client)
        span.attributes["http.request.method"] = method
        if let url = URL(string: text), let host = url.host {
            span.attributes["server.address"] = host
            span.attributes["server.port"] = url.port ?? (url.scheme == "https" ? 443 : 80)
            var components = URLComponents(url: url, resolvingAgainstBaseURL: false)
            components?.query = nil
            components?.user = nil
            components?.password = nil
            if let full = components?.string { span.attributes["url.full"] = full }
        }
        return span
    }

    static func end(_ span: any Span, status: Int) {
        span.attributes["http.response.status_code"] = status
        if status >= 400 {
            span.attributes["error.type"] = "\(status)"
            span.setStatus(SpanStatus(code: .error))
        }
        span.end()
    }

    static func end(_ span: any Span, error: any Error) {
        span.attributes["error.type"] = "\(type(of: error))"
        span.setStatus(SpanStatus(code: .error))
        span.end()
    }
}
