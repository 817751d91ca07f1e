import Foundation
import Testing

@testable import OutboxConfig

/// Configurations written for the reference's product load unchanged.
@Suite struct ReferenceConfigTests {
    @Test func gmailXOAUTH2() throws {
        let c = try load(
            """
            [smtp-client]
            server = smtp.gmail.com
            port = 465
            smtp-connection-security = ssl-tls
            enable-authentication = true
            user = support@example.com
            password = 1//0refresh-token
            mail.smtp.auth.mechanisms = XOAUTH2
            client-id = 1234567890-abc.apps.googleusercontent.com
            tenant-authority = https://accounts.google.com
            secret = smtp
            token-expiry-margin-time = 00:00:10
            cnx-pool-size = 10
            cnx-check-idle-time = 00:00:30
            cnx-max-idle-time = 00:05:00
            connect-timeout = 00:05:00
            protocol-timeout = 00:05:00

            [secret-smtp]
            password = GOCSPX-client-secret
            """)
        let o = c.smtpClient
        #expect(o.isGoogle && o.usesXOAUTH2 && o.usesOAuth)
        #expect(o.authMechanisms == ["XOAUTH2"])
        #expect(o.password?.value == "1//0refresh-token")
        #expect(c.chosenSecretSection?.password?.value == "GOCSPX-client-secret")
        #expect(o.smtpConnectionSecurity == .sslTLS && o.port == 465)
        #expect(c.warnings.isEmpty)
    }

    @Test func office365Graph() throws {
        let c = try load(
            """
            [smtp-client]
            server-type = GRAPH
            user = sender@contoso.onmicrosoft.com
            password = app~secret
            client-id = 11111111-2222-3333-4444-555555555555
            directory-id = 66666666-7777-8888-9999-000000000000
            tenant-authority = https://login.microsoftonline.com
            scope = https://graph.microsoft.com/.default
            allow-delegate = true
            """)
        let o = c.smtpClient
        #expect(o.serverType == .graph && o.usesOAuth && !o.usesXOAUTH2 && !o.isGoogle)
        #expect(o.effectiveScope == "https://graph.microsoft.com/.default")
        #expect(o.effectiveGrantType == .clientCredentials)
        #expect(o.allowDelegate)
        #expect(c.warnings.isEmpty)
    }

    @Test func office365SMTPWithXOAUTH2() throws {
        let c = try load(
            """
            [smtp-client]
            server = smtp.office365.com
            port = 587
            smtp-connection-security = start-tls-required
            enable-authentication = true
            user = sender@contoso.com
            password = user-password
            mail.smtp.auth.mechanisms = XOAUTH2
            client-id = 11111111-2222-3333-4444-555555555555
            directory-id = contoso.onmicrosoft.com
            scope = https://outlook.office.com/.default
            """)
        #expect(c.smtpClient.usesXOAUTH2 && c.smtpClient.effectiveScope == OptionTable.defaultOutlookScope)
        #expect(c.smtpClient.effectiveGrantType == .password)
    }

    @Test func exchangeEWS() throws {
        let c = try load(
            """
            [smtp-client]
            server-type = EWS
            server = https://mail.contoso.com/EWS/Exchange.asmx
            exchange-version = Exchange2013
            enable-authentication = true
            user = CONTOSO\\mailer
            password = pw
            """)
        #expect(c.smtpClient.serverType == .ews && c.smtpClient.exchangeVersion == "Exchange2013")
        #expect(c.warnings.isEmpty)
    }

    @Test func plainRelayWithDefaults() throws {
        let c = try load("[smtp-client]\nserver = relay.internal\n")
        #expect(!c.smtpClient.usesFileTransport && c.smtpClient.port == 25 && c.smtpClient.smtpConnectionSecurity == .none)
    }
}

@Suite struct CheckConfigTests {
    @Test func tableShowsValueSourceAndEffect() throws {
        let c = try load(smtpClient("server = mail.example.com\nport = 587\npassword = env:PW"), ["cnx-pool-size=4"], env: ["PW": "hunter2-S3CRET"])
        let table = CheckConfig.renderTable(c)
        let lines = table.split(separator: "\n").map(String.init)
        func row(_ name: String) -> [String]? {
            lines.first { $0.hasPrefix(name + " ") }.map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        }
        #expect(row("port") == ["port", "587", "outbox.cfg:3", "immediately"])
        #expect(row("cnx-pool-size") == ["cnx-pool-size", "4", "-o", "at", "restart"])
        #expect(row("password") == ["password", "********", "environment", "PW", "at", "restart"])
        #expect(row("server-type") == ["server-type", "SMTP", "default", "at", "next", "cycle"])
        #expect(table.contains("Configuration: outbox.cfg"))
        #expect(table.hasSuffix("Configuration is valid.\n"))
        #expect(!table.contains("hunter2"))
    }

    @Test func jsonIsParseable() throws {
        let c = try load(smtpClient("port = 2525\nmail.smtp.ssl.trust = *"))
        let json = CheckConfig.renderJSON(c)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["valid"] as? Bool == true)
        let options = try #require(object["options"] as? [[String: Any]])
        let port = try #require(options.first { $0["name"] as? String == "port" })
        #expect(port["value"] as? String == "2525" && port["source"] as? String == "outbox.cfg:2" && port["effect"] as? String == "immediately")
        #expect((object["warnings"] as? [[String: Any]])?.first?["code"] as? String == "trust_all_certificates")
    }

    @Test func runExitCodes() throws {
        let good = temporaryFile("[smtp-client]\nserver = mail.example.com\n", name: "good.cfg")
        let bad = temporaryFile("[smtp-client]\nport = 70000\n", name: "bad.cfg")
        #expect(CheckConfig.run(file: good, overrides: [], environment: [:], json: false).exitCode == 0)
        let failed = CheckConfig.run(file: bad, overrides: [], environment: [:], json: false)
        #expect(failed.exitCode == 2)
        #expect(failed.output == "\(bad):2: port = 70000 is not a port number (1-65535)\nConfiguration is not valid: 1 problem.\n")
        let json = CheckConfig.run(file: bad, overrides: [], environment: [:], json: true)
        #expect(json.exitCode == 2 && json.output.contains("\"valid\" : false"))
        let missing = CheckConfig.run(file: "/nonexistent/outbox.cfg", overrides: [], environment: [:], json: false)
        #expect(missing.exitCode == 2 && missing.output.hasPrefix("/nonexistent/outbox.cfg: the configuration file does not exist"))
    }

    @Test func noFileShowsDefaults() throws {
        // The test runs where ./outbox.cfg does not exist (the package root has none).
        guard !FileManager.default.fileExists(atPath: "outbox.cfg") else { return }
        let result = CheckConfig.run(file: nil, overrides: [], environment: [:], json: false)
        #expect(result.exitCode == 0)
        #expect(result.output.hasPrefix("Configuration: no file (./outbox.cfg not found): built-in defaults"))
        #expect(result.output.contains("file transport"))
    }

    @Test func changesForReload() throws {
        let old = try load(smtpClient("server = a.example.com\nport = 25\npassword = one"))
        let new = try load(smtpClient("server = b.example.com\nport = 25\npassword = two\nserver-type = SMTP\nmail.x.y = 1"))
        let changes = new.changes(from: old)
        #expect(
            changes == [
                ConfigurationChange(name: "password", effect: .atRestart),
                ConfigurationChange(name: "server", effect: .immediately),
                ConfigurationChange(name: "mail.x.y", effect: .atRestart),
            ])
        #expect(old.changes(from: old).isEmpty)
    }
}
