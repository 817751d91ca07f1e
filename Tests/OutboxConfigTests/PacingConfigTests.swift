import Foundation
import Testing

@testable import OutboxConfig

/// The pacing options of a route, the providers' presets, and how check-config shows them.
@Suite("Pacing options and presets")
struct PacingConfigTests {
    @Test("Exchange Online SMTP: 30/min, 10,000 recipients/day, 3 connections, from the server's name")
    func exchangeOnline() throws {
        for server in ["smtp.office365.com", "SMTP.Office365.com.", "smtp-mail.outlook.com"] {
            let c = try load(smtpClient("server = \(server)\nport = 587"))
            #expect(c.smtpClient.pacingPreset == .exchangeOnline, "\(server)")
            let limits = c.smtpClient.routeLimits
            #expect(limits.ratePerMinute == 30 && limits.recipientsPerDay == 10_000 && limits.maxConcurrent == 3)
            #expect(limits.messagesPerDay == nil)
            #expect(c.smtpClient.effectivePoolSize == 3)
            #expect(value(of: "rate-limit-per-minute", in: c)?.contains("preset: Exchange Online SMTP") == true)
            #expect(value(of: "rate-limit-per-minute", in: c)?.contains("learn.microsoft.com") == true)
        }
        #expect(try load(smtpClient("server = mail.example.com")).smtpClient.pacingPreset == nil)
        #expect(try load(smtpClient("server = notoffice365.com.example")).smtpClient.pacingPreset == nil)
    }

    @Test("Graph: 4 concurrent per mailbox and 1,000/min; Gmail: 2,000 messages and 10,000 recipients a day")
    func graphAndGmail() throws {
        let graph = try load(smtpClient("server-type = GRAPH\nuser = a@example.test\nclient-id = c\ndirectory-id = d\npassword = p"))
        #expect(graph.smtpClient.routeLimits == RouteLimits(ratePerMinute: 1_000, mailboxConcurrency: 4))
        let gmail = try load(smtpClient("server = smtp.gmail.com\nport = 587"))
        let limits = gmail.smtpClient.routeLimits
        #expect(limits.messagesPerDay == 2_000 && limits.recipientsPerDay == 10_000 && limits.ratePerMinute == nil)
        #expect(value(of: "message-limit-per-day", in: gmail)?.contains("support.google.com/a/answer/166852") == true)
    }

    @Test("a value set wins over the preset; 0 means no limit")
    func setValuesWin() throws {
        let c = try load(
            smtpClient("server = smtp.office365.com\nrate-limit-per-minute = 0\nrecipient-limit-per-day = 500\nmax-concurrent = 2"))
        let limits = c.smtpClient.routeLimits
        #expect(limits.ratePerMinute == nil && limits.recipientsPerDay == 500 && limits.maxConcurrent == 2)
        #expect(value(of: "rate-limit-per-minute", in: c) == "0 (no limit)")
        #expect(value(of: "recipient-limit-per-day", in: c) == "500")
        let plain = try load(smtpClient("server = mail.example.com\nmessage-limit-per-day = 100"))
        #expect(plain.smtpClient.routeLimits.messagesPerDay == 100)
        #expect(plain.smtpClient.routeLimits.ratePerMinute == nil)
    }

    @Test("SMTP max-concurrent is at most cnx-pool-size, with a warning")
    func maxConcurrentCapped() throws {
        let c = try load(smtpClient("server = mail.example.com\ncnx-pool-size = 4\nmax-concurrent = 9"))
        #expect(c.smtpClient.routeLimits.maxConcurrent == 4)
        #expect(c.warnings.contains { $0.code == "max_concurrent_over_pool" })
    }

    @Test("invalid values are refused, naming the option")
    func invalid() {
        #expect(problemCodes(smtpClient("server = a.example\nrate-limit-per-minute = -1")) == ["invalid_value"])
        #expect(problemCodes(smtpClient("server = a.example\nmax-concurrent = many")) == ["invalid_value"])
    }

    @Test("check-config explains how the route's limits combine with [outbox] per-mailbox limits")
    func note() throws {
        let c = try load(smtpClient("server = smtp.office365.com") + "[outbox]\nrate-limit-per-minute = 10\nmailbox-concurrency = 2\n")
        let note = try #require(c.notes.first { $0.hasPrefix("pacing:") })
        #expect(note.contains("30 messages/minute"))
        #expect(note.contains("per sending mailbox"))
        #expect(note.contains("10 messages/minute"))
        #expect(note.contains("stricter limit wins"))
    }

    @Test("[client-NAME] intake-limit-per-minute")
    func intakeLimit() throws {
        let hash = "$2b$12$OQmzGmxZl8G.yTsLT7QunOUVEp7EdnjN2LCXshj3UlLRTplx8U.He"
        let c = try load(
            "[relay]\nlisten = 127.0.0.1:2525\n[client-app]\nuser = app\npassword-hash = \(hash)\nallowed-senders = *\nintake-limit-per-minute = 20\n"
        )
        #expect(c.clients.first?.intakeLimitPerMinute == 20)
        #expect(
            problemCodes(
                "[relay]\nlisten = 127.0.0.1:2525\n[client-app]\nuser = app\npassword-hash = \(hash)\nallowed-senders = *\nintake-limit-per-minute = x\n"
            )
                == ["invalid_value"])
    }
}
