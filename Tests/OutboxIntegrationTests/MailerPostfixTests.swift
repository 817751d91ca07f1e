import Foundation
import Logging
import NIOConcurrencyHelpers
import Outbox
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import OutboxTransports
import Testing

/// The Mailer and its connection pool against the real Postfix (scripts/test.sh).
@Suite("Mailer against Postfix", .serialized, .timeLimit(.minutes(5)))
struct MailerPostfixTests {
    @Test("never more than cnx-pool-size sessions: Postfix allows 2 per client and refuses none")
    func poolLimitHolds() async throws {
        let peer = try TestPeers.fromEnvironment()
        let mailer = try Mailer(configuration: peer.configuration(port: peer.limitedPort, ["cnx-pool-size=2"]))
        let prefix = "pool-limit-\(UUID().uuidString.prefix(8))"
        let reports = try await withRunningMailer(mailer) { mailer in
            try await withThrowingTaskGroup(of: DeliveryReport.self) { group in
                for i in 0..<40 {
                    group.addTask { try await mailer.send(testMessage(subject: "\(prefix)-\(i)")) }
                }
                return try await group.reduce(into: [DeliveryReport]()) { $0.append($1) }
            }
        }
        #expect(reports.count == 40)
        #expect(reports.allSatisfy { $0.allAccepted })
        let stats = try #require(mailer.poolStatistics)
        #expect(stats.refusals == 0, "Postfix refused a connection: the pool opened more than 2")
        #expect(stats.created <= 2)
    }

