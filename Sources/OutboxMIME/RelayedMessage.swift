import NIOCore

/// A message received by the SMTP listener, sent on byte for byte: no header is parsed, added
/// or removed here (the listener already added Received, Date and Message-ID), so a message with
/// malformed headers, an mbox `From ` line or 8-bit bytes passes through as Postfix would pass
/// it. The envelope is the one the client gave, never taken from the headers. The bytes must
/// have CRLF line ends (the listener normalises bare CR and LF).
///
/// A large message is never held whole: its `head` is in memory and the rest is read piece by
/// piece (the queue's stored chunks) while the transport sends it.
package struct RelayedMessage: MailContent {
    /// The message's first bytes (all of it when `pieceCount` is 0).
    package let head: [UInt8]
    /// How many pieces follow the head.
    package let pieceCount: Int
    let readPiece: (@Sendable (Int) async throws -> ByteBuffer?)?
    let storedEnvelope: Envelope
    package let requiresSMTPUTF8: Bool
    package let knownByteCount: Int?

    /// A message held whole.
    package init(bytes: [UInt8], envelope: Envelope) {
        self.init(head: bytes, pieceCount: 0, byteCount: bytes.count, envelope: envelope, readPiece: nil)
    }

    /// A message whose bytes after `head` are `pieceCount` pieces, read with `readPiece(0)`,
    /// `readPiece(1)`, ... when the message is streamed (nil: a piece is missing, an error).
    /// `byteCount`: the whole message's size, when known.
    package init(
        head: [UInt8], pieceCount: Int, byteCount: Int?, envelope: Envelope,
        readPiece: (@Sendable (Int) async throws -> ByteBuffer?)?
    ) {
        self.knownByteCount = byteCount
        self.head = head
        self.pieceCount = readPiece == nil ? 0 : pieceCount
        self.readPiece = readPiece
        self.storedEnvelope = envelope
        // SMTPUTF8 is needed for a non-ASCII envelope local part; 8-bit headers alone go
        // as 8BITMIME content, as received.
        self.requiresSMTPUTF8 = ([envelope.from] + envelope.recipients).contains { !Address.localPartIsASCII($0) }
    }

    package func envelope() throws(MIMEError) -> Envelope { storedEnvelope }

    package func byteStream(options: MIMEEncodingOptions) -> MessageByteStream {
        let head = head
        guard pieceCount > 0, let readPiece else {
            return MessageByteStream { () throws(MIMEError) -> [Segment] in [.bytes(head)] }
        }
        let count = pieceCount
        return MessageByteStream { () throws(MIMEError) -> [Segment] in [.bytes(head), .pieces(count: count, read: readPiece)] }
    }
}
