import Foundation
import PropertyBased
import Testing

@testable import OutboxMIME

@Suite("Property-based: random Unicode messages")
struct PropertyTests {
    static let pool: [String] =
        "abcxyzABCXYZ0189 ".map(String.init) + [
            " ", " ", "\t", "\"", "\\", "(", ")", "<", ">", ",", ";", ":", "@", ".", "[", "]", "=", "?", "_", "-", "'",
            "é", "ß", "ñ", "Ω", "中", "文", "字", "ع", "ب", "ي", "😀", "👨‍👩‍👧", "🇯🇵", "e\u{301}", "\u{301}", "\u{200D}", "ǅ",
        ]
    static let bodyPool: [String] = pool + ["\n", "\n", "\r\n", ".", "From ", "\n.\n", "=", "=?"]

    static let textPiece = Gen<String?>.element(of: pool).map { $0! }
    static let bodyPiece = Gen<String?>.element(of: bodyPool).map { $0! }

    /// The cases to send to the parser, collected while the property checks run.
    final class Collected: @unchecked Sendable {
        var messages: [Message] = []
    }

    static func message(_ subject: String, _ name: String, _ body: String, _ file: String, _ bytes: [UInt8], html: Bool) throws -> Message {
        var m = Message(
            from: try Address("sender@example.com", displayName: name),
            to: [try Address("to@example.org", displayName: String(name.reversed())), try Address("x@bücher.example", displayName: name)],
            subject: subject, text: body, html: html ? "<p>" + body + "</p>" : nil,
            attachments: [.data(bytes, filename: file.isEmpty ? "f" : file)])
        m.cc = [try Address("cc@example.net", displayName: subject.isEmpty ? nil : String(subject.prefix(30)))]
        m.headers = [MessageHeader("X-Random", subject)]
        return m
    }

    static func checkWire(_ wire: [UInt8], smtpUTF8: Bool) {
        let r = WireCheck.check(wire)
        #expect(r.longestLine <= 998)
        #expect(r.longestHeaderLine <= 78, "\(WireCheck.longHeaderLines(wire))")
        #expect(!r.bareLineEnd)
        if !smtpUTF8 { #expect(!r.nonASCIIHeader) }
    }

    @Test func randomMessagesRoundTrip() async throws {
        let collected = Collected()
        await propertyCheck(
            count: 100, input: Self.textPiece.array(of: 0...120).map { $0.joined() }, Self.textPiece.array(of: 0...40).map { $0.joined() },
            Self.bodyPiece.array(of: 0...400).map { $0.joined() },
            Self.textPiece.array(of: 0...40).map { $0.joined() }, Gen<UInt8>.value(in: 0...255).array(of: 0...300), Gen.bool
        ) { subject, name, body, file, bytes, html in
            let m = try Self.message(subject, name, body, file, bytes, html: html)
            Self.checkWire(try await RoundTrip.serialize(m), smtpUTF8: false)
            collected.messages.append(m)
        }
        _ = try await RoundTrip.verify(collected.messages)
        // The same messages with 8BITMIME.
        for m in collected.messages.prefix(20) {
            Self.checkWire(try await RoundTrip.serialize(m, .init(allow8BitMIME: true)), smtpUTF8: false)
        }
        _ = try await RoundTrip.verify(Array(collected.messages.prefix(20)), options: .init(allow8BitMIME: true))
    }

    @Test func longRandomSubjectsAndNamesFold() async throws {
        let collected = Collected()
        await propertyCheck(
            count: 30, input: Self.textPiece.array(of: 200...1200).map { $0.joined() }, Self.textPiece.array(of: 80...300).map { $0.joined() }
        ) { subject, name in
            let m = try Self.message(subject, name, "body", "attachment " + name + ".txt", [1, 2, 3], html: false)
            let wire = try await RoundTrip.serialize(m)
            Self.checkWire(wire, smtpUTF8: false)
            collected.messages.append(m)
        }
        _ = try await RoundTrip.verify(collected.messages)
    }

    @Test func randomASCIISubjectsFoldExactly() async throws {
        let collected = Collected()
        let word = Gen<Character?>.element(of: Array("abcXYZ019!#$%&'*+-/=?^_`{|}~.,;:<>()[]\\\"@")).map { $0! }.string(of: 1...90)
        await propertyCheck(count: 60, input: word.array(of: 1...40), Self.textPiece.array(of: 0...10).map { $0.joined() }) { words, name in
            var m = try Self.message(words.joined(separator: " "), name, "body", "f.txt", [1], html: false)
            m.headers.append(MessageHeader("X-A-Rather-Long-Custom-Header-Name", words.joined(separator: " ")))
            Self.checkWire(try await RoundTrip.serialize(m), smtpUTF8: false)
            collected.messages.append(m)
        }
        let parsed = try await RoundTrip.verify(collected.messages)
        for (m, p) in zip(collected.messages, parsed) {
            #expect(p.header("X-A-Rather-Long-Custom-Header-Name") == m.subject)
        }
    }

    @Test func randomEncodedWordsDecodeBack() async {
        await propertyCheck(count: 200, input: Self.textPiece.array(of: 0...200).map { $0.joined() }, Gen.int(in: 0...75)) { s, first in
            let words = EncodedWord.encode(s, firstMax: first)
            #expect(words.allSatisfy { $0.utf8.count <= 75 })
            #expect(EncodedWord.decodeUnstructured(words.joined(separator: " ")) == s)
        }
    }

    @Test func randomAddressListsParseBack() async throws {
        await propertyCheck(count: 200, input: Self.textPiece.array(of: 0...30).map { $0.joined() }.array(of: 1...4)) { names in
            let list = try names.enumerated().map { try Address("user\($0.offset)@example.com", displayName: $0.element) }
            let header = try HeaderWriter.addresses("To", list, options: .init())
            let value = String(decoding: header.dropFirst(3), as: UTF8.self)
            let parsed = try Address.parseList(value)
            #expect(parsed == list)
        }
    }
}
