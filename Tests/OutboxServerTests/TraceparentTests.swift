import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxServer
import Testing

/// `traceparent` on `POST /v1/messages`: a valid one is stored with the message (the parent of
/// its delivery spans), an invalid one is ignored.
@Suite("HTTP API: traceparent")
struct TraceparentTests {
    @Test("W3C Trace Context version 00 is validated")
    func validation() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        #expect(TraceContext.traceparent(valid) == valid)
        #expect(TraceContext.traceparent(valid.uppercased()) == valid)
        #expect(TraceContext.traceparent(nil) == nil)
        #expect(TraceContext.traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01") == nil, "all-zero trace id")
        #expect(TraceContext.traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01") == nil, "all-zero parent id")
        #expect(TraceContext.traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == nil, "version ff")
        #expect(TraceContext.traceparent("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01") == nil, "short trace id")
        #expect(TraceContext.traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") == nil, "version 00 has 4 fields")
        #expect(TraceContext.traceparent("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01") == nil, "not hex")
    }

    @Test("stored with the message when valid, not when invalid")
    func stored() async throws {
        let f = try await APIFixture.make()
        let store = f.store
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        try await f.test { client in
            for (sent, expected) in [(header, header as String?), ("garbage", nil)] {
                let body = #"{"from":"a@example.test","to":"b@example.test","subject":"t","text":"x"}"#
                let id = try await client.execute(
                    uri: "/v1/messages", method: .post,
                    headers: [.contentType: "application/json", HTTPFields.Element.Name("traceparent")!: sent], body: ByteBuffer(string: body)
                ) { r in
                    #expect(r.status == .accepted)
                    return json(r)["id"] as? String ?? ""
                }
                let message = try #require(try await store.get(id: id))
                #expect(message.traceparent == expected)
                let claimed = try await store.claim(limit: 10, owner: "t", now: 1e10, lease: 60)
                #expect(claimed.first { $0.message.id == id }?.message.traceparent == expected, "the dispatcher's claim carries it")
            }
        }
    }
}
