import Foundation
import Testing

@testable import OutboxConfig

func dumped(_ value: some Any) -> String {
    var text = ""
    dump(value, to: &text)
    return text
}

@Suite struct SecretTests {
    static let secretValues = ["hunter2-S3CRET", "client-secret-XYZ", "refresh-token-QQQ"]

    @Test func secretDescriptionIsRedacted() {
        let s = Secret("hunter2-S3CRET")
        #expect(s.description == "<redacted>")
        #expect(s.debugDescription == "<redacted>")
        #expect(String(describing: s) == "<redacted>")
        var dumped = ""
        dump(s, to: &dumped)
        #expect(!dumped.contains("hunter2"))
        #expect(s.value == "hunter2-S3CRET")
    }

    @Test func envAndFileSecrets() throws {
        let path = temporaryFile("from-file-SECRET\n")
        let c = try load(
            smtpClient("password = env:OUTBOX_TEST_PW") + "[secret-smtp]\npassword = file:\(path)\n",
            env: ["OUTBOX_TEST_PW": "from-env-SECRET"])
        #expect(c.smtpClient.password?.value == "from-env-SECRET")
        #expect(c.secretSections["smtp"]?.password?.value == "from-file-SECRET")
        #expect(c.source(of: "password") == .environment(variable: "OUTBOX_TEST_PW"))
        #expect(c.source(of: "secret-smtp.password") == .secretFile(path: path))
        let crlf = temporaryFile("x\r\n")
        #expect(try load(smtpClient("password = file:\(crlf)")).smtpClient.password?.value == "x")
    }

    @Test func missingSecretSources() {
        #expect(
            problems(smtpClient("password = env:NOPE_NOT_SET")) == [
                "outbox.cfg:2: password refers to the environment variable NOPE_NOT_SET, which is not set"
            ])
        #expect(
            problems(smtpClient("password = file:/nonexistent/pw")) == [
                "outbox.cfg:2: password refers to the file /nonexistent/pw, which cannot be read (it must exist and hold UTF-8 text)"
            ])
        // Missing password is reported once, not again by the authentication rule.
        #expect(problemCodes(smtpClient("enable-authentication = true\nuser = u\npassword = env:NOPE_NOT_SET")) == ["missing_secret"])
    }

    /// Secrets never appear: not in problems (including misspelt keys and malformed lines),
    /// warnings, the table or the JSON.
    @Test func secretsAbsentFromEveryMessageAndOutput() throws {
        let bad = """
            [smtp-client]
            pasword = hunter2-S3CRET
            hunter2-S3CRET
            password = hunter2-S3CRET
            enable-authentication = maybe
            [secret-smtp]
            pasword = client-secret-XYZ
            [secret-bad]
            password = refresh-token-QQQ
            """
        let error = try #require(throws: ConfigurationError.self) { try load(bad, ["passwd=refresh-token-QQQ", "refresh-token-QQQ"]) }
        let texts = [
            error.description, CheckConfig.renderProblems(error), CheckConfig.renderJSON(error), String(describing: error), String(reflecting: error),
        ]
        for text in texts {
            for secret in Self.secretValues { #expect(!text.contains(secret), "\(text)") }
        }

        let good = """
            [smtp-client]
            server = mail.example.com
            enable-authentication = true
            user = u@example.com
            password = hunter2-S3CRET
            mail.smtp.proxy.password = refresh-token-QQQ
            enable-debug = true
            [secret-smtp]
            password = client-secret-XYZ
            """
        let c = try load(good)
        let outputs = [
            CheckConfig.renderTable(c), CheckConfig.renderJSON(c), c.warnings.map(\.description).joined(), String(describing: c.smtpClient),
            String(reflecting: c), String(describing: c), dumped(c),
        ]
        for text in outputs {
            for secret in Self.secretValues { #expect(!text.contains(secret), "\(text)") }
        }
        #expect(value(of: "password", in: c) == "********")
        #expect(value(of: "secret-smtp.password", in: c) == "********")
        #expect(value(of: "mail.smtp.proxy.password", in: c) == "********")
    }
}

@Suite struct OverrideTests {
    @Test func overridesReplaceFileValuesAndRecordProvenance() throws {
        let c = try load(
            smtpClient("port = 25\nserver = a.example.com"),
            ["port=587", "mail.smtp.from=b@example.com", "outbox.http-listen=0.0.0.0:9000", "secret-smtp.password=x", "user = spaced@example.com"])
        #expect(c.smtpClient.port == 587)
        #expect(c.source(of: "port") == .commandLine)
        #expect(c.source(of: "server") == .file(name: "outbox.cfg", line: 3))
        #expect(c.source(of: "cnx-pool-size") == .default)
        #expect(c.smtpClient.envelopeFrom == "b@example.com")
        #expect(c.outbox.httpListen == "0.0.0.0:9000")
        #expect(c.source(of: "outbox.http-listen") == .commandLine)
        #expect(c.secretSections["smtp"]?.password?.value == "x")
        #expect(c.smtpClient.user == "spaced@example.com")
        #expect(c.source(of: "password") == .default)
    }

    @Test func overrideErrors() {
        #expect(
            problems("", ["port=70000", "cnx-pool-sise=3", "outbox.nope=1", "nonsense"]) == [
                "-o: an override must be NAME=VALUE (e.g. -o port=587 or -o outbox.http-listen=127.0.0.1:8025)",
                "-o: cnx-pool-sise is not an option of [smtp-client]; did you mean cnx-pool-size?",
                "-o: port = 70000 is not a port number (1-65535)",
                "-o: outbox.nope is not a setting of [outbox] (valid: data-directory, http-listen, http-tls-certificate-file, http-tls-key-file, store, tls-ca-file, graph-url, google-token-url, api-tokens, require-api-token, max-request-size, delivery-concurrency, lease-time, retry-initial-delay, retry-max-delay, retry-max-age, unknown-outcome-retries, rate-limit-per-minute, mailbox-concurrency, shutdown-deadline, queue-min-free, retention-content, retention-records, store-unavailable-wait, log-format, otel-endpoint)",
            ])
    }

    @Test func provenanceDescriptions() {
        #expect(ValueSource.default.description == "default")
        #expect(ValueSource.file(name: "outbox.cfg", line: 7).description == "outbox.cfg:7")
        #expect(ValueSource.commandLine.description == "-o")
        #expect(ValueSource.environment(variable: "PW").description == "environment PW")
    }
}
