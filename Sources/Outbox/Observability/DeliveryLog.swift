import Foundation
import Logging
import NIOConcurrencyHelpers
import OutboxConfig

/// The delivery log: one structured line per delivery attempt, in the manner of Postfix's
/// queue id lines, greppable by the queue id (`id=`) and the Message-ID (`message_id=`).
///
/// Lines go to the logger labelled ``DeliveryLog/label`` (`outbox.delivery`) at `info`, as the
/// log message itself: logfmt (`key=value`) by default, one JSON object a line with
/// `[outbox] log-format = json`. `outbox serve` writes them bare on standard error
/// (``DeliveryLogHandler``); a library user's log handler gets the same line as its message.
///
/// A line never carries a secret: addresses, replies and error texts only (errors carry no
/// secret by rule, and no credential reaches an attempt's record).
public final class DeliveryLog: Sendable {
    /// The logger label of the delivery log's lines.
    public static let label = "outbox.delivery"

    private let loggerBox: NIOLockedValueBox<Logger>
    private let formatBox: NIOLockedValueBox<LogFormat>

    /// A delivery log writing to `logger` (by default one labelled ``label``) in `format`.
    public init(logger: Logger = Logger(label: DeliveryLog.label), format: LogFormat = .logfmt) {
        self.loggerBox = NIOLockedValueBox(logger)
        self.formatBox = NIOLockedValueBox(format)
    }

    /// The logger the lines go to; replace it to send them elsewhere (tests record them).
    public var logger: Logger {
        get { loggerBox.withLockedValue { $0 } }
        set { loggerBox.withLockedValue { $0 = newValue } }
    }

    /// The line format; a change applies to the next line (`log-format` takes effect at once).
    public var format: LogFormat {
        get { formatBox.withLockedValue { $0 } }
        set { formatBox.withLockedValue { $0 = newValue } }
    }

    /// True when a line would be written (the logger's level is `info` or lower): callers skip
    /// building an entry otherwise.
    package var isEnabled: Bool { loggerBox.withLockedValue { $0.logLevel <= .info } }

    /// Writes one attempt's line.
    package func record(_ entry: DeliveryLogEntry) {
        // The line is built only when it is written (a library at warning builds none).
        let logger = self.logger
        guard logger.logLevel <= .info else { return }
        let line = entry.line(format)
        logger.info("\(line)")
    }
}

