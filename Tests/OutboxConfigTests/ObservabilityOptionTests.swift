import Testing

@testable import OutboxConfig

/// `[outbox] log-format` and `otel-endpoint`: defaults, valid values, refusals, `check-config`'s
/// effective value.
@Suite("Observability options")
struct ObservabilityOptionTests {
    @Test("defaults: logfmt, no tracing")
    func defaults() throws {
        let c = try load("[outbox]\n")
        #expect(c.outbox.logFormat == .logfmt)
        #expect(c.outbox.otelEndpoint == nil)
    }

    @Test("json (any case) and an http URL are taken; the effective options show them")
    func valid() throws {
        let c = try load("[outbox]\nlog-format = JSON\notel-endpoint = http://127.0.0.1:4318\n")
        #expect(c.outbox.logFormat == .json)
        #expect(c.outbox.otelEndpoint == "http://127.0.0.1:4318")
        let effective = Dictionary(uniqueKeysWithValues: c.effectiveOptions().map { ($0.name, $0.value) })
        #expect(effective["outbox.log-format"] == "json")
        #expect(effective["outbox.otel-endpoint"] == "http://127.0.0.1:4318")
    }

    @Test("other values are refused with the option's line")
    func refused() {
        #expect(problems("[outbox]\nlog-format = xml\n") == ["outbox.cfg:2: log-format = xml is not logfmt or json"])
        #expect(
            problems("[outbox]\notel-endpoint = collector:4318\n") == [
                "outbox.cfg:2: otel-endpoint = collector:4318 is not an https:// or http:// URL"
            ])
    }
}
