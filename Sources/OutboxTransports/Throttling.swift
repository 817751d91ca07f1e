import OutboxSMTP

/// The provider's throttling, told apart from a refusal of the message: the route is paused for
/// the time the provider asked (or with back-off) and the message is deferred, never failed.
///
/// | answer | provider |
/// | --- | --- |
/// | `432 4.3.2` (any 432) | Exchange Online: concurrent connections or submissions |
/// | `421 4.7.x` | Gmail, Exchange Online: rate and reputation limits |
/// | `454 4.7.0` | Gmail: too many logins or messages, try again later |
/// | `550 5.4.5` | Gmail: daily sending limit exceeded (dressed as permanent) |
/// | `554 5.2.0 ... SubmissionQuotaExceeded` | Exchange Online: the mailbox's daily quota |
/// | HTTP 429, or 503 with `Retry-After` | Graph (and EWS behind a front end) |
/// | `ErrorServerBusy` (with `BackOffMilliseconds`) | EWS |
///
/// `452 4.5.3` (too many recipients) is not throttling: the remaining recipients go in a further
/// transaction (RFC 5321 §4.5.3.1.10).
public enum Throttling {
    /// True when an SMTP reply (its code, enhanced code and text) is one of the throttling
    /// answers of the table.
    public static func isThrottling(code: Int, enhancedCode: String?, text: String?) -> Bool {
        isThrottling(code: code, enhancedCode: { enhancedCode }, text: { text })
    }

    /// True when `reply` is throttling (see ``isThrottling(code:enhancedCode:text:)``).
    public static func isThrottling(_ reply: SMTPReply) -> Bool {
        // Checked for every message's final reply: the enhanced code and the text are built only
        // for a code the table reads them for.
        isThrottling(code: reply.code, enhancedCode: { reply.enhancedCode?.description }, text: { reply.lines.joined(separator: " ") })
    }

    /// The table, reading the enhanced code and the text only when the code needs them.
    private static func isThrottling(code: Int, enhancedCode: () -> String?, text: () -> String?) -> Bool {
        switch code {
        case 432: return true
        case 421: return (enhancedCode() ?? "").hasPrefix("4.7.")
        case 454: return enhancedCode() == "4.7.0"
        case 550: return enhancedCode() == "5.4.5"
        case 554: return enhancedCode() == "5.2.0" && (text() ?? "").contains("SubmissionQuotaExceeded")
        default: return false
        }
    }

    /// True when an HTTP answer is throttling: 429 always, 503 with a `Retry-After`.
    public static func isThrottling(httpStatus: Int, retryAfter: Duration?) -> Bool {
        httpStatus == 429 || (httpStatus == 503 && retryAfter != nil)
    }

    /// True for `452 4.5.3` (too many recipients; without an enhanced code, a 452 that says so):
    /// the rest go in another transaction. A `452 4.3.1` (storage) is not.
    public static func isTooManyRecipients(code: Int?, enhancedCode: String?, text: String?) -> Bool {
        guard code == 452 else { return false }
        if let enhancedCode { return enhancedCode == "4.5.3" }
        return (text ?? "").lowercased().contains("too many recipients")
    }
}
