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

    /// The size of `encodeLines` output for `n` input bytes.
    static func encodedLinesSize(_ n: Int) -> Int {
        let full = n / bytesPerLine
        let rest = n % bytesPerLine
        return full * 78 + (rest == 0 ? 0 : (rest + 2) / 3 * 4 + 2)
    }

    /// Base64 in lines of 76 characters, each line (including the last) ending in CRLF.
    /// Callers streaming a file pass chunks whose size is a multiple of 57 except for the last.
    static func encodeLines(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) {
        let n = bytes.count
        guard n > 0 else { return }
        let start = out.count
        let size = encodedLinesSize(n)
        out.append(contentsOf: repeatElement(0, count: size))
        alphabet.withUnsafeBufferPointer { a in
            out.withUnsafeMutableBufferPointer { o in
                var w = start
                var i = 0
                while i < n {
                    let end = Swift.min(i + bytesPerLine, n)
                    while i + 3 <= end {
                        let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                        o[w] = a[Int(v >> 18 & 0x3F)]
                        o[w + 1] = a[Int(v >> 12 & 0x3F)]
                        o[w + 2] = a[Int(v >> 6 & 0x3F)]
                        o[w + 3] = a[Int(v & 0x3F)]
                        w += 4
                        i += 3
                    }
                    if i < end {
                        let b0 = bytes[i]
                        let b1: UInt8 = i + 1 < end ? bytes[i + 1] : 0
                        o[w] = a[Int(b0 >> 2)]
                        o[w + 1] = a[Int((b0 & 0x03) << 4 | b1 >> 4)]
                        o[w + 2] = i + 1 < end ? a[Int((b1 & 0x0F) << 2)] : UInt8(ascii: "=")
                        o[w + 3] = UInt8(ascii: "=")
                        w += 4
                        i = end
                    }
                    o[w] = 13
                    o[w + 1] = 10
                    w += 2
                }
                precondition(w == start + size)
            }
        }
    }

    static func encodeLines(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        bytes.withUnsafeBufferPointer { encodeLines($0, into: &out) }
        return out
    }
}
