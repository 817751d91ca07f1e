import Foundation
import Outbox

/// What the dashboard's templates are given: plain dictionaries of text, built from the store's
/// values. Nothing here reads a secret: messages, attempts and route alerts carry none.
enum DashboardViews {
    /// `2026-01-02 10:42:07` (UTC), or an empty string.
    static func time(_ seconds: Double?) -> String {
        guard let seconds else { return "" }
        let utc = UTCFields(seconds)
        return utc.date + " " + utc.time
    }

    /// The value of a `datetime-local` field (UTC).
    static func fieldTime(_ seconds: Double?) -> String {
        guard let seconds else { return "" }
        let utc = UTCFields(seconds)
        return utc.date + "T" + String(utc.time.prefix(5))
    }

    /// `3 d 4 h`, `12 min 5 s`, `4 s`.
    static func age(_ seconds: Double) -> String {
        let s = max(0, Int(seconds))
        if s >= 86_400 { return "\(s / 86_400) d \(s % 86_400 / 3600) h" }
        if s >= 3600 { return "\(s / 3600) h \(s % 3600 / 60) min" }
        if s >= 60 { return "\(s / 60) min \(s % 60) s" }
        return "\(s) s"
    }

    /// `1.2 MB`, `512 B`.
    static func size(_ bytes: Int) -> String {
        if bytes >= 1_000_000 { return String(format: "%.1f MB", Double(bytes) / 1_000_000) }
        if bytes >= 1000 { return String(format: "%.1f kB", Double(bytes) / 1000) }
        return "\(bytes) B"
    }

    static func number(_ n: Int) -> String {
        let formatter = NumberFormatter()
        formatter.numberStyle = .decimal
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.groupingSeparator = ","
        formatter.usesGroupingSeparator = true
        return formatter.string(from: NSNumber(value: n)) ?? "\(n)"
    }

    /// The count table: one row per route, one cell per status.
    static func countRows(_ counts: [String: [MessageStatus: Int]], routes: [String]) -> [[String: Any]] {
        let names = Set(routes).union(counts.keys).union([MessageFilter.defaultRoute]).sorted()
        return names.map { route -> [String: Any] in
            let byStatus = counts[route] ?? [:]
            let cells = MessageStatus.allCases.map { ["status": $0.rawValue, "n": number(byStatus[$0] ?? 0), "route": route] }
            return ["route": route, "cells": cells, "total": number(byStatus.values.reduce(0, +))]
        }
    }

    /// Delivered (green) and failed (red) per minute over the last hour, as an inline SVG drawn
    /// on the server.
    static func chart(_ points: [RatePoint], now: Double) -> String {
        let width = 720.0
        let height = 160.0
        let left = 40.0
        let bottom = 20.0
        let firstMinute = Int(now / 60) - 59
        var delivered = [Int](repeating: 0, count: 60)
        var failed = [Int](repeating: 0, count: 60)
        for point in points {
            let index = Int(point.minute / 60) - firstMinute
            guard (0..<60).contains(index) else { continue }
            delivered[index] += point.delivered
            failed[index] += point.failed
        }
        let top = max(1, (delivered + failed).max() ?? 1)
        let plotHeight = height - bottom - 10
        let step = (width - left - 10) / 60
        func y(_ n: Int) -> Double { height - bottom - Double(n) / Double(top) * plotHeight }
        func line(_ values: [Int]) -> String {
            values.enumerated().map { String(format: "%.1f,%.1f", left + (Double($0.offset) + 0.5) * step, y($0.element)) }
                .joined(separator: " ")
        }
        var svg =
            "<svg xmlns='http://www.w3.org/2000/svg' id='rate-chart' viewBox='0 0 \(Int(width)) \(Int(height))' width='100%' role='img' aria-label='delivered and failed per minute'>"
        svg += "<line x1='\(left)' y1='\(height - bottom)' x2='\(width - 10)' y2='\(height - bottom)' stroke='#c4c9d2'/>"
        svg += "<line x1='\(left)' y1='10' x2='\(left)' y2='\(height - bottom)' stroke='#c4c9d2'/>"
        svg += "<text x='\(left - 4)' y='14' text-anchor='end'>\(top)</text><text x='\(left - 4)' y='\(height - bottom)' text-anchor='end'>0</text>"
        svg += "<text x='\(left)' y='\(height - 4)'>-60 min</text><text x='\(width - 10)' y='\(height - 4)' text-anchor='end'>now</text>"
        svg += "<polyline fill='none' stroke='#1a7f37' stroke-width='2' points='\(line(delivered))'><title>delivered per minute</title></polyline>"
        svg += "<polyline fill='none' stroke='#b42318' stroke-width='2' points='\(line(failed))'><title>failed per minute</title></polyline>"
        svg +=
            "<text x='\(width - 10)' y='14' text-anchor='end'><tspan fill='#1a7f37'>delivered</tspan> · <tspan fill='#b42318'>failed</tspan> per minute</text>"
        return svg + "</svg>"
    }

