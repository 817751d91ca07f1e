import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import OutboxMIME
import OutboxOAuth

/// Graph's way for messages over the 4 MB request limit (PROTOCOLS.md §4, "Size limits"):
/// 1. `POST /users/{user}/messages` creates a draft from the message's parts (JSON: subject,
///    body, To/Cc/Bcc/Reply-To, `from` when it is another mailbox, importance, custom `X-`
///    headers). A JSON draft, not a MIME one, because a MIME draft would carry the big
///    attachments inside the same request.
/// 2. Each attachment under 3 MB: `POST .../messages/{id}/attachments` (a fileAttachment with
///    `contentBytes`). Each of 3 MB or more: `POST .../attachments/createUploadSession`, then
///    `PUT uploadUrl` in chunks of at most 4 MiB with `Content-Range`, **without**
///    Authorization; a file attachment is read chunk by chunk.
/// 3. `POST .../messages/{id}/send`: 202.
/// Only a ``Message`` (built from parts) can go this way; a raw .eml over the limit gets a
/// permanent error. A draft left behind by a failure stays in the mailbox's Drafts.
extension GraphTransport {
    /// Attachments from this size on go through an upload session.
    static let uploadSessionThreshold = 3_000_000
    /// The largest upload chunk (Graph: at most 4 MiB; a multiple of 320 KiB).
    static let uploadChunk = 4 * 1024 * 1024 - (4 * 1024 * 1024) % (320 * 1024)

    /// One authorised Graph POST; a 401 refreshes the token once and sends once more.
    func graphPost(_ url: String, json: [String: Any]?) async throws(DeliveryError) -> HTTPAnswer {
        var refreshed = false
        let payload: ByteBuffer?
        if let json {
            guard let data = try? JSONSerialization.data(withJSONObject: json) else {
                throw DeliveryError(kind: .permanent, message: "graph: the draft cannot be encoded as JSON")
            }
            payload = ByteBuffer(bytes: data)
        } else {
            payload = nil
        }
        while true {
            let token: AccessToken
            do throws(OAuthError) {
                token = try await tokens.token()
            } catch {
                throw DeliveryError(error, transport: name)
            }
            var request = HTTPClientRequest(url: url)
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(token.value.value)")
            if let payload {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(payload)
            }
            let answer = try await HTTPAnswer.exchange(request, client: client, timeout: requestTimeout, bodyLimit: 1 << 20,
                                                       transport: name, url: url)
            if answer.status == 401 && !refreshed {
                refreshed = true
                await tokens.invalidate(token)
                continue
            }
            return answer
        }
    }

    static func recipients(_ list: [Address]) -> [[String: Any]] {
        list.map { a in
            var e: [String: Any] = ["address": a.mailbox]
            if let n = a.displayName { e["name"] = n }
            return ["emailAddress": e]
        }
    }

    static func size(of attachment: Attachment) -> Int? {
        switch attachment.source {
        case .data(let bytes): return bytes.count
        case .file(let path): return (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)??.intValue
        }
    }

    static func read(_ attachment: Attachment, offset: Int, count: Int) throws -> [UInt8] {
        switch attachment.source {
        case .data(let bytes):
            return Array(bytes[offset..<min(bytes.count, offset + count)])
        case .file(let path):
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            try handle.seek(toOffset: UInt64(offset))
            return [UInt8](try handle.read(upToCount: count) ?? Data())
        }
    }