/// One delivery attempt as the delivery log writes it.
package struct DeliveryLogEntry: Sendable, Equatable {
    /// One recipient's result in this attempt.
    package struct Recipient: Sendable, Equatable {
        package var address: String
        /// delivered, deferred, failed, unknown.
        package var result: String
        package var code: Int?
        package var enhancedCode: String?
        package var reply: String?
    }

    package var time: Date
    /// The queue's id for the message (nil for a direct send).
    package var queueID: String?
    /// The Message-ID header.
    package var messageID: String?
    package var route: String
    package var attempt: Int?
    package var from: String
    package var recipients: [Recipient]
    /// delivered, deferred, failed, unknown (the message's state after the attempt).
    package var result: String
    package var transport: String
    package var destination: String?
    /// The server's reply after the message (SMTP), or the HTTP status and text.
    package var reply: String?
    /// Why the attempt failed, when it did.
    package var error: String?
    package var durationSeconds: Double
    package var bytes: Int?
    /// `TLSv1.3`, `none`, `https`; nil: unknown.
    package var tls: String?
    /// The W3C trace id of the attempt's span, when tracing is on.
    package var traceID: String?

    /// The line in `format`, without a newline.
    package func line(_ format: LogFormat) -> String {
        switch format {
        case .logfmt: logfmt
        case .json: json
        }
    }

    /// RFC 3339 in UTC with milliseconds (`2026-05-01T10:42:00.120Z`), from the C calendar:
    /// a Foundation date formatter made per line cost more than the rest of a send.
    static func timestamp(_ date: Date) -> String {
        let t = date.timeIntervalSince1970
        let utc = UTCFields(t)
        let millis = min(999, max(0, Int(((t - t.rounded(.down)) * 1000).rounded(.down))))
        return utc.date + "T" + utc.time + "." + UTCFields.padded(millis, 3) + "Z"
    }

    private var durationMilliseconds: Int { Int((durationSeconds * 1000).rounded()) }

    /// `key=value` pairs in a fixed order; recipients as `rcpt=address:result:code,...`.
    package var logfmt: String {
        var pairs: [(String, String?)] = [
            ("ts", Self.timestamp(time)), ("event", "delivery"), ("id", queueID), ("message_id", messageID), ("route", route),
            ("attempt", attempt.map(String.init)), ("from", from.isEmpty ? "<>" : from),
            (
                "rcpt",
                recipients.map { r in ([r.address, r.result] + (r.code.map { ["\($0)"] } ?? [])).joined(separator: ":") }
                    .joined(separator: ",")
            ),
            ("result", result), ("transport", transport), ("destination", destination),
        ]
        pairs += [
            ("reply", reply.map(Self.oneLine)), ("error", error.map(Self.oneLine)), ("duration_ms", "\(durationMilliseconds)"),
            ("bytes", bytes.map(String.init)), ("tls", tls), ("trace_id", traceID),
        ]
        return pairs.compactMap { key, value in value.map { "\(key)=\(Self.logfmtValue($0))" } }.joined(separator: " ")
    }

    /// One JSON object with the same keys; recipients as an array of objects.
    package var json: String {
        var fields: [String] = []
        func add(_ key: String, _ value: String?) { if let value { fields.append("\(Self.jsonString(key)):\(Self.jsonString(value))") } }
        func add(_ key: String, _ value: Int?) { if let value { fields.append("\(Self.jsonString(key)):\(value)") } }
        add("ts", Self.timestamp(time))
        add("event", "delivery")
        add("id", queueID)
        add("message_id", messageID)
        add("route", route)
        add("attempt", attempt)
        add("from", from.isEmpty ? "<>" : from)
        let rcpts = recipients.map { r -> String in
            var o = ["\"address\":\(Self.jsonString(r.address))", "\"result\":\(Self.jsonString(r.result))"]
            if let code = r.code { o.append("\"code\":\(code)") }
            if let e = r.enhancedCode { o.append("\"enhanced_code\":\(Self.jsonString(e))") }
            if let t = r.reply { o.append("\"reply\":\(Self.jsonString(Self.oneLine(t)))") }
            return "{" + o.joined(separator: ",") + "}"
        }
        fields.append("\"recipients\":[" + rcpts.joined(separator: ",") + "]")
        add("result", result)
        add("transport", transport)
        add("destination", destination)
        add("reply", reply.map(Self.oneLine))
        add("error", error.map(Self.oneLine))
        add("duration_ms", durationMilliseconds)
        add("bytes", bytes)
        add("tls", tls)
        add("trace_id", traceID)
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// Multi-line replies on one line (their lines joined with ` / `).
    static func oneLine(_ s: String) -> String {
        s.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " / ")
    }

    /// A logfmt value: bare when it has no space, quote, `=` or control character; otherwise
    /// quoted, with `"` and `\` escaped.
    static func logfmtValue(_ s: String) -> String {
        let needsQuotes = s.isEmpty || s.unicodeScalars.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || $0.value < 0x20 }
        // Quoted values use JSON's escapes (logfmt parsers read them alike).
        return needsQuotes ? jsonString(s) : s
    }

    /// A JSON string literal.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}

/// The log handler `outbox serve` gives the delivery log: each line bare on standard error (no
/// timestamp or level prefix: the line has its own `ts`), so that it parses as logfmt or JSON.
public struct DeliveryLogHandler: LogHandler {
    /// Unused: a delivery line carries its own fields.
    public var metadata: Logger.Metadata = [:]
    /// `info` by default: the delivery log writes at `info`.
    public var logLevel: Logger.Level = .info

    /// A handler writing to standard error.
    public init() {}

    /// Unused: a delivery line carries its own fields.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Writes `message` and a newline in one write.
    public func log(event: LogEvent) {
        FileHandle.standardError.write(Data("\(event.message)\n".utf8))
    }
}

/// A wall-clock instant's UTC calendar fields, from the C calendar: a Foundation date formatter
/// made per call costs more than what it formats (the delivery log's lines, the dashboard's
/// tables).
package struct UTCFields: Sendable {
    package var year, month, day, hour, minute, second: Int

    /// The fields of `seconds` since 1970 (its fraction dropped).
    package init(_ seconds: Double) {
        var t = time_t(seconds.rounded(.down))
        var parts = tm()
        gmtime_r(&t, &parts)
        year = Int(parts.tm_year) + 1900
        month = Int(parts.tm_mon) + 1
        day = Int(parts.tm_mday)
        hour = Int(parts.tm_hour)
        minute = Int(parts.tm_min)
        second = Int(parts.tm_sec)
    }

    /// `2026-05-01`.
    package var date: String { Self.padded(year, 4) + "-" + Self.padded(month, 2) + "-" + Self.padded(day, 2) }
    /// `10:42:00`.
    package var time: String { Self.padded(hour, 2) + ":" + Self.padded(minute, 2) + ":" + Self.padded(second, 2) }

    static func padded(_ value: Int, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}