    /// A route's row on the overview.
    static func route(_ route: RouteStatus) -> [String: Any] {
        [
            "route": route.route, "state": route.state == "paused" ? "paused" : "active", "paused": route.state == "paused",
            "alert": route.code.map { "\($0): \(route.message ?? "")" } ?? "", "since": time(route.since),
            "nextProbe": route.state == "paused" ? (route.nextProbeAt.map { time($0) } ?? "now / running") : "",
            "failedProbes": route.failedProbes,
        ]
    }

    /// A row of the message list.
    static func row(_ m: StoredMessage) -> [String: Any] {
        let recipients = m.recipients.map(\.address)
        var shown = recipients.prefix(2).joined(separator: ", ")
        if recipients.count > 2 { shown += " +\(recipients.count - 2)" }
        return [
            "id": m.id, "shortID": String(m.id.prefix(8)), "created": time(m.createdAt), "status": m.status.rawValue,
            "duplicate": m.possibleDuplicate, "from": m.from.isEmpty ? "<>" : m.from, "recipients": shown, "subject": m.subject ?? "",
            "attempts": m.attemptCount,
        ]
    }

    /// The detail page of one message.
    static func detail(_ m: StoredMessage, head: [UInt8]?) -> [String: Any] {
        let recipients = m.recipients.map { r -> [String: Any] in
            let reply = [r.code.map(String.init), r.enhancedCode, r.text].compactMap { $0 }.joined(separator: " ")
            return ["address": r.address, "status": r.status.rawValue, "reply": reply]
        }
        let attempts = m.attempts.map { a -> [String: Any] in
            [
                "number": a.number, "started": time(a.startedAt), "duration": String(format: "%.3f s", a.durationSeconds),
                "transport": a.transport, "destination": a.destination ?? "", "outcome": a.outcome,
                "reply": [a.reply, a.error].compactMap { $0 }.joined(separator: " — "),
            ]
        }
        return [
            "id": m.id, "status": m.status.rawValue, "duplicate": m.possibleDuplicate, "from": m.from.isEmpty ? "<>" : m.from,
            "route": MessageFilter.defaultRoute, "messageID": m.messageID ?? "", "size": "\(size(m.size)) (\(m.size) bytes)",
            "created": time(m.createdAt), "updated": time(m.updatedAt), "nextAttempt": m.status.isFinal ? "" : time(m.nextAttemptAt),
            "lastError": m.lastError ?? "", "recipients": recipients, "attempts": attempts, "purged": m.contentPurged,
            "headers": head.map(headers) ?? "",
            "canRetry": [.failed, .unknown, .deferred].contains(m.status) && !m.contentPurged,
            "canCancel": [.queued, .deferred].contains(m.status),
            "canPurge": [.delivered, .failed, .unknown, .cancelled].contains(m.status) && !m.contentPurged,
        ]
    }

    /// The header block of a message (up to its blank line), as text.
    static func headers(_ content: [UInt8]) -> String {
        let limit = min(content.count, 64 * 1024)
        var end = limit
        var i = 0
        while i + 1 < limit {
            if content[i] == 0x0A && (content[i + 1] == 0x0A || (content[i + 1] == 0x0D && i + 2 < limit && content[i + 2] == 0x0A)) {
                end = i
                break
            }
            i += 1
        }
        return String(decoding: content[0..<end], as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n")
    }

    /// The query string that gives `filter` back (without the cursor).
    static func query(_ filter: MessageFilter) -> String {
        var parts: [(String, String)] = []
        if !filter.statuses.isEmpty { parts.append(("status", filter.statuses.map(\.rawValue).joined(separator: ","))) }
        if let v = filter.route { parts.append(("route", v)) }
        if let v = filter.sender { parts.append(("sender", v)) }
        if let v = filter.recipient { parts.append(("recipient", v)) }
        if let v = filter.subject { parts.append(("subject", v)) }
        if let v = filter.since { parts.append(("since", fieldTime(v))) }
        if let v = filter.until { parts.append(("until", fieldTime(v))) }
        if let v = filter.possibleDuplicate { parts.append(("duplicate", v ? "true" : "false")) }
        return parts.map { "\($0.0)=\(FormData.encode($0.1))" }.joined(separator: "&")
    }

    /// The filter as hidden form fields (a confirmation form).
    static func fields(_ filter: MessageFilter) -> [[String: String]] {
        FormData.parse(query(filter)).flatMap { key, values in values.map { ["name": key, "value": $0] } }
    }

    /// The filter form's values.
    static func form(_ filter: MessageFilter) -> [String: Any] {
        [
            "f": [
                "route": filter.route ?? "", "sender": filter.sender ?? "", "recipient": filter.recipient ?? "",
                "subject": filter.subject ?? "", "since": fieldTime(filter.since), "until": fieldTime(filter.until),
            ],
            "statusOptions": MessageStatus.allCases.map { ["value": $0.rawValue, "selected": filter.statuses == [$0]] },
            "dupTrue": filter.possibleDuplicate == true, "dupFalse": filter.possibleDuplicate == false,
        ]
    }
}
