import OutboxConfig
import Testing

@Suite struct StoreURLSecretTests {
    @Test("a PostgreSQL store URL's password never appears in check-config (table or JSON), yet a change to it is a change")
    func storePasswordMasked() throws {
        let text = "[outbox]\nstore = postgres://outbox:Pg-S3cret-pass@db.example.com:5432/outbox\n"
        let config = try OutboxConfiguration.parse(text: text, fileName: "outbox.cfg", overrides: [], environment: [:])
        let row = try #require(config.effectiveOptions().first { $0.name == "outbox.store" })
        #expect(row.value == "postgres://outbox:********@db.example.com:5432/outbox")
        #expect(row.isSecret)
        for json in [false, true] {
            let output = json ? CheckConfig.renderJSON(config) : CheckConfig.renderTable(config)
            #expect(!output.contains("Pg-S3cret-pass"))
            #expect(output.contains("db.example.com"))
        }
        let changed = try OutboxConfiguration.parse(
            text: text.replacingOccurrences(of: "Pg-S3cret-pass", with: "other"),
            fileName: "outbox.cfg", overrides: [], environment: [:])
        #expect(changed.changes(from: config).map(\.name) == ["outbox.store"])
    }
}
