import Foundation  // memchr
import NIOCore

/// Turns message bytes into the DATA stream, chunk by chunk (RFC 5321 §4.5.2):
/// every line end becomes CRLF (bare LF and bare CR included), a `.` at the start of a line is
/// doubled, and `finish` ends the last line if needed and appends the terminating `.CRLF`.
/// A CR at the end of one chunk and an LF at the start of the next make one line end.
package struct SMTPDataEncoder: Sendable {
    private var atLineStart = true
    private var pendingCR = false
    /// Bytes of the message as sent (after stuffing and line-end repair).
    package private(set) var bytesWritten = 0

    package init() {}

    package mutating func encode(_ chunk: ByteBuffer, into out: inout ByteBuffer) {
        let before = out.writerIndex
        // The state lives in locals during the scan, and a CRLF that is already right stays
        // inside the copied run: the common case (CRLF lines, no leading dot) is one copy per chunk.
        var atLineStart = self.atLineStart
        var pendingCR = self.pendingCR
        chunk.withUnsafeReadableBytes { bytes in
            let count = bytes.count
            out.reserveCapacity(minimumWritableBytes: count + count / 32 + 8)
            var runStart = 0
            var i = 0
            @inline(__always) func flushRun(_ end: Int, _ out: inout ByteBuffer) {
                if end > runStart { out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[runStart..<end])) }
            }
            if pendingCR && count > 0 {
                // A CR ended the previous chunk: it ends a line, with or without this LF.
                pendingCR = false
                out.writeInteger(UInt16(0x0D0A))  // CRLF
                atLineStart = true
                if bytes[0] == 0x0A { i = 1; runStart = 1 }
            }
            // The next CR and LF at or after i (count when none), found with memchr and cached.
            @inline(__always) func find(_ byte: UInt8, from start: Int) -> Int {
                guard start < count, let p = memchr(bytes.baseAddress! + start, Int32(byte), count - start) else { return count }
                return UnsafeRawPointer(p) - bytes.baseAddress!
            }
            var nextCR = -1
            var nextLF = -1
            while i < count {
                if atLineStart {
                    atLineStart = false
                    if bytes[i] == UInt8(ascii: ".") {
                        flushRun(i, &out)
                        out.writeInteger(UInt8(ascii: "."))
                        runStart = i  // the dot itself goes out with the run
                    }
                }
                if nextCR < i { nextCR = find(0x0D, from: i) }
                if nextLF < i { nextLF = find(0x0A, from: i) }
                i = Swift.min(nextCR, nextLF)
                if i == count { break }
                if i == nextCR {
                    if i + 1 == count {
                        // The LF may start the next chunk.
                        flushRun(i, &out)
                        pendingCR = true
                        i += 1
                        runStart = i
                        continue
                    }
                    if bytes[i + 1] == 0x0A {
                        i += 2  // a proper CRLF: stays in the run
                        atLineStart = true
                        continue
                    }
                    flushRun(i, &out)  // a bare CR
                    out.writeInteger(UInt16(0x0D0A))
                    i += 1
                    runStart = i
                    atLineStart = true
                    continue
                }
                flushRun(i, &out)  // a bare LF
                out.writeInteger(UInt16(0x0D0A))
                i += 1
                runStart = i
                atLineStart = true
            }
            flushRun(count, &out)
        }
        self.atLineStart = atLineStart
        self.pendingCR = pendingCR
        bytesWritten += out.writerIndex - before
    }

    /// Ends the data: the last line gets its CRLF if it lacked one, then `.CRLF`.
    package mutating func finish(into out: inout ByteBuffer) {
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
