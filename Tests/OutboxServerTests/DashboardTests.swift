import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxServer
import OutboxTestSupport
import Testing

@Suite struct DashboardAccessTests {
    @Test(arguments: ["localhost", "localhost:8025", "LOCALHOST.", "127.0.0.1", "127.0.0.1:80", "127.1.2.3:9", "[::1]", "[::1]:8025"])
    func loopbackHostsPass(_ host: String) {
        #expect(DashboardAccess.isLoopbackHost(host))
    }

    @Test(arguments: [
        "evil.example", "evil.example:8025", "localhost.evil.example", "127.0.0.1.evil.example", "10.0.0.1", "[::2]:80", "[::1]x",
        "localhost:http", "127.0.0.256", "0.0.0.0", "",
    ])
    func otherHostsAreRefused(_ host: String) {
        #expect(!DashboardAccess.isLoopbackHost(host))
    }

    @Test func csrfTokensAreRandomAndCompared() {
        let a = DashboardAccess.newToken()
        let b = DashboardAccess.newToken()
        #expect(a.count == 64 && a != b)
        let session = DashboardSession(who: "token #1", csrf: a)
        #expect(DashboardAccess.csrfMatches(session: session, form: a))
        #expect(!DashboardAccess.csrfMatches(session: session, form: b))
        #expect(!DashboardAccess.csrfMatches(session: session, form: nil))
        #expect(!DashboardAccess.csrfMatches(session: nil, form: a))
        #expect(!DashboardAccess.csrfMatches(session: DashboardSession(who: "x", csrf: ""), form: ""))
    }

    @Test func formDataDecodes() {
        let form = FormData.parse("csrf=ab%2Bc&status=deferred&status=failed&subject=Hello+world&empty=")
        #expect(form["csrf"] == ["ab+c"])
        #expect(form["status"] == ["deferred", "failed"])
        #expect(form["subject"] == ["Hello world"])
        #expect(form["empty"] == [""])
    }
}

@Suite struct DashboardPageTests {
    /// Without tokens on loopback: every page renders (the subject decoded from its encoded word).
    @Test func pagesRender() async throws {
        let f = try await APIFixture.make()
        _ = try await f.store.enqueue(
            NewMessage(
                from: "a@example.test", recipients: ["b@example.test"],
                content: Array("Subject: =?UTF-8?B?SGVsbG8gw6lsw6g=?=\r\nFrom: a@example.test\r\n\r\nbody\r\n".utf8)), now: 1000)
        try await f.test { client in
            for path in ["/", "/messages", "/messages?status=queued&subject=hello", "/credentials"] {
                try await client.execute(uri: path, method: .get) { response in
                    #expect(response.status == .ok, "\(path)")
                    let body = String(buffer: response.body)
                    #expect(body.contains("</html>"), "\(path)")
                    if path.contains("subject") { #expect(body.contains("Hello élè")) }
                }
            }
        }
    }

    /// The Host header reaches the check as the request's authority: a live listener, requests
    /// for a rebinding name are refused, the same requests for localhost pass.
    @Test func foreignHostIsRefusedOverTheWire() async throws {
        let f = try await APIFixture.make()
        try await f.test(.live) { client in
            let port = try #require(client.port)
            try await TestClient.withClient(host: "127.0.0.1", port: port) { raw in
                for path in ["/", "/v1/messages", "/v1/status", "/login"] {
                    let refused = try await raw.execute(.init(path, method: .get, authority: "rebound.example:\(port)"))
                    #expect(refused.status == .forbidden, "\(path)")
                    #expect(String(buffer: refused.body ?? ByteBuffer()).contains("forbidden_host"), "\(path)")
                    let passed = try await raw.execute(.init(path, method: .get, authority: "localhost:\(port)"))
                    #expect(passed.status != .forbidden, "\(path)")
                }
            }
        }
    }

    @Test func templatesAllCompile() throws {
        for name in ["head", "foot", "overview", "messages", "message", "confirm", "result", "credentials", "login", "error"] {
            #expect(DashboardTemplatesProbe.compiles(name), "template \(name)")
        }
    }
}
