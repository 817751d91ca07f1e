import Foundation

/// Which messages a listing, or a bulk action, takes: every field narrows it (AND).
///
/// Paging is by keyset on the message's `sequence`, never by offset. Served by indexes, with
/// complete pages: `status` (the `(status, seq)` index), a whole address as `sender` or
/// `recipient` (matched exactly, in any case: the sender's index and the recipients' table) and
/// `possibleDuplicate == true` (a partial index). The other filters (a part of an address, the
/// subject, the time range, `possibleDuplicate == false`) are checked on the rows the keyset
/// walks, at most ``MessageFilter/scanBudget`` sequence numbers per page, so a page that finds
/// few matches still answers at once and carries a cursor to search on (``MessagePage/nextCursor``).
public struct MessageFilter: Sendable, Hashable {
    /// The statuses to take (empty: all).
    public var statuses: [MessageStatus] = []
    /// The route's name, or nil for every route.
    public var route: String?
    /// The `[client-NAME]` that submitted it (a client's token sees its own messages only), or
    /// nil for every message.
    public var client: String?
    /// A part of the envelope sender (case-insensitive).
    public var sender: String?
    /// A part of one envelope recipient (case-insensitive).
    public var recipient: String?
    /// A part of the Subject header (case-insensitive).
    public var subject: String?
    /// Queued at or after this instant (seconds since 1970).
    public var since: Double?
    /// Queued before this instant (seconds since 1970).
    public var until: Double?
    /// true: only messages that may have arrived twice; false: only the others.
    public var possibleDuplicate: Bool?
    /// Newest first (the dashboard) rather than oldest first (the API's default).
    public var newestFirst = false
    /// Continue after this sequence number (an earlier page's ``MessagePage/nextCursor``).
    public var cursor: Int64?
    /// At most this many messages per page.
    public var limit = 50

    /// Sequence numbers walked at most per page when a filter the indexes do not serve is set.
    public static let scanBudget: Int64 = 20_000
    /// This listing's scan window (``MessageFilter/scanBudget`` unless a test narrows it).
    public var scanWindow: Int64 = MessageFilter.scanBudget

    /// A filter that takes every message, oldest first, 50 per page.
    public init() {}

    /// A filter of the given statuses (the API's `status=` parameter).
    public init(statuses: [MessageStatus], limit: Int = 50, cursor: Int64? = nil) {
        self.statuses = statuses
        self.limit = limit
        self.cursor = cursor
    }

    /// True when a filter the indexes do not serve is set (the scan budget applies).
    public var needsScan: Bool {
        (sender != nil && senderAddress == nil) || (recipient != nil && recipientAddress == nil) || subject != nil || since != nil
            || until != nil || possibleDuplicate == false
    }

    /// `sender` when it is a whole address (`local@domain`): matched exactly, in any case.
    public var senderAddress: String? { sender.flatMap(Self.wholeAddress) }

    /// `recipient` when it is a whole address (`local@domain`): matched exactly, in any case.
    public var recipientAddress: String? { recipient.flatMap(Self.wholeAddress) }

    /// `text` when it is one whole address: one `@`, a local part, a domain with a dot inside it
    /// (`bob@example.test`; `bob@example` and `@example.test` are parts of addresses), no white
    /// space.
    public static func wholeAddress(_ text: String) -> String? {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !text.contains(where: \.isWhitespace) else { return nil }
        let labels = parts[1].split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2, labels.allSatisfy({ !$0.isEmpty }) else { return nil }
        return text
    }

    /// The route of `[smtp-client]`.
    public static let defaultRoute = "default"

    /// `text` as a LIKE pattern that matches it anywhere, with `\` escaping `%`, `_` and `\`.
    public static func likePattern(_ text: String) -> String {
        var out = "%"
        for c in text {
            if c == "%" || c == "_" || c == "\\" { out.append("\\") }
            out.append(c)
        }
        return out + "%"
    }
}

/// One page of a listing.
public struct MessagePage: Sendable {
    /// The messages, in the filter's order.
    public var messages: [StoredMessage]
    /// Where the next page starts (give it as ``MessageFilter/cursor``); nil at the end. A page
    /// with fewer messages than the limit may still have one: its scan budget ended the page.
    public var nextCursor: Int64?

    /// A page.
    public init(messages: [StoredMessage], nextCursor: Int64?) {
        self.messages = messages
        self.nextCursor = nextCursor
    }
}