    func sendLarge(_ message: Message, envelope: Envelope, from: String, started: Date, clock: ContinuousClock.Instant) async throws(DeliveryError) -> DeliveryReport {
        let base = "\(graphURL)/users/\(Self.pathSegment(user))/messages"
        // 1. The draft.
        var draft: [String: Any] = [
            "subject": message.subject ?? "",
            "toRecipients": Self.recipients(message.to),
            "ccRecipients": Self.recipients(message.cc),
            "bccRecipients": Self.recipients(message.bcc),
        ]
        if let html = message.html {
            draft["body"] = ["contentType": "HTML", "content": html]
        } else {
            draft["body"] = ["contentType": "Text", "content": message.text ?? ""]
        }
        if !message.replyTo.isEmpty { draft["replyTo"] = Self.recipients(message.replyTo) }
        if from.lowercased() != user.lowercased() { draft["from"] = Self.recipients([message.from])[0] }
        switch message.priority {
        case .highest?, .high?: draft["importance"] = "high"
        case .low?, .lowest?: draft["importance"] = "low"
        case .normal?, nil: break
        }
        let custom = message.headers.filter { $0.name.lowercased().hasPrefix("x-") }
        if !custom.isEmpty { draft["internetMessageHeaders"] = custom.map { ["name": $0.name, "value": $0.value] } }
        let created = try await graphPost(base, json: draft)
        guard created.status == 201 || created.status == 200, let id = created.json?["id"] as? String else {
            throw Self.error(status: created.status, body: created.body, retryAfter: created.retryAfter, user: user, from: from)
        }
        let messageURL = "\(base)/\(Self.pathSegment(id))"
        // 2. The attachments.
        for attachment in message.attachments {
            guard let size = Self.size(of: attachment) else {
                throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.filename) cannot be read")
            }
            if size < Self.uploadSessionThreshold {
                let bytes: [UInt8]
                do { bytes = try Self.read(attachment, offset: 0, count: size) } catch {
                    throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.filename) cannot be read: \(error)")
                }
                var item: [String: Any] = ["@odata.type": "#microsoft.graph.fileAttachment", "name": attachment.filename,
                                           "contentType": attachment.contentType, "contentBytes": Data(bytes).base64EncodedString()]
                if let cid = attachment.contentID { item["isInline"] = true; item["contentId"] = cid }
                let answer = try await graphPost("\(messageURL)/attachments", json: item)
                guard answer.status == 201 || answer.status == 200 else {
                    throw Self.error(status: answer.status, body: answer.body, retryAfter: answer.retryAfter, user: user, from: from)
                }
            } else {
                try await upload(attachment, size: size, messageURL: messageURL, from: from)
            }
        }
        // 3. Send the draft.
        let sent = try await graphPost("\(messageURL)/send", json: nil)
        guard sent.status == 202 || sent.status == 200 else {
            throw Self.error(status: sent.status, body: sent.body, retryAfter: sent.retryAfter, user: user, from: from)
        }
        return HTTPTransportReport.accepted(transport: name, destination: messageURL, content: message, envelope: envelope,
                                            code: sent.status, text: "Accepted by Microsoft Graph (draft \(id), large-message way)",
                                            started: started, clock: clock, attempts: 1)
    }

    func upload(_ attachment: Attachment, size: Int, messageURL: String, from: String) async throws(DeliveryError) {
        var item: [String: Any] = ["attachmentType": "file", "name": attachment.filename, "size": size,
                                   "contentType": attachment.contentType]
        if let cid = attachment.contentID { item["isInline"] = true; item["contentId"] = cid }
        let session = try await graphPost("\(messageURL)/attachments/createUploadSession", json: ["AttachmentItem": item])
        guard session.status == 201 || session.status == 200, let uploadURL = session.json?["uploadUrl"] as? String else {
            throw Self.error(status: session.status, body: session.body, retryAfter: session.retryAfter, user: user, from: from)
        }
        var offset = 0
        while offset < size {
            let chunk: [UInt8]
            do { chunk = try Self.read(attachment, offset: offset, count: min(Self.uploadChunk, size - offset)) } catch {
                throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.filename) cannot be read: \(error)")
            }
            guard !chunk.isEmpty else {
                throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.filename) changed size while it was sent")
            }
            // The upload URL carries its own authorisation: no Authorization header (PROTOCOLS.md §4).
            var request = HTTPClientRequest(url: uploadURL)
            request.method = .PUT
            request.headers.add(name: "Content-Type", value: "application/octet-stream")
            request.headers.add(name: "Content-Range", value: "bytes \(offset)-\(offset + chunk.count - 1)/\(size)")
            request.body = .bytes(ByteBuffer(bytes: chunk))
            let answer = try await HTTPAnswer.exchange(request, client: client, timeout: requestTimeout, bodyLimit: 1 << 20,
                                                       transport: name, url: "the upload session of \(attachment.filename)")
            guard answer.status == 200 || answer.status == 201 || answer.status == 202 else {
                throw Self.error(status: answer.status, body: answer.body, retryAfter: answer.retryAfter, user: user, from: from)
            }
            offset += chunk.count
        }
    }
}
