import AsyncHTTPClient
import Foundation
import NIOCore

/// What `outbox probe` finds out about an EWS endpoint without sending mail.
package struct EWSProbeResult: Sendable {
    /// The EWS URL.
    package var url: String
    /// The HTTP status of the request sent without credentials (nil: no answer).
    package var anonymousStatus: Int?
    /// The schemes its 401 offered (`WWW-Authenticate`), in order.
    package var offered: [String] = []
    /// The scheme Outbox authenticated with: Basic, NTLM, Negotiate or Bearer.
    package var used: String?
    /// The authenticated GetFolder's outcome, e.g. `GetFolder NoError`.
    package var result: String?
    /// How many NTLM handshakes ran.
    package var ntlmHandshakes = 0
    /// What failed.
    package var error: DeliveryError?
}

extension EWSTransport {
    /// GetFolder of the inbox, IdOnly: a harmless authenticated request.
    func getFolder(impersonate: String?) -> String {
        envelopeHead(impersonate: impersonate)
            + "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
            + #"<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"# + Self.envelopeTail
    }

    /// Sends GetFolder once without credentials (to learn the offered schemes), then once with
    /// this transport's authentication, and reports both. Sends no mail.
    package func probe() async -> EWSProbeResult {
        var result = EWSProbeResult(url: url)
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "text/xml; charset=utf-8")
        do throws(DeliveryError) {
            let anonymous = try await HTTPAnswer.exchange(
                request, body: .bytes(ByteBuffer(string: getFolder(impersonate: nil))), client: client, timeout: requestTimeout,
                bodyLimit: 1 << 20, debug: debug, transport: name, url: url)
            result.anonymousStatus = anonymous.status
            let offers = HTTPAuthenticateOffers(headers: anonymous.authenticate)
            result.offered = offers.schemes
            if anonymous.status == 401, case .basic = auth, let windows, windows.scheme == nil {
                // No Basic on offer: go straight to NTLM rather than send the password in Basic.
                _ = try windows.adopt(offers, transport: name)
            }
            let (answer, _, _) = try await post(operation: "GetFolder") { impersonate in
                .bytes(ByteBuffer(string: getFolder(impersonate: impersonate)))
            }
            result.used = usedScheme
            result.ntlmHandshakes = windows?.handshakes ?? 0
            switch answer.result {
            case .success: result.result = "GetFolder \(answer.responseCode ?? "NoError")"
            case .failure(let error): result.error = error
            }
        } catch {
            result.used = usedScheme
            result.ntlmHandshakes = windows?.handshakes ?? 0
            result.error = error
        }
        return result
    }

    /// The scheme requests carry now.
    var usedScheme: String {
        switch auth {
        case .anonymous: "none (enable-authentication = false)"
        case .bearer: "Bearer"
        case .basic: windows?.scheme ?? "Basic"
        }
    }
}
