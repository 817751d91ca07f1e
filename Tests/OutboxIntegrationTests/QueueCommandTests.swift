import Foundation
import OutboxTestSupport
import Testing

/// `outbox queue` against a running daemon: every subcommand, `--json` parsed back, the exit
/// statuses of a refusal, a wrong token and an unreachable daemon.
@Suite("outbox queue", .serialized)
struct QueueCommandTests {
    static func object(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> [String: Any] {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else {
            Issue.record("not a JSON object: \(text.prefix(500))", sourceLocation: sourceLocation)
            return [:]
        }
        return o
    }

    @Test("list, show, cancel, purge, retry (one and --all-deferred), watch; refusals and errors", .timeLimit(.minutes(2)))
    func everySubcommand() async throws {
        let dir = try OutboxBinary.temporaryDirectory("outbox-queue-cli")
        defer { try? FileManager.default.removeItem(at: dir) }
        let port = freePort()
        let closed = freePort()
        let token = "queue-cli-token-\(UUID().uuidString.prefix(8))"
        let daemon = try DaemonProcess(
            port: port,
            overrides: [
                "server=127.0.0.1", "port=\(closed)", "outbox.data-directory=\(dir.path)/data", "outbox.retry-initial-delay=00:10:00",
                "outbox.retry-max-delay=00:10:00", "outbox.api-tokens=\(token)", "outbox.require-api-token=true",
            ], logPath: dir.path + "/daemon.log")
        defer { daemon.terminate() }
        try await daemon.waitReady()
        let url = "http://127.0.0.1:\(port)"
        func queue(_ args: [String]) async throws -> OutboxBinary.Result {
            try await OutboxBinary.run(["queue"] + args + ["--url", url, "--token", token], cwd: dir)
        }
        // Three messages, each deferred by the closed port.
        var ids: [String] = []
        for n in 0..<3 {
            let body = #"{"from":"a@example.test","to":"b@example.test","subject":"queue-cli \#(n)","text":"x"}"#
            let (status, answer) = try await http(port, .post, "/v1/messages", body, token: token)
            #expect(status == .accepted, "\(answer)")
            ids.append(try #require(answer["id"] as? String))
        }
        #expect(ids.count == 3)

        // list --json: all three; then deferred once each made its attempt.
        var list = try await queue(["list", "--json"])
        #expect(list.status == 0, "\(list.stderr)")
        #expect(Set((Self.object(list.stdout)["messages"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }).isSuperset(of: ids))
        for id in ids {
            for _ in 0..<100 where try await http(port, .get, "/v1/messages/\(id)", token: token).1["status"] as? String != "deferred" {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        list = try await queue(["list", "--status", "deferred", "--json"])
        let deferred = (Self.object(list.stdout)["messages"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
        #expect(Set(deferred).isSuperset(of: ids), "each message deferred: \(deferred)")
        let table = try await queue(["list"])
        #expect(table.stdout.hasPrefix("ID"), "\(table.stdout)")
        #expect(table.stdout.contains(ids[0]) && table.stdout.contains("deferred"))

        // show
        let shown = try await queue(["show", ids[0], "--json"])
        let detail = Self.object(shown.stdout)
        #expect(detail["id"] as? String == ids[0])
        #expect((detail["attempts"] as? [Any])?.isEmpty == false)
        let human = try await queue(["show", ids[0]])
        #expect(human.stdout.contains("attempt 1:") && human.stdout.contains("status:          deferred"), "\(human.stdout)")

        // cancel, then purge the cancelled one; purging a deferred one is refused (exit 1).
        let cancelled = try await queue(["cancel", ids[0], "--json"])
        #expect(Self.object(cancelled.stdout)["status"] as? String == "cancelled", "\(cancelled.stderr)")
        let purged = try await queue(["purge", ids[0], "--json"])
        #expect(Self.object(purged.stdout)["content_purged"] as? Bool == true, "\(purged.stderr)")
        let refused = try await queue(["purge", ids[1]])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("invalid_state"), "\(refused.stderr)")
        let missing = try await queue(["show", "no-such-message"])
        #expect(missing.status == 1 && missing.stderr.contains("not_found"), "\(missing.stderr)")

        // retry one, then every deferred one.
        let retried = try await queue(["retry", ids[1], "--json"])
        #expect(retried.status == 0, "\(retried.stderr)")
        #expect(["queued", "sending", "deferred"].contains(Self.object(retried.stdout)["status"] as? String ?? ""))
        for _ in 0..<100 {
            let m = try await http(port, .get, "/v1/messages/\(ids[1])", token: token).1
            if m["status"] as? String == "deferred", (m["attempts"] as? [Any])?.count == 2 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let all = try await queue(["retry", "--all-deferred", "--json"])
        #expect(all.status == 0, "\(all.stderr)")
        let bulk = Self.object(all.stdout)
        #expect(bulk["requested"] as? Int == 2 && bulk["done"] as? Int == 2, "\(bulk)")
        #expect(all.stderr.contains("retry: 2 of 2"), "\(all.stderr)")

        // watch: two refreshes, then it stops.
        let watch = try await queue(["watch", "--count", "2", "--interval", "0.2"])
        #expect(watch.status == 0, "\(watch.stderr)")
        #expect(watch.stdout.split(separator: "\n").count == 2 && watch.stdout.contains("cancelled 1"), "\(watch.stdout)")

        // A wrong token, and a daemon that is not there.
        let wrong = try await OutboxBinary.run(["queue", "list", "--url", url, "--token", "wrong"], cwd: dir)
        #expect(wrong.status == 2 && wrong.stderr.contains("invalid_token"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains(token))
        let away = try await OutboxBinary.run(["queue", "list", "--url", "http://127.0.0.1:\(closed)", "--token", token], cwd: dir)
        #expect(away.status == 69, "\(away.stderr)")
    }
}
