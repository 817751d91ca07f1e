import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

extension Emulator {
    /// Graph sendMail with MIME.
    package static func sendMailRoute(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        // Graph sendMail with MIME (PROTOCOLS.md §4).
        router.post("/v1.0/users/:user/sendMail") { request, context -> Response in
            var request = request
            await state.set {
                $0.graphRequests += 1; $0.calls.append("sendMail")
            }
            let user = try context.parameters.require("user")
            guard let token = bearer(request), await state.isValid(token) else {
                return json(
                    .unauthorized, ["error": ["code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."]])
            }
            if await state.throttleNext > 0 {
                await state.set { $0.throttleNext -= 1 }
                return json(
                    .tooManyRequests, ["error": ["code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."]],
                    headers: [.retryAfter: "7"])
            }
            guard request.headers[.contentType] == "text/plain" else {
                return json(.unsupportedMediaType, ["error": ["code": "RequestBodyRead", "message": "Content-Type must be text/plain for MIME"]])
            }
            let body: ByteBuffer
            do {
                body = try await request.collectBody(upTo: 4 * 1024 * 1024)
            } catch {
                return json(.contentTooLarge, ["error": ["code": "RequestEntityTooLarge", "message": "Maximum request length exceeded."]])
            }
            await state.set { $0.largestGraphRequest = max($0.largestGraphRequest, body.readableBytes) }
            guard let mime = strictBase64(String(buffer: body)) else {
                return json(
                    .badRequest, ["error": ["code": "ErrorMimeContentInvalidBase64String", "message": "Invalid base64 string for MIME content."]])
            }
            // The application's Mail.Send permission covers every mailbox of the tenant: the
            // mailbox in the path sends (graphMailbox, or one of tenantMailboxes).
            let mailbox = user.lowercased()
            let (primary, tenant) = await (state.graphMailbox.lowercased(), state.tenantMailboxes)
            guard mailbox == primary || tenant.contains(mailbox) else {
                return json(.notFound, ["error": ["code": "ErrorInvalidUser", "message": "The requested user '\(user)' is invalid."]])
            }
            let from = fromHeader(mime)?.lowercased() ?? ""
            // Send on Behalf: the Sender header, when present, must be the sending mailbox.
            if let sender = headerAddress(mime, "Sender")?.lowercased(), sender != mailbox {
                return json(
                    .forbidden,
                    [
                        "error": [
                            "code": "ErrorSendAsDenied",
                            "message": "The Sender \(sender) is not the mailbox \(mailbox) that submits the message.",
                        ]
                    ])
            }
            if from != mailbox, await !state.delegates.contains(from) {
                return json(
                    .forbidden,
                    [
                        "error": [
                            "code": "ErrorSendAsDenied",
                            "message":
                                "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message.",
                        ]
                    ])
            }
            // Exchange takes the recipients of a MIME message from its To, Cc and Bcc fields.
            let h = headerRecipients(mime)
            await state.set {
                $0.delivered.append(mime)
                $0.deliveries.append(EmulatorState.Delivery(via: "sendMail", to: h.to, cc: h.cc, bcc: h.bcc, mime: mime, names: h.names))
                $0.sendMailMailboxes.append(mailbox)
                $0.sendMailInFlight += 1
                $0.sendMailMostInFlight = max($0.sendMailMostInFlight, $0.sendMailInFlight)
            }
            let delay = await state.sendMailDelay
            if delay > .zero { try? await Task.sleep(for: delay) }
            await state.set { $0.sendMailInFlight -= 1 }
            return Response(status: .accepted)
        }
    }
}

package enum JSONOrResponse {
    case success([String: Any])
    case failure(Response)
}

extension Emulator {
    package static func graphError(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        json(status, ["error": ["code": code, "message": message]])
    }

    /// Reads a JSON Graph request: a valid token, application/json, at most 4 MiB.
    package static func graphJSON(_ request: inout Request, _ state: EmulatorState) async throws -> JSONOrResponse {
        guard let token = bearer(request), await state.isValid(token) else {
            return .failure(graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."))
        }
        guard request.headers[.contentType]?.hasPrefix("application/json") == true else {
            return .failure(graphError(.unsupportedMediaType, "RequestBodyRead", "Content-Type must be application/json"))
        }
        let body: ByteBuffer
        do { body = try await request.collectBody(upTo: 4 * 1024 * 1024) } catch {
            return .failure(graphError(.contentTooLarge, "RequestEntityTooLarge", "Maximum request length exceeded."))
        }
        await state.set { $0.largestGraphRequest = max($0.largestGraphRequest, body.readableBytes) }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] else {
            return .failure(graphError(.badRequest, "BadRequest", "Unable to read JSON request payload."))
        }
        return .success(object)
    }

    /// To, Cc and Bcc of a MIME header section, read independently of Outbox's parser:
    /// unfolded fields, the list split at commas outside quotes and angle brackets, the address
    /// in `<...>` or the bare item.
    package static func headerRecipients(_ mime: [UInt8]) -> (to: [String], cc: [String], bcc: [String], names: [String: String], hasBcc: Bool) {
        var fields: [(String, String)] = []
        for line in String(decoding: mime, as: UTF8.self).components(separatedBy: "\r\n") {
            if line.isEmpty { break }
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].1 += line
            } else if let colon = line.firstIndex(of: ":") {
                fields.append((line[..<colon].lowercased(), String(line[line.index(after: colon)...])))
            }
        }
        var out: [String: [String]] = ["to": [], "cc": [], "bcc": []]
        var names: [String: String] = [:]
        var hasBcc = false
        for (name, value) in fields where out[name] != nil {
            if name == "bcc" { hasBcc = true }
            var items: [String] = []
            var current = ""
            var quoted = false
            var angle = false
            for c in value {
                if c == "\"" { quoted.toggle() }
                if c == "<" && !quoted { angle = true }
                if c == ">" && !quoted { angle = false }
                if c == "," && !quoted && !angle {
                    items.append(current)
                    current = ""
                } else {
                    current.append(c)
                }
            }
            items.append(current)
            for item in items {
                let t = item.trimmingCharacters(in: .whitespaces)
                if t.isEmpty { continue }
                if let lt = t.lastIndex(of: "<"), let gt = t.lastIndex(of: ">"), lt < gt {
                    let address = String(t[t.index(after: lt)..<gt])
                    var display = t[..<lt].trimmingCharacters(in: .whitespaces)
                    if display.hasPrefix("\""), display.hasSuffix("\""), display.count >= 2 { display = String(display.dropFirst().dropLast()) }
                    if !display.isEmpty { names[address.lowercased()] = display }
                    out[name]!.append(address)
                } else {
                    out[name]!.append(t)
                }
            }
        }
        return (out["to"]!, out["cc"]!, out["bcc"]!, names, hasBcc)
    }

    package static func recipientList(_ value: Any?) -> (addresses: [String], names: [String: String])? {
        guard let list = value as? [[String: Any]] else { return nil }
        var addresses: [String] = []
        var names: [String: String] = [:]
        for item in list {
            guard let e = item["emailAddress"] as? [String: Any], let a = e["address"] as? String else { return nil }
            addresses.append(a)
            if let n = e["name"] as? String { names[a.lowercased()] = n }
        }
        return (addresses, names)
    }

}
