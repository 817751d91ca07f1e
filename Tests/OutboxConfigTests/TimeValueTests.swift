import PropertyBased
import Testing

@testable import OutboxConfig

@Suite struct TimeValueTests {
    func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    @Test func validTimesRoundTrip() async {
        await propertyCheck(input: Gen.int(in: 0...10_000), Gen.int(in: 0...59), Gen.int(in: 0...59)) { h, m, s in
            let text = "\(two(h)):\(two(m)):\(two(s))"
            let parsed = TimeValue.parse(text)
            #expect(parsed == .seconds(h * 3600 + m * 60 + s))
            if let parsed { #expect(TimeValue.format(parsed) == text) }
        }
    }

    @Test func minutesOrSecondsOver59AreRejected() async {
        await propertyCheck(input: Gen.int(in: 0...99), Gen.int(in: 60...99), Gen.int(in: 0...59)) { h, big, ok in
            #expect(TimeValue.parse("\(two(h)):\(big):\(two(ok))") == nil)
            #expect(TimeValue.parse("\(two(h)):\(two(ok)):\(big)") == nil)
        }
    }

    @Test func wrongShapesAreRejected() async {
        await propertyCheck(input: Gen.int(in: 0...99), Gen.int(in: 0...59), Gen.int(in: 0...59)) { h, m, s in
            #expect(TimeValue.parse("\(two(h)):\(two(m))") == nil)  // one colon
            #expect(TimeValue.parse("\(two(h)):\(two(m)):\(two(s)):00") == nil)  // three colons
            #expect(TimeValue.parse("\(h * 3600 + m * 60 + s)") == nil)  // plain seconds
            #expect(TimeValue.parse("-\(two(h)):\(two(m)):\(two(s))") == nil)  // sign
            #expect(TimeValue.parse(" \(two(h)):\(two(m)):\(two(s))") == nil)  // space (trimmed by the file reader, not here)
            #expect(TimeValue.parse("\(two(h)):\(m):\(two(s))") == (m < 10 ? nil : .seconds(h * 3600 + m * 60 + s)))  // one-digit minutes
        }
    }

    @Test func arbitraryStringsNeverCrashAndOnlyParseWhenWellFormed() async {
        let chars = Gen<Character?>.element(of: Array("0123456789:: -+.a")).map { $0 ?? "0" }
        await propertyCheck(count: 500, input: chars.array(of: 0...12)) { characters in
            let text = String(characters)
            if let d = TimeValue.parse(text) {
                let parts = text.split(separator: ":", omittingEmptySubsequences: false)
                #expect(parts.count == 3)
                #expect(parts[1].count == 2 && parts[2].count == 2)
                #expect(d >= .zero)
            }
        }
    }

    @Test func edgeCases() {
        #expect(TimeValue.parse("0:00:00") == .zero)
        #expect(TimeValue.parse("00:59:59") == .seconds(3599))
        #expect(TimeValue.parse("99999999999999999999:00:00") == nil)  // overflow, not a crash
        #expect(TimeValue.parse("１２:00:00") == nil)  // non-ASCII digits
        #expect(TimeValue.format(.seconds(3600 * 123 + 61)) == "123:01:01")
    }
}
