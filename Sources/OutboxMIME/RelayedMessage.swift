/// A message received by the SMTP listener, sent on byte for byte: no header is parsed, added
/// or removed here (the listener already added Received, Date and Message-ID), so a message with
/// malformed headers, an mbox `From ` line or 8-bit bytes passes through as Postfix would pass
/// it. The envelope is the one the client gave, never taken from the headers. The bytes must
/// have CRLF line ends (the listener normalises bare CR and LF).
public struct RelayedMessage: MailContent {
    public let bytes: [UInt8]
    let storedEnvelope: Envelope
    public let requiresSMTPUTF8: Bool

    public init(bytes: [UInt8], envelope: Envelope) {
        self.bytes = bytes
        self.storedEnvelope = envelope
        // SMTPUTF8 is needed for a non-ASCII envelope local part; 8-bit headers alone go
        // as 8BITMIME content, as received.
        self.requiresSMTPUTF8 = ([envelope.from] + envelope.recipients).contains { !Address.localPartIsASCII($0) }
    }

    public func envelope() throws(MIMEError) -> Envelope { storedEnvelope }

    public func byteStream(options: MIMEEncodingOptions) -> MessageByteStream {
        let bytes = bytes
        return MessageByteStream { () throws(MIMEError) -> [Segment] in [.bytes(bytes)] }
    }
}
