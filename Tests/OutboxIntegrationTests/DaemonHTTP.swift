import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore

/// One request to a daemon's HTTP API on 127.0.0.1:`port`; the answer's status and JSON object.
func http(
    _ port: Int, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil, token: String? = nil
) async throws -> (HTTPResponse.Status, [String: Any]) {
    var fields: HTTPFields = body == nil ? [:] : [.contentType: "application/json"]
    if let token { fields[.authorization] = "Bearer \(token)" }
    let headers = fields
    return try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
        let r = try await client.execute(TestClient.Request(uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }))
        let j = (try? JSONSerialization.jsonObject(with: Data((r.body ?? ByteBuffer()).readableBytesView))) as? [String: Any] ?? [:]
        return (r.status, j)
    }
}

/// An option's value in a `/v1/status` answer.
func option(_ status: [String: Any], _ name: String) -> String? {
    (status["configuration"] as? [[String: Any]])?.first { $0["name"] as? String == name }?["value"] as? String
}

/// Polls `GET /v1/messages/{id}` until its status is `wanted` (at most `attempts` × 100 ms);
/// returns the last answer.
func waitForMessage(_ port: Int, _ id: String, status wanted: String, attempts: Int = 150) async throws -> [String: Any] {
    var last: [String: Any] = [:]
    for _ in 0..<attempts {
        last = try await http(port, .get, "/v1/messages/\(id)").1
        if last["status"] as? String == wanted { break }
        try await Task.sleep(for: .milliseconds(100))
    }
    return last
}
