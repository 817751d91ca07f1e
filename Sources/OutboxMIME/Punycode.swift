import Foundation

/// Punycode (RFC 3492) and the IDNA ToASCII step used when a server lacks SMTPUTF8.
enum Punycode {
    private static let base = 36, tMin = 1, tMax = 26, skew = 38, damp = 700
    private static let initialBias = 72, initialN = 0x80

    private static func adapt(_ delta: Int, _ numPoints: Int, _ firstTime: Bool) -> Int {
        var delta = firstTime ? delta / damp : delta / 2
        delta += delta / numPoints
        var k = 0
        while delta > ((base - tMin) * tMax) / 2 {
            delta /= base - tMin
            k += base
        }
        return k + (base - tMin + 1) * delta / (delta + skew)
    }

    private static func digit(_ d: Int) -> UInt8 {
        d < 26 ? UInt8(ascii: "a") + UInt8(d) : UInt8(ascii: "0") + UInt8(d - 26)
    }

    /// Encodes a Unicode label to Punycode (without the `xn--` prefix); nil on overflow.
    static func encode(_ input: String) -> String? {
        let scalars = input.unicodeScalars.map { Int($0.value) }
        var output: [UInt8] = scalars.filter { $0 < 0x80 }.map { UInt8($0) }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append(UInt8(ascii: "-")) }
        var n = initialN
        var delta = 0
        var bias = initialBias
        while handled < scalars.count {
            guard let m = scalars.filter({ $0 >= n }).min() else { break }
            let (mul, o1) = (m - n).multipliedReportingOverflow(by: handled + 1)
            if o1 { return nil }
            delta += mul
            n = m
            for c in scalars {
                if c < n { delta += 1 }
                if c == n {
                    var q = delta
                    var k = base
                    while true {
                        let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                        if q < t { break }
                        output.append(digit(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digit(q))
                    bias = adapt(delta, handled + 1, handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// IDNA ToASCII for a whole domain: NFC + lower case, then `xn--` + Punycode per non-ASCII label.
    static func toASCII(domain: String) throws(MIMEError) -> String {
        if domain.hasPrefix("[") { return domain }  // domain literal
        if domain.allSatisfy(\.isASCII) { return domain }
        let normalized = domain.precomposedStringWithCanonicalMapping.lowercased()
        // IDNA 2008 treats the ideographic and full-width full stops as label separators too.
        let labels = normalized.split(
            omittingEmptySubsequences: false,
            whereSeparator: { $0 == "." || $0 == "\u{3002}" || $0 == "\u{FF0E}" || $0 == "\u{FF61}" })
        var out: [String] = []
        for label in labels {
            let s = String(label)
            if s.allSatisfy(\.isASCII) {
                out.append(s)
                continue
            }
            guard let encoded = encode(s) else {
                throw MIMEError(.invalidDomain, "the domain \(domain) cannot be converted to Punycode")
            }
            let ace = "xn--" + encoded
            guard ace.utf8.count <= 63 else {
                throw MIMEError(.invalidDomain, "a label of the domain \(domain) is longer than 63 octets in Punycode form")
            }
            out.append(ace)
        }
        let result = out.joined(separator: ".")
        guard result.utf8.count <= 253 else {
            throw MIMEError(.invalidDomain, "the domain \(domain) is longer than 253 octets in Punycode form")
        }
        return result
    }
}
