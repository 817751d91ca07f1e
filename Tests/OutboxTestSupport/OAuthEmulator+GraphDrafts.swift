import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

extension Emulator {
    package static func largeMessageRoutes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        // Create message (user-post-messages.md): JSON, or MIME as base64 with text/plain.
        router.post("/v1.0/users/:user/messages") { request, context -> Response in
            var request = request
            let id = "draft-\(UUID().uuidString.prefix(8))"
            if request.headers[.contentType] == "text/plain" {
                await state.set { $0.calls.append("createDraft/mime") }
                guard let token = bearer(request), await state.isValid(token) else {
                    return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
                }
                let body: ByteBuffer
                do { body = try await request.collectBody(upTo: 4 * 1024 * 1024) } catch {
                    return graphError(.contentTooLarge, "RequestEntityTooLarge", "Maximum request length exceeded.")
                }
                await state.set { $0.largestGraphRequest = max($0.largestGraphRequest, body.readableBytes) }
                guard let mime = strictBase64(String(buffer: body)) else {
                    return graphError(.badRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
                }
                let h = headerRecipients(mime)
                let draft = EmulatorState.Draft(
                    json: ["subject": ""], recipients: ["toRecipients": h.to, "ccRecipients": h.cc, "bccRecipients": h.bcc],
                    mime: mime, names: h.names)
                await state.set { $0.drafts[id] = draft }
                return json(
                    .created,
                    [
                        "id": id, "isDraft": true,
                        "toRecipients": h.to.map { ["emailAddress": ["address": $0]] },
                        "ccRecipients": h.cc.map { ["emailAddress": ["address": $0]] },
                        "bccRecipients": h.bcc.map { ["emailAddress": ["address": $0]] },
                    ])
            }
            await state.set { $0.calls.append("createDraft/json") }
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            var recipients: [String: [String]] = [:]
            var names: [String: String] = [:]
            for key in ["toRecipients", "ccRecipients", "bccRecipients", "replyTo"] {
                let list = recipientList(object[key]) ?? ([], [:])
                recipients[key] = list.addresses
                if key != "replyTo" { names.merge(list.names) { a, _ in a } }
            }
            var flat: [String: String] = ["subject": object["subject"] as? String ?? ""]
            if let body = object["body"] as? [String: Any] {
                flat["body.contentType"] = body["contentType"] as? String
                flat["body.content"] = body["content"] as? String
            }
            flat["from"] = ((object["from"] as? [String: Any])?["emailAddress"] as? [String: Any])?["address"] as? String
            let draft = EmulatorState.Draft(json: flat, recipients: recipients, names: names)
            await state.set { $0.drafts[id] = draft }
            return json(.created, ["id": id, "isDraft": true])
        }
        // Update message (message-update.md): the recipient collections of a draft.
        router.patch("/v1.0/users/:user/messages/:id") { request, context -> Response in
            var request = request
            await state.set { $0.calls.append("patch") }
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard var draft = await state.drafts[id] else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            for key in ["toRecipients", "ccRecipients", "bccRecipients"] where object[key] != nil {
                guard let list = recipientList(object[key]) else {
                    return graphError(.badRequest, "ErrorInvalidRecipients", "\(key) must be a collection of recipients with emailAddress.address")
                }
                draft.recipients[key] = list.addresses
                for a in list.addresses { draft.names[a.lowercased()] = list.names[a.lowercased()] }
            }
            let unknown = Set(object.keys).subtracting(["toRecipients", "ccRecipients", "bccRecipients", "subject", "body", "importance"])
            guard unknown.isEmpty else { return graphError(.badRequest, "ErrorInvalidProperty", "unexpected properties \(unknown.sorted())") }
            let updated = draft
            await state.set { $0.drafts[id] = updated }
            return json(.ok, ["id": id, "isDraft": true])
        }
        router.delete("/v1.0/users/:user/messages/:id") { request, context -> Response in
            await state.set { $0.calls.append("delete") }
            let id = try context.parameters.require("id")
            guard let token = bearer(request), await state.isValid(token) else {
                return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            }
            guard await state.drafts[id] != nil else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            await state.set { $0.drafts[id] = nil }
            return Response(status: .noContent)
        }
        router.post("/v1.0/users/:user/messages/:id/attachments") { request, context -> Response in
            var request = request
            await state.set { $0.calls.append("attachment") }
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard await state.drafts[id] != nil else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            // Without the derived type, Graph reads the body as the abstract microsoft.graph.attachment,
            // which has no contentBytes (attachment-post-attachments.md: "@odata.type" is required).
            guard object["@odata.type"] as? String == "#microsoft.graph.fileAttachment" else {
                return graphError(
                    .badRequest, "RequestBodyRead",
                    "The property 'contentBytes' does not exist on type 'microsoft.graph.attachment'. Make sure to only use property names that are defined by the type or mark the type as open type."
                )
            }
            guard let name = object["name"] as? String, let bytes = (object["contentBytes"] as? String).flatMap(strictBase64) else {
                return graphError(.badRequest, "ErrorInvalidRequest", "fileAttachment with name and base64 contentBytes expected")
            }
            let inline = object["isInline"] as? Bool ?? false
            let type = object["contentType"] as? String ?? ""
            let cid = object["contentId"] as? String
            await state.set {
                $0.drafts[id]!.attachments.append((name, bytes, false))
                $0.drafts[id]!.isInline[name] = inline
                $0.drafts[id]!.contentTypes[name] = type
                $0.drafts[id]!.contentIDs[name] = cid
            }
            return json(.created, ["id": "att-\(UUID().uuidString.prefix(6))"])
        }
        router.post("/v1.0/users/:user/messages/:id/attachments/createUploadSession") { request, context -> Response in
            var request = request
            await state.set { $0.calls.append("createUploadSession") }
            let id = try context.parameters.require("id")
            let object: [String: Any]
            switch try await graphJSON(&request, state) {
            case .success(let o): object = o
            case .failure(let r): return r
            }
            guard await state.drafts[id] != nil else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            guard let item = object["AttachmentItem"] as? [String: Any], item["attachmentType"] as? String == "file",
                let name = item["name"] as? String, let size = item["size"] as? Int, size > 0
            else {
                return graphError(.badRequest, "ErrorInvalidRequest", "AttachmentItem with attachmentType file, name and size expected")
            }
            let inline = item["isInline"] as? Bool ?? false
            let type = item["contentType"] as? String ?? ""
            let cid = item["contentId"] as? String
            let sid = "s\(UUID().uuidString.prefix(8))"
            await state.set {
                $0.uploadSessions[sid] = EmulatorState.UploadSession(draft: id, name: name, size: size)
                $0.drafts[id]!.isInline[name] = inline
                $0.drafts[id]!.contentTypes[name] = type
                $0.drafts[id]!.contentIDs[name] = cid
            }
            return json(
                .created,
                [
                    "uploadUrl": "\(await state.baseURL)/upload/\(sid)", "expirationDateTime": "2030-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"],
                ])
        }
        router.put("/upload/:sid") { request, context -> Response in
            var request = request
            let sid = try context.parameters.require("sid")
            if request.headers[.authorization] != nil {
                await state.set { $0.uploadsWithAuthorization += 1 }
                return graphError(.badRequest, "InvalidRequest", "The upload URL must be called without an Authorization header.")
            }
            guard var session = await state.uploadSessions[sid] else { return graphError(.notFound, "ItemNotFound", "no such upload session") }
            let chunk: ByteBuffer
            do { chunk = try await request.collectBody(upTo: 4 * 1024 * 1024) } catch {
                return graphError(.contentTooLarge, "RequestEntityTooLarge", "An upload chunk may be at most 4 MB.")
            }
            let expected = "bytes \(session.received.count)-\(session.received.count + chunk.readableBytes - 1)/\(session.size)"
            guard request.headers[HTTPField.Name("Content-Range")!] == expected else {
                return graphError(.rangeNotSatisfiable, "InvalidRange", "expected Content-Range: \(expected)")
            }
            session.received += chunk.readableBytesView
            let done = session.received.count == session.size
            let finished = session
            await state.set {
                $0.uploadChunkSizes.append(chunk.readableBytes)
                $0.uploadSessions[sid] = done ? nil : finished
                if done { $0.drafts[finished.draft]!.attachments.append((finished.name, finished.received, true)) }
            }
            if done { return json(.created, ["id": "att-\(sid)"]) }
            return json(.ok, ["nextExpectedRanges": ["\(finished.received.count)-"]])
        }
        // Send (message-send.md): no body, Content-Length: 0; 202.
        router.post("/v1.0/users/:user/messages/:id/send") { request, context -> Response in
            await state.set { $0.calls.append("send") }
            let id = try context.parameters.require("id")
            guard let token = bearer(request), await state.isValid(token) else {
                return graphError(.unauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
            }
            guard request.headers[.contentLength] == "0" else {
                return graphError(.lengthRequired, "LengthRequired", "Content-Length: 0 is required")
            }
            guard let draft = await state.drafts[id] else {
                return graphError(.notFound, "ErrorItemNotFound", "The specified object was not found in the store.")
            }
            let delivery = EmulatorState.Delivery(
                via: draft.mime == nil ? "draft/json" : "draft/mime",
                to: draft.recipients["toRecipients"] ?? [], cc: draft.recipients["ccRecipients"] ?? [],
                bcc: draft.recipients["bccRecipients"] ?? [], mime: draft.mime,
                attachments: draft.attachments, names: draft.names,
                sent: draft.mime.map { reconstruct($0, draft: draft) })
            await state.set {
                $0.sentDrafts.append(draft); $0.drafts[id] = nil; $0.deliveries.append(delivery)
            }
            return Response(status: .accepted)
        }
    }
}

