import Testing

@testable import OutboxConfig

@Suite struct DefaultTests {
    @Test(arguments: OptionTable.smtpClient + OptionTable.mailProperties + OptionTable.outbox)
    func defaultMatchesTable(_ d: OptionDescriptor) throws {
        let configuration = try load("")
        let name = d.section == .outbox ? "outbox.\(d.name)" : d.name
        let shown = try #require(value(of: name, in: configuration))
        if d.name == "grant-type" {
            #expect(shown == "(not set) (password)")
        } else {
            #expect(shown == (d.defaultValue ?? "(not set)"))
        }
        #expect(configuration.source(of: name) == .default)
    }

    @Test func typedDefaults() throws {
        let o = try load("").smtpClient
        #expect(o.allowDelegate == false)
        #expect(o.clientID == nil)
        #expect(o.cnxCheckIdleTime == .seconds(30))
        #expect(o.cnxMaxIdleTime == .seconds(300))
        #expect(o.cnxPoolSize == 10)
        #expect(o.connectTimeout == .seconds(300))
        #expect(o.directoryID == nil)
        #expect(o.enableAuthentication == false)
        #expect(o.enableDebug == false)
        #expect(o.exchangeVersion == "Exchange2010")
        #expect(o.password == nil)
        #expect(o.port == 25)
        #expect(o.protocolTimeout == .seconds(300))
        #expect(o.scope == "https://outlook.office.com/.default")
        #expect(o.secret == "smtp")
        #expect(o.server == nil)
        #expect(o.serverType == .smtp)
        #expect(o.smtpConnectionSecurity == .none)
        #expect(o.tenantAuthority == "https://login.microsoftonline.com")
        #expect(o.tokenExpiryMarginTime == .seconds(10))
        #expect(o.user == nil)
        #expect(o.grantType == nil)
        #expect(o.authMechanisms == nil && o.ewsAuthMechanisms == nil && o.localhost == nil && o.envelopeFrom == nil)
        #expect(o.sendPartial == true && o.dsnNotify == nil && o.dsnRet == nil && o.sslTrust.isEmpty && o.checkServerIdentity)
        #expect(o.usesFileTransport && !o.usesXOAUTH2 && !o.isGoogle)
        let s = try load("").outbox
        #expect(s.dataDirectory == "./outbox-data" && s.tlsCAFile == nil && s.httpListen == "127.0.0.1:8025" && s.store == "sqlite")
        #expect(s.graphURL == "https://graph.microsoft.com/v1.0" && s.googleTokenURL == "https://oauth2.googleapis.com/token")
    }

    @Test func effectsAsInTheReference() {
        let expected: [String: ChangeEffect] = [
            "allow-delegate": .atRestart, "client-id": .atRestart, "cnx-check-idle-time": .atRestart, "cnx-max-idle-time": .atRestart,
            "cnx-pool-size": .atRestart, "connect-timeout": .immediately, "directory-id": .atRestart, "enable-authentication": .immediately,
            "enable-debug": .immediately, "exchange-version": .atNextCycle, "password": .atRestart, "port": .immediately,
            "protocol-timeout": .immediately, "scope": .atRestart, "secret": .atRestart, "server": .immediately,
            "server-type": .atNextCycle, "smtp-connection-security": .atRestart, "tenant-authority": .atRestart,
            "token-expiry-margin-time": .immediately, "user": .immediately, "grant-type": .atRestart,
        ]
        #expect(OptionTable.smtpClient.count == expected.count)
        for d in OptionTable.smtpClient {
            #expect(expected[d.name] == d.effect, "\(d.name)")
        }
    }
}

struct ValidCase: Sendable, CustomTestStringConvertible {
    var line: String
    var option: String
    var shown: String
    var testDescription: String { line }
    init(_ line: String, _ option: String, _ shown: String) { self.line = line; self.option = option; self.shown = shown }
}

