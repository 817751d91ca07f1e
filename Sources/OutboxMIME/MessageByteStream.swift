import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One piece of a serialised message.
enum Segment: Sendable {
    /// Bytes produced in memory (headers, small encoded bodies).
    case bytes([UInt8])
    /// A file encoded to base64 lines while it is read.
    case base64File(path: String)
    /// A file (the body of a .eml) from `offset` on, with bare LF turned into CRLF and a final
    /// CRLF added when missing.
    case rawFile(path: String, offset: Int)
    /// Bytes stored elsewhere in `count` numbered pieces (a large message's chunks in the
    /// queue's store), read one at a time when they are needed.
    case pieces(count: Int, read: @Sendable (Int) async throws -> ByteBuffer?)
}

/// The bytes of a message as an async sequence of chunks of about 64 KiB.
///
/// Pull-based: nothing is produced until `next()` is called, and each call produces one chunk;
/// files are read with read(2) in chunks inside `next()`, so memory stays bounded whatever the
/// size of the attachments.
public struct MessageByteStream: AsyncSequence, Sendable {
    /// Each element is one chunk of the message, at most ``chunkSize`` bytes.
    public typealias Element = ByteBuffer
    /// Reading can fail: a ``MIMEError`` from validation, or an error reading a file.
    public typealias Failure = any Error

    /// The size of the chunks produced.
    public static let chunkSize = 64 * 1024

    let build: @Sendable () throws(MIMEError) -> [Segment]

    init(build: @escaping @Sendable () throws(MIMEError) -> [Segment]) {
        self.build = build
    }

    /// An iterator that produces the message from its start; each iterator serialises it anew.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(build: build) }

    /// All the bytes in one array (for dry runs and tests; do not use for large messages).
    public func collect(isolation: isolated (any Actor)? = #isolation) async throws -> [UInt8] {
        var out: [UInt8] = []
        var it = makeAsyncIterator()
        while let chunk = try await it.next(isolation: isolation) { out += chunk.readableBytesView }
        return out
    }

    /// Produces the whole message and returns its size in octets, holding one chunk at a time
    /// (for SIZE estimates and benchmarks).
    public func countBytes(isolation: isolated (any Actor)? = #isolation) async throws -> Int {
        var n = 0
        var it = makeAsyncIterator()
        while let chunk = try await it.next(isolation: isolation) { n += chunk.readableBytes }
        return n
    }

    /// Produces the chunks one `next()` at a time; the first call validates and lays out the message.
    public struct AsyncIterator: AsyncIteratorProtocol {
        private var build: (@Sendable () throws(MIMEError) -> [Segment])?
        private var segments: [Segment] = []
        private var index = 0
        private var offset = 0
        private var reader: FileReader?
        private var carry: [UInt8] = []
        private var lastByte: UInt8 = 0
        /// The piece being copied out (`.pieces`).
        private var piece: ByteBuffer?

        init(build: @escaping @Sendable () throws(MIMEError) -> [Segment]) {
            self.build = build
        }

        /// The next chunk, or nil after the last. Throws the message's ``MIMEError`` (on the first
        /// call) or an error reading an attachment or `.eml` file.
        public mutating func next() async throws -> ByteBuffer? {
            try await nextChunk()
        }

        /// Runs on the caller's actor: producing a chunk never needs an executor hop.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(any Error) -> ByteBuffer? {
            try await nextChunk()
        }

