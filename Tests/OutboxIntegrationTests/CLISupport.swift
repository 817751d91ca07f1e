import OutboxTestSupport

extension TestPeers {
    /// `outbox send`/`probe` options for Postfix's clear-text port with AUTH.
    var plainOptions: [String] {
        [
            "-o", "server=localhost", "-o", "port=\(plainPort)", "-o", "enable-authentication=true",
            "-o", "user=\(user)", "-o", "password=\(password)",
        ]
    }

    /// Options for the submission port with STARTTLS required and the testbed's CA; the password
    /// is the last element (tests replace it).
    var tlsOptions: [String] {
        [
            "-o", "server=localhost", "-o", "port=\(submissionPort)", "-o", "smtp-connection-security=start-tls-required",
            "-o", "outbox.tls-ca-file=\(caFile)", "-o", "enable-authentication=true",
            "-o", "user=\(user)", "-o", "password=\(password)",
        ]
    }
}