@Suite struct ValidValueTests {
    static let cases: [ValidCase] = [
        .init("allow-delegate = true", "allow-delegate", "true"),
        .init("allow-delegate = false", "allow-delegate", "false"),
        .init("allow-delegate = TRUE", "allow-delegate", "true"),
        .init("client-id = 0a1b2c3d-aaaa-bbbb-cccc-000000000000", "client-id", "0a1b2c3d-aaaa-bbbb-cccc-000000000000"),
        .init("client-id =", "client-id", "(not set)"),
        .init("cnx-check-idle-time = 00:00:00", "cnx-check-idle-time", "00:00:00"),
        .init("cnx-check-idle-time = 01:02:03", "cnx-check-idle-time", "01:02:03"),
        .init("cnx-check-idle-time = 100:59:59", "cnx-check-idle-time", "100:59:59"),
        .init("cnx-max-idle-time = 00:10:00", "cnx-max-idle-time", "00:10:00"),
        .init("cnx-pool-size = 1", "cnx-pool-size", "1"),
        .init("cnx-pool-size = 250", "cnx-pool-size", "250"),
        .init("connect-timeout = 00:00:45", "connect-timeout", "00:00:45"),
        .init("directory-id = contoso.onmicrosoft.com", "directory-id", "contoso.onmicrosoft.com"),
        .init("enable-authentication = false", "enable-authentication", "false"),
        .init("enable-debug = true", "enable-debug", "true"),
        .init("exchange-version = Exchange2010", "exchange-version", "Exchange2010"),
        .init("exchange-version = Exchange2010_SP1", "exchange-version", "Exchange2010_SP1"),
        .init("exchange-version = Exchange2010_SP2", "exchange-version", "Exchange2010_SP2"),
        .init("exchange-version = Exchange2010_SP3", "exchange-version", "Exchange2010_SP3"),
        .init("exchange-version = Exchange2013", "exchange-version", "Exchange2013"),
        .init("exchange-version = Office365", "exchange-version", "Office365"),
        .init("exchange-version = Exchange2016", "exchange-version", "Exchange2016"),
        .init("exchange-version = office365", "exchange-version", "Office365"),
        .init("exchange-version =", "exchange-version", "(empty)"),
        .init("password = s3cret", "password", "********"),
        .init("port = 1", "port", "1"),
        .init("port = 587", "port", "587"),
        .init("port = 65535", "port", "65535"),
        .init("protocol-timeout = 00:15:00", "protocol-timeout", "00:15:00"),
        .init("scope = https://outlook.office.com/.default", "scope", "https://outlook.office.com/.default"),
        .init("secret = gmail-app", "secret", "gmail-app"),
        .init("server = smtp.example.com", "server", "smtp.example.com"),
        .init("server = 192.0.2.10", "server", "192.0.2.10"),
        .init("server = ::1", "server", "::1"),
        .init("server-type = SMTP", "server-type", "SMTP"),
        .init("server-type = smtp", "server-type", "SMTP"),
        .init("smtp-connection-security = none", "smtp-connection-security", "none"),
        .init("smtp-connection-security = start-tls", "smtp-connection-security", "start-tls"),
        .init("smtp-connection-security = start-tls-required", "smtp-connection-security", "start-tls-required"),
        .init("smtp-connection-security = ssl-tls", "smtp-connection-security", "ssl-tls"),
        .init("tenant-authority = https://login.microsoftonline.com", "tenant-authority", "https://login.microsoftonline.com"),
        .init("tenant-authority = https://accounts.GOOGLE.com", "tenant-authority", "https://accounts.GOOGLE.com"),
        .init("tenant-authority = google", "tenant-authority", "google"),
        .init("token-expiry-margin-time = 00:00:00", "token-expiry-margin-time", "00:00:00"),
        .init("token-expiry-margin-time = 00:59:59", "token-expiry-margin-time", "00:59:59"),
        .init("user = mailer@example.com", "user", "mailer@example.com"),
        .init("grant-type = password", "grant-type", "password"),
        .init("grant-type = client_credentials", "grant-type", "client_credentials"),
        .init("mail.smtp.auth.mechanisms = plain login", "mail.smtp.auth.mechanisms", "PLAIN LOGIN"),
        .init("mail.ews.auth.mechanisms = XOAUTH2", "mail.ews.auth.mechanisms", "XOAUTH2"),
        .init("mail.smtp.localhost = relay.example.com", "mail.smtp.localhost", "relay.example.com"),
        .init("mail.smtp.localhost = [192.0.2.1]", "mail.smtp.localhost", "[192.0.2.1]"),
        .init("mail.smtp.from = bounces@example.com", "mail.smtp.from", "bounces@example.com"),
        .init("mail.smtp.sendpartial = false", "mail.smtp.sendpartial", "false"),
        .init("mail.smtp.dsn.notify = NEVER", "mail.smtp.dsn.notify", "NEVER"),
        .init("mail.smtp.dsn.notify = success, failure,DELAY", "mail.smtp.dsn.notify", "SUCCESS,FAILURE,DELAY"),
        .init("mail.smtp.dsn.ret = hdrs", "mail.smtp.dsn.ret", "HDRS"),
        .init("mail.smtp.dsn.ret = FULL", "mail.smtp.dsn.ret", "FULL"),
        .init("mail.smtp.ssl.trust = mail.example.com relay.example.com", "mail.smtp.ssl.trust", "mail.example.com relay.example.com"),
        .init("mail.smtp.ssl.checkserveridentity = true", "mail.smtp.ssl.checkserveridentity", "true"),
        .init("mail.smtp.quitwait = false", "mail.smtp.quitwait", "false (not used by Outbox)"),
    ]