/// Delivered and failed messages in one minute (from the counters the store keeps).
public struct RatePoint: Sendable, Hashable {
    /// The minute's start, in seconds since 1970.
    public var minute: Double
    /// Messages that became delivered in that minute.
    public var delivered: Int
    /// Messages that became failed in that minute.
    public var failed: Int

    /// A point.
    public init(minute: Double, delivered: Int, failed: Int) {
        self.minute = minute
        self.delivered = delivered
        self.failed = failed
    }
}

/// What the store keeps for the dashboard's overview, read without scanning the messages:
/// counts per route and status (kept by triggers in the same transaction as each change),
/// per-minute delivered and failed counts, and the oldest waiting message.
public protocol OutboxStoreStatistics: Sendable {
    /// Messages per route and status (`[route: [status: n]]`), from the kept counters.
    func countsByRoute() async throws -> [String: [MessageStatus: Int]]
    /// Delivered and failed per minute since `since` (minutes with none are left out).
    func rates(since: Double) async throws -> [RatePoint]
    /// When the oldest message still waiting (queued, deferred or sending) was queued, or nil.
    func oldestWaiting() async throws -> Double?
    /// A page of messages that `filter` takes.
    func list(_ filter: MessageFilter) async throws -> MessagePage
    /// The message's content: its head and, unless `headOnly`, its chunks; nil when there is no
    /// such message, empty when it was purged.
    func content(id: String, headOnly: Bool) async throws -> [UInt8]?
}

/// The Subject header of a message's head, unfolded, encoded words (RFC 2047) decoded.
public enum MessageSubject {
    /// Headers beyond this many bytes are not read.
    static let headLimit = 64 * 1024

    /// The subject, or nil when the head has none.
    public static func of(_ content: [UInt8]) -> String? {
        let head = content.prefix(headLimit)
        var lines: [String] = []
        var current = ""
        var index = head.startIndex
        while index < head.endIndex {
            var end = index
            while end < head.endIndex, head[end] != 0x0A { end += 1 }
            var line = String(decoding: head[index..<end], as: UTF8.self)
            if line.hasSuffix("\r") { line.removeLast() }
            index = end < head.endIndex ? end + 1 : end
            if line.isEmpty { break }
            if line.first == " " || line.first == "\t" {
                current += line
            } else {
                if !current.isEmpty { lines.append(current) }
                current = line
            }
        }
        if !current.isEmpty { lines.append(current) }
        guard let line = lines.first(where: { $0.lowercased().hasPrefix("subject:") }) else { return nil }
        return decodeWords(String(line.dropFirst(8)).trimmingCharacters(in: .whitespaces))
    }

    /// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`) in UTF-8 or ISO-8859-1.
    public static func decodeWords(_ text: String) -> String {
        guard text.contains("=?") else { return text }
        let pattern = #"=\?([^?]+)\?([bBqQ])\?([^?]*)\?=(\s+(?==\?))?"#
        guard let regex = try? NSRegularExpression(pattern: pattern) else { return text }
        var out = ""
        var last = text.startIndex
        for match in regex.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
            guard let whole = Range(match.range, in: text), let cs = Range(match.range(at: 1), in: text),
                let enc = Range(match.range(at: 2), in: text), let body = Range(match.range(at: 3), in: text)
            else { continue }
            out += text[last..<whole.lowerBound]
            last = whole.upperBound
            var bytes: [UInt8] = []
            if text[enc].lowercased() == "b" {
                var b64 = String(text[body])
                while b64.count % 4 != 0 { b64 += "=" }
                bytes = Data(base64Encoded: b64).map { Array($0) } ?? []
            } else {
                var q = Array(text[body].utf8)[...]
                while let c = q.first {
                    q = q.dropFirst()
                    if c == UInt8(ascii: "_") {
                        bytes.append(0x20)
                    } else if c == UInt8(ascii: "="), q.count >= 2, let v = UInt8(String(decoding: q.prefix(2), as: UTF8.self), radix: 16) {
                        bytes.append(v)
                        q = q.dropFirst(2)
                    } else {
                        bytes.append(c)
                    }
                }
            }
            let charset = text[cs].lowercased()
            if charset.hasPrefix("iso-8859-1") || charset == "latin1" {
                out += String(bytes.map { Character(Unicode.Scalar($0)) })
            } else {
                out += String(decoding: bytes, as: UTF8.self)
            }
        }
        out += text[last...]
        return out
    }
}
