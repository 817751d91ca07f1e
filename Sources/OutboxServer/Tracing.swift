import Foundation
import Logging
import NIOConcurrencyHelpers
import OTel
import ServiceLifecycle
import Tracing

/// The submitting request's W3C Trace Context (`traceparent`), stored with the message so that
/// its delivery spans join that trace.
package enum TraceContext {
    /// The header when it is a valid version-00 `traceparent` (W3C Trace Context §3.2:
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero), else nil
    /// (an invalid one is ignored, as the specification says).
    package static func traceparent(_ header: String?) -> String? {
        guard let header = header?.trimmingCharacters(in: .whitespaces).lowercased() else { return nil }
        let parts = header.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0] != "ff", parts[0].count == 2, parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
            parts.prefix(4).allSatisfy({ $0.allSatisfy(\.isHexDigit) }),
            parts[1].contains(where: { $0 != "0" }), parts[2].contains(where: { $0 != "0" })
        else { return nil }
        // Version 00 has exactly four fields; a later version may add some (kept as sent).
        if parts[0] == "00", parts.count != 4 { return nil }
        return header
    }
}

/// `[outbox] otel-endpoint`: the process's tracer, exporting with OTLP/HTTP (protobuf) through
/// swift-otel, bootstrapped once per process.
package enum TraceExport {
    private static let bootstrapped = NIOLockedValueBox(false)

    /// The traces URL for an endpoint: `/v1/traces` is added when the URL has no path.
    static func tracesURL(_ endpoint: String) -> String {
        guard let url = URL(string: endpoint), url.path.isEmpty || url.path == "/" else { return endpoint }
        return (endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint) + "/v1/traces"
    }

    /// Bootstraps the global tracer to export to `endpoint` and returns the exporter's service
    /// (run it in the daemon's service group); nil when `endpoint` is nil or a tracer was
    /// bootstrapped already.
    static func start(endpoint: String?, logger: Logger) throws -> (any Service)? {
        guard let endpoint else { return nil }
        let first = bootstrapped.withLockedValue { done in
            defer { done = true }
            return !done
        }
        guard first else { return nil }
        var configuration = OTel.Configuration.default
        configuration.serviceName = "outbox"
        configuration.diagnosticLogger = .custom(logger)
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.traces.enabled = true
        configuration.traces.exporter = .otlp
        configuration.traces.otlpExporter.protocol = .httpProtobuf
        configuration.traces.otlpExporter.endpoint = tracesURL(endpoint)
        configuration.propagators = [.traceContext]
        let backend = try OTel.makeTracingBackend(configuration: configuration)
        InstrumentationSystem.bootstrap(backend.factory)
        logger.info("traces are exported with OTLP/HTTP to \(tracesURL(endpoint))")
        return backend.service
    }
}