    @Test(arguments: cases)
    func valid(_ c: ValidCase) throws {
        let configuration = try load(smtpClient(c.line))
        #expect(value(of: c.option, in: configuration) == c.shown)
        #expect(configuration.source(of: c.option) == .file(name: "outbox.cfg", line: 2))
    }

    @Test func outboxSettings() throws {
        let ca = temporaryFile("-----BEGIN CERTIFICATE-----\n", name: "ca.pem")
        let c = try load(
            """
            [outbox]
            data-directory = /var/lib/outbox
            http-listen = [::1]:9000
            store = memory
            tls-ca-file = \(ca)
            graph-url = http://127.0.0.1:8080/v1.0
            google-token-url = https://oauth2.example.test/token
            """)
        #expect(c.outbox.dataDirectory == "/var/lib/outbox")
        #expect(c.outbox.httpListen == "[::1]:9000")
        #expect(c.outbox.store == "memory")
        #expect(c.outbox.tlsCAFile == ca)
        #expect(c.outbox.graphURL == "http://127.0.0.1:8080/v1.0")
        #expect(c.outbox.googleTokenURL == "https://oauth2.example.test/token")
        #expect(c.source(of: "outbox.store") == .file(name: "outbox.cfg", line: 4))
    }

    @Test func typedMailProperties() throws {
        let o = try load(
            smtpClient(
                """
                mail.smtp.auth.mechanisms = xoauth2 plain
                mail.smtp.ssl.trust = *
                mail.smtp.ssl.checkserveridentity = false
                mail.smtp.sendpartial = false
                """)
        ).smtpClient
        #expect(o.authMechanisms == ["XOAUTH2", "PLAIN"])
        #expect(o.sslTrust == ["*"])
        #expect(o.checkServerIdentity == false)
        #expect(o.sendPartial == false)
    }

    @Test func fileSyntax() throws {
        let c = try load(
            """
            # a comment
            ; another

              [smtp-client]
               port   =   587   
            server = mail.example.com
            password = p#ss;word
            """)
        #expect(c.smtpClient.port == 587)
        #expect(c.smtpClient.server == "mail.example.com")
        #expect(c.smtpClient.password?.value == "p#ss;word")
        #expect(c.source(of: "port") == .file(name: "outbox.cfg", line: 5))
    }
}

struct InvalidCase: Sendable, CustomTestStringConvertible {
    var text: String
    var message: String
    var testDescription: String { text }
    init(_ text: String, _ message: String) { self.text = text; self.message = message }
}

