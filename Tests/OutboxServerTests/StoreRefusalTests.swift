import Hummingbird
import HummingbirdTesting
import NIOCore
import Outbox
import OutboxServer
import Testing

@Suite("API answers for store failures")
struct StoreRefusalTests {
    @Test("each store failure has its status, stable code, Retry-After and Outbox's own message")
    func answers() {
        let unavailable = APIError.store(.unavailable, wait: .seconds(5))
        #expect(unavailable.status == .serviceUnavailable)
        #expect(unavailable.code == "store_unavailable")
        #expect(unavailable.headers[.retryAfter] == "5")
        #expect(unavailable.message.contains("did not answer within 5 s"))
        #expect(unavailable.message.contains("Idempotency-Key"))
        let schema = APIError.store(.schemaMissing, wait: .seconds(5))
        #expect(schema.status == .serviceUnavailable)
        #expect(schema.code == "store_schema_missing")
        #expect(schema.headers[.retryAfter] != nil)
        let full = APIError.store(.insufficientStorage, wait: .seconds(5))
        #expect(full.status.code == 507)
        #expect(full.code == "insufficient_storage")
        #expect(full.headers[.retryAfter] != nil)
        let other = APIError.store(.other, wait: .seconds(5))
        #expect(other.status == .internalServerError)
        #expect(other.code == "internal_error")
        for answer in [unavailable, schema, full, other] {
            #expect(!answer.message.contains("PSQLError") && !answer.message.contains("Generic description"))
        }
    }
}

@Suite("API answers made by the router")
struct RouterAnswerTests {
    @Test("no such route and a method a route does not have answer in the API's JSON shape with a stable code")
    func routerErrors() async throws {
        let fixture = try await APIFixture.make()
        try await fixture.test { client in
            try await client.execute(uri: "/v1/nothing-here", method: .get) { r in
                #expect(r.status == .notFound)
                #expect(errorCode(r) == "not_found")
            }
            try await client.execute(uri: "/healthz", method: .delete) { r in
                #expect(r.status.code >= 400)
                #expect(errorCode(r) != nil, "\(String(buffer: r.body))")
            }
        }
    }
}