    @Test(
        "senders waiting for the one connection start at the previous message's dot: every message stored exactly once",
        arguments: [false, true])
    func handBackStartsDeliverEachMessageOnce(startTLS: Bool) async throws {
        let peer = try TestPeers.fromEnvironment()
        let mailer: Mailer
        if startTLS {
            // Under TLS the body is flushed before the next transaction starts (SMTPClientHandler).
            mailer = try Mailer(
                configuration: peer.configuration(
                    port: peer.submissionPort,
                    [
                        "cnx-pool-size=1", "smtp-connection-security=start-tls-required", "outbox.tls-ca-file=\(peer.caFile)",
                    ]))
        } else {
            mailer = try Mailer(configuration: peer.configuration(port: peer.plainPort, ["cnx-pool-size=1"]))
        }
        let prefix = "handoff-\(startTLS ? "tls" : "plain")-\(UUID().uuidString.prefix(8))"
        let total = 40
        let reports = try await withRunningMailer(mailer) { mailer in
            // The first message learns what the server offers; the others then wait for the one
            // connection with their transactions prepared.
            var reports = [try await mailer.send(testMessage(subject: "\(prefix)-0"))]
            reports += try await withThrowingTaskGroup(of: DeliveryReport.self) { group in
                for i in 1..<total {
                    group.addTask { try await mailer.send(testMessage(subject: "\(prefix)-\(i)")) }
                }
                return try await group.reduce(into: [DeliveryReport]()) { $0.append($1) }
            }
            return reports
        }
        #expect(reports.count == total)
        #expect(reports.allSatisfy { $0.allAccepted && $0.attempts == 1 })
        let started = try #require(mailer.smtpStartedAtHandBack)
        #expect(started >= 1, "no transaction started at a hand-back: the test did not exercise it")
        #expect(started <= total - 1)
        #expect(try #require(mailer.poolStatistics).created == 1)
        var stored: [String: Int] = [:]
        for _ in 0..<100 {
            stored = peer.maildir.subjects(prefix: prefix)
            if stored.values.reduce(0, +) >= total { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(stored.count == total, "stored \(stored.count) of \(total) subjects")
        #expect(stored.values.allSatisfy { $0 == 1 }, "a message was stored more than once: \(stored.filter { $0.value > 1 })")
    }

    @Test("a pool larger than the server allows is refused, shrinks, and still delivers everything")
    func poolShrinksOnRefusal() async throws {
        let peer = try TestPeers.fromEnvironment()
        let mailer = try Mailer(configuration: peer.configuration(port: peer.limitedPort, ["cnx-pool-size=5"]))
        let prefix = "pool-shrink-\(UUID().uuidString.prefix(8))"
        let results = try await withRunningMailer(mailer) { mailer in
            await withTaskGroup(of: Bool.self) { group in
                for i in 0..<40 {
                    group.addTask {
                        // Retry transient failures, as the queue would.
                        for _ in 0..<20 {
                            do {
                                return try await mailer.send(testMessage(subject: "\(prefix)-\(i)")).allAccepted
                            } catch let error as DeliveryError where error.isTransient && error.kind != .outcomeUnknown {
                                try? await Task.sleep(for: .milliseconds(100))
                            } catch {
                                return false
                            }
                        }
                        return false
                    }
                }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
        }
        #expect(results.count == 40)
        #expect(results.allSatisfy { $0 })
        let stats = try #require(mailer.poolStatistics)
        #expect(stats.refusals >= 1, "the server never refused: the test did not exercise the limit")
    }

    @Test("NOOP is sent before reusing a connection idle for cnx-check-idle-time, and not before")
    func noopAfterIdle() async throws {
        let peer = try TestPeers.fromEnvironment()
        let log = LogRecorder()
        let logger = log.logger()
        let mailer = try Mailer(
            configuration: peer.configuration(port: peer.plainPort, ["cnx-pool-size=1", "cnx-check-idle-time=00:00:01", "enable-debug=true"]),
            logger: logger)
        try await withRunningMailer(mailer) { mailer in
            let prefix = "noop-\(UUID().uuidString.prefix(8))"
            _ = try await mailer.send(testMessage(subject: "\(prefix)-1"))
            _ = try await mailer.send(testMessage(subject: "\(prefix)-2"))
            let noopsBefore = log.messages.filter { $0.hasPrefix("C: NOOP") }.count
            #expect(noopsBefore == 0, "NOOP sent on a connection idle for less than cnx-check-idle-time")
            try await Task.sleep(for: .milliseconds(1500))
            let report = try await mailer.send(testMessage(subject: "\(prefix)-3"))
            #expect(report.allAccepted)
            let transcript = log.messages
            let noopIndex = try #require(transcript.firstIndex { $0.hasPrefix("C: NOOP") }, "no NOOP after idling 1.5 s")
            #expect(transcript[(noopIndex + 1)...].contains { $0.hasPrefix("S: 250") })
            #expect(mailer.poolStatistics?.created == 1)
            #expect(mailer.poolStatistics?.noopChecks == 1)
        }
    }

    @Test("a connection idle for cnx-max-idle-time is closed with QUIT by a timer")
    func idleClose() async throws {
        let peer = try TestPeers.fromEnvironment()
        let log = LogRecorder()
        let logger = log.logger()
        let mailer = try Mailer(
            configuration: peer.configuration(port: peer.plainPort, ["cnx-max-idle-time=00:00:01", "enable-debug=true"]), logger: logger)
        try await withRunningMailer(mailer) { mailer in
            _ = try await mailer.send(testMessage(subject: "idle-\(UUID().uuidString.prefix(8))"))
            #expect(mailer.poolStatistics?.open == 1)
            try await Task.sleep(for: .milliseconds(500))
            #expect(mailer.poolStatistics?.open == 1, "closed before cnx-max-idle-time")
            var closed = false
            for _ in 0..<40 where !closed {
                try await Task.sleep(for: .milliseconds(100))
                closed = mailer.poolStatistics?.open == 0
            }
            #expect(closed, "the idle connection was not closed within 5 s")
            #expect(log.messages.contains { $0.hasPrefix("C: QUIT") })
        }
    }

    @Test("a reload changes the port for new connections without a restart")
    func reloadPort() async throws {
        let peer = try TestPeers.fromEnvironment()
        let mailer = try Mailer(configuration: peer.configuration(port: peer.plainPort))
        try await withRunningMailer(mailer) { mailer in
            let first = try await mailer.send(testMessage(subject: "reload-a"))
            #expect(first.destination.hasSuffix(":\(peer.plainPort)"))
            let waiting = try mailer.reload(peer.configuration(port: peer.limitedPort, ["cnx-pool-size=3"]))
            #expect(waiting.map(\.name) == ["cnx-pool-size"])
            let second = try await mailer.send(testMessage(subject: "reload-b"))
            #expect(second.destination.hasSuffix(":\(peer.limitedPort)"))
            #expect(second.allAccepted)
        }
    }

    enum Outcome: Sendable {
        case delivered, unknown
        case failed(String)
    }

    @Test("Postfix stopped and restarted during 1,000 messages: none lost, none duplicated")
    func restartMidRun() async throws {
        let peer = try TestPeers.fromEnvironment()
        let maildir = Maildir(peer.restartDirectory + "/mail/sink/new")
        let mailer = try Mailer(
            configuration: peer.configuration(port: peer.restartPort, ["cnx-pool-size=4", "connect-timeout=00:00:05", "protocol-timeout=00:00:20"]))
        let prefix = "restart-\(UUID().uuidString.prefix(8))"
        let total = 1000
        let progress = NIOLockedValueBox(0)
        let next = NIOLockedValueBox(0)
        let outcomes = try await withRunningMailer(mailer) { mailer in
            await withTaskGroup(of: [(Int, Outcome)].self) { group in
                // The restart, once 150 messages are through.
                group.addTask {
                    while progress.withLockedValue({ $0 }) < 150 { try? await Task.sleep(for: .milliseconds(20)) }
                    runPostfix(peer.restartDirectory, "stop")
                    try? await Task.sleep(for: .seconds(2))
                    runPostfix(peer.restartDirectory, "start")
                    return []
                }
                for _ in 0..<8 {
                    group.addTask {
                        var mine: [(Int, Outcome)] = []
                        while true {
                            let i = next.withLockedValue { n -> Int in
                                defer { n += 1 }; return n
                            }
                            guard i < total else { return mine }
                            var outcome: Outcome = .failed("not tried")
                            attempts: for _ in 0..<150 {
                                do {
                                    let report = try await mailer.send(testMessage(subject: "\(prefix)-\(i)"))
                                    outcome = report.allAccepted ? .delivered : .failed("\(report.recipients)")
                                    break attempts
                                } catch let error as DeliveryError where error.kind == .outcomeUnknown {
                                    outcome = .unknown  // never resent blindly
                                    break attempts
                                } catch let error as DeliveryError where error.isTransient {
                                    outcome = .failed(error.message)
                                    try? await Task.sleep(for: .milliseconds(200))
                                } catch {
                                    outcome = .failed("\(error)")
                                    break attempts
                                }
                            }
                            progress.withLockedValue { $0 += 1 }
                            mine.append((i, outcome))
                        }
                    }
                }
                var results: [Int: Outcome] = [:]
                for await batch in group {
                    for (i, outcome) in batch { results[i] = outcome }
                }
                return results
            }
        }
        let delivered = outcomes.filter { if case .delivered = $0.value { true } else { false } }.map { $0.key }
        let unknown = outcomes.filter { if case .unknown = $0.value { true } else { false } }.map { $0.key }
        let failed = outcomes.filter { if case .failed = $0.value { true } else { false } }
        #expect(outcomes.count == total)
        #expect(failed.isEmpty, "failed: \(failed.prefix(3))")
        // Wait for Postfix to store everything it accepted.
        var copies: [String: [String]] = [:]
        for _ in 0..<300 {
            copies = maildir.queueIDs(prefix: prefix)
            if delivered.allSatisfy({ copies["\(prefix)-\($0)"] != nil }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        // A submission is a Postfix queue id: the same queue id stored twice is Postfix's own
        // redelivery after its stop (not a second submission by Outbox), so it is counted once.
        let submissions = copies.mapValues { Set($0).count }
        let lost = delivered.filter { submissions["\(prefix)-\($0)"] == nil }
        let duplicated = submissions.filter { $0.value > 1 }
        let redelivered = copies.filter { $0.value.count > Set($0.value).count }.count
        #expect(lost.isEmpty, "reported delivered but not stored: \(lost.prefix(5))")
        #expect(duplicated.isEmpty, "submitted more than once: \(duplicated.prefix(5)) \(copies.filter { duplicated[$0.key] != nil }.prefix(5))")
        #expect(submissions.count <= total)
        print(
            "restart test: delivered \(delivered.count), outcome unknown \(unknown.count), stored \(submissions.count) of \(total); copies Postfix itself delivered twice: \(redelivered)"
        )
    }
}
