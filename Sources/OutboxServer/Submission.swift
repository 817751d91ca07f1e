import Foundation
import Outbox
import OutboxMIME

/// Turns a `POST /v1/messages` body into the message's final bytes and envelope, or an
/// `APIError` that says what is wrong.
enum Submission {
    static let jsonKeys: Set<String> = ["from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "attachments", "headers", "route"]

    /// A JSON submission: from, to, cc, bcc, reply_to (a string or a list of strings each),
    /// subject, text, html, attachments [{name, type, content (base64)}], headers {name: value},
    /// route (the route asked for, returned beside the message).
    static func fromJSON(_ body: [UInt8]) async throws(APIError) -> (NewMessage, route: String?) {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(body), options: [])
        } catch {
            throw APIError(.badRequest, "invalid_json", "the body is not valid JSON: \(Self.jsonErrorText(error))")
        }
        guard let fields = object as? [String: Any] else {
            throw APIError(.badRequest, "invalid_json", "the body must be a JSON object with from, to, subject, text...")
        }
        if let unknown = fields.keys.sorted().first(where: { !jsonKeys.contains($0) }) {
            throw APIError(
                .badRequest, "unknown_field", "\"\(unknown)\" is not a field of a message (valid: \(jsonKeys.sorted().joined(separator: ", ")))")
        }
        guard let fromValue = fields["from"] else {
            throw APIError(.badRequest, "missing_from", "\"from\" is required (the sender's address)")
        }
        guard let fromText = fromValue as? String else {
            throw APIError(.badRequest, "invalid_field", "\"from\" must be a string like \"Name <user@example.com>\"")
        }
        let from = try address(fromText, field: "from")
        let to = try addresses(fields["to"], field: "to")
        let cc = try addresses(fields["cc"], field: "cc")
        let bcc = try addresses(fields["bcc"], field: "bcc")
        let replyTo = try addresses(fields["reply_to"], field: "reply_to")
        guard !(to + cc + bcc).isEmpty else {
            throw APIError(.badRequest, "missing_recipients", "the message has no recipient: give at least one address in to, cc or bcc")
        }
        let route = try string(fields["route"], field: "route")
        let subject = try string(fields["subject"], field: "subject")
        let text = try string(fields["text"], field: "text")
        let html = try string(fields["html"], field: "html")
        var attachments: [Attachment] = []
        if let raw = fields["attachments"], !(raw is NSNull) {
            guard let list = raw as? [Any] else {
                throw APIError(.badRequest, "invalid_field", "\"attachments\" must be a list of {name, type, content}")
            }
            for (i, item) in list.enumerated() {
                guard let a = item as? [String: Any] else {
                    throw APIError(.badRequest, "invalid_attachment", "attachments[\(i)] must be an object {name, type, content}")
                }
                if let unknown = a.keys.sorted().first(where: { !["name", "type", "content"].contains($0) }) {
                    throw APIError(.badRequest, "invalid_attachment", "attachments[\(i)]: \"\(unknown)\" is not a field (valid: name, type, content)")
                }
                guard let name = a["name"] as? String, !name.isEmpty else {
                    throw APIError(.badRequest, "invalid_attachment", "attachments[\(i)] needs a \"name\" (the file name)")
                }
                guard let content = a["content"] as? String else {
                    throw APIError(.badRequest, "invalid_attachment", "attachments[\(i)] (\(name)) needs \"content\", the file's bytes in base64")
                }
                guard let bytes = Data(base64Encoded: content, options: [.ignoreUnknownCharacters]) else {
                    throw APIError(.badRequest, "invalid_attachment", "attachments[\(i)] (\(name)): \"content\" is not valid base64")
                }
                let type = try string(a["type"], field: "attachments[\(i)].type")
                attachments.append(.data(Array(bytes), filename: name, contentType: type))
            }
        }
        var headers: [MessageHeader] = []
        if let raw = fields["headers"], !(raw is NSNull) {
            guard let dict = raw as? [String: Any] else {
                throw APIError(.badRequest, "invalid_field", "\"headers\" must be an object {\"X-Name\": \"value\"}")
            }
            for name in dict.keys.sorted() {
                guard let value = dict[name] as? String else {
                    throw APIError(.badRequest, "invalid_header", "headers.\(name) must be a string")
                }
                headers.append(MessageHeader(name, value))
            }
        }
        var message = Message(from: from, to: to, cc: cc, bcc: bcc, subject: subject, text: text, html: html, attachments: attachments)
        message.replyTo = replyTo
        message.headers = headers
        do {
            try message.validate()
        } catch {
            throw APIError(.badRequest, "invalid_message", "\(error)")
        }
        let envelope: Envelope
        let bytes: [UInt8]
        do {
            envelope = try message.envelope()
            bytes = try await message.byteStream(options: MIMEEncodingOptions(allow8BitMIME: false, smtpUTF8: message.requiresSMTPUTF8)).collect()
        } catch {
            throw APIError(.badRequest, "invalid_message", "\(error)")
        }
        return (NewMessage(from: envelope.from, recipients: envelope.recipients, content: bytes, messageID: message.messageID), route)
    }

    /// A finished message (`message/rfc822`) with the envelope in query parameters `from` and
    /// `to` (repeated or comma-separated); without them the envelope comes from the headers.
    static func fromRFC822(_ body: [UInt8], from: String?, to: [String]) async throws(APIError) -> NewMessage {
        guard !body.isEmpty else {
            throw APIError(.badRequest, "empty_message", "the message/rfc822 body is empty")
        }
        let raw: RawMessage
        do {
            raw = try RawMessage(bytes: body)
        } catch {
            throw APIError(.badRequest, "invalid_message", "the message cannot be read: \(error)")
        }
        var envelope: Envelope
        do {
            envelope = try raw.envelope()
        } catch {
            if from == nil || to.isEmpty {
                throw APIError(.badRequest, "missing_recipients", "\(error); or give the envelope as query parameters from= and to=")
            }
            envelope = Envelope(from: "", recipients: [])
        }
        if let from {
            envelope.from = try address(from, field: "from").mailbox
        }
        if !to.isEmpty {
            var recipients: [String] = []
            for (i, text) in to.enumerated() { recipients.append(try address(text, field: "to[\(i)]").mailbox) }
            envelope.recipients = recipients
        }
        guard !envelope.recipients.isEmpty else {
            throw APIError(.badRequest, "missing_recipients", "the message has no recipient: add To/Cc or the query parameter to=")
        }
        let bytes: [UInt8]
        do {
            bytes = try await raw.byteStream(options: MIMEEncodingOptions()).collect()
        } catch {
            throw APIError(.badRequest, "invalid_message", "\(error)")
        }
        let messageID = headerValue(raw.headerBytes, "message-id")
        return NewMessage(from: envelope.from, recipients: envelope.recipients, content: bytes, messageID: messageID)
    }

    static func headerValue(_ header: [UInt8], _ name: String) -> String? {
        let text = String(decoding: header, as: UTF8.self)
        for line in text.split(separator: "\r\n") where line.lowercased().hasPrefix(name + ":") {
            return line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    static func address(_ text: String, field: String) throws(APIError) -> Address {
        if let bad = text.unicodeScalars.first(where: { $0.value < 32 || $0.value == 127 }) {
            throw APIError(
                .badRequest, "invalid_address",
                "\(field): the address contains a control character (U+\(String(format: "%04X", bad.value))); CR, LF and other control characters are not allowed"
            )
        }
        do {
            return try Address(parsing: text)
        } catch {
            throw APIError(.badRequest, "invalid_address", "\(field): \"\(text.prefix(200))\" is not a valid address: \(error)")
        }
    }

    static func addresses(_ value: Any?, field: String) throws(APIError) -> [Address] {
        guard let value, !(value is NSNull) else { return [] }
        if let one = value as? String { return [try address(one, field: field)] }
        guard let list = value as? [Any] else {
            throw APIError(.badRequest, "invalid_field", "\"\(field)\" must be an address or a list of addresses")
        }
        var out: [Address] = []
        for (i, item) in list.enumerated() {
            guard let text = item as? String else {
                throw APIError(.badRequest, "invalid_field", "\(field)[\(i)] must be a string address")
            }
            out.append(try address(text, field: "\(field)[\(i)]"))
        }
        return out
    }

    static func string(_ value: Any?, field: String) throws(APIError) -> String? {
        guard let value, !(value is NSNull) else { return nil }
        guard let s = value as? String else {
            throw APIError(.badRequest, "invalid_field", "\"\(field)\" must be a string")
        }
        return s
    }

    static func jsonErrorText(_ error: any Error) -> String {
        let ns = error as NSError
        return (ns.userInfo[NSDebugDescriptionErrorKey] as? String) ?? ns.localizedDescription
    }
}
