import Foundation
import OutboxConfig
import Testing

@testable import OutboxTransports

func ntlmHex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
func ntlmBytes(_ hex: String) -> [UInt8] {
    let clean = hex.filter { !$0.isWhitespace }
    return stride(from: 0, to: clean.count, by: 2).map {
        let start = clean.index(clean.startIndex, offsetBy: $0)
        return UInt8(clean[start..<clean.index(start, offsetBy: 2)], radix: 16)!
    }
}

/// MS-NLMP 4.2.4 (NTLMv2 authentication): User "User", UserDom "Domain", Passwd "Password",
/// ServerChallenge 0123456789abcdef, ClientChallenge aa×8, Time 0, and the AV pairs of its
/// CHALLENGE_MESSAGE (MsvAvNbDomainName "Domain", MsvAvNbComputerName "Server").
@Suite("NTLMv2 (MS-NLMP test vectors and messages)")
struct NTLMTests {
    static let serverChallenge = ntlmBytes("0123456789abcdef")
    static let clientChallenge = [UInt8](repeating: 0xAA, count: 8)
    /// 4.2.4.1.3's AV pairs with their MsvAvEOL.
    static let targetInfo = ntlmBytes(
        "02000c0044006f006d00610069006e00 01000c005300650072007600650072000000 0000".replacingOccurrences(of: " ", with: ""))

    @Test func md4IsRFC1320() throws {
        // RFC 1320, A.5 test suite.
        #expect(ntlmHex(try NTLM.md4([])) == "31d6cfe0d16ae931b73c59d7e0c089c0")
        #expect(ntlmHex(try NTLM.md4(Array("abc".utf8))) == "a448017aaf21d8525fc10ae87aa6729d")
        #expect(ntlmHex(try NTLM.md4(Array("message digest".utf8))) == "d9130a8164549fe818874806e1c7014b")
    }

    @Test func ntHashIsMSNLMP4_2_2_1_2() throws {
        #expect(ntlmHex(try NTLM.ntHash(password: "Password")) == "a4f49c406510bdcab6824ee7c30fd852")
    }

