import Foundation
import Hummingbird
import NIOCore

/// A 4xx/5xx answer with a JSON body `{"error": {"code": ..., "message": ...}}` that says what is
/// wrong. Nothing is stored when one is returned.
package struct APIError: Error, Sendable, CustomStringConvertible {
    package var status: HTTPResponse.Status
    /// Stable, for clients and metrics: `invalid_json`, `invalid_address`, `missing_recipients`...
    package var code: String
    package var message: String
    /// Extra headers, e.g. `Retry-After` on a 503 or 507.
    package var headers: HTTPFields

    package init(_ status: HTTPResponse.Status, _ code: String, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    /// A temporary refusal with `Retry-After: seconds`.
    package static func retryLater(_ status: HTTPResponse.Status, _ code: String, _ message: String, after seconds: Int) -> APIError {
        APIError(status, code, message, headers: [.retryAfter: "\(seconds)"])
    }

    package var description: String { "\(status.code) \(code): \(message)" }

    var response: Response {
        JSON.response(status, ["error": ["code": code, "message": message]], headers: headers)
    }
}

enum JSON {
    static func data(_ value: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    static func response(_ status: HTTPResponse.Status, _ value: Any, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data(value) + [10])))
    }

    static func iso(_ seconds: Double?) -> Any {
        guard let seconds else { return NSNull() }
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date(timeIntervalSince1970: seconds))
    }
}

/// A 64-bit FNV-1a digest, to tell whether a reused idempotency key comes with the same request.
enum Digest {
    static func fnv1a(_ parts: [[UInt8]]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for part in parts {
            for byte in part {
                hash ^= UInt64(byte)
                hash = hash &* 0x100_0000_01b3
            }
            hash ^= 0xff
            hash = hash &* 0x100_0000_01b3
        }
        return String(hash, radix: 16)
    }
}
