import NIOCore

/// Turns message bytes into the DATA stream, chunk by chunk (RFC 5321 §4.5.2):
/// every line end becomes CRLF (bare LF and bare CR included), a `.` at the start of a line is
/// doubled, and `finish` ends the last line if needed and appends the terminating `.CRLF`.
/// A CR at the end of one chunk and an LF at the start of the next make one line end.
public struct SMTPDataEncoder: Sendable {
    private var atLineStart = true
    private var pendingCR = false
    /// Bytes of the message as sent (after stuffing and line-end repair).
    public private(set) var bytesWritten = 0

    public init() {}

    public mutating func encode(_ chunk: ByteBuffer, into out: inout ByteBuffer) {
        let before = out.writerIndex
        chunk.withUnsafeReadableBytes { bytes in
            out.reserveCapacity(minimumWritableBytes: bytes.count + bytes.count / 32 + 8)
            var runStart = 0
            var i = 0
            let count = bytes.count
            @inline(__always) func flushRun(_ end: Int, _ out: inout ByteBuffer) {
                if end > runStart { out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[runStart..<end])) }
            }
            while i < count {
                let b = bytes[i]
                if pendingCR {
                    pendingCR = false
                    out.writeInteger(UInt16(0x0D0A))  // CRLF
                    atLineStart = true
                    if b == 0x0A { i += 1; runStart = i; continue }
                }
                if b == 0x0D || b == 0x0A {
                    flushRun(i, &out)
                    if b == 0x0D {
                        pendingCR = true
                    } else {
                        out.writeInteger(UInt16(0x0D0A))
                        atLineStart = true
                    }
                    i += 1
                    runStart = i
                    continue
                }
                if atLineStart {
                    atLineStart = false
                    if b == UInt8(ascii: ".") {
                        flushRun(i, &out)
                        out.writeInteger(UInt8(ascii: "."))
                        runStart = i  // the dot itself goes out with the run
                    }
                }
                i += 1
            }
            flushRun(count, &out)
        }
        bytesWritten += out.writerIndex - before
    }

    /// Ends the data: the last line gets its CRLF if it lacked one, then `.CRLF`.
    public mutating func finish(into out: inout ByteBuffer) {
        let before = out.writerIndex
        if pendingCR {
            pendingCR = false
            out.writeString("\r\n")
            atLineStart = true
        }
        if !atLineStart { out.writeString("\r\n") }
        out.writeString(".\r\n")
        bytesWritten += out.writerIndex - before
        atLineStart = true
    }
}
