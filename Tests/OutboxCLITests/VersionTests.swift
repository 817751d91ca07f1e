import OutboxConfig
import OutboxTestSupport
import Testing

@Suite("outbox --version")
struct VersionTests {
    @Test("prints the one version constant, the one every HTTP User-Agent carries")
    func version() async throws {
        let r = try await OutboxBinary.run(["--version"], cwd: try OutboxBinary.temporaryDirectory())
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == OutboxVersion.current)
        #expect(OutboxVersion.userAgent == "Outbox/\(OutboxVersion.current)")
    }
}
