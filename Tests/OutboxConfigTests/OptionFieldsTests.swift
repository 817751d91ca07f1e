import Foundation
import Testing

@testable import OutboxConfig

/// Every option has a field, each field copies its own option, and a reload plan follows the
/// take-effect column.
@Suite("Option fields and reload plans")
struct OptionFieldsTests {
    /// Every `[smtp-client]`, `mail.*` and `[outbox]` option set to a value that is not its
    /// default.
    static let everything = """
        [smtp-client]
        allow-delegate = true
        client-id = client-9
        cnx-check-idle-time = 00:00:45
        cnx-max-idle-time = 00:07:00
        cnx-pool-size = 7
        connect-timeout = 00:00:17
        directory-id = tenant-9
        enable-authentication = true
        enable-debug = true
        exchange-version = Exchange2016
        password = pw-9
        port = 2587
        protocol-timeout = 00:00:19
        scope = https://outlook.office365.com/.default openid
        secret = other
        server = https://mail.example.test/EWS/Exchange.asmx
        server-type = EWS
        smtp-connection-security = start-tls
        tenant-authority = https://login.example.test
        token-expiry-margin-time = 00:00:33
        user = someone@example.test
        grant-type = password
        mail.smtp.auth.mechanisms = LOGIN
        mail.ews.auth.mechanisms = BASIC
        mail.smtp.localhost = client.example.test
        mail.smtp.from = bounces@example.test
        mail.smtp.sendpartial = false
        mail.smtp.dsn.notify = FAILURE
        mail.smtp.dsn.ret = HDRS
        mail.smtp.ssl.trust = mail.example.test
        mail.smtp.ssl.checkserveridentity = false
        senders = *@billing.example.test
        send-as = shared@example.test
        rate-limit-per-minute = 20
        message-limit-per-day = 500
        recipient-limit-per-day = 900
        max-concurrent = 2

        [secret-other]
        password = other-pw

        [outbox]
        data-directory = /tmp/outbox-fields-test
        http-listen = 127.0.0.1:18025
        http-tls-certificate-file = /etc/ssl/certs/ca-certificates.crt
        http-tls-key-file = /etc/os-release
        store = postgres://outbox@127.0.0.1:5432/outbox
        tls-ca-file = /etc/ssl/certs/ca-certificates.crt
        graph-url = https://graph.example.test/v1.0
        google-token-url = https://google.example.test/token
        api-tokens = token-a
        require-api-token = true
        max-request-size = 1000000
        delivery-concurrency = 3
        lease-time = 00:01:00
        retry-initial-delay = 00:00:05
        retry-max-delay = 00:10:00
        retry-max-age = 02:00:00
        unknown-outcome-retries = 3
        rate-limit-per-minute = 60
        mailbox-concurrency = 2
        shutdown-deadline = 00:00:09
        queue-min-free = 5%
        retention-content = 00:30:00
        retention-records = 48:00:00
        store-unavailable-wait = 00:00:03
        log-format = json
        otel-endpoint = http://127.0.0.1:4318
        """

    static var reloadable: [OptionDescriptor] {
        OptionTable.smtpClient + OptionTable.mailProperties + OptionTable.routeOptions + OptionTable.pacingOptions + OptionTable.outbox
    }

    /// The name a change reports (and the field's key): `[outbox]` options with `outbox.`.
    static func key(_ descriptor: OptionDescriptor) -> String {
        descriptor.section == .outbox ? "outbox.\(descriptor.name)" : descriptor.name
    }

    @Test("every [smtp-client], mail.*, route and [outbox] option has a field")
    func everyOptionHasAField() {
        let missing = Self.reloadable.map(Self.key).filter { OptionTable.fields[$0] == nil }
        #expect(missing.isEmpty, "options without a field in OptionTable.fields: \(missing)")
        let stray = Set(OptionTable.fields.keys).subtracting(Self.reloadable.map(Self.key))
        #expect(stray.isEmpty, "fields of no option: \(stray)")
    }

    @Test("each field copies its own option and nothing else")
    func eachFieldCopiesItsOption() throws {
        let new = try load(Self.everything)
        let defaults = OutboxConfiguration()
        let names = Self.reloadable.map(Self.key)
        let changed = Set(new.changes(from: defaults).map(\.name))
        // The fixture must change every option, or the copy below proves nothing.
        #expect(Set(names).subtracting(changed).isEmpty, "the fixture leaves these at their defaults: \(Set(names).subtracting(changed))")
        for descriptor in Self.reloadable {
            let name = Self.key(descriptor)
            var copy = defaults
            OptionTable.fields[name]?.copy(new, &copy)
            let differences = new.changes(from: copy).map(\.name)
            #expect(!differences.contains(name), "\(name) was not copied")
            let others = copy.changes(from: defaults).map(\.name).filter { $0 != name }
            #expect(others.isEmpty, "copying \(name) also changed \(others)")
        }
    }

    @Test("a reload plan applies immediate and next-cycle options and keeps at-restart ones")
    func planFollowsTheTakeEffectColumn() throws {
        let old = try load(smtpClient("server = a.example.test\nport = 25\ncnx-pool-size = 4\npassword = old-pw\nuser = u@example.test"))
        let new = try load(
            smtpClient(
                "server = https://b.example.test/EWS/Exchange.asmx\nport = 2525\ncnx-pool-size = 9\npassword = new-pw\nuser = u@example.test\nserver-type = EWS"
            )
                + "[outbox]\nretry-initial-delay = 00:00:07\nhttp-listen = 127.0.0.1:19000\n")
        let plan = old.planReload(to: new)
        let c = plan.configuration.smtpClient
        #expect(c.server == "https://b.example.test/EWS/Exchange.asmx")
        #expect(c.port == 2525)
        #expect(c.serverType == .ews)
        #expect(c.cnxPoolSize == 4)
        #expect(c.password?.value == "old-pw")
        #expect(plan.configuration.outbox.retryInitialDelay == .seconds(7))
        #expect(plan.configuration.outbox.httpListen == old.outbox.httpListen)
        #expect(Set(plan.applied.map(\.name)) == ["server", "port", "server-type", "outbox.retry-initial-delay"])
        #expect(Set(plan.waiting.map(\.name)) == ["cnx-pool-size", "password", "outbox.http-listen"])
        // Nothing left to apply: the plan's configuration differs from the new one only in
        // options that wait for a restart.
        let rest = new.changes(from: plan.configuration)
        #expect(rest.allSatisfy { $0.effect == .atRestart }, "\(rest)")
    }
}