@Suite struct InvalidValueTests {
    static let time = "is not a time in hh:mm:ss format (hours any whole number, minutes and seconds 00-59, e.g. 00:05:00)"
    static let cases: [InvalidCase] = [
        .init("allow-delegate = yes", "outbox.cfg:2: allow-delegate = yes is not true or false"),
        .init("cnx-check-idle-time = 30", "outbox.cfg:2: cnx-check-idle-time = 30 \(time)"),
        .init("cnx-check-idle-time = 00:60:00", "outbox.cfg:2: cnx-check-idle-time = 00:60:00 \(time)"),
        .init("cnx-max-idle-time = 00:05:60", "outbox.cfg:2: cnx-max-idle-time = 00:05:60 \(time)"),
        .init("cnx-max-idle-time = 5m", "outbox.cfg:2: cnx-max-idle-time = 5m \(time)"),
        .init("cnx-pool-size = 0", "outbox.cfg:2: cnx-pool-size = 0 is not an integer greater than 0"),
        .init("cnx-pool-size = -3", "outbox.cfg:2: cnx-pool-size = -3 is not an integer greater than 0"),
        .init("cnx-pool-size = ten", "outbox.cfg:2: cnx-pool-size = ten is not an integer greater than 0"),
        .init("connect-timeout = 00:00:-1", "outbox.cfg:2: connect-timeout = 00:00:-1 \(time)"),
        .init("enable-authentication = 1", "outbox.cfg:2: enable-authentication = 1 is not true or false"),
        .init("enable-debug = on", "outbox.cfg:2: enable-debug = on is not true or false"),
        .init(
            "exchange-version = Exchange2019",
            "outbox.cfg:2: exchange-version = Exchange2019 is not one of Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2010_SP3, Exchange2013, Office365, Exchange2016; did you mean Exchange2010? (or empty, for Exchange 2019)"
        ),
        .init("port = 70000", "outbox.cfg:2: port = 70000 is not a port number (1-65535)"),
        .init("port = 0", "outbox.cfg:2: port = 0 is not a port number (1-65535)"),
        .init("port = smtp", "outbox.cfg:2: port = smtp is not a port number (1-65535)"),
        .init("port =", "outbox.cfg:2: port has no value; valid values: Any valid port number (1-65535) (remove the line to use the default, 25)"),
        .init("protocol-timeout = 1:00:00:00", "outbox.cfg:2: protocol-timeout = 1:00:00:00 \(time)"),
        .init("secret = my secret", "outbox.cfg:2: secret = my secret contains white space; the secret name must not"),
        .init(
            "server = smtp example.com",
            "outbox.cfg:2: server = smtp example.com contains white space; give a host name, an IP address, or (for EWS) a URL"),
        .init(
            "server = smtp://mail.example.com",
            "outbox.cfg:2: server = smtp://mail.example.com is a URL, but server-type = SMTP needs a host name or IP address (a URL is for server-type = EWS)"
        ),
        .init("server-type = IMAP", "outbox.cfg:2: server-type = IMAP is not one of SMTP, EWS, GRAPH"),
        .init("server-type = GRAPHS", "outbox.cfg:2: server-type = GRAPHS is not one of SMTP, EWS, GRAPH; did you mean GRAPH?"),
        .init(
            "smtp-connection-security = starttls",
            "outbox.cfg:2: smtp-connection-security = starttls is not one of none, start-tls, start-tls-required, ssl-tls; did you mean start-tls?"),
        .init(
            "smtp-connection-security = tls",
            "outbox.cfg:2: smtp-connection-security = tls is not one of none, start-tls, start-tls-required, ssl-tls"),
        .init(
            "tenant-authority = login.microsoftonline.com",
            "outbox.cfg:2: tenant-authority = login.microsoftonline.com is neither a Microsoft authority URL (such as https://login.microsoftonline.com) nor a Google authority (a string containing \"google\")"
        ),
        .init(
            "token-expiry-margin-time = 01:00:00", "outbox.cfg:2: token-expiry-margin-time = 01:00:00 is not less than one hour (at most 00:59:59)"),
        .init("token-expiry-margin-time = 10", "outbox.cfg:2: token-expiry-margin-time = 10 \(time)"),
        .init("grant-type = refresh_token", "outbox.cfg:2: grant-type = refresh_token is not one of password, client_credentials"),
        .init("cnx-pool-sise = 3", "outbox.cfg:2: cnx-pool-sise is not an option of [smtp-client]; did you mean cnx-pool-size?"),
        .init("frobnicate = 3", "outbox.cfg:2: frobnicate is not an option of [smtp-client] (see docs/options.md)"),
        .init(
            "mail.smtp.dsn.notify = ALWAYS",
            "outbox.cfg:2: mail.smtp.dsn.notify = ALWAYS is not NEVER or a comma-separated combination of SUCCESS, FAILURE, DELAY"),
        .init(
            "mail.smtp.dsn.notify = NEVER,SUCCESS",
            "outbox.cfg:2: mail.smtp.dsn.notify = NEVER,SUCCESS is not NEVER or a comma-separated combination of SUCCESS, FAILURE, DELAY"),
        .init("mail.smtp.dsn.ret = ALL", "outbox.cfg:2: mail.smtp.dsn.ret = ALL is not one of FULL, HDRS"),
        .init(
            "mail.smtp.from = Mailer <m@example.com>",
            "outbox.cfg:2: mail.smtp.from = Mailer <m@example.com> is not an e-mail address (local@domain, without <>)"),
        .init("mail.smtp.sendpartial = maybe", "outbox.cfg:2: mail.smtp.sendpartial = maybe is not true or false"),
        .init(
            "mail.smtp.localhost = my host",
            "outbox.cfg:2: mail.smtp.localhost = my host is not a host name or address literal (e.g. mail.example.com or [192.0.2.1])"),
    ]

    @Test(arguments: cases)
    func invalid(_ c: InvalidCase) {
        #expect(problems(smtpClient(c.text)) == [c.message])
    }

