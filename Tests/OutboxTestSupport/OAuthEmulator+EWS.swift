import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

extension Emulator {
    /// EWS CreateItem and UpdateItem.
    package static func ewsRoutes(_ router: Router<BasicRequestContext>, _ state: EmulatorState) {
        // EWS CreateItem (PROTOCOLS.md §3).
        router.post("/EWS/Exchange.asmx") { request, _ -> Response in
            var request = request
            await state.set { $0.ewsRequests += 1 }
            guard request.headers[.contentType]?.hasPrefix("text/xml") == true else {
                return Response(status: .unsupportedMediaType)
            }
            let auth = request.headers[.authorization] ?? ""
            let given = request.headers[.authorization]
            await state.set { $0.ewsAuthorizations.append(given) }
            var mailbox = await state.ewsBasicUser
            if auth.hasPrefix("Basic ") {
                let decoded = Data(base64Encoded: String(auth.dropFirst(6))).map { String(decoding: $0, as: UTF8.self) } ?? ""
                guard await decoded == "\(state.ewsBasicUser):\(state.ewsBasicPassword)" else { return Response(status: .unauthorized) }
            } else if let token = bearer(request) {
                guard await state.isValid(token) else { return Response(status: .unauthorized) }
                guard let anchor = request.headers[HTTPField.Name("X-AnchorMailbox")!], !anchor.isEmpty else {
                    return xml(.internalServerError, fault("ErrorMissingEmailAddress", "X-AnchorMailbox header is required with OAuth."))
                }
                await state.set { $0.lastAnchorMailbox = anchor }
                mailbox = anchor
            } else {
                return Response(status: .unauthorized, headers: [.wwwAuthenticate: "Basic realm=\"127.0.0.1\""])
            }
            if await state.serverBusyNext > 0 {
                await state.set { $0.serverBusyNext -= 1 }
                return xml(.internalServerError, busyFault)
            }
            let text = String(buffer: try await request.collectBody(upTo: 64 << 20))
            await state.set { $0.lastEWSBody = text }
            for ns in [
                #"xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/""#,
                #"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types""#,
                #"xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages""#,
            ] where !text.contains(ns) {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation: namespace \(ns) missing."))
            }
            guard let v = text.range(of: #"<t:RequestServerVersion Version=""#),
                let vEnd = text[v.upperBound...].firstIndex(of: "\"")
            else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "RequestServerVersion missing."))
            }
            let version = String(text[v.upperBound..<vEnd])
            await state.set { $0.lastEWSVersion = version }
            if text.contains("<m:UpdateItem ") { return await updateItem(text, state) }
            let disposition: String
            if text.contains(#"<m:CreateItem MessageDisposition="SendAndSaveCopy">"#) {
                disposition = "SendAndSaveCopy"
            } else if text.contains(#"<m:CreateItem MessageDisposition="SaveOnly">"#) {
                disposition = "SaveOnly"
            } else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation."))
            }
            guard let open = text.range(of: #"<t:MimeContent CharacterSet="UTF-8">"#),
                let close = text.range(of: "</t:MimeContent>"), open.upperBound <= close.lowerBound,
                let mime = strictBase64(String(text[open.upperBound..<close.lowerBound]))
            else {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The request failed schema validation."))
            }
            let from = fromHeader(mime)?.lowercased() ?? ""
            // Sending as (or on behalf of) another mailbox: the item names it in t:From, which
            // follows t:BccRecipients in a t:Message (types.xsd MessageType); t:Sender is
            // read-only (Exchange sets it for Send on Behalf).
            if text.contains("<t:Sender>") {
                return xml(.ok, createItemResponse("Error", "ErrorInvalidPropertySet", "Set action is invalid for property. (Sender)"))
            }
            let itemFrom = mailboxes(in: text, element: "From").map { $0.0.lowercased() }
            if let f = text.range(of: "<t:From>"), let b = text.range(of: "<t:BccRecipients>"), f.lowerBound < b.lowerBound {
                return xml(.internalServerError, fault("ErrorSchemaValidation", "The element 'Message' has invalid child element 'BccRecipients'."))
            }
            if from != mailbox.lowercased() && itemFrom != [from] {
                return xml(
                    .ok,
                    createItemResponse(
                        "Error", "ErrorInvalidRequest",
                        "emulator: a message from another mailbox than \(mailbox) must name it in t:From (found \(itemFrom))"))
            }
            if from != mailbox.lowercased(), await !state.delegates.contains(from) {
                return xml(
                    .ok,
                    createItemResponse(
                        "Error", "ErrorSendAsDenied",
                        "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."
                    ))
            }
            // Exchange takes the recipients from the MIME's To, Cc and Bcc, plus t:BccRecipients.
            let h = headerRecipients(mime)
            let extraBcc = mailboxes(in: text, element: "BccRecipients").map(\.0)
            await state.set { $0.calls.append("ews/CreateItem/\(disposition)") }
            if disposition == "SaveOnly" {
                let id = "AAMk-\(UUID().uuidString.prefix(12))="
                let draft = EmulatorState.EWSDraft(
                    changeKey: "CQAAAB-\(UUID().uuidString.prefix(6))", mime: mime,
                    recipients: ["ToRecipients": h.to, "CcRecipients": h.cc, "BccRecipients": h.bcc + extraBcc],
                    names: h.names)
                await state.set { $0.ewsDrafts[id] = draft }
                return xml(
                    .ok,
                    createItemResponse(
                        "Success", "NoError", nil,
                        items: #"<t:Message><t:ItemId Id="\#(id)" ChangeKey="\#(draft.changeKey)"/></t:Message>"#))
            }
            await state.set {
                $0.delivered.append(mime)
                $0.deliveries.append(
                    EmulatorState.Delivery(via: "ews/CreateItem", to: h.to, cc: h.cc, bcc: h.bcc + extraBcc, mime: mime, names: h.names))
            }
            return xml(.ok, createItemResponse("Success", "NoError", nil))
        }
    }

    /// `(address, name)` of each t:Mailbox inside the first `<t:element>`.
    package static func mailboxes(in text: String, element: String) -> [(String, String?)] {
        guard let open = text.range(of: "<t:\(element)>"), let close = text.range(of: "</t:\(element)>", range: open.upperBound..<text.endIndex)
        else { return [] }
        var out: [(String, String?)] = []
        var rest = text[open.upperBound..<close.lowerBound]
        while let m = rest.range(of: "<t:Mailbox>"), let e = rest.range(of: "</t:Mailbox>", range: m.upperBound..<rest.endIndex) {
            let box = rest[m.upperBound..<e.lowerBound]
            func inner(_ tag: String) -> String? {
                guard let a = box.range(of: "<t:\(tag)>"), let b = box.range(of: "</t:\(tag)>") else { return nil }
                return String(box[a.upperBound..<b.lowerBound]).replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(
                    of: "&gt;", with: ">"
                )
                .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(
                    of: "&amp;", with: "&")
            }
            if let address = inner("EmailAddress") { out.append((address, inner("Name"))) }
            rest = rest[e.upperBound...]
        }
        return out
    }

    /// UpdateItem (updateitem-operation.md): SetItemField / DeleteItemField on the recipient
    /// collections of a saved draft; MessageDisposition SendAndSaveCopy sends it.
    package static func updateItem(_ text: String, _ state: EmulatorState) async -> Response {
        guard let d = text.range(of: #"<m:UpdateItem MessageDisposition="([A-Za-z]+)""#, options: .regularExpression) else {
            return xml(.internalServerError, fault("ErrorSchemaValidation", "UpdateItem needs MessageDisposition for a message."))
        }
        let disposition = String(text[d].dropFirst(#"<m:UpdateItem MessageDisposition=""#.count).dropLast())
        await state.set { $0.calls.append("ews/UpdateItem/\(disposition)") }
        guard let idRange = text.range(of: #"<t:ItemId Id="[^"]+""#, options: .regularExpression) else {
            return xml(.internalServerError, fault("ErrorSchemaValidation", "ItemId missing."))
        }
        let id = String(text[idRange].dropFirst(#"<t:ItemId Id=""#.count).dropLast())
        guard var draft = await state.ewsDrafts[id] else {
            return xml(
                .ok, updateItemResponse("Error", "ErrorItemNotFound", "The specified object was not found in the store.", id: id, changeKey: ""))
        }
        if let ck = text.range(of: #"ChangeKey="[^"]+""#, options: .regularExpression),
            String(text[ck].dropFirst(#"ChangeKey=""#.count).dropLast()) != draft.changeKey
        {
            return xml(.ok, updateItemResponse("Error", "ErrorIrresolvableConflict", "The change key does not match.", id: id, changeKey: ""))
        }
        for field in ["ToRecipients", "CcRecipients", "BccRecipients"] {
            if text.contains(#"<t:DeleteItemField><t:FieldURI FieldURI="message:\#(field)"/></t:DeleteItemField>"#) {
                draft.recipients[field] = []
            } else if let set = text.range(of: #"<t:SetItemField><t:FieldURI FieldURI="message:\#(field)"/><t:Message><t:\#(field)>"#) {
                guard let end = text.range(of: "</t:\(field)></t:Message></t:SetItemField>", range: set.upperBound..<text.endIndex) else {
                    return xml(.internalServerError, fault("ErrorSchemaValidation", "SetItemField for \(field) must hold a Message with \(field)."))
                }
                let list = mailboxes(in: "<t:\(field)>" + text[set.upperBound..<end.lowerBound] + "</t:\(field)>", element: field)
                draft.recipients[field] = list.map(\.0)
                for (a, n) in list { draft.names[a.lowercased()] = n }
            }
        }
        draft.changeKey = "CQAAAB-\(UUID().uuidString.prefix(6))"
        let updated = draft
        switch disposition {
        case "SaveOnly":
            await state.set { $0.ewsDrafts[id] = updated }
        case "SendAndSaveCopy", "SendOnly":
            guard disposition == "SendOnly" || text.contains(#"<m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId>"#)
            else {
                return xml(.ok, updateItemResponse("Error", "ErrorInvalidSendItemSaveSettings", "SavedItemFolderId expected.", id: id, changeKey: ""))
            }
            await state.set {
                $0.ewsDrafts[id] = nil
                $0.deliveries.append(
                    EmulatorState.Delivery(
                        via: "ews/UpdateItem", to: updated.recipients["ToRecipients"] ?? [],
                        cc: updated.recipients["CcRecipients"] ?? [],
                        bcc: updated.recipients["BccRecipients"] ?? [], mime: updated.mime, names: updated.names))
            }
        default:
            return xml(.internalServerError, fault("ErrorSchemaValidation", "MessageDisposition \(disposition) is not valid."))
        }
        return xml(.ok, updateItemResponse("Success", "NoError", nil, id: id, changeKey: updated.changeKey))
    }

    package static func updateItemResponse(_ responseClass: String, _ code: String, _ text: String?, id: String, changeKey: String) -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:UpdateItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:UpdateItemResponseMessage ResponseClass="\#(responseClass)">"#
            + (text.map { "<m:MessageText>\($0)</m:MessageText>" } ?? "")
            + "<m:ResponseCode>\(code)</m:ResponseCode>"
            + (responseClass == "Success"
                ? #"<m:Items><t:Message><t:ItemId Id="\#(id)" ChangeKey="\#(changeKey)"/></t:Message></m:Items>"#
                : "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/>")
            + "</m:UpdateItemResponseMessage></m:ResponseMessages></m:UpdateItemResponse></s:Body></s:Envelope>"
    }

    package static func fault(_ code: String, _ text: String) -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:\#(code)</faultcode><faultstring xml:lang="en-US">\#(text)</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">\#(code)</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>"#
    }

    package static let busyFault =
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#

    package static func createItemResponse(_ responseClass: String, _ code: String, _ text: String?, items: String = "") -> String {
        #"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:CreateItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:CreateItemResponseMessage ResponseClass="\#(responseClass)">"#
            + (text.map { "<m:MessageText>\($0)</m:MessageText>" } ?? "")
            + "<m:ResponseCode>\(code)</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
            + (items.isEmpty ? "<m:Items/>" : "<m:Items>\(items)</m:Items>")
            + "</m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse></s:Body></s:Envelope>"
    }
}
