import Foundation
import OutboxMIME

/// How relayed messages that fail for good are reported back (RFC 3464).
public struct BounceSettings: Sendable, Equatable {
    /// The Reporting-MTA name, and the domain of MAILER-DAEMON.
    public var hostname: String
    /// A postmaster copy of every notification.
    public var copyTo: String?

    /// Notifications from MAILER-DAEMON at `hostname`, with a copy to `copyTo` when given.
    public init(hostname: String, copyTo: String? = nil) {
        self.hostname = hostname
        self.copyTo = copyTo
    }
}

/// Builds delivery status notifications (RFC 3464, `multipart/report`) for relayed messages.
package enum Bounce {
    /// One recipient that failed for good.
    package struct Failure: Sendable, Hashable {
        package var recipient: String
        /// `ORCPT=` as the client gave it (`rfc822;user@example.com`, xtext).
        package var originalRecipient: String?
        /// `5.1.1`; `4.4.7` for a message that expired.
        package var status: String
        /// The server's reply or Outbox's reason.
        package var diagnostic: String
        package var remoteMTA: String?
    }

    /// The recipients of `before` -> `after` that a notification must report: refused for good in
    /// this attempt, or still open when the message failed (expired), and whose NOTIFY asks for
    /// failures (absent NOTIFY means FAILURE, RFC 3461 §4.1).
    package static func failures(message: StoredMessage, outcome: AttemptOutcome) -> [Failure] {
        guard let origin = message.origin, origin.kind == "relay", !message.from.isEmpty else { return [] }
        var out: [Failure] = []
        for (i, after) in outcome.recipients.enumerated() {
            guard i < message.recipients.count, message.recipients[i].isOpen else { continue }
            let notify = i < origin.notify.count ? origin.notify[i] : ""
            if !notify.isEmpty && !notify.split(separator: ",").contains("FAILURE") { continue }
            let orcpt = i < origin.orcpt.count && !origin.orcpt[i].isEmpty ? origin.orcpt[i] : nil
            if after.status == .rejected {
                let code = after.code.map(String.init) ?? ""
                let enhanced = after.enhancedCode ?? "5.0.0"
                let text = [code, after.enhancedCode ?? "", after.text ?? ""].filter { !$0.isEmpty }.joined(separator: " ")
                out.append(
                    Failure(
                        recipient: after.address, originalRecipient: orcpt, status: enhanced.hasPrefix("5") ? enhanced : "5.0.0",
                        diagnostic: text.isEmpty ? (outcome.lastError ?? "refused") : text, remoteMTA: outcome.attempt.destination))
            } else if outcome.status == .failed && after.isOpen {
                out.append(
                    Failure(
                        recipient: after.address, originalRecipient: orcpt, status: "4.4.7",
                        diagnostic: outcome.lastError ?? "delivery time expired", remoteMTA: outcome.attempt.destination))
            }
        }
        return out
    }

    /// The notification: From MAILER-DAEMON, To the envelope sender, a text part, the
    /// `message/delivery-status` part and the original message (`message/rfc822`), or only its
    /// header (`text/rfc822-headers`) with RET=HDRS, when the original is over `fullLimit`, or
    /// when it was stored in chunks (`original` is then its head).
    package static func make(
        message: StoredMessage, original: [UInt8], failures: [Failure], settings: BounceSettings, id: String,
        now: Date = Date(), fullLimit: Int = 10 * 1024 * 1024
    ) -> NewMessage {
        let host = settings.hostname
        let boundary = "=_outbox_dsn_\(id)"
        let date = RFC5322Date.format(now)
        let arrival = RFC5322Date.format(Date(timeIntervalSince1970: message.createdAt))
        let origin = message.origin
        var text = """
            From: Mail Delivery System <MAILER-DAEMON@\(host)>\r
            To: <\(message.from)>\r
            Subject: Undelivered Mail Returned to Sender\r
            Date: \(date)\r
            Message-ID: <\(id)@\(host)>\r
            Auto-Submitted: auto-replied\r
            MIME-Version: 1.0\r
            Content-Type: multipart/report; report-type=delivery-status;\r
            \tboundary="\(boundary)"\r
            \r
            This is a MIME-encapsulated message.\r
            \r
            --\(boundary)\r
            Content-Type: text/plain; charset=utf-8\r
            Content-Transfer-Encoding: 8bit\r
            \r
            This is the mail system at host \(host).\r
            \r
            Your message could not be delivered to one or more recipients.\r
            It is attached below.\r
            \r

            """
        for f in failures {
            text += "<\(f.recipient)>: \(oneLine(f.diagnostic))\r\n"
        }
        text += "\r\n--\(boundary)\r\nContent-Type: message/delivery-status\r\n\r\n"
        text += "Reporting-MTA: dns; \(host)\r\n"
        text += "X-Outbox-Queue-ID: \(message.id)\r\n"
        if let envid = origin?.envid { text += "Original-Envelope-Id: \(envid)\r\n" }
        text += "Arrival-Date: \(arrival)\r\n"
        for f in failures {
            text += "\r\n"
            text += "Final-Recipient: rfc822; \(f.recipient)\r\n"
            if let orcpt = f.originalRecipient {
                let semicolon = orcpt.firstIndex(of: ";") ?? orcpt.startIndex
                text += "Original-Recipient: \(orcpt[..<semicolon]); \(orcpt[orcpt.index(after: semicolon)...])\r\n"
            }
            text += "Action: failed\r\n"
            text += "Status: \(f.status)\r\n"
            if let remote = f.remoteMTA.map(hostPart), !remote.isEmpty { text += "Remote-MTA: dns; \(oneLine(remote))\r\n" }
            text += "Diagnostic-Code: smtp; \(oneLine(f.diagnostic))\r\n"
            text += "Last-Attempt-Date: \(date)\r\n"
        }
        // A chunked message (over 1 MiB, stored as it arrived) is returned by its header only,
        // as Postfix returns a message over bounce_size_limit: `original` is only its head.
        let headersOnly = origin?.ret == "HDRS" || message.chunkCount > 0 || (origin?.ret != "FULL" && original.count > fullLimit)
        text += "\r\n--\(boundary)\r\n"
        text += headersOnly ? "Content-Type: text/rfc822-headers\r\n\r\n" : "Content-Type: message/rfc822\r\n\r\n"
        var bytes = Array(text.utf8)
        if headersOnly {
            bytes += original[..<(RawMessage.headerEnd(original, from: 0) ?? original.count)]
        } else {
            bytes += original
            if original.last != 10 { bytes += [13, 10] }
        }
        bytes += Array("\r\n--\(boundary)--\r\n".utf8)
        var recipients = [message.from]
        if let copy = settings.copyTo, copy.lowercased() != message.from.lowercased() { recipients.append(copy) }
        var bounce = NewMessage(from: "", recipients: recipients, content: bytes, messageID: "<\(id)@\(host)>")
        bounce.id = id
        bounce.origin = MessageOrigin(kind: "bounce", client: message.id, ret: nil, envid: nil, notify: [], orcpt: [])
        return bounce
    }

    /// `host:port` (or `[v6]:port`, or a URL) -> the host, for Remote-MTA's `dns` type.
    static func hostPart(_ destination: String) -> String {
        var d = Substring(destination)
        if let scheme = d.range(of: "://") { d = d[scheme.upperBound...] }
        if let slash = d.firstIndex(of: "/") { d = d[..<slash] }
        if d.hasPrefix("["), let close = d.firstIndex(of: "]") { return String(d[d.index(after: d.startIndex)..<close]) }
        if d.filter({ $0 == ":" }).count == 1, let colon = d.firstIndex(of: ":") { d = d[..<colon] }
        return String(d)
    }

    static func oneLine(_ s: String) -> String {
        String(s.map { $0 == "\r" || $0 == "\n" ? " " : $0 }.prefix(900))
    }
}
