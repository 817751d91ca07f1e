import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import OutboxMIME
import OutboxOAuth

/// Graph's ways that go through a draft (PROTOCOLS.md §4 "Size limits" and §9), used for a
/// message over the 4 MB request limit and for a message whose headers name other recipients
/// than its envelope.
///
/// - **The draft is always MIME**, whether the message was built from parts (``Message``) or
///   arrived raw (relayed, .eml): `POST /users/{user}/messages` with `Content-Type: text/plain`
///   and the MIME base64-encoded creates the draft from the MIME (`user-post-messages.md`,
///   example 3: 201 with the draft's `id`), so its headers (Message-ID, In-Reply-To,
///   References, custom fields) and body structure (both alternatives, inline parts) are the
///   message's own. Over the limit, the message is first split while it is read
///   (``MIMEPartSplitter``): its large attachment parts are taken out, decoded into temporary
///   files, and the rest is the draft's MIME.
/// - **Recipients**: `PATCH /users/{user}/messages/{id}` sets `toRecipients`, `ccRecipients` and
///   `bccRecipients` to the ``RecipientPlan`` (`message-update.md`: all three are updatable;
///   200), so exactly the envelope recipients receive it.
/// - **Attachments**: under 3 MB, `POST .../messages/{id}/attachments` (a fileAttachment with
///   `contentBytes`); from 3 MB, `POST .../attachments/createUploadSession` with an
///   `AttachmentItem` (name, size, contentType, isInline, contentId), then `PUT uploadUrl` in
///   chunks of at most 4 MiB (multiples of 320 KiB) with `Content-Range`, **without**
///   Authorization (`attachment-createuploadsession.md`, `outlook-large-attachments.md`). Each
///   is read from its source chunk by chunk.
/// - **Send**: `POST .../messages/{id}/send` with an empty body (`Content-Length: 0`): 202
///   (`message-send.md`). Exchange builds the sent message from the draft's properties, so
///   its To and Cc headers are the draft's To and Cc.
/// A failure before the send deletes the draft (`DELETE .../messages/{id}`, best effort); a
/// failure of the send itself leaves it (the message may have gone).
/// Sources: microsoftgraph/microsoft-graph-docs-contrib `api-reference/v1.0/api/`
/// `user-post-messages.md`, `message-update.md`, `message-send.md`, `message-delete.md`,
/// `attachment-createuploadsession.md`.
extension GraphTransport {
    /// Attachments from this size on go through an upload session.
    static let uploadSessionThreshold = 3_000_000
    /// The largest upload chunk (Graph: at most 4 MiB; a multiple of 320 KiB).
    static let uploadChunk = 4 * 1024 * 1024 - (4 * 1024 * 1024) % (320 * 1024)

    enum Method { case post, patch, delete }

    /// One authorised Graph request; a 401 refreshes the token once and sends once more.
    func graphRequest(_ url: String, _ method: Method, body: ByteBuffer?, contentType: String?) async throws(DeliveryError) -> HTTPAnswer {
        var refreshed = false
        while true {
            let token: AccessToken
            do throws(OAuthError) {
                token = try await tokens.token()
            } catch {
                throw DeliveryError(error, transport: name)
            }
            var request = HTTPClientRequest(url: url)
            switch method {
            case .post: request.method = .POST
            case .patch: request.method = .PATCH
            case .delete: request.method = .DELETE
            }
            request.headers.add(name: "Authorization", value: "Bearer \(token.value.value)")
            if body != nil, let contentType { request.headers.add(name: "Content-Type", value: contentType) }
            let answer = try await HTTPAnswer.exchange(
                request, body: body.map { .bytes($0) } ?? .empty, client: client, timeout: requestTimeout, bodyLimit: 1 << 20,
                debug: debug, transport: name, url: url)
            if answer.status == 401 && !refreshed {
                refreshed = true
                await tokens.invalidate(token)
                continue
            }
            return answer
        }
    }

    /// A JSON POST (or, with `json` nil, a POST without a body: `Content-Length: 0`).
    func graphPost(_ url: String, json: [String: Any]?) async throws(DeliveryError) -> HTTPAnswer {
        try await graphRequest(url, .post, body: try json.map(Self.encode), contentType: json == nil ? nil : "application/json")
    }

    static func encode(_ json: [String: Any]) throws(DeliveryError) -> ByteBuffer {
        guard let data = try? JSONSerialization.data(withJSONObject: json) else {
            throw DeliveryError(kind: .permanent, message: "graph: the draft cannot be encoded as JSON")
        }
        return ByteBuffer(bytes: data)
    }

    static func recipients(_ list: [Address]) -> [[String: Any]] {
        recipients(list.map { MailRecipient(address: $0.mailbox, name: $0.displayName) })
    }

    static func recipients(_ list: [MailRecipient]) -> [[String: Any]] {
        list.map { r in
            var e: [String: Any] = ["address": r.address]
            if let n = r.name { e["name"] = n }
            return ["emailAddress": e]
        }
    }