        mutating func nextChunk(isolation actor: isolated (any Actor)? = #isolation) async throws -> ByteBuffer? {
            if let b = build {
                build = nil
                segments = try b()
            }
            let size = MessageByteStream.chunkSize
            var out = ByteBufferAllocator().buffer(capacity: chunkCapacity())
            while out.readableBytes < size, index < segments.count {
                switch segments[index] {
                case .bytes(let b):
                    let n = Swift.min(b.count - offset, size - out.readableBytes)
                    out.writeBytes(b[offset..<offset + n])
                    offset += n
                    if offset == b.count { advance() }
                case .base64File(let path):
                    if reader == nil { reader = try FileReader(path: path, offset: 0) }
                    // 57-byte input lines -> 78-byte output lines; about 48 KiB in per call.
                    let want = Base64.bytesPerLine * 860 - carry.count
                    let chunk = try reader!.read(max: want)
                    var input = carry
                    input += chunk
                    carry.removeAll(keepingCapacity: true)
                    let eof = chunk.isEmpty
                    let usable = eof ? input.count : input.count / Base64.bytesPerLine * Base64.bytesPerLine
                    if usable < input.count { carry = Array(input[usable...]) }
                    var encoded: [UInt8] = []
                    input.withUnsafeBufferPointer { Base64.encodeLines(UnsafeBufferPointer(rebasing: $0[0..<usable]), into: &encoded) }
                    out.writeBytes(encoded)
                    if eof {
                        reader = nil
                        advance()
                    }
                case .rawFile(let path, let start):
                    if reader == nil { reader = try FileReader(path: path, offset: start) }
                    let chunk = try reader!.read(max: size - out.readableBytes)
                    if chunk.isEmpty {
                        if lastByte != 10, lastByte != 0 { out.writeBytes([13, 10]) }
                        reader = nil
                        advance()
                    } else {
                        var normalized: [UInt8] = []
                        normalized.reserveCapacity(chunk.count + 64)
                        for b in chunk {
                            if b == 10, lastByte != 13 { normalized.append(13) }
                            normalized.append(b)
                            lastByte = b
                        }
                        out.writeBytes(normalized)
                    }
                case .pieces(let count, let read):
                    if piece == nil || piece?.readableBytes == 0 {
                        guard offset < count else {
                            piece = nil
                            advance()
                            continue
                        }
                        guard let next = try await read(offset) else {
                            throw MIMEError(.fileUnreadable, "piece \(offset) of \(count) of the stored message is missing")
                        }
                        piece = next
                        offset += 1
                    }
                    let n = Swift.min(piece!.readableBytes, size - out.readableBytes)
                    if var slice = piece!.readSlice(length: n) { out.writeBuffer(&slice) }
                }
            }
            return out.readableBytes == 0 ? nil : out
        }

        /// The capacity of the next chunk: exactly what is left when only bytes in memory are
        /// (a small message is one small buffer, not 66 KiB for every message), else a whole chunk.
        private func chunkCapacity() -> Int {
            let whole = MessageByteStream.chunkSize + 2048
            var left = 0
            for i in index..<segments.count {
                guard case .bytes(let b) = segments[i] else { return whole }
                left += (i == index ? b.count - offset : b.count)
                if left >= whole { return whole }
            }
            return Swift.max(left, 1)
        }

        private mutating func advance() {
            index += 1
            offset = 0
            lastByte = 0
        }
    }
}

/// A file opened for reading; closed when released.
final class FileReader {
    private let fd: Int32
    private let path: String

    init(path: String, offset: Int) throws(MIMEError) {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw MIMEError(.fileUnreadable, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        self.fd = fd
        if offset > 0, lseek(fd, off_t(offset), SEEK_SET) < 0 {
            close(fd)
            throw MIMEError(.fileUnreadable, "cannot seek in \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Up to `max` bytes; empty at end of file.
    func read(max: Int) throws(MIMEError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        while true {
            let n = buffer.withUnsafeMutableBytes { p in
                #if canImport(Glibc)
                Glibc.read(fd, p.baseAddress, max)
                #elseif canImport(Musl)
                Musl.read(fd, p.baseAddress, max)
                #else
                Darwin.read(fd, p.baseAddress, max)
                #endif
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw MIMEError(.fileUnreadable, "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            buffer.removeLast(max - n)
            return buffer
        }
    }

    deinit { close(fd) }
}

/// File metadata helpers.
enum FileInfo {
    static func isReadableFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(path, R_OK) == 0
    }
}