    @Test func outboxSectionErrors() {
        #expect(
            problems(
                """
                [outbox]
                http-listen = localhost
                store = postgres
                graph-url = graph.microsoft.com
                tls-ca-file = /nonexistent/ca.pem
                data-dir = /tmp
                """) == [
                    "outbox.cfg:2: http-listen = localhost is not host:port with a port 1-65535 (e.g. 127.0.0.1:8025 or [::1]:8025)",
                    "outbox.cfg:3: store = postgres is not one of sqlite, memory or a postgres://user:password@host:port/database URL",
                    "outbox.cfg:4: graph-url = graph.microsoft.com is not an https:// or http:// URL",
                    "outbox.cfg:5: tls-ca-file = /nonexistent/ca.pem is not an existing file (a PEM file of CA certificates)",
                    "outbox.cfg:6: data-dir is not a setting of [outbox] (valid: data-directory, http-listen, http-tls-certificate-file, http-tls-key-file, store, tls-ca-file, graph-url, google-token-url, api-tokens, require-api-token, max-request-size, delivery-concurrency, lease-time, retry-initial-delay, retry-max-delay, retry-max-age, unknown-outcome-retries, rate-limit-per-minute, mailbox-concurrency, shutdown-deadline, queue-min-free, retention-content, retention-records, store-unavailable-wait, log-format, otel-endpoint); did you mean data-directory?",
                ])
    }

    @Test func fileStructureErrors() {
        #expect(
            problems(
                """
                port = 25
                [smtp-clinet]
                user = x
                [smtp-client]
                just some words
                = value
                port = 26
                port = 27
                [secret-smtp]
                pasword = x
                [secret-smtp
                """) == [
                    "outbox.cfg:1: port is outside any section; put [smtp-client] (or [outbox], [secret-<name>]) above it",
                    "outbox.cfg:2: [smtp-clinet] is not a section Outbox knows; valid sections: [smtp-client], [smtp-client-<route>], [secret-<name>], [outbox], [relay], [client-<name>]; did you mean [smtp-client]?",
                    "outbox.cfg:5: is not `key = value`, a [section] header or a comment (starting with # or ;)",
                    "outbox.cfg:6: has a value but no key before the =",
                    "outbox.cfg:8: port is set twice in [smtp-client] (first at line 7)",
                    "outbox.cfg:10: pasword is not a key of [secret-smtp]; its only key is password (the Google application's client secret)",
                    "outbox.cfg:11: a section header must look like [smtp-client]",
                ])
    }

    @Test func allProblemsAtOnce() {
        let found = problems(smtpClient("port = 0\ncnx-pool-size = 0\nenable-debug = maybe\nserver-type = X"))
        #expect(found.count == 4)
        #expect(found.map { $0.prefix(13) } == ["outbox.cfg:2:", "outbox.cfg:3:", "outbox.cfg:4:", "outbox.cfg:5:"])
    }

    @Test func keysAreCaseSensitive() {
        #expect(problems(smtpClient("Port = 25")) == ["outbox.cfg:2: Port is not an option of [smtp-client]; did you mean port?"])
    }
}

@Suite("queue-min-free")
struct QueueMinFreeTests {
    @Test("bytes, units, shares of the disk and auto")
    func values() throws {
        #expect(QueueMinFree.parse("8388608") == .bytes(8_388_608))
        #expect(QueueMinFree.parse("8MiB") == .bytes(8_388_608))
        #expect(QueueMinFree.parse("8 MiB") == .bytes(8_388_608))
        #expect(QueueMinFree.parse("500MB") == .bytes(500_000_000))
        #expect(QueueMinFree.parse("2GiB") == .bytes(2 << 30))
        #expect(QueueMinFree.parse("5%") == .percent(5))
        #expect(QueueMinFree.parse("AUTO") == .auto)
        for bad in ["", "-1", "5 parsecs", "100%", "1.5MiB", "MiB", "99999999999999999999"] {
            #expect(QueueMinFree.parse(bad) == nil, "\(bad)")
        }
        #expect(QueueMinFree.auto.bytes(ofCapacity: 1 << 30) == 100 << 20, "100 MiB beats 5% of 1 GiB")
        #expect(QueueMinFree.auto.bytes(ofCapacity: 100 << 30) == 5 << 30, "5% of 100 GiB beats 100 MiB")
        #expect(QueueMinFree.percent(10).bytes(ofCapacity: 1000) == 100)
        let c = try load("[outbox]\nqueue-min-free = 64MiB\nretention-content = 00:00:00\n")
        #expect(c.outbox.queueMinFree == .bytes(64 << 20))
        #expect(c.outbox.retentionContent == .zero)
        #expect(value(of: "outbox.queue-min-free", in: c) == "67108864")
        #expect(problemCodes("[outbox]\nqueue-min-free = lots\n") == ["invalid_value"])
        #expect(problems("[outbox]\nqueue-min-free = lots\n").first?.contains("queue-min-free = lots is not auto") == true)
    }
}
