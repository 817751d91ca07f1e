import Foundation
import Testing

/// The real peers that `scripts/test.sh` starts for `OutboxIntegrationTests`, read from its
/// `OUTBOX_TEST_*` variables: a private Postfix (STARTTLS, implicit TLS, SASL incl. XOAUTH2, a
/// maildir sink), a second Postfix that a test stops and starts, and a PostgreSQL cluster.
///
/// A missing peer is a test failure, never a skip: `fromEnvironment()` records an issue that
/// names every missing variable, then throws.
package struct TestPeers: Sendable {
    /// The host every Postfix port listens on (`OUTBOX_TEST_SMTP_HOST`).
    package var smtpHost: String
    /// Submission with STARTTLS (`OUTBOX_TEST_SUBMISSION_PORT`).
    package var submissionPort: Int
    /// Implicit TLS (`OUTBOX_TEST_SMTPS_PORT`).
    package var smtpsPort: Int
    /// Clear text with AUTH (`OUTBOX_TEST_PLAIN_PORT`).
    package var plainPort: Int
    /// Clear text, 2 connections per client (`OUTBOX_TEST_LIMITED_PORT`).
    package var limitedPort: Int
    /// Clear text, drops a client idle for 2 s (`OUTBOX_TEST_SHORT_TIMEOUT_PORT`).
    package var shortTimeoutPort: Int
    /// The CA that signed Postfix's certificate (`OUTBOX_TEST_CA_FILE`).
    package var caFile: String
    /// Postfix's certificate and key (`OUTBOX_TEST_TLS_CERT`, `OUTBOX_TEST_TLS_KEY`).
    package var tlsCertificateFile: String
    package var tlsKeyFile: String
    /// The SASL account (`OUTBOX_TEST_USER`, `OUTBOX_TEST_PASSWORD`).
    package var user: String
    package var password: String
    /// The XOAUTH2 token Dovecot accepts (`OUTBOX_TEST_OAUTH_TOKEN`).
    package var oauthToken: String
    /// Where Postfix stores every message it accepts (`OUTBOX_TEST_MAILDIR`).
    package var maildir: Maildir
    /// Postfix's log file (`OUTBOX_TEST_POSTFIX_LOG`).
    package var postfixLog: String
    /// The second Postfix, which a test stops and starts (`OUTBOX_TEST_RESTART_DIR`,
    /// `OUTBOX_TEST_RESTART_PORT`).
    package var restartDirectory: String
    package var restartPort: Int
    /// The PostgreSQL cluster (`OUTBOX_TEST_POSTGRES_URL`).
    package var postgresURL: String

    /// The Postfix testbed's certificates, for a local HTTPS server that the SMTP client must
    /// trust with the same CA file as Postfix.
    package var certificates: TestCertificates {
        TestCertificates(caFile: caFile, certificateFile: tlsCertificateFile, keyFile: tlsKeyFile)
    }

    package struct Missing: Error, CustomStringConvertible {
        package var variables: [String]
        package var description: String {
            "the test peers are not running (\(variables.joined(separator: ", ")) not set): run the tests with scripts/test.sh"
        }
    }

    /// Reads the peers from the environment; records a test failure naming what is missing and
    /// throws `Missing` when any variable is absent or malformed.
    package static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> TestPeers {
        var missing: [String] = []
        func text(_ name: String) -> String {
            guard let value = environment[name], !value.isEmpty else {
                missing.append(name)
                return ""
            }
            return value
        }
        func port(_ name: String) -> Int {
            let value = text(name)
            guard let port = Int(value), (1...65535).contains(port) else {
                if !value.isEmpty { missing.append("\(name) (not a port: \(value))") }
                return 0
            }
            return port
        }
        if environment["OUTBOX_TEST_POSTFIX"] != "1" { missing.append("OUTBOX_TEST_POSTFIX=1") }
        let peers = TestPeers(
            smtpHost: text("OUTBOX_TEST_SMTP_HOST"),
            submissionPort: port("OUTBOX_TEST_SUBMISSION_PORT"),
            smtpsPort: port("OUTBOX_TEST_SMTPS_PORT"),
            plainPort: port("OUTBOX_TEST_PLAIN_PORT"),
            limitedPort: port("OUTBOX_TEST_LIMITED_PORT"),
            shortTimeoutPort: port("OUTBOX_TEST_SHORT_TIMEOUT_PORT"),
            caFile: text("OUTBOX_TEST_CA_FILE"),
            tlsCertificateFile: text("OUTBOX_TEST_TLS_CERT"),
            tlsKeyFile: text("OUTBOX_TEST_TLS_KEY"),
            user: text("OUTBOX_TEST_USER"),
            password: text("OUTBOX_TEST_PASSWORD"),
            oauthToken: text("OUTBOX_TEST_OAUTH_TOKEN"),
            maildir: Maildir(text("OUTBOX_TEST_MAILDIR")),
            postfixLog: text("OUTBOX_TEST_POSTFIX_LOG"),
            restartDirectory: text("OUTBOX_TEST_RESTART_DIR"),
            restartPort: port("OUTBOX_TEST_RESTART_PORT"),
            postgresURL: text("OUTBOX_TEST_POSTGRES_URL")
        )
        guard missing.isEmpty else {
            let error = Missing(variables: missing)
            Issue.record("\(error)", sourceLocation: sourceLocation)
            throw error
        }
        return peers
    }
}
