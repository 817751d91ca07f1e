import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import OutboxTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The queue never fails a message for what is not the message's fault: a wrong password or a
/// server that breaks the protocol defers it, raises the route's alert (`/readyz` degraded,
/// `/v1/status`), and the message is delivered once the operator fixes the cause, with no manual
/// step.
@Suite("Route alerts: operator-fixable failures defer, then deliver", .serialized, .timeLimit(.minutes(3)))
struct RouteAlertTests {
    /// One HTTP exchange with the daemon: status, the raw body, the JSON object.
    func http(_ port: Int, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil) async throws -> (
        HTTPResponse.Status, String, [String: Any]
    ) {
        try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
            let r = try await client.execute(
                TestClient.Request(
                    uri, method: method, headers: body == nil ? [:] : [.contentType: "application/json"],
                    body: body.map { ByteBuffer(string: $0) }))
            let text = String(buffer: r.body ?? ByteBuffer())
            let j = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
            return (r.status, text, j)
        }
    }

    /// Polls the message until `accept` holds (up to `seconds`); returns the last answer.
    func waitMessage(_ port: Int, _ id: String, seconds: Int = 30, _ accept: ([String: Any]) -> Bool) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        for _ in 0..<(seconds * 5) {
            last = try await http(port, .get, "/v1/messages/\(id)").2
            if accept(last) { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        return last
    }

    /// Polls `/readyz` until it says degraded (up to 30 s); returns the last answer.
    func waitDegraded(_ port: Int) async throws -> (HTTPResponse.Status, String, [String: Any]) {
        var last = try await http(port, .get, "/readyz")
        for _ in 0..<150 where last.2["status"] as? String != "degraded" {
            try await Task.sleep(for: .milliseconds(200))
            last = try await http(port, .get, "/readyz")
        }
        return last
    }

    func configuration(peer: TestPeers, port: Int, password: String, dir: String, listen: Int) -> String {
        """
        [smtp-client]
        server = 127.0.0.1
        port = \(port)
        enable-authentication = true
        user = \(peer.user)
        password = \(password)
        mail.smtp.auth.mechanisms = PLAIN

        [outbox]
        data-directory = \(dir)/data
        http-listen = 127.0.0.1:\(listen)
        retry-initial-delay = 00:00:01
        retry-max-delay = 00:00:02

        """
    }

    @Test("a wrong password (535 from the real Postfix) defers the message and alerts; fixed and restarted, it is delivered")
    func wrongPassword() async throws {
        let peer = try TestPeers.fromEnvironment()
        let dir = NSTemporaryDirectory() + "outbox-route-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let file = dir + "/outbox.cfg"
        let wrong = "Wr0ng-\(UUID().uuidString.prefix(8))"
        try configuration(peer: peer, port: peer.plainPort, password: wrong, dir: dir, listen: port)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let first = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
        defer { first.terminate() }
        try await first.waitReady()
        let token = "route-pw-\(UUID().uuidString.prefix(8))"
        let (submitted, _, accepted) = try await http(
            port, .post, "/v1/messages", #"{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)","text":"x"}"#)
        #expect(submitted == .accepted)
        let id = try #require(accepted["id"] as? String)

        // Deferred, not failed: the password is the operator's to fix.
        let deferred = try await waitMessage(port, id) { ($0["attempts"] as? [Any])?.isEmpty == false }
        #expect(deferred["status"] as? String == "deferred", "\(deferred)")
        #expect((deferred["last_error"] as? String)?.contains("535") == true, "\(deferred)")
        // /readyz: 200 degraded, the route's problem.
        let (readyStatus, readyText, ready) = try await waitDegraded(port)
        #expect(readyStatus == .ok)
        #expect(ready["status"] as? String == "degraded", "\(readyText)")
        let problem = try #require((ready["problems"] as? [[String: Any]])?.first, "\(readyText)")
        #expect(problem["route"] as? String == "default")
        #expect(problem["code"] as? String == "authentication_failed")
        #expect((problem["message"] as? String)?.contains("535") == true)
        #expect(problem["since"] is String)
        // /v1/status: the alert and the held count.
        let (_, statusText, status) = try await http(port, .get, "/v1/status")
        let route = try #require((status["routes"] as? [[String: Any]])?.first, "\(statusText)")
        #expect(route["state"] as? String == "paused")
        #expect((route["problem"] as? [String: Any])?["code"] as? String == "authentication_failed")
        #expect(status["held"] as? Int == 1, "\(statusText)")
        let (_, metrics, _) = try await http(port, .get, "/metrics")
        #expect(metrics.contains(#"outbox_route_paused{route="default"} 1"#), "\(metrics)")
        #expect(metrics.contains(#"outbox_route_alerts_total{route="default"} 1"#), "\(metrics)")
        // No secret anywhere.
        let log = (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? ""
        for text in [readyText, statusText, "\(deferred)", metrics, log] {
            #expect(!text.contains(wrong))
            #expect(!text.contains(Data("\0\(peer.user)\0\(wrong)".utf8).base64EncodedString()))
        }
        // Still deferred a few seconds on (the message's own back-off would have retried it).
        try await Task.sleep(for: .seconds(3))
        #expect(try await http(port, .get, "/v1/messages/\(id)").2["status"] as? String == "deferred")

        // The operator fixes the password (it takes effect at restart) and restarts.
        first.terminate()
        try configuration(peer: peer, port: peer.plainPort, password: peer.password, dir: dir, listen: port)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let second = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon2.log", config: file)
        defer { second.terminate() }
        try await second.waitReady()
        let delivered = try await waitMessage(port, id) { $0["status"] as? String == "delivered" }
        #expect(delivered["status"] as? String == "delivered", "\(delivered)")
        #expect(try await peer.maildir.waitForMessages(containing: token, count: 1).count == 1)
        #expect(try await http(port, .get, "/readyz").2["status"] as? String == "ready")
    }

    @Test("a server that sends garbage defers the message and alerts; once it turns good, a reload delivers it within 30 s")
    func garbageThenGood() async throws {
        let peer = try TestPeers.fromEnvironment()
        let dir = NSTemporaryDirectory() + "outbox-garbage-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let fakePort = port + 2
        let good = dir + "/good"
        // A TCP server that answers garbage, and once `good` exists, relays to Postfix.
        let script = """
            import asyncio, os, sys
            port, target, good = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
            async def pipe(r, w):
                try:
                    while data := await r.read(65536):
                        w.write(data); await w.drain()
                finally:
                    w.close()
            async def client(reader, writer):
                if not os.path.exists(good):
                    writer.write(b"\\x16\\x03 this is not SMTP \\xff\\xfe\\r\\n")
                    await writer.drain()
                    try:
                        await asyncio.wait_for(reader.read(4096), 5)
                    except Exception:
                        pass
                    writer.close()
                    return
                r, w = await asyncio.open_connection("\(peer.smtpHost)", target)
                await asyncio.gather(pipe(reader, w), pipe(r, writer), return_exceptions=True)
            async def main():
                server = await asyncio.start_server(client, "127.0.0.1", port)
                print("listening", flush=True)
                async with server:
                    await server.serve_forever()
            asyncio.run(main())
            """
        let fake = Process()
        fake.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        fake.arguments = ["python3", "-c", script, String(fakePort), String(peer.plainPort), good]
        fake.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        fake.standardError = FileHandle.standardError
        try fake.run()
        defer {
            // SIGKILL: the test process's blocked signals (SIGTERM among them) are inherited.
            kill(fake.processIdentifier, SIGKILL)
            fake.waitUntilExit()
        }
        // Wait for the fake to listen.
        for _ in 0..<50 {
            if !canConnect(port: fakePort) { try await Task.sleep(for: .milliseconds(100)) } else { break }
        }
        #expect(canConnect(port: fakePort), "the garbage server does not listen")

        let file = dir + "/outbox.cfg"
        try configuration(peer: peer, port: fakePort, password: peer.password, dir: dir, listen: port)
            .write(toFile: file, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(port: port, overrides: [], logPath: dir + "/daemon.log", config: file)
        defer { daemon.terminate() }
        try await daemon.waitReady()
        let token = "route-garbage-\(UUID().uuidString.prefix(8))"
        let (_, _, accepted) = try await http(
            port, .post, "/v1/messages", #"{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"\#(token)","text":"x"}"#)
        let id = try #require(accepted["id"] as? String)
        let deferred = try await waitMessage(port, id) { ($0["attempts"] as? [Any])?.isEmpty == false }
        #expect(deferred["status"] as? String == "deferred", "\(deferred)")
        let (readyStatus, readyText, ready) = try await waitDegraded(port)
        #expect(readyStatus == .ok)
        let problem = try #require((ready["problems"] as? [[String: Any]])?.first, "\(readyText)")
        #expect(problem["code"] as? String == "protocol_violation", "\(readyText)")
        let status = try await http(port, .get, "/v1/status").2
        #expect((status["routes"] as? [[String: Any]])?.first?["state"] as? String == "paused")

        // The server turns good; the operator reloads (SIGHUP): delivered within 30 s.
        FileManager.default.createFile(atPath: good, contents: Data())
        kill(daemon.pid, SIGHUP)
        let delivered = try await waitMessage(port, id, seconds: 30) { $0["status"] as? String == "delivered" }
        #expect(delivered["status"] as? String == "delivered", "\(delivered)")
        #expect(try await peer.maildir.waitForMessages(containing: token, count: 1).count == 1)
        let after = try await http(port, .get, "/v1/status").2
        #expect((after["routes"] as? [[String: Any]])?.first?["state"] as? String == "ok")
    }

    func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}