    @Test func ntowfv2IsMSNLMP4_2_4_1_1() throws {
        #expect(ntlmHex(try NTLM.ntowfv2(password: "Password", user: "User", domain: "Domain")) == "0c868a403bfd7a93a3001ef22ef02e3f")
        // The user name is uppercased, the domain is not.
        #expect(
            try NTLM.ntowfv2(password: "Password", user: "user", domain: "Domain")
                == NTLM.ntowfv2(password: "Password", user: "User", domain: "Domain"))
        #expect(
            try NTLM.ntowfv2(password: "Password", user: "User", domain: "DOMAIN")
                != NTLM.ntowfv2(password: "Password", user: "User", domain: "Domain"))
    }

    @Test func responsesAreMSNLMP4_2_4_2() throws {
        let key = try NTLM.ntowfv2(password: "Password", user: "User", domain: "Domain")
        let r = NTLM.v2Response(
            responseKey: key, serverChallenge: Self.serverChallenge, clientChallenge: Self.clientChallenge, timestamp: 0,
            targetInfo: Self.targetInfo)
        // 4.2.4.2.1 LMv2 Response
        #expect(ntlmHex(r.lmChallengeResponse) == "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
        // 4.2.4.2.2 NTLMv2 Response: NTProofStr, then temp
        #expect(ntlmHex(r.ntProofStr) == "68cd0ab851e51c96aabc927bebef6a1c")
        #expect(
            ntlmHex(r.ntChallengeResponse)
                == "68cd0ab851e51c96aabc927bebef6a1c" + "0101000000000000" + "0000000000000000" + "aaaaaaaaaaaaaaaa" + "00000000"
                + ntlmHex(Self.targetInfo) + "00000000")
        // 4.2.4.1.2 Session Base Key
        #expect(ntlmHex(r.sessionBaseKey) == "8de40ccadbc14a82f15cb0ad0de95ca3")
    }

    @Test func userNames() {
        let a = NTLM.Credentials(userName: #"CONTOSO\agent"#, password: Secret("x"))
        #expect(a.domain == "CONTOSO" && a.user == "agent")
        let b = NTLM.Credentials(userName: "agent@contoso.test", password: Secret("x"))
        #expect(b.domain == "" && b.user == "agent@contoso.test")
        let c = NTLM.Credentials(userName: "agent", password: Secret("x"))
        #expect(c.domain == "" && c.user == "agent")
    }

    /// A CHALLENGE_MESSAGE with the 4.2.4 server challenge and AV pairs, plus `extra` pairs.
    static func challenge(extra: [(UInt16, [UInt8])] = []) -> [UInt8] {
        let name = NTLM.unicode("Server")
        var info = Array(targetInfo.dropLast(4))
        for (id, value) in extra { info += NTLM.le16(id) + NTLM.le16(UInt16(value.count)) + value }
        info += [0, 0, 0, 0]
        var m = NTLM.signature + NTLM.le32(2)
        m += NTLM.field(length: name.count, offset: 56)
        m += NTLM.le32(0xE28A_8233)
        m += serverChallenge + [UInt8](repeating: 0, count: 8)
        m += NTLM.field(length: info.count, offset: 56 + name.count)
        m += NTLM.versionBytes
        return m + name + info
    }

    @Test func parsesAChallenge() throws {
        let c = try NTLM.Challenge(Self.challenge())
        #expect(c.serverChallenge == Self.serverChallenge)
        #expect(c.flags.contains(.unicode) && c.flags.contains(.extendedSessionSecurity))
        #expect(c.targetInfo.map(\.id) == [2, 1])
        #expect(c.targetInfo[0].value == NTLM.unicode("Domain"))
        #expect(c.timestamp == nil)
        let stamped = try NTLM.Challenge(Self.challenge(extra: [(7, NTLM.le64(0x01D9_0000_1234_5678))]))
        #expect(stamped.timestamp == 0x01D9_0000_1234_5678)
    }

    @Test func refusesMalformedChallenges() {
        var wrongType = Self.challenge()
        wrongType[8] = 3
        var outside = Self.challenge()
        outside[44] = 0xF0  // target info offset beyond the message
        var noEOL = Self.challenge()
        noEOL.removeLast(4)
        noEOL[40] -= 4
        noEOL[42] -= 4
        for bad in [[UInt8](), Array("NTLMSSP".utf8), wrongType, outside, noEOL] {
            #expect(throws: NTLMError.self) { try NTLM.Challenge(bad) }
        }
    }

    @Test func negotiateMessageIsVersionedUnicodeNTLM() {
        let m = NTLM.negotiateMessage()
        #expect(m.count == 40)
        #expect(Array(m[0..<8]) == NTLM.signature)
        #expect(NTLM.readLE32(m, 8) == 1)
        let flags = NTLM.Flags(rawValue: NTLM.readLE32(m, 12))
        #expect(flags.isSuperset(of: [.unicode, .ntlm, .extendedSessionSecurity, .version, .alwaysSign, .requestTarget]))
        #expect(flags.isDisjoint(with: [.keyExchange, .sign, .seal, .oem]))
    }

    /// The AUTHENTICATE_MESSAGE, read back field by field: its NTLMv2 response is the one
    /// MS-NLMP's formulas give over the client's AV pairs, and the MIC covers the three messages.
    @Test(arguments: [false, true])
    func authenticateMessage(stamped: Bool) throws {
        let timestamp: UInt64 = 0x01DB_1234_5678_9ABC
        let extra: [(UInt16, [UInt8])] = stamped ? [(UInt16(7), NTLM.le64(timestamp))] : []
        let raw = Self.challenge(extra: extra)
        let challenge = try NTLM.Challenge(raw)
        let negotiate = NTLM.negotiateMessage()
        let password = "Pässword-\(UUID().uuidString)"
        let credentials = NTLM.Credentials(userName: #"Domain\User"#, password: Secret(password))
        let now: UInt64 = 0x01DA_0000_0000_0001
        let m = try NTLM.authenticateMessage(
            negotiate: negotiate, challenge: challenge, credentials: credentials, spn: "HTTP/ews.example.test",
            workstation: "", clientChallenge: Self.clientChallenge, now: now)
        #expect(Array(m[0..<8]) == NTLM.signature)
        #expect(NTLM.readLE32(m, 8) == 3)
        func payload(_ at: Int) -> [UInt8] {
            let length = Int(NTLM.readLE16(m, at))
            let offset = Int(NTLM.readLE32(m, at + 4))
            #expect(offset >= 88 && offset + length <= m.count)
            return Array(m[offset..<(offset + length)])
        }
        let lm = payload(12)
        let nt = payload(20)
        #expect(payload(28) == NTLM.unicode("Domain"))
        #expect(payload(36) == NTLM.unicode("User"))
        #expect(payload(52).isEmpty)  // no KEY_EXCH: no encrypted session key
        let flags = NTLM.Flags(rawValue: NTLM.readLE32(m, 60))
        #expect(flags.isSuperset(of: [.unicode, .ntlm]))
        #expect(!flags.contains(NTLM.Flags.keyExchange))
        #expect(Array(m[64..<72]) == NTLM.versionBytes)

        // The NTLMv2 response over the client's AV pairs, with the challenge's time when it has one.
        let info = NTLM.clientTargetInfo(challenge, spn: "HTTP/ews.example.test")
        let key = try NTLM.ntowfv2(password: password, user: "User", domain: "Domain")
        let expected = NTLM.v2Response(
            responseKey: key, serverChallenge: Self.serverChallenge, clientChallenge: Self.clientChallenge,
            timestamp: stamped ? timestamp : now, targetInfo: info)
        #expect(nt == expected.ntChallengeResponse)
        // The client's AV pairs: the server's, MsvAvFlags 0x2 with a timestamp, zero channel
        // bindings, the SPN, MsvAvEOL.
        let pairs = try NTLM.Challenge(Self.challengeWithInfo(info)).targetInfo
        #expect(pairs.first { $0.id == 10 }?.value == [UInt8](repeating: 0, count: 16))
        #expect(pairs.first { $0.id == 9 }?.value == NTLM.unicode("HTTP/ews.example.test"))
        #expect(pairs.first { $0.id == 6 }?.value == (stamped ? NTLM.le32(2) : nil))

        let mic = Array(m[72..<88])
        if stamped {
            #expect(lm == [UInt8](repeating: 0, count: 24))
            var zeroed = m
            zeroed.replaceSubrange(72..<88, with: [UInt8](repeating: 0, count: 16))
            #expect(mic == NTLM.hmacMD5(key: expected.sessionBaseKey, negotiate, raw, zeroed))
        } else {
            #expect(lm == expected.lmChallengeResponse)
            #expect(mic == [UInt8](repeating: 0, count: 16))
        }
        // No secret inside: neither the password (in any encoding) nor the NT hash.
        let hash = try NTLM.ntHash(password: password)
        for secret in [Array(password.utf8), NTLM.unicode(password), hash, key] {
            #expect(!Self.contains(m, secret))
        }
    }

    static func challengeWithInfo(_ info: [UInt8]) -> [UInt8] {
        var m = NTLM.signature + NTLM.le32(2) + NTLM.field(length: 0, offset: 56) + NTLM.le32(0x0000_0201)
        m += serverChallenge + [UInt8](repeating: 0, count: 8) + NTLM.field(length: info.count, offset: 56) + NTLM.versionBytes
        return m + info
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return false }
        return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
    }

    @Test func wwwAuthenticateOffers() {
        let a = HTTPAuthenticateOffers(headers: ["Negotiate", "NTLM"])
        #expect(a.schemes == ["Negotiate", "NTLM"])
        #expect(a.windowsScheme == "NTLM")
        #expect(!a.offers("Basic"))
        let b = HTTPAuthenticateOffers(headers: [#"Basic realm="a, b", NTLM"#])
        #expect(b.schemes == ["Basic", "NTLM"])
        #expect(b.token("Basic") == #"realm="a, b""#)
        let c = HTTPAuthenticateOffers(headers: ["NTLM TlRMTVNTUAACAAAA=="])
        #expect(c.token("ntlm") == "TlRMTVNTUAACAAAA==")
        let d = HTTPAuthenticateOffers(headers: [#"Negotiate, Bearer realm="x", error="invalid_token""#])
        #expect(d.schemes == ["Negotiate", "Bearer"])
        #expect(d.windowsScheme == "Negotiate")
        #expect(d.token("Bearer") == #"realm="x", error="invalid_token""#)
        #expect(HTTPAuthenticateOffers(headers: []).windowsScheme == nil)
    }
}
