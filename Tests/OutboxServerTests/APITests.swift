import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxServer
import OutboxTestSupport
import Testing

/// An API over a fresh SQLite store in a temporary directory.
struct APIFixture {
    let store: SQLiteOutboxStore
    let api: OutboxAPI
    let dir: String

    static func make(_ settings: APISettings = APISettings()) async throws -> APIFixture {
        let dir = NSTemporaryDirectory() + "outbox-api-\(UUID().uuidString)"
        let store = try await SQLiteOutboxStore.open(path: dir + "/outbox.sqlite")
        try await store.migrate()
        return APIFixture(store: store, api: OutboxAPI(store: store, settings: settings), dir: dir)
    }

    func test(_ kind: TestingSetup = .router, _ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let app = Application(router: api.makeRouter(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(kind) { client in try await body(client) }
        try await store.close()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func count() async throws -> Int { try await store.list(status: nil, limit: 1000, after: nil).count }
}

func json(_ response: TestResponse) -> [String: Any] {
    let data = Data(response.body.readableBytesView)
    guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        Issue.record("not a JSON object: \(String(decoding: data, as: UTF8.self))")
        return [:]
    }
    return object
}

func errorCode(_ response: TestResponse) -> String? {
    (json(response)["error"] as? [String: Any])?["code"] as? String
}

let jsonHeaders: HTTPFields = [.contentType: "application/json"]

func body(_ object: Any) -> ByteBuffer {
    ByteBuffer(bytes: try! JSONSerialization.data(withJSONObject: object))
}

nonisolated(unsafe) let goodMessage: [String: Any] = [
    "from": "App <app@example.test>", "to": ["one@example.test"], "cc": "two@example.test", "bcc": ["hidden@example.test"],
    "reply_to": "help@example.test", "subject": "Hello ✓", "text": "plain body", "html": "<p>html body</p>",
    "attachments": [["name": "a.txt", "type": "text/plain", "content": Data("attached".utf8).base64EncodedString()]],
    "headers": ["X-Campaign": "c1"],
]

@Suite("HTTP API", .serialized)
struct APITests {
    @Test("GET /healthz and /readyz answer 200 with the store reachable")
    func health() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/readyz", method: .get) { r in
                #expect(r.status == .ok)
                #expect(json(r)["store"] as? String == "sqlite")
            }
        }
    }

    @Test("POST /v1/messages with JSON stores the final message and answers 202 {id, status}; GET shows it")
    func submitJSON() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            let id = try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage)) { r -> String in
                #expect(r.status == .accepted)
                let j = json(r)
                #expect(j["status"] as? String == "queued")
                #expect(r.headers[.location] != nil)
                return try #require(j["id"] as? String)
            }
            try await client.execute(uri: "/v1/messages/\(id)", method: .get) { r in
                #expect(r.status == .ok)
                let j = json(r)
                #expect(j["status"] as? String == "queued")
                let recipients = try #require(j["recipients"] as? [[String: Any]])
                #expect(recipients.compactMap { $0["address"] as? String } == ["one@example.test", "two@example.test", "hidden@example.test"])
                #expect(recipients.allSatisfy { $0["status"] as? String == "pending" })
                #expect((j["attempts"] as? [Any])?.isEmpty == true)
            }
            let claimed = try await f.store.claim(limit: 1, owner: "t", now: Date().timeIntervalSince1970 + 1, lease: 60)
            let text = String(decoding: try #require(claimed.first).content, as: UTF8.self)
            #expect(text.contains("X-Campaign: c1"))
            #expect(text.contains("filename=\"a.txt\"") || text.contains("filename=a.txt"))
            #expect(!text.contains("hidden@example.test"))
            #expect(claimed.first?.message.from == "app@example.test")
        }
    }

    @Test("message/rfc822 with envelope query parameters")
    func submitRaw() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            let raw = "From: a@example.test\r\nTo: b@example.test\r\nSubject: raw\r\n\r\nhello\r\n"
            let id = try await client.execute(
                uri: "/v1/messages?from=bounce@example.test&to=x@example.test,y@example.test", method: .post,
                headers: [.contentType: "message/rfc822"], body: ByteBuffer(string: raw)
            ) { r -> String in
                #expect(r.status == .accepted)
                return try #require(json(r)["id"] as? String)
            }
            let m = try #require(try await f.store.get(id: id))
            #expect(m.from == "bounce@example.test")
            #expect(m.recipients.map(\.address) == ["x@example.test", "y@example.test"])
            // Without parameters the envelope comes from the headers.
            try await client.execute(uri: "/v1/messages", method: .post, headers: [.contentType: "message/rfc822"], body: ByteBuffer(string: raw)) {
                r in
                #expect(r.status == .accepted)
            }
            try await client.execute(
                uri: "/v1/messages", method: .post, headers: [.contentType: "message/rfc822"],
                body: ByteBuffer(string: "From: a@example.test\r\nSubject: none\r\n\r\nx\r\n")
            ) { r in
                #expect(r.status == .badRequest)
                #expect(errorCode(r) == "missing_recipients")
            }
        }
    }

    @Test("an Idempotency-Key returns the same message; reused with another body it is refused")
    func idempotency() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            var headers = jsonHeaders
            headers[HTTPFields.Element.Name("Idempotency-Key")!] = "order-42"
            let first = try await client.execute(uri: "/v1/messages", method: .post, headers: headers, body: body(goodMessage)) { r in
                #expect(r.status == .accepted)
                return json(r)["id"] as? String
            }
            let second = try await client.execute(uri: "/v1/messages", method: .post, headers: headers, body: body(goodMessage)) { r in
                #expect(r.status == .accepted)
                #expect(r.headers[HTTPFields.Element.Name("Idempotent-Replayed")!] == "true")
                return json(r)["id"] as? String
            }
            #expect(first != nil && first == second)
            var other = goodMessage
            other["subject"] = "different"
            try await client.execute(uri: "/v1/messages", method: .post, headers: headers, body: body(other)) { r in
                #expect(r.status == .conflict)
                #expect(errorCode(r) == "idempotency_key_reused")
            }
            #expect(try await f.count() == 1)
        }
    }

    struct BadCase: Sendable, CustomTestStringConvertible {
        var name: String
        var contentType: String?
        var body: String
        var status: HTTPResponse.Status
        var code: String
        var testDescription: String { name }
    }

    static let badCases: [BadCase] = [
        .init(
            name: "malformed JSON", contentType: "application/json", body: "{\"from\": \"a@example.test\", \"to\": [", status: .badRequest,
            code: "invalid_json"),
        .init(name: "not an object", contentType: "application/json", body: "[1,2]", status: .badRequest, code: "invalid_json"),
        .init(
            name: "missing recipients", contentType: "application/json", body: #"{"from":"a@example.test","subject":"x","text":"y"}"#,
            status: .badRequest, code: "missing_recipients"),
        .init(
            name: "empty recipient list", contentType: "application/json", body: #"{"from":"a@example.test","to":[],"text":"y"}"#,
            status: .badRequest, code: "missing_recipients"),
        .init(
            name: "missing from", contentType: "application/json", body: #"{"to":"b@example.test","text":"y"}"#, status: .badRequest,
            code: "missing_from"),
        .init(
            name: "invalid to address", contentType: "application/json", body: #"{"from":"a@example.test","to":["not an address"],"text":"y"}"#,
            status: .badRequest, code: "invalid_address"),
        .init(
            name: "invalid from address", contentType: "application/json", body: #"{"from":"a@@b","to":"b@example.test"}"#, status: .badRequest,
            code: "invalid_address"),
        .init(
            name: "CR LF in an address", contentType: "application/json",
            body: #"{"from":"a@example.test","to":"b@example.test\r\nBcc: x@example.test"}"#, status: .badRequest, code: "invalid_address"),
        .init(
            name: "header injection in subject", contentType: "application/json",
            body: #"{"from":"a@example.test","to":"b@example.test","subject":"x\r\nBcc: c@example.test"}"#, status: .badRequest,
            code: "invalid_message"),
        .init(
            name: "reserved custom header", contentType: "application/json",
            body: #"{"from":"a@example.test","to":"b@example.test","headers":{"From":"x@example.test"}}"#, status: .badRequest,
            code: "invalid_message"),
        .init(
            name: "unknown field", contentType: "application/json", body: #"{"from":"a@example.test","to":"b@example.test","subjet":"typo"}"#,
            status: .badRequest, code: "unknown_field"),
        .init(
            name: "wrong type", contentType: "application/json", body: #"{"from":"a@example.test","to":"b@example.test","subject":5}"#,
            status: .badRequest, code: "invalid_field"),
        .init(
            name: "bad base64 attachment", contentType: "application/json",
            body: #"{"from":"a@example.test","to":"b@example.test","attachments":[{"name":"a.bin","content":"%%%"}]}"#, status: .badRequest,
            code: "invalid_attachment"),
        .init(
            name: "attachment without a name", contentType: "application/json",
            body: #"{"from":"a@example.test","to":"b@example.test","attachments":[{"content":"QQ=="}]}"#, status: .badRequest,
            code: "invalid_attachment"),
        .init(
            name: "no content type", contentType: nil, body: #"{"from":"a@example.test","to":"b@example.test"}"#, status: .unsupportedMediaType,
            code: "missing_content_type"),
        .init(
            name: "form content type", contentType: "application/x-www-form-urlencoded", body: "from=a", status: .unsupportedMediaType,
            code: "unsupported_content_type"),
        .init(name: "empty rfc822", contentType: "message/rfc822", body: "", status: .badRequest, code: "empty_message"),
    ]

    @Test("every bad submission gets a 4xx JSON error that says what is wrong, and nothing is stored", arguments: badCases)
    func badSubmissions(_ c: BadCase) async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            var headers: HTTPFields = [:]
            if let type = c.contentType { headers[.contentType] = type }
            try await client.execute(uri: "/v1/messages", method: .post, headers: headers, body: ByteBuffer(string: c.body)) { r in
                #expect(r.status == c.status)
                #expect(r.headers[.contentType] == "application/json")
                #expect(errorCode(r) == c.code)
                let message = ((json(r)["error"] as? [String: Any])?["message"] as? String) ?? ""
                #expect(message.count > 10)
            }
            #expect(try await f.count() == 0)
        }
    }

    @Test("a request declaring a 2 GB body is refused with 413 before the body is read; a body over the limit too")
    func tooLarge() async throws {
        let f = try await APIFixture.make(APISettings(maxRequestSize: 4096))
        // Over a real socket: the declared Content-Length is what the server sees.
        let port = freePort()
        let app = Application(router: f.api.makeRouter(), configuration: .init(address: .hostname("127.0.0.1", port: port)))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.runService() }
            var answer = ""
            for _ in 0..<50 {
                answer = RawHTTP.exchange(
                    port: port,
                    "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n{\"from\":")
                if !answer.isEmpty { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(answer.hasPrefix("HTTP/1.1 413"), "\(answer.prefix(200))")
            #expect(answer.contains("too_large"))
            group.cancelAll()
        }
        try await f.test { client in
            var big = goodMessage
            big["text"] = String(repeating: "x", count: 10_000)
            try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(big)) { r in
                #expect(r.status == .contentTooLarge)
                #expect(errorCode(r) == "too_large")
            }
            #expect(try await f.count() == 0)
        }
    }

    @Test("with tokens required: none or a wrong token gets 401, the right one passes; health stays open")
    func tokens() async throws {
        let f = try await APIFixture.make(APISettings(tokens: ["s3cret", "other"], requireToken: true))
        try await f.test { client in
            try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage)) { r in
                #expect(r.status == .unauthorized)
                #expect(errorCode(r) == "missing_token")
            }
            var wrong = jsonHeaders
            wrong[.authorization] = "Bearer nope"
            try await client.execute(uri: "/v1/messages", method: .post, headers: wrong, body: body(goodMessage)) { r in
                #expect(r.status == .unauthorized)
                #expect(errorCode(r) == "invalid_token")
            }
            try await client.execute(uri: "/v1/status", method: .get, headers: wrong) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/metrics", method: .get) { #expect($0.status == .unauthorized) }
            #expect(try await f.count() == 0)
            var right = jsonHeaders
            right[.authorization] = "Bearer other"
            try await client.execute(uri: "/v1/messages", method: .post, headers: right, body: body(goodMessage)) { r in
                #expect(r.status == .accepted)
            }
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
        }
    }

    @Test("loopback listening needs no token by default; any other address requires one")
    func tokenRequirement() {
        #expect(!APISettings(configurationListen: "127.0.0.1:8025").requireToken)
        #expect(APISettings(configurationListen: "0.0.0.0:8025").requireToken)
        #expect(APISettings(configurationListen: "[::1]:8025").requireToken == false)
    }

    @Test("GET /v1/messages pages with limit and cursor, filters by status, refuses bad parameters")
    func listing() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            var ids: [String] = []
            for i in 0..<5 {
                var m = goodMessage
                m["subject"] = "m\(i)"
                ids.append(
                    try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(m)) { r in
                        try #require(json(r)["id"] as? String)
                    })
            }
            let cursor = try await client.execute(uri: "/v1/messages?limit=3", method: .get) { r -> String in
                #expect(r.status == .ok)
                let j = json(r)
                #expect((j["messages"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == Array(ids[0..<3]))
                return try #require(j["next_cursor"] as? String)
            }
            try await client.execute(uri: "/v1/messages?limit=3&cursor=\(cursor)", method: .get) { r in
                let j = json(r)
                #expect((j["messages"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == Array(ids[3..<5]))
                #expect(j["next_cursor"] is NSNull)
            }
            try await client.execute(uri: "/v1/messages/\(ids[0])", method: .delete) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/messages?status=cancelled", method: .get) { r in
                #expect((json(r)["messages"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [ids[0]])
            }
            for (query, code) in [
                ("status=lost", "invalid_status"), ("limit=0", "invalid_limit"), ("limit=abc", "invalid_limit"), ("cursor=-4", "invalid_cursor"),
            ] {
                try await client.execute(uri: "/v1/messages?\(query)", method: .get) { r in
                    #expect(r.status == .badRequest, "\(query)")
                    #expect(errorCode(r) == code)
                }
            }
        }
    }

    @Test("DELETE cancels a queued message once; retry works only on failed, unknown or deferred; unknown ids are 404")
    func cancelAndRetry() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            let id = try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage)) { r in
                try #require(json(r)["id"] as? String)
            }
            try await client.execute(uri: "/v1/messages/\(id)/retry", method: .post) { r in
                #expect(r.status == .conflict)
                #expect(errorCode(r) == "invalid_state")
            }
            try await client.execute(uri: "/v1/messages/\(id)", method: .delete) { r in
                #expect(r.status == .ok)
                #expect(json(r)["status"] as? String == "cancelled")
            }
            try await client.execute(uri: "/v1/messages/\(id)", method: .delete) { #expect($0.status == .conflict) }
            for (uri, method) in [("/v1/messages/nope", HTTPRequest.Method.get), ("/v1/messages/nope", .delete), ("/v1/messages/nope/retry", .post)] {
                try await client.execute(uri: uri, method: method) { r in
                    #expect(r.status == .notFound)
                    #expect(errorCode(r) == "not_found")
                }
            }
            // A failed message can be retried.
            let other = try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage)) { r in
                try #require(json(r)["id"] as? String)
            }
            _ = try await f.store.claim(limit: 5, owner: "t", now: Date().timeIntervalSince1970 + 1, lease: 60)
            let failed = AttemptOutcome(
                status: .failed, recipients: [RecipientState(address: "one@example.test", status: .rejected, code: 550)],
                attempt: AttemptRecord(
                    number: 1, startedAt: 0, durationSeconds: 0, transport: "smtp", error: "550 no", outcome: "failed",
                    recipients: ["one@example.test"]),
                nextAttemptAt: nil, lastError: "550 no", unknown: false)
            try await f.store.record(id: other, owner: "t", outcome: failed, now: Date().timeIntervalSince1970)
            try await client.execute(uri: "/v1/messages/\(other)", method: .get) { r in
                let j = json(r)
                #expect(j["status"] as? String == "failed")
                let attempts = try #require(j["attempts"] as? [[String: Any]])
                #expect(attempts.first?["error"] as? String == "550 no")
                #expect(attempts.first?["transport"] as? String == "smtp")
            }
            try await client.execute(uri: "/v1/messages/\(other)/retry", method: .post) { r in
                #expect(r.status == .ok)
                #expect(json(r)["status"] as? String == "queued")
            }
        }
    }

    @Test("GET /metrics is Prometheus text with the submission counter")
    func metrics() async throws {
        let f = try await APIFixture.make()
        try await f.test { client in
            try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: body(goodMessage)) {
                #expect($0.status == .accepted)
            }
            try await client.execute(uri: "/v1/messages", method: .post, headers: jsonHeaders, body: ByteBuffer(string: "{")) {
                #expect($0.status == .badRequest)
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                #expect(r.status == .ok)
                let text = String(buffer: r.body)
                #expect(text.contains("outbox_messages_submitted_total 1"))
                #expect(text.contains("outbox_http_bad_requests_total 1"))
                #expect(text.contains("outbox_queue_messages_count{status=\"queued\"} 1"))
            }
        }
    }
}

/// A request written byte for byte to a socket, and the answer read until the server closes or 2 s pass.
enum RawHTTP {
    static func exchange(port: Int, _ request: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port)).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return "" }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let bytes = Array(request.utf8)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            answer += buffer[0..<n]
            if let text = String(bytes: answer, encoding: .utf8), text.contains("\r\n\r\n"), text.contains("}") { break }
        }
        return String(decoding: answer, as: UTF8.self)
    }
}
