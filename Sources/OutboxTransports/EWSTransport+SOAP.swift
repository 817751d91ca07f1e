import AsyncHTTPClient
import Foundation
import NIOCore
import OutboxMIME
import OutboxOAuth

/// The SOAP requests EWSTransport sends (CreateItem with the streamed MIME, UpdateItem), with
/// their exact length, and the `allow-delegate` decision (see ``EWSTransport``).
extension EWSTransport {
    /// The mailbox the message is sent as, when its From is another than ``mailbox``: nil for
    /// the user's own; refused (permanent, naming the option) when `allow-delegate` is false.
    func delegation(header: MIMEHeaderAddresses) throws(DeliveryError) -> String? {
        guard let mailbox, let from = header.from.first, from.lowercased() != mailbox.lowercased() else { return nil }
        // As that mailbox (in send-as) or on its behalf (allow-delegate): t:From names it; Exchange
        // sets t:Sender to the user for Send on Behalf (t:Sender itself cannot be set).
        var policy = self.policy
        policy.user = mailbox
        switch try policy.decide(from: from, component: "ews") {
        case .own: return nil
        case .sendAs(let address), .onBehalf(let address), .delegate(let address): return address
        }
    }

    /// The MIME's size in octets: known, or counted by serialising it once (not kept).
    func mimeSize(_ content: any MailContent, options: MIMEEncodingOptions) async throws(DeliveryError) -> Int {
        if let known = content.knownByteCount { return known }
        do {
            return try await content.byteStream(options: options).countBytes()
        } catch {
            throw DeliveryError(http: error, transport: name, url: url)
        }
    }

    /// `head`, the MIME base64-encoded as it is serialised, `tail`: streamed with its exact
    /// length (base64 of `size` octets is 4 * ceil(size / 3) characters).
    static func mimeBody(_ content: any MailContent, options: MIMEEncodingOptions, size: Int, head: String, tail: String) -> HTTPRequestBody {
        let length = head.utf8.count + (size + 2) / 3 * 4 + tail.utf8.count
        return .streamed(
            Base64Wrapped(base: content.byteStream(options: options), prefix: ByteBuffer(string: head), suffix: ByteBuffer(string: tail)),
            length: Int64(length), head: head)
    }

    static func xmlEscape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(c)
            }
        }
        return out
    }

    /// The SOAP envelope up to and including `<soap:Body>`.
    func envelopeHead(impersonate: String?) -> String {
        var s = #"<?xml version="1.0" encoding="utf-8"?>"# + "\r\n"
        s +=
            #"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#
        s += "<soap:Header>"
        s += #"<t:RequestServerVersion Version="\#(Self.xmlEscape(version))"/>"#
        if let impersonate {
            s +=
                "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>\(Self.xmlEscape(impersonate))</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        }
        s += "</soap:Header><soap:Body>"
        return s
    }

    static let envelopeTail = "</soap:Body></soap:Envelope>\r\n"

    /// Everything before the base64 MIME: CreateItem that sends (`SendAndSaveCopy`, a copy in
    /// Sent Items) or only saves a draft (`SaveOnly`, in Drafts).
    func soapHead(impersonate: String?, draft: Bool = false) -> String {
        var s = envelopeHead(impersonate: impersonate)
        if draft {
            s += #"<m:CreateItem MessageDisposition="SaveOnly">"#
            s += #"<m:SavedItemFolderId><t:DistinguishedFolderId Id="drafts"/></m:SavedItemFolderId>"#
        } else {
            s += #"<m:CreateItem MessageDisposition="SendAndSaveCopy">"#
            s += #"<m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId>"#
        }
        s += #"<m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">"#
        return s
    }

    /// Everything after the base64 MIME: the Bcc recipients, then `t:From` when the message is
    /// sent as (or on behalf of) `from`, another mailbox than `user`.
    static func soapTail(bcc: [String], from: String? = nil) -> String {
        var s = "</t:MimeContent>"
        if !bcc.isEmpty {
            s += "<t:BccRecipients>"
            for b in bcc { s += "<t:Mailbox><t:EmailAddress>\(xmlEscape(b))</t:EmailAddress></t:Mailbox>" }
            s += "</t:BccRecipients>"
        }
        if let from { s += "<t:From><t:Mailbox><t:EmailAddress>\(xmlEscape(from))</t:EmailAddress></t:Mailbox></t:From>" }
        s += "</t:Message></m:Items></m:CreateItem>" + envelopeTail
        return s
    }

    /// UpdateItem that sets the draft's To, Cc and Bcc to the plan (an empty list is deleted:
    /// DeleteItemField) and sends it, a copy in Sent Items (`MessageDisposition="SendAndSaveCopy"`).
    func updateAndSend(id: String, changeKey: String?, plan: RecipientPlan, impersonate: String?) -> String {
        var s = envelopeHead(impersonate: impersonate)
        s += #"<m:UpdateItem MessageDisposition="SendAndSaveCopy" ConflictResolution="AlwaysOverwrite">"#
        s += #"<m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId>"#
        s += "<m:ItemChanges><t:ItemChange>"
        s += #"<t:ItemId Id="\#(Self.xmlEscape(id))""# + (changeKey.map { #" ChangeKey="\#(Self.xmlEscape($0))""# } ?? "") + "/>"
        s += "<t:Updates>"
        for (field, list) in [("ToRecipients", plan.to), ("CcRecipients", plan.cc), ("BccRecipients", plan.bcc)] {
            if list.isEmpty {
                s += #"<t:DeleteItemField><t:FieldURI FieldURI="message:\#(field)"/></t:DeleteItemField>"#
                continue
            }
            s += #"<t:SetItemField><t:FieldURI FieldURI="message:\#(field)"/><t:Message><t:\#(field)>"#
            for r in list {
                s += "<t:Mailbox>"
                if let n = r.name { s += "<t:Name>\(Self.xmlEscape(n))</t:Name>" }
                s += "<t:EmailAddress>\(Self.xmlEscape(r.address))</t:EmailAddress></t:Mailbox>"
            }
            s += "</t:\(field)></t:Message></t:SetItemField>"
        }
        s += "</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>" + Self.envelopeTail
        return s
    }

    /// `Id` and `ChangeKey` of the first `t:ItemId` in an answer.
    static func itemID(in body: String) -> (id: String, changeKey: String?)? {
        guard let open = body.range(of: #"<([A-Za-z0-9]+:)?ItemId\s[^>]*>"#, options: .regularExpression) else { return nil }
        let tag = String(body[open])
        func attribute(_ name: String) -> String? {
            guard let r = tag.range(of: #"\s\#(name)="[^"]*""#, options: .regularExpression) else { return nil }
            let raw = tag[r].drop { $0 != "\"" }.dropFirst().dropLast()
            return raw.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&lt;", with: "<")
                .replacingOccurrences(of: "&gt;", with: ">").replacingOccurrences(of: "&apos;", with: "'")
                .replacingOccurrences(of: "&amp;", with: "&")
        }
        guard let id = attribute("Id"), !id.isEmpty else { return nil }
        return (id, attribute("ChangeKey"))
    }
}