extension Emulator {
    /// The message Exchange sends from a MIME draft and the attachments added to it: the
    /// draft's header fields, its body as the first part of a `multipart/mixed`, then each
    /// attachment as a base64 part with its Content-Type, Content-Disposition (inline or
    /// attachment, with the file name), and Content-ID. A draft without added attachments is
    /// sent as it is.
    package static func reconstruct(_ mime: [UInt8], draft: EmulatorState.Draft) -> [UInt8] {
        guard !draft.attachments.isEmpty else { return mime }
        let text = String(decoding: mime, as: UTF8.self)
        let split = text.range(of: "\r\n\r\n")
        let head = split.map { String(text[..<$0.lowerBound]) } ?? text
        let body = split.map { String(text[$0.upperBound...]) } ?? ""
        var fields: [String] = []
        for line in head.components(separatedBy: "\r\n") {
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1] += "\r\n" + line
            } else {
                fields.append(line)
            }
        }
        let isContent = { (f: String) in f.lowercased().hasPrefix("content-") }
        let boundary = "=_emulator_\(UUID().uuidString)"
        var out = fields.filter { !isContent($0) }.joined(separator: "\r\n") + "\r\n"
        out += "Content-Type: multipart/mixed; boundary=\"\(boundary)\"\r\n\r\n"
        out += "--\(boundary)\r\n" + fields.filter(isContent).joined(separator: "\r\n") + "\r\n\r\n" + body
        if !body.hasSuffix("\r\n") { out += "\r\n" }
        for a in draft.attachments {
            let name = a.name.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: ".-_"))) ?? a.name
            let type = draft.contentTypes[a.name].flatMap { $0.isEmpty ? nil : $0 } ?? "application/octet-stream"
            out += "--\(boundary)\r\nContent-Type: \(type)\r\n"
            out += "Content-Disposition: \(draft.isInline[a.name] == true ? "inline" : "attachment"); filename*=utf-8''\(name)\r\n"
            if let cid = draft.contentIDs[a.name] { out += "Content-ID: <\(cid)>\r\n" }
            out += "Content-Transfer-Encoding: base64\r\n\r\n"
            out += Data(a.bytes).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
            out += "\r\n"
        }
        out += "--\(boundary)--\r\n"
        return Array(out.utf8)
    }
}
