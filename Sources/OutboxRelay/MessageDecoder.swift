import NIOCore

/// Reads a message's bytes as they arrive, after DATA (dot-terminated) or BDAT (counted chunks).
///
/// The smuggling rule (CVE-2023-51764 class): only `<CRLF>.<CRLF>` ends DATA. A bare LF or a bare
/// CR never ends a line for that purpose; in what is stored, each bare LF and each bare CR
/// becomes CRLF (so that nothing downstream can read a line end that the listener did not).
/// A dot at the start of a line (after a real CRLF) is removed when more of the line follows
/// (RFC 5321 §4.5.2); a dot followed by a bare line end is kept.
///
/// What is stored never exceeds `limit` bytes: past it the bytes are counted and dropped, and
/// `oversized` tells the state machine to refuse the message (552 5.3.4) once it has ended.
package struct MessageDecoder: Sendable {
    enum Position: Sendable {
        /// After a real CRLF (or at the very start).
        case lineStart
        /// A `.` at a line start.
        case dot
        /// `.` then CR at a line start.
        case dotCR
        /// Inside a line (or after a bare line end).
        case middle
        /// A CR inside a line, waiting to see whether LF follows.
        case cr
    }

    private var position: Position = .lineStart
    /// The decoded bytes not yet taken by `take()`.
    package private(set) var output: ByteBuffer
    /// Decoded bytes so far (stored or not).
    package private(set) var decodedCount = 0
    package let limit: Int
    package private(set) var oversized = false
    /// True once `<CRLF>.<CRLF>` was read (DATA only).
    package private(set) var ended = false
    /// Bare CR or LF seen (normalised).
    package private(set) var sawBareLineEnd = false

    package init(limit: Int, allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.limit = limit
        self.output = allocator.buffer(capacity: 4096)
    }

    /// The bytes decoded since the last call.
    package mutating func take() -> ByteBuffer {
        let out = output
        output.clear()
        return out
    }

    private mutating func emit(_ byte: UInt8) {
        decodedCount += 1
        if decodedCount > limit { oversized = true; return }
        output.writeInteger(byte)
    }

    private mutating func emitCRLF() {
        emit(13)
        emit(10)
    }

    /// DATA: decodes from `buffer` up to and including the end marker; returns true when the
    /// message ended (the rest of `buffer`, pipelined commands, stays unread).
    package mutating func decodeDotTerminated(_ buffer: inout ByteBuffer) -> Bool {
        precondition(!ended)
        if decode(&buffer, max: buffer.readableBytes, dotTerminated: true) {
            ended = true
            return true
        }
        return false
    }

    /// BDAT: decodes up to `count` bytes of `buffer` (no dot handling); returns how many were read.
    package mutating func decodeChunk(_ buffer: inout ByteBuffer, upTo count: Int) -> Int {
        let n = min(count, buffer.readableBytes)
        guard n > 0 else { return 0 }
        _ = decode(&buffer, max: n, dotTerminated: false)
        return n
    }

    /// Reads at most `max` bytes; true at DATA's end marker. The text between line ends is
    /// copied in runs; only CR, LF and a line's first byte go one by one through `step`.
    private mutating func decode(_ buffer: inout ByteBuffer, max: Int, dotTerminated: Bool) -> Bool {
        var left = max
        while left > 0 {
            if case .middle = position {
                let span = buffer.withUnsafeReadableBytes { bytes -> Int in
                    let n = Swift.min(left, bytes.count)
                    var i = 0
                    while i < n {
                        let b = bytes[i]
                        if b == 13 || b == 10 { break }
                        i += 1
                    }
                    return i
                }
                if span > 0 {
                    emit(run: &buffer, count: span)
                    left -= span
                    continue
                }
            }
            guard let byte = buffer.readInteger(as: UInt8.self) else { return false }
            left -= 1
            if step(byte, dotTerminated: dotTerminated) { return true }
        }
        return false
    }

    /// `count` ordinary bytes from `buffer`, kept up to the limit.
    private mutating func emit(run buffer: inout ByteBuffer, count: Int) {
        let room = Swift.max(0, limit - decodedCount)
        decodedCount += count
        if count > room { oversized = true }
        if room > 0, var slice = buffer.getSlice(at: buffer.readerIndex, length: Swift.min(count, room)) {
            output.writeBuffer(&slice)
        }
        buffer.moveReaderIndex(forwardBy: count)
    }

    /// BDAT LAST: a CR left waiting at the very end is a bare CR.
    package mutating func finishChunks() {
        if case .cr = position {
            emitCRLF()
            sawBareLineEnd = true
        }
        position = .lineStart
        ended = true
    }

    /// One byte; true at the end marker.
    private mutating func step(_ byte: UInt8, dotTerminated: Bool) -> Bool {
        switch position {
        case .lineStart:
            if dotTerminated && byte == UInt8(ascii: ".") {
                position = .dot
                return false
            }
            return middle(byte)
        case .dot:
            if byte == 13 {
                position = .dotCR
                return false
            }
            if byte == 10 {
                // ".<LF>": a bare line end; the dot stays, as the line's content.
                emit(UInt8(ascii: "."))
                return middle(byte)
            }
            // ".x": the client's dot-stuffing; the dot goes.
            return middle(byte)
        case .dotCR:
            if byte == 10 { return true }
            // ".<CR>x": a bare CR after a lone dot: the dot is content.
            emit(UInt8(ascii: "."))
            emitCRLF()
            sawBareLineEnd = true
            position = .middle
            return middle(byte)
        case .middle:
            return middle(byte)
        case .cr:
            if byte == 10 {
                emitCRLF()
                position = .lineStart
                return false
            }
            emitCRLF()
            sawBareLineEnd = true
            position = .middle
            return middle(byte)
        }
    }

    private mutating func middle(_ byte: UInt8) -> Bool {
        switch byte {
        case 13:
            position = .cr
        case 10:
            emitCRLF()
            sawBareLineEnd = true
            position = .middle
        default:
            emit(byte)
            position = .middle
        }
        return false
    }
}
