/// A secret value (a password, a refresh token, an application's client secret).
///
/// Its `description`, `debugDescription` and mirror never show the value, so a `Secret` can be
/// interpolated into a log line or dumped without leaking it. Read ``value`` only where the
/// secret is actually used (on the wire or in a token request).
public struct Secret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The secret itself.
    public let value: String

    /// Wraps `value`.
    public init(_ value: String) {
        self.value = value
    }

    /// Always `<redacted>`.
    public var description: String { "<redacted>" }
    /// Always `<redacted>`.
    public var debugDescription: String { "<redacted>" }
    /// A mirror with no children, so `dump` does not show the value.
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}
