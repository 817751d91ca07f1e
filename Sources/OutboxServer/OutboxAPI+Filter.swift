import Foundation
import Hummingbird
import Outbox

/// The filter of `GET /v1/messages`, of the filtered bulk actions and of the dashboard's
/// message list, from query parameters (or a JSON object with the same keys).
enum FilterParameters {
    /// The keys a filter takes.
    static let keys = ["status", "route", "sender", "recipient", "subject", "since", "until", "duplicate", "order", "cursor", "limit"]

    /// Parses `values` (key → values); empty values are ignored. `maxLimit` bounds `limit`.
    static func filter(_ values: [String: [String]], defaultLimit: Int = 50, maxLimit: Int = 1000) throws -> MessageFilter {
        func one(_ key: String) -> String? {
            values[key]?.last.map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        var filter = MessageFilter()
        filter.limit = defaultLimit
        let statuses = (values["status"] ?? []).flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        for s in statuses {
            guard let parsed = MessageStatus(rawValue: s) else {
                throw APIError(
                    .badRequest, "invalid_status", "status \"\(s)\" is not one of \(MessageStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if !filter.statuses.contains(parsed) { filter.statuses.append(parsed) }
        }
        filter.route = one("route")
        filter.sender = one("sender")
        filter.recipient = one("recipient")
        filter.subject = one("subject")
        filter.since = try one("since").map { try time($0, key: "since") }
        filter.until = try one("until").map { try time($0, key: "until") }
        if let d = one("duplicate") {
            switch d.lowercased() {
            case "true", "1", "yes": filter.possibleDuplicate = true
            case "false", "0", "no": filter.possibleDuplicate = false
            default: throw APIError(.badRequest, "invalid_duplicate", "duplicate \"\(d)\" is not true or false")
            }
        }
        if let o = one("order") {
            switch o {
            case "asc": filter.newestFirst = false
            case "desc": filter.newestFirst = true
            default: throw APIError(.badRequest, "invalid_order", "order \"\(o)\" is not asc or desc")
            }
        }
        if let l = one("limit") {
            guard let n = Int(l), (1...maxLimit).contains(n) else {
                throw APIError(.badRequest, "invalid_limit", "limit \"\(l)\" is not an integer from 1 to \(maxLimit)")
            }
            filter.limit = n
        }
        if let c = one("cursor") {
            guard let n = Int64(c), n >= 0 else {
                throw APIError(.badRequest, "invalid_cursor", "cursor \"\(c)\" is not a cursor from an earlier answer's next_cursor")
            }
            filter.cursor = n
        }
        return filter
    }

    /// From a request's query string.
    /// The raw query string is decoded as a form (`+` is a space, as browsers send it).
    static func filter(query: String?, defaultLimit: Int = 50, maxLimit: Int = 1000) throws -> MessageFilter {
        try filter(FormData.parse(query ?? ""), defaultLimit: defaultLimit, maxLimit: maxLimit)
    }

    /// From a JSON object (`{"status": "deferred", "sender": "..."}`; `status` may be a list).
    static func filter(json object: [String: Any], defaultLimit: Int, maxLimit: Int) throws -> MessageFilter {
        var values: [String: [String]] = [:]
        for (key, value) in object {
            guard keys.contains(key) else {
                throw APIError(.badRequest, "unknown_filter", "the filter has no key \"\(key)\"; keys: \(keys.joined(separator: ", "))")
            }
            switch value {
            case let s as String: values[key] = [s]
            case let list as [String]: values[key] = list
            case let b as Bool: values[key] = [b ? "true" : "false"]
            case let n as NSNumber: values[key] = [n.stringValue]
            default: throw APIError(.badRequest, "invalid_filter", "the filter's \"\(key)\" must be a string")
            }
        }
        return try filter(values, defaultLimit: defaultLimit, maxLimit: maxLimit)
    }

    /// An instant: RFC 3339 (`2026-01-02T10:00:00Z`, or a date alone, midnight UTC) or seconds since 1970.
    static func time(_ text: String, key: String) throws -> Double {
        if let seconds = Double(text) { return seconds }
        let full = ISO8601DateFormatter()
        if let date = full.date(from: text) { return date.timeIntervalSince1970 }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = fractional.date(from: text) { return date.timeIntervalSince1970 }
        // A browser's datetime-local field: 2026-01-02T10:00, taken as UTC.
        let local = DateFormatter()
        local.locale = Locale(identifier: "en_US_POSIX")
        local.timeZone = TimeZone(identifier: "UTC")
        for format in ["yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd"] {
            local.dateFormat = format
            if let date = local.date(from: text) { return date.timeIntervalSince1970 }
        }
        throw APIError(.badRequest, "invalid_time", "\(key) \"\(text)\" is not an RFC 3339 time (2026-01-02T10:00:00Z) nor seconds since 1970")
    }
}
