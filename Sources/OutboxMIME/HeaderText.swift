/// Decoding of header text for readers outside this module (the transports read a relayed
/// message's part headers).
package enum HeaderText {
    /// `value` with its RFC 2047 encoded words decoded (`=?utf-8?Q?r=C3=A9sum=C3=A9.pdf?=` →
    /// `résumé.pdf`); text without encoded words is returned unchanged.
    package static func decodingEncodedWords(_ value: String) -> String {
        EncodedWord.decodeUnstructured(value)
    }

    /// Bytes in a charset named by a MIME parameter (RFC 2231 `charset''...`), as text; UTF-8 or
    /// Latin-1 when the charset is unknown.
    package static func decode(_ bytes: [UInt8], charset: String) -> String {
        EncodedWord.decodeCharset(bytes, charset.lowercased()) ?? String(decoding: bytes, as: UTF8.self)
    }
}