    /// The PATCH body that gives a draft exactly the plan's recipients.
    static func recipientsPatch(_ plan: RecipientPlan) -> [String: Any] {
        ["toRecipients": recipients(plan.to), "ccRecipients": recipients(plan.cc), "bccRecipients": recipients(plan.bcc)]
    }

    /// An attachment to add to a draft: a part taken out of the message, in a temporary file.
    struct DraftAttachment: Sendable {
        var name: String
        var contentType: String
        var contentID: String?
        var isInline: Bool
        var size: Int
        var path: String

        init(_ part: SpooledPart) {
            name = part.name
            contentType = part.contentType
            contentID = part.contentID
            isInline = part.isInline
            size = part.size
            path = part.path
        }

        func read(offset: Int, count: Int) throws -> [UInt8] {
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            try handle.seek(toOffset: UInt64(offset))
            return [UInt8](try handle.read(upToCount: count) ?? Data())
        }
    }

    /// A draft from MIME (at most ``maxMIMEBytes``), its recipients set to the plan, the
    /// attachments added, then sent.
    func sendMIMEDraft(
        _ mime: [UInt8], plan: RecipientPlan, attachments: [DraftAttachment], from: String,
        content: any MailContent, envelope: Envelope, way: String,
        started: Date, clock: ContinuousClock.Instant
    ) async throws(DeliveryError) -> DeliveryReport {
        let base = "\(graphURL)/users/\(Self.pathSegment(user))/messages"
        let body = ByteBuffer(string: Data(mime).base64EncodedString())
        let created = try await graphRequest(base, .post, body: body, contentType: "text/plain")
        return try await completeDraft(
            created, plan: plan, attachments: attachments, from: from, content: content,
            envelope: envelope, way: way, started: started, clock: clock)
    }

    /// Steps 2 to 4 on a created draft: recipients (when `plan` is given), attachments, send.
    private func completeDraft(
        _ created: HTTPAnswer, plan: RecipientPlan?, attachments: [DraftAttachment], from: String,
        content: any MailContent, envelope: Envelope, way: String,
        started: Date, clock: ContinuousClock.Instant
    ) async throws(DeliveryError) -> DeliveryReport {
        guard created.status == 201 || created.status == 200, let id = created.json?["id"] as? String, !id.isEmpty else {
            throw Self.error(status: created.status, body: created.body, retryAfter: created.retryAfter, user: user, from: from)
        }
        let messageURL = "\(graphURL)/users/\(Self.pathSegment(user))/messages/\(Self.pathSegment(id))"
        do throws(DeliveryError) {
            if let plan {
                let patched = try await graphRequest(
                    messageURL, .patch, body: try Self.encode(Self.recipientsPatch(plan)),
                    contentType: "application/json")
                guard patched.status == 200 || patched.status == 204 else {
                    throw Self.error(status: patched.status, body: patched.body, retryAfter: patched.retryAfter, user: user, from: from)
                }
            }
            for attachment in attachments {
                try await add(attachment, messageURL: messageURL, from: from)
            }
        } catch {
            await discardDraft(messageURL)
            throw error
        }
        let sent = try await graphPost("\(messageURL)/send", json: nil)
        guard sent.status == 202 || sent.status == 200 else {
            let error = Self.error(status: sent.status, body: sent.body, retryAfter: sent.retryAfter, user: user, from: from)
            // A refused send (4xx) left the draft unsent: remove it. Otherwise it may have gone.
            if (400..<500).contains(sent.status) { await discardDraft(messageURL) }
            throw error
        }
        return HTTPTransportReport.accepted(
            transport: name, destination: messageURL, content: content, envelope: envelope,
            code: sent.status, text: "Accepted by Microsoft Graph (draft \(id), \(way))",
            started: started, clock: clock, attempts: 1)
    }

    /// Deletes a draft that will not be sent (best effort: a failure is only logged).
    func discardDraft(_ messageURL: String) async {
        do {
            let answer = try await graphRequest(messageURL, .delete, body: nil, contentType: nil)
            if answer.status != 204 && answer.status != 200 {
                logger.notice("graph: the unsent draft could not be deleted", metadata: ["graph.status": "\(answer.status)"])
            }
        } catch {
            logger.notice("graph: the unsent draft could not be deleted: \(error.message)")
        }
    }

