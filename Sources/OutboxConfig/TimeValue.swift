/// The reference's `hh:mm:ss` time format.
///
/// Strict: exactly two colons; hours are one or more decimal digits (any non-negative number);
/// minutes and seconds are exactly two digits each, 00-59. No signs, spaces or fractions.
package enum TimeValue {
    /// The human description of the format used in error messages.
    package static let formatDescription = "hh:mm:ss format (hours any whole number, minutes and seconds 00-59, e.g. 00:05:00)"

    /// Parses `hh:mm:ss`; nil when the text is not in that format.
    package static func parse(_ text: String) -> Duration? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        let digits: (Substring) -> Bool = { !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }
        guard digits(parts[0]), digits(parts[1]), digits(parts[2]),
            parts[1].count == 2, parts[2].count == 2,
            let hours = Int64(parts[0]), let minutes = Int64(parts[1]), let seconds = Int64(parts[2]),
            minutes < 60, seconds < 60
        else { return nil }
        let (hourSeconds, overflow1) = hours.multipliedReportingOverflow(by: 3600)
        guard !overflow1 else { return nil }
        let (total, overflow2) = hourSeconds.addingReportingOverflow(minutes * 60 + seconds)
        guard !overflow2 else { return nil }
        return .seconds(total)
    }

    /// Formats a duration (whole seconds, rounded down) as `hh:mm:ss`, hours at least two digits.
    package static func format(_ duration: Duration) -> String {
        let total = max(0, duration.components.seconds)
        let hours = total / 3600
        let minutes = (total % 3600) / 60
        let seconds = total % 60
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(two(hours)):\(two(minutes)):\(two(seconds))"
    }
}
