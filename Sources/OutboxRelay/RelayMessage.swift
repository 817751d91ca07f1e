import Foundation
import NIOCore
import OutboxConfig
import OutboxMIME
import OutboxSMTPGrammar

/// What the listener does to a received message before it is queued (RFC 6409 §8): a Received
/// header on top, Date and Message-ID where missing; every other byte as the client sent it
/// (bare CR and LF already made CRLF by the decoder). And the one content rule for
/// authenticated clients: every header From address must be theirs.
package enum RelayMessage {
    /// The header section's facts the listener needs.
    package struct HeaderFacts: Sendable, Equatable {
        package var hasDate = false
        package var hasMessageID = false
        /// The addresses of every From header (unfolded); nil when there is no From header.
        package var fromAddresses: [String]?
        package var messageID: String?
    }

    /// Reads the header section: lines up to the first empty line (or the first line that is
    /// neither a header field, a continuation, nor an mbox `From ` line), at most 1 MiB.
    package static func headerFacts(_ content: ByteBuffer) -> HeaderFacts {
        var facts = HeaderFacts()
        let view = content.readableBytesView
        let end = min(view.endIndex, view.startIndex + (1 << 20))
        var fields: [(name: String, value: [UInt8])] = []
        var i = view.startIndex
        var first = true
        while i < end {
            var j = i
            while j < end && view[j] != 10 { j += 1 }
            var line = Array(view[i..<j])
            if line.last == 13 { line.removeLast() }
            i = j + 1
            if line.isEmpty { break }
            if line.first == 32 || line.first == 9 {
                if !fields.isEmpty { fields[fields.count - 1].value += [32] + line.drop(while: { $0 == 32 || $0 == 9 }) }
                continue
            }
            if first && line.starts(with: Array("From ".utf8)) { first = false; continue }
            first = false
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0,
                line[..<colon].allSatisfy({ $0 > 32 && $0 < 127 })
            else { break }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            fields.append((name, Array(line[(colon + 1)...])))
        }
        for field in fields {
            switch field.name {
            case "date": facts.hasDate = true
            case "message-id":
                facts.hasMessageID = true
                facts.messageID = String(decoding: field.value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
            case "from":
                let text = String(decoding: field.value, as: UTF8.self)
                facts.fromAddresses = (facts.fromAddresses ?? []) + addresses(in: text)
            default: break
            }
        }
        return facts
    }

    /// The addresses of a From value: by the RFC 5322 parser, or, when it cannot parse the
    /// value, every `<...>` and every bare word holding an `@` (so a malformed header is still
    /// checked, never waved through).
    static func addresses(in value: String) -> [String] {
        if let list = try? Address.parseList(value), !list.isEmpty {
            return list.map(\.mailbox)
        }
        var found: [String] = []
        var rest = Substring(value)
        while let open = rest.firstIndex(of: "<"), let close = rest[open...].firstIndex(of: ">") {
            found.append(String(rest[rest.index(after: open)..<close]).trimmingCharacters(in: .whitespaces))
            rest = rest[rest.index(after: close)...]
        }
        if found.isEmpty {
            found = value.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\t" }).map(String.init).filter { $0.contains("@") }
        }
        // Something that is no address at all still has to match.
        return found.isEmpty ? [value.trimmingCharacters(in: .whitespaces)] : found
    }

    /// Checks the header From of an authenticated client's message. Nil: allowed.
    package static func senderProblem(_ facts: HeaderFacts, identity: ClientIdentityRef?) -> SMTPServerReply? {
        guard let identity, let from = facts.fromAddresses else { return nil }
        for address in from where !ClientIdentity.matches(address, patterns: identity.allowedSenders) {
            let shown = SMTPServerCommand.printable(address)
            return SMTPServerReply(550, "5.7.1", "Header From <\(shown)> is not allowed for user \(identity.user)")
        }
        return nil
    }

    /// The header lines to put in front of the message.
    package static func addedHeaders(
        facts: HeaderFacts, settings: RelaySettings, session: RelaySessionInfo, envelope: RelayEnvelope,
        client: String, id: String, hostname: String, now: Date
    ) -> String {
        var out = ""
        let date = RFC5322Date.format(now)
        if settings.addReceivedHeader {
            // RFC 5321 §4.4, with RFC 3848's protocol names: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA.
            var with = session.extended ? "ESMTP" : "SMTP"
            if session.extended {
                if session.tls { with += "S" }
                if session.authenticatedUser != nil { with += "A" }
            }
            let helo =
                session.heloName.map {
                    SMTPServerCommand.printable($0).replacingOccurrences(of: "(", with: "").replacingOccurrences(of: ")", with: "")
                } ?? "unknown"
            out += "Received: from \(helo) ([\(client)])\r\n\tby \(hostname) (Outbox) with \(with) id \(id)"
            var comments: [String] = []
            if session.tls { comments.append("using \(session.tlsDescription ?? "TLS")") }
            if let user = session.authenticatedUser {
                comments.append("authenticated as \(SMTPServerCommand.printable(user).replacingOccurrences(of: ")", with: ""))")
            }
            if !comments.isEmpty { out += "\r\n\t(\(comments.joined(separator: "; ")))" }
            if envelope.recipients.count == 1, let rcpt = envelope.recipients.first, rcpt.address.utf8.allSatisfy({ $0 < 0x80 }) {
                out += "\r\n\tfor <\(rcpt.address)>"
            }
            out += "; \(date)\r\n"
        }
        if settings.addDate && !facts.hasDate { out += "Date: \(date)\r\n" }
        if settings.addMessageID && !facts.hasMessageID { out += "Message-ID: <\(id)@\(hostname)>\r\n" }
        return out
    }
}