    /// Adds one attachment to a draft: inline JSON under 3 MB, an upload session from 3 MB.
    func add(_ attachment: DraftAttachment, messageURL: String, from: String) async throws(DeliveryError) {
        guard attachment.size >= Self.uploadSessionThreshold else {
            let bytes: [UInt8]
            do { bytes = try attachment.read(offset: 0, count: attachment.size) } catch {
                throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.name) cannot be read: \(error)")
            }
            var item: [String: Any] = [
                "@odata.type": "#microsoft.graph.fileAttachment", "name": attachment.name,
                "contentType": attachment.contentType, "contentBytes": Data(bytes).base64EncodedString(),
            ]
            if attachment.isInline { item["isInline"] = true }
            if let cid = attachment.contentID { item["contentId"] = cid }
            let answer = try await graphPost("\(messageURL)/attachments", json: item)
            guard answer.status == 201 || answer.status == 200 else {
                throw Self.error(status: answer.status, body: answer.body, retryAfter: answer.retryAfter, user: user, from: from)
            }
            return
        }
        try await upload(attachment, messageURL: messageURL, from: from)
    }

    func upload(_ attachment: DraftAttachment, messageURL: String, from: String) async throws(DeliveryError) {
        let size = attachment.size
        var item: [String: Any] = [
            "attachmentType": "file", "name": attachment.name, "size": size,
            "contentType": attachment.contentType,
        ]
        if attachment.isInline { item["isInline"] = true }
        if let cid = attachment.contentID { item["contentId"] = cid }
        let session = try await graphPost("\(messageURL)/attachments/createUploadSession", json: ["AttachmentItem": item])
        guard session.status == 201 || session.status == 200, let uploadURL = session.json?["uploadUrl"] as? String else {
            throw Self.error(status: session.status, body: session.body, retryAfter: session.retryAfter, user: user, from: from)
        }
        var offset = 0
        while offset < size {
            let chunk: [UInt8]
            do { chunk = try attachment.read(offset: offset, count: min(Self.uploadChunk, size - offset)) } catch {
                throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.name) cannot be read: \(error)")
            }
            guard !chunk.isEmpty else {
                throw DeliveryError(kind: .permanent, message: "graph: the attachment \(attachment.name) changed size while it was sent")
            }
            // The upload URL carries its own authorisation: no Authorization header (PROTOCOLS.md §4).
            var request = HTTPClientRequest(url: uploadURL)
            request.method = .PUT
            request.headers.add(name: "Content-Type", value: "application/octet-stream")
            request.headers.add(name: "Content-Range", value: "bytes \(offset)-\(offset + chunk.count - 1)/\(size)")
            let answer = try await HTTPAnswer.exchange(
                request, body: .bytes(ByteBuffer(bytes: chunk)), client: client, timeout: requestTimeout, bodyLimit: 1 << 20,
                debug: debug, transport: name, url: "the upload session of \(attachment.name)")
            guard answer.status == 200 || answer.status == 201 || answer.status == 202 else {
                throw Self.error(status: answer.status, body: answer.body, retryAfter: answer.retryAfter, user: user, from: from)
            }
            offset += chunk.count
        }
    }

    /// A raw message over ``maxMIMEBytes``: split while it is read (`head`, emptied once fed,
    /// then the rest of `stream`), the draft created from what is left, the parts taken out added as attachments.
    func sendSplit(
        head: inout [UInt8], rest stream: inout MessageByteStream.AsyncIterator, plan: RecipientPlan, from: String,
        content: any MailContent, envelope: Envelope,
        started: Date, clock: ContinuousClock.Instant
    ) async throws(DeliveryError) -> DeliveryReport {
        var splitter = MIMEPartSplitter(draftLimit: Self.maxMIMEBytes)
        defer { splitter.removeFiles() }
        var total = head.count
        do {
            do throws(MIMEPartSplitter.Failure) { try splitter.feed(head) } catch { throw Self.splitError(error, size: total) }
            head = []  // the caller's buffer: held no longer than needed
            while let chunk = try await stream.next() {
                total += chunk.readableBytes
                do throws(MIMEPartSplitter.Failure) { try splitter.feed(chunk.readableBytesView) } catch { throw Self.splitError(error, size: total) }
            }
            do throws(MIMEPartSplitter.Failure) { try splitter.finish() } catch { throw Self.splitError(error, size: total) }
        } catch let error as DeliveryError {
            throw error
        } catch {
            throw DeliveryError(http: error, transport: name, url: "the message store")
        }
        logger.debug(
            "graph: message split for the draft way",
            metadata: [
                "graph.size": "\(total)", "graph.draft": "\(splitter.draft.count)", "graph.parts": "\(splitter.parts.count)",
            ])
        return try await sendMIMEDraft(
            splitter.draft, plan: plan, attachments: splitter.parts.map(DraftAttachment.init),
            from: from, content: content, envelope: envelope,
            way: "split: \(splitter.parts.count) part(s) by upload", started: started, clock: clock)
    }

    static func splitError(_ failure: MIMEPartSplitter.Failure, size: Int) -> DeliveryError {
        switch failure {
        case .draftTooLarge(let multipart):
            let why =
                multipart
                ? "what is left once its attachments are taken out (text bodies, headers, small parts) is still over \(maxMIMEBytes) bytes"
                : "it is a single-part message (one body, no attachments to take out)"
            return DeliveryError(
                kind: .permanent,
                message:
                    "graph: the message (\(size)+ bytes) cannot go through Graph: its MIME must fit in a 4 MB request (\(maxMIMEBytes) bytes before base64), and \(why). Send it with server-type = SMTP or EWS, which take messages of any size"
            )
        case .spool(let why):
            return DeliveryError(kind: .transient, message: "graph: an attachment could not be set aside: \(why)")
        }
    }
}
