/// Base64 (RFC 4648) with MIME line breaking (RFC 2045: at most 76 characters a line, CRLF).
enum Base64 {
    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    /// Input bytes per 76-character output line.
    static let bytesPerLine = 57

    /// Plain base64 without line breaks (used inside encoded words).
    static func encode(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        append(bytes, to: &out)
        return out
    }

    @inline(__always)
    static func append(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        alphabet.withUnsafeBufferPointer { a in
            var it = bytes.makeIterator()
            while let b0 = it.next() {
                let b1 = it.next()
                let b2 = it.next()
                out.append(a[Int(b0 >> 2)])
                out.append(a[Int((b0 & 0x03) << 4 | (b1 ?? 0) >> 4)])
                if let b1 {
                    out.append(a[Int((b1 & 0x0F) << 2 | (b2 ?? 0) >> 6)])
                } else {
                    out.append(UInt8(ascii: "="))
                }
                if let b2 {
                    out.append(a[Int(b2 & 0x3F)])
                } else {
                    out.append(UInt8(ascii: "="))
                }
            }
        }
    }

    /// Base64 in lines of 76 characters, each line (including the last) ending in CRLF.
    /// Callers streaming a file pass chunks whose size is a multiple of 57 except for the last.
    static func encodeLines(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) {
        let fullLines = bytes.count / bytesPerLine
        out.reserveCapacity(out.count + (bytes.count + 2) / 3 * 4 + (fullLines + 1) * 2)
        var start = 0
        alphabet.withUnsafeBufferPointer { a in
            while start < bytes.count {
                let end = min(start + bytesPerLine, bytes.count)
                var i = start
                while i + 3 <= end {
                    let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                    out.append(a[Int(v >> 18 & 0x3F)])
                    out.append(a[Int(v >> 12 & 0x3F)])
                    out.append(a[Int(v >> 6 & 0x3F)])
                    out.append(a[Int(v & 0x3F)])
                    i += 3
                }
                if i < end {
                    let b0 = bytes[i]
                    let b1: UInt8 = i + 1 < end ? bytes[i + 1] : 0
                    out.append(a[Int(b0 >> 2)])
                    out.append(a[Int((b0 & 0x03) << 4 | b1 >> 4)])
                    out.append(i + 1 < end ? a[Int((b1 & 0x0F) << 2)] : UInt8(ascii: "="))
                    out.append(UInt8(ascii: "="))
                }
                out.append(13)
                out.append(10)
                start = end
            }
        }
    }

    static func encodeLines(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        bytes.withUnsafeBufferPointer { encodeLines($0, into: &out) }
        return out
    }
}
