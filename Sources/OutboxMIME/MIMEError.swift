/// An error raised while building, validating or serialising a message.
///
/// `code` is stable (safe for metrics and for callers to switch on); `message` says what was
/// wrong, naming the address or header involved, and what to do about it.
public struct MIMEError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A stable, snake_case error code. Extensible: compare with the static members.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The code as text, e.g. `invalid_address`.
        public var rawValue: String
        /// A code from its text.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The code as text (``rawValue``).
        public var description: String { rawValue }

        /// An address is not a valid RFC 5322 / RFC 6531 addr-spec.
        public static let invalidAddress = Code(rawValue: "invalid_address")
        /// An address header could not be parsed.
        public static let invalidAddressList = Code(rawValue: "invalid_address_list")
        /// A domain cannot be converted to its IDNA (Punycode) form.
        public static let invalidDomain = Code(rawValue: "invalid_domain")
        /// The local part is not ASCII and the server does not offer SMTPUTF8.
        public static let requiresSMTPUTF8 = Code(rawValue: "requires_smtputf8")
        /// A header value given by the caller contains CR, LF or NUL.
        public static let headerInjection = Code(rawValue: "header_injection")
        /// A custom header name is invalid or is one Outbox writes itself.
        public static let invalidHeaderName = Code(rawValue: "invalid_header_name")
        /// A header value is invalid for other reasons (e.g. a malformed Message-ID).
        public static let invalidHeaderValue = Code(rawValue: "invalid_header_value")
        /// The message has no From address or no recipient.
        public static let missingField = Code(rawValue: "missing_field")
        /// A finished message (.eml) is malformed.
        public static let invalidRawMessage = Code(rawValue: "invalid_raw_message")
        /// A file (attachment or .eml) cannot be read.
        public static let fileUnreadable = Code(rawValue: "file_unreadable")
    }

    /// What kind of error; stable.
    public var code: Code
    /// What was wrong, naming the address or header involved, and what to do.
    public var message: String

    /// An error with `code` and `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `MIMEError(CODE): MESSAGE`.
    public var description: String { "MIMEError(\(code.rawValue)): \(message)" }
}

extension MIMEError {
    /// Refuses CR, LF and NUL in a caller-supplied header value (header injection defence).
    static func checkNoLineBreaks(_ value: String, header: String) throws(MIMEError) {
        for s in value.unicodeScalars where s == "\r" || s == "\n" || s == "\0" {
            throw MIMEError(
                .headerInjection,
                "the value of header \(header) contains a CR, LF or NUL character; remove line breaks from it")
        }
    }
}
