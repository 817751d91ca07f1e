import Testing

@testable import OutboxMIME

@Suite("Addresses, IDNA and address-list parsing")
struct AddressTests {
    @Test(arguments: [
        "a@b.c", "first.last+tag@example.com", "\"john doe\"@example.com", "user@[192.0.2.1]",
        "用户@例子.广告", "info@bücher.example", "x!#$%&'*+-/=?^_`{|}~@example.com",
    ])
    func validAddresses(_ s: String) throws {
        let a = try Address(s)
        #expect(a.mailbox == s)
    }

    @Test(arguments: [
        "", "no-at-sign", "@example.com", "a@", "a..b@example.com", ".a@example.com", "a b@example.com",
        "a@exa mple.com", "a@-example.com", "a@example..com", "a\r\n@example.com", "a@example.com\r\nRCPT TO:<x@y>",
        "a<b@example.com", String(repeating: "x", count: 65) + "@example.com",
    ])
    func invalidAddressesNameTheAddress(_ s: String) {
        #expect {
            try Address(s)
        } throws: { error in
            let e = error as! MIMEError
            return e.code == .invalidAddress && e.message.contains("\"\(s.debugEscaped)\"")
        }
    }

    @Test func displayNameWithLineBreakIsRefused() {
        #expect(throws: MIMEError.self) { try Address("a@b.c", displayName: "Eve\r\nBcc: victim@example.com") }
    }

    @Test func parseSingle() throws {
        let a = try Address(parsing: "\"Doe, John \\\"JD\\\"\" <john@example.com>")
        #expect(a.displayName == "Doe, John \"JD\"")
        #expect(a.mailbox == "john@example.com")
        let b = try Address(parsing: "jane@example.com (Jane Doe)")
        #expect(b.displayName == nil && b.mailbox == "jane@example.com")
        let c = try Address(parsing: "=?utf-8?B?5p2O5bCP6b6Z?= =?utf-8?Q?_Lee?= <lee@example.cn>")
        #expect(c.displayName == "李小龙 Lee")
        let d = try Address(parsing: "=?iso-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>")
        #expect(d.displayName == "André Pirard")
        #expect(throws: MIMEError.self) { try Address(parsing: "a@b.c, d@e.f") }
    }

    @Test func parseListWithGroupsAndComments() throws {
        let list = try Address.parseList(
            "A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>; (the group) , Mary Smith <mary@x.test>, "
                + "undisclosed-recipients:;, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>, "
                + "Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>, <@route.test:routed@example.com>, "
                + "John Q. Public <jqp@example.com>, \r\n folded@example.com")
        #expect(
            list.map(\.mailbox) == [
                "c@a.test", "joe@where.test", "jdoe@one.test", "mary@x.test", "sysservices@example.net",
                "pete@silly.test", "routed@example.com", "jqp@example.com", "folded@example.com",
            ])
        #expect(
            list.map { $0.displayName ?? "" } == [
                "Ed Jones", "", "John", "Mary Smith", "Giant; \"Big\" Box", "Pete", "", "John Q. Public", "",
            ])
        #expect(try Address.parseList("").isEmpty)
        #expect(throws: MIMEError.self) { try Address.parseList("Name <a@b.c") }
        #expect(throws: MIMEError.self) { try Address.parseList("\"unterminated <a@b.c>") }
    }

    @Test func punycodeRFC3492Vectors() throws {
        #expect(Punycode.encode("bücher") == "bcher-kva")
        #expect(Punycode.encode("münchen") == "mnchen-3ya")
        #expect(Punycode.encode("他们为什么不说中文") == "ihqwcrb4cv8a8dqg056pqjye")
        #expect(Punycode.encode("ليهمابتكلموشعربي؟") == "egbpdaj6bu4bxfgehfvwxn")
        #expect(Punycode.encode("Pročprostěnemluvíčesky") == "Proprostnemluvesky-uyb24dma41a")
        #expect(try Punycode.toASCII(domain: "Bücher.例子.com") == "xn--bcher-kva.xn--fsqu00a.com")
        #expect(try Address("info@bücher.example").asciiMailbox() == "info@xn--bcher-kva.example")
        #expect(try Address("a@b.example").asciiMailbox() == "a@b.example")
    }

    @Test func nonASCIILocalPartNeedsSMTPUTF8() throws {
        let a = try Address("用户@例子.广告")
        #expect(a.requiresSMTPUTF8 && !a.isASCII)
        #expect {
            try a.asciiMailbox()
        } throws: { ($0 as! MIMEError).code == .requiresSMTPUTF8 && "\($0)".contains("用户@例子.广告") }
    }

    @Test func messageIDsAreUniqueWithTheSenderDomain() throws {
        var seen = Set<String>()
        for _ in 0..<5000 {
            let m = Message(from: try Address("me@Bücher.example"))
            #expect(m.messageID.hasPrefix("<") && m.messageID.hasSuffix("@xn--bcher-kva.example>"))
            seen.insert(m.messageID)
        }
        #expect(seen.count == 5000)
    }

    @Test func envelopeIncludesBccAndDeduplicates() throws {
        let from = try Address("me@example.com")
        var m = Message(
            from: from, to: [try Address("a@x.test"), try Address("B@x.test")], cc: [try Address("b@x.test")], bcc: [try Address("hidden@x.test")])
        #expect(try m.envelope() == Envelope(from: "me@example.com", recipients: ["a@x.test", "B@x.test", "hidden@x.test"]))
        m.to = []; m.cc = []; m.bcc = []
        #expect { try m.envelope() } throws: { ($0 as! MIMEError).code == .missingField }
        let idn = Message(from: try Address("me@bücher.example"), to: [try Address("you@例子.广告")])
        #expect(try idn.asciiEnvelope() == Envelope(from: "me@xn--bcher-kva.example", recipients: ["you@xn--fsqu00a.xn--4rr70v"]))
    }
}
