import NIOSSL
import Testing

@testable import OutboxSMTP

@Suite("TLS context: once per configuration")
struct TLSContextCacheTests {
    @Test("connections of one configuration share its context; a changed TLS configuration or a new configuration builds another")
    func sharedPerConfiguration() throws {
        let configuration = SMTPClientConfiguration(host: "smtp.example.test", security: .startTLSRequired)
        let first = try configuration.tlsContexts.context(for: configuration.makeTLSConfiguration())
        let second = try configuration.tlsContexts.context(for: configuration.makeTLSConfiguration())
        #expect(first === second)

        var copy = configuration
        copy.checkServerIdentity = false
        let changed = try copy.tlsContexts.context(for: copy.makeTLSConfiguration())
        #expect(changed !== first)

        let reloaded = SMTPClientConfiguration(host: "smtp.example.test", security: .startTLSRequired)
        let fresh = try reloaded.tlsContexts.context(for: reloaded.makeTLSConfiguration())
        #expect(fresh !== first)
    }
}
