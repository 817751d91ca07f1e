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

    /// With tokens: the login POST needs the login form's pre-session and its CSRF token (login
    /// CSRF); the pre-session opens nothing; a login gives a new session id.
    @Test func loginNeedsTheFormsCSRFToken() async throws {
        let token = "operator-token-41c9"
        let f = try await APIFixture.make(APISettings(tokens: [token], requireToken: true))
        let form: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]
        try await f.test { client in
            /// A fresh login form: its session cookie (`name=value`) and the hidden CSRF field.
            @Sendable func loginForm() async throws -> (cookie: String, csrf: String) {
                try await client.execute(uri: "/login", method: .get) { r in
                    #expect(r.status == .ok)
                    let setCookie = try #require(r.headers[.setCookie])
                    #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict"), "\(setCookie)")
                    let body = String(buffer: r.body)
                    #expect(!body.contains(token))
                    let csrf = try #require(body.firstMatch(of: /name="csrf" value="([0-9a-f]{64})"/)?.1)
                    return (String(setCookie.prefix { $0 != ";" }), String(csrf))
                }
            }
            func post(_ body: String, cookie: String?) async throws -> TestResponse {
                var headers = form
                if let cookie { headers[.cookie] = cookie }
                return try await client.execute(uri: "/login", method: .post, headers: headers, body: ByteBuffer(string: body)) { $0 }
            }
            try await client.execute(uri: "/", method: .get) { r in
                #expect(r.status == .seeOther && r.headers[.location] == "/login")
            }
            // Refused: no pre-session, no CSRF field, a wrong one, another form's.
            let first = try await loginForm()
            let other = try await loginForm()
            #expect(first.cookie != other.cookie && first.csrf != other.csrf)
            for (body, cookie) in [
                ("csrf=\(first.csrf)&token=\(token)", nil), ("token=\(token)", first.cookie),
                ("csrf=\(String(repeating: "0", count: 64))&token=\(token)", first.cookie), ("csrf=\(other.csrf)&token=\(token)", first.cookie),
            ] as [(String, String?)] {
                let r = try await post(body, cookie: cookie)
                #expect(r.status == .forbidden, "\(body) \(cookie ?? "no cookie")")
                #expect(String(buffer: r.body).contains("invalid_csrf_token"))
                #expect(r.headers[values: .setCookie].allSatisfy { !$0.hasPrefix(first.cookie + ";") })
            }
            // The pre-session opens no page and allows no action.
            let form2 = try await loginForm()
            try await client.execute(uri: "/messages", method: .get, headers: [.cookie: form2.cookie]) { r in
                #expect(r.status == .seeOther && r.headers[.location] == "/login")
            }
            var actionHeaders = form
            actionHeaders[.cookie] = form2.cookie
            try await client.execute(
                uri: "/actions/bulk", method: .post, headers: actionHeaders, body: ByteBuffer(string: "csrf=\(form2.csrf)&action=retry")
            ) { r in
                #expect(r.status == .forbidden)
                #expect(String(buffer: r.body).contains("no_session"))
            }
            // A wrong operator token: 401, the form again.
            #expect(try await post("csrf=\(form2.csrf)&token=wrong", cookie: form2.cookie).status == .unauthorized)
            // The right form and token: a new session under a new id.
            let r = try await post("csrf=\(form2.csrf)&token=\(token)", cookie: form2.cookie)
            #expect(r.status == .seeOther && r.headers[.location] == "/")
            let session = String(try #require(r.headers[.setCookie]).prefix { $0 != ";" })
            #expect(session.hasPrefix("outbox_session=") && session != form2.cookie)
            try await client.execute(uri: "/messages", method: .get, headers: [.cookie: session]) { #expect($0.status == .ok) }
            try await client.execute(uri: "/messages", method: .get, headers: [.cookie: form2.cookie]) { #expect($0.status == .seeOther) }
        }
    }

    @Test func templatesAllCompile() throws {
        for name in ["head", "foot", "overview", "messages", "message", "confirm", "result", "credentials", "login", "error"] {
            #expect(DashboardTemplatesProbe.compiles(name), "template \(name)")
        }
    }
}
