import CLibCrypto
import Crypto
import Foundation
import OutboxConfig

/// A failure of NTLM itself (not of HTTP): the server's CHALLENGE_MESSAGE cannot be read, or a
/// primitive failed. Never carries a secret.
package struct NTLMError: Error, Sendable, CustomStringConvertible {
    /// A stable snake_case code.
    package struct Code: RawRepresentable, Hashable, Sendable {
        package var rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        /// The server's CHALLENGE_MESSAGE is not a well-formed NTLM message.
        package static let malformedChallenge = Code(rawValue: "ntlm_malformed_challenge")
        /// libcrypto's MD4 failed.
        package static let cryptoFailure = Code(rawValue: "ntlm_crypto_failure")
    }

    package var code: Code
    package var message: String
    package var description: String { "\(code.rawValue): \(message)" }
}

/// NTLMv2 (MS-NLMP), the pure part: the messages and the responses, no I/O.
///
/// - NEGOTIATE_MESSAGE (Type 1) with Unicode, NTLM, ALWAYS_SIGN, EXTENDED_SESSIONSECURITY,
///   REQUEST_TARGET, VERSION, 128 and 56. No KEY_EXCH, SIGN or SEAL: HTTP needs neither signing
///   nor sealing, so the exported session key is the session base key (MS-NLMP 3.4.5.1 KXKEY for
///   NTLMv2) and no RC4 is needed.
/// - AUTHENTICATE_MESSAGE (Type 3): NTLMv2 response over the server's target info (MS-NLMP
///   3.3.2), with the client's additions of 3.1.5.1.2: MsvAvFlags bit 0x2 and a MIC when the
///   challenge carries MsvAvTimestamp (then LmChallengeResponse is Z(24)), MsvAvChannelBindings
///   all zero (no channel binding), MsvAvTargetName `HTTP/<host>`.
/// - MD4 is libcrypto's (CLibCrypto); MD5 and HMAC-MD5 are swift-crypto's.
package enum NTLM {
    /// NegotiateFlags (MS-NLMP 2.2.2.5).
    package struct Flags: OptionSet, Sendable, Hashable {
        package var rawValue: UInt32
        package init(rawValue: UInt32) { self.rawValue = rawValue }
        package static let unicode = Flags(rawValue: 0x0000_0001)
        package static let oem = Flags(rawValue: 0x0000_0002)
        package static let requestTarget = Flags(rawValue: 0x0000_0004)
        package static let sign = Flags(rawValue: 0x0000_0010)
        package static let seal = Flags(rawValue: 0x0000_0020)
        package static let ntlm = Flags(rawValue: 0x0000_0200)
        package static let alwaysSign = Flags(rawValue: 0x0000_8000)
        package static let extendedSessionSecurity = Flags(rawValue: 0x0008_0000)
        package static let targetInfo = Flags(rawValue: 0x0080_0000)
        package static let version = Flags(rawValue: 0x0200_0000)
        package static let negotiate128 = Flags(rawValue: 0x2000_0000)
        package static let keyExchange = Flags(rawValue: 0x4000_0000)
        package static let negotiate56 = Flags(rawValue: 0x8000_0000)
    }

    /// What the NEGOTIATE_MESSAGE asks for.
    package static let requestedFlags: Flags = [
        .unicode, .requestTarget, .ntlm, .alwaysSign, .extendedSessionSecurity, .version, .negotiate128, .negotiate56,
    ]

    /// AV_PAIR ids (MS-NLMP 2.2.2.1) that the client reads or writes.
    package enum AvID: UInt16, Sendable {
        case eol = 0
        case nbComputerName = 1
        case nbDomainName = 2
        case flags = 6
        case timestamp = 7
        case targetName = 9
        case channelBindings = 10
    }

    static let signature: [UInt8] = Array("NTLMSSP".utf8) + [0]
    /// The VERSION structure (MS-NLMP 2.2.2.10): 10.0, build 20348, NTLMSSP_REVISION_W2K3.
    static let versionBytes: [UInt8] = [10, 0, 0x5C, 0x4F, 0, 0, 0, 0x0F]

    // MARK: Primitives

    /// MD4 (RFC 1320) of `bytes`, from libcrypto.
    package static func md4(_ bytes: [UInt8]) throws(NTLMError) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 16)
        let ok = bytes.withUnsafeBufferPointer { input in
            digest.withUnsafeMutableBufferPointer { out in outbox_md4(input.baseAddress, input.count, out.baseAddress) }
        }
        guard ok == 1 else { throw NTLMError(code: .cryptoFailure, message: "libcrypto's MD4 failed") }
        return digest
    }

    static func hmacMD5(key: [UInt8], _ parts: [UInt8]...) -> [UInt8] {
        var mac = HMAC<Insecure.MD5>(key: SymmetricKey(data: key))
        for p in parts { mac.update(data: p) }
        return Array(mac.finalize())
    }

    /// UTF-16LE, what MS-NLMP calls UNICODE().
    package static func unicode(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf16.count * 2)
        for unit in s.utf16 {
            out.append(UInt8(unit & 0xFF))
            out.append(UInt8(unit >> 8))
        }
        return out
    }

    /// Uppercase one scalar at a time where the mapping is one scalar (as Windows' RtlUpcase does:
    /// no `ß` → `SS`).
    static func upper(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in s.unicodeScalars {
            let mapped = scalar.properties.uppercaseMapping.unicodeScalars
            if mapped.count == 1, let m = mapped.first { out.append(m) } else { out.append(scalar) }
        }
        return String(out)
    }

    /// NTOWFv1 = MD4(UNICODE(Passwd)): the NT hash.
    package static func ntHash(password: String) throws(NTLMError) -> [UInt8] {
        try md4(unicode(password))
    }

    /// NTOWFv2(Passwd, User, UserDom) = HMAC_MD5(MD4(UNICODE(Passwd)), UNICODE(Uppercase(User) + UserDom)).
    package static func ntowfv2(password: String, user: String, domain: String) throws(NTLMError) -> [UInt8] {
        hmacMD5(key: try ntHash(password: password), unicode(upper(user) + domain))
    }

    /// What MS-NLMP 3.3.2 computes from the response key and the challenge.
    package struct V2Response: Sendable, Equatable {
        /// HMAC_MD5(ResponseKeyNT, ServerChallenge + temp).
        package var ntProofStr: [UInt8]
        /// NTProofStr + temp.
        package var ntChallengeResponse: [UInt8]
        /// LMv2: HMAC_MD5(ResponseKeyLM, ServerChallenge + ClientChallenge) + ClientChallenge.
        package var lmChallengeResponse: [UInt8]
        /// HMAC_MD5(ResponseKeyNT, NTProofStr).
        package var sessionBaseKey: [UInt8]
    }

    /// The NTLMv2 responses (MS-NLMP 3.3.2) for `targetInfo` as it goes into `temp` (the AV
    /// pairs with their MsvAvEOL) and `timestamp` as a FILETIME.
    package static func v2Response(
        responseKey: [UInt8], serverChallenge: [UInt8], clientChallenge: [UInt8], timestamp: UInt64, targetInfo: [UInt8]
    ) -> V2Response {
        var temp: [UInt8] = [1, 1, 0, 0, 0, 0, 0, 0]
        temp += le64(timestamp)
        temp += clientChallenge
        temp += [0, 0, 0, 0]
        temp += targetInfo
        temp += [0, 0, 0, 0]
        let proof = hmacMD5(key: responseKey, serverChallenge, temp)
        return V2Response(
            ntProofStr: proof, ntChallengeResponse: proof + temp,
            lmChallengeResponse: hmacMD5(key: responseKey, serverChallenge, clientChallenge) + clientChallenge,
            sessionBaseKey: hmacMD5(key: responseKey, proof))
    }

    // MARK: Credentials

    /// The user as NTLM sends it: `DOMAIN\user` → domain `DOMAIN`, user `user`; `user@domain`
    /// (a UPN) → user `user@domain`, empty domain (as Windows sends a UPN); `user` → empty domain.
    package struct Credentials: Sendable {
        package var user: String
        package var domain: String
        package var password: Secret

        package init(userName: String, password: Secret) {
            if let slash = userName.firstIndex(of: "\\") {
                domain = String(userName[..<slash])
                user = String(userName[userName.index(after: slash)...])
            } else {
                domain = ""
                user = userName
            }
            self.password = password
        }
    }

    // MARK: Messages

    /// NEGOTIATE_MESSAGE: no domain or workstation supplied, with VERSION.
    package static func negotiateMessage() -> [UInt8] {
        var m = signature + le32(1) + le32(requestedFlags.rawValue)
        m += field(length: 0, offset: 40) + field(length: 0, offset: 40)
        m += versionBytes
        return m
    }

    /// What the client reads from a CHALLENGE_MESSAGE.
    package struct Challenge: Sendable {
        /// The message as received (the MIC covers it byte for byte).
        package var raw: [UInt8]
        package var flags: Flags
        package var serverChallenge: [UInt8]
        /// The AV pairs in order, without MsvAvEOL.
        package var targetInfo: [(id: UInt16, value: [UInt8])]
        /// MsvAvTimestamp (a FILETIME), when the server sent one.
        package var timestamp: UInt64? {
            guard let v = targetInfo.first(where: { $0.id == AvID.timestamp.rawValue })?.value, v.count == 8 else { return nil }
            return v.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        }

        /// Parses a CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2).
        package init(_ bytes: [UInt8]) throws(NTLMError) {
            func bad(_ why: String) -> NTLMError { NTLMError(code: .malformedChallenge, message: "the server's NTLM challenge \(why)") }
            guard bytes.count >= 32, Array(bytes[0..<8]) == NTLM.signature else { throw bad("is not an NTLMSSP message") }
            guard NTLM.readLE32(bytes, 8) == 2 else { throw bad("is not a CHALLENGE_MESSAGE (type \(NTLM.readLE32(bytes, 8)))") }
            raw = bytes
            flags = Flags(rawValue: NTLM.readLE32(bytes, 20))
            serverChallenge = Array(bytes[24..<32])
            targetInfo = []
            guard bytes.count >= 48 else { return }
            let length = Int(NTLM.readLE16(bytes, 40))
            let offset = Int(NTLM.readLE32(bytes, 44))
            guard length > 0 else { return }
            guard offset >= 48, offset + length <= bytes.count else { throw bad("has its target info outside the message") }
            var i = offset
            let end = offset + length
            while i + 4 <= end {
                let id = NTLM.readLE16(bytes, i)
                let n = Int(NTLM.readLE16(bytes, i + 2))
                guard i + 4 + n <= end else { throw bad("has an AV pair longer than its target info") }
                if id == AvID.eol.rawValue { return }
                targetInfo.append((id, Array(bytes[(i + 4)..<(i + 4 + n)])))
                i += 4 + n
            }
            throw bad("has target info without MsvAvEOL")
        }
    }

    /// The AV pairs the client puts into its NTLMv2 response (MS-NLMP 3.1.5.1.2): the server's,
    /// MsvAvFlags with 0x2 (MIC present) when there is a timestamp, all-zero channel bindings,
    /// the target name (SPN), then MsvAvEOL.
    package static func clientTargetInfo(_ challenge: Challenge, spn: String?) -> [UInt8] {
        var pairs = challenge.targetInfo.filter {
            $0.id != AvID.flags.rawValue && $0.id != AvID.channelBindings.rawValue && $0.id != AvID.targetName.rawValue
        }
        var avFlags = challenge.targetInfo.first(where: { $0.id == AvID.flags.rawValue && $0.value.count == 4 }).map { readLE32($0.value, 0) } ?? 0
        if challenge.timestamp != nil { avFlags |= 0x2 }
        if avFlags != 0 { pairs.append((AvID.flags.rawValue, le32(avFlags))) }
        pairs.append((AvID.channelBindings.rawValue, [UInt8](repeating: 0, count: 16)))
        if let spn { pairs.append((AvID.targetName.rawValue, unicode(spn))) }
        var out: [UInt8] = []
        for p in pairs { out += le16(p.id) + le16(UInt16(p.value.count)) + p.value }
        return out + [0, 0, 0, 0]
    }

    /// The current time as a FILETIME (100 ns since 1601-01-01 UTC).
    package static func fileTime(_ date: Date = Date()) -> UInt64 {
        UInt64(max(0, (date.timeIntervalSince1970 + 11_644_473_600) * 10_000_000))
    }

    /// AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3) answering `challenge`, with VERSION and, when the
    /// challenge has a timestamp, the MIC over the three messages. `clientChallenge` is 8 random
    /// bytes; `now` is used when the challenge has no timestamp.
    package static func authenticateMessage(
        negotiate: [UInt8], challenge: Challenge, credentials: Credentials, spn: String?, workstation: String = "",
        clientChallenge: [UInt8], now: UInt64 = fileTime()
    ) throws(NTLMError) -> [UInt8] {
        let key = try ntowfv2(password: credentials.password.value, user: credentials.user, domain: credentials.domain)
        let targetInfo = clientTargetInfo(challenge, spn: spn)
        let response = v2Response(
            responseKey: key, serverChallenge: challenge.serverChallenge, clientChallenge: clientChallenge,
            timestamp: challenge.timestamp ?? now, targetInfo: targetInfo)
        let withMIC = challenge.timestamp != nil
        let lm = withMIC ? [UInt8](repeating: 0, count: 24) : response.lmChallengeResponse
        var flags = challenge.flags.intersection(requestedFlags.union(.targetInfo))
        flags.formUnion([.unicode, .ntlm])
        flags.subtract(.oem)

        let domain = unicode(credentials.domain)
        let user = unicode(credentials.user)
        let host = unicode(workstation)
        let headerLength = 88  // 64 + VERSION (8) + MIC (16)
        var payload: [UInt8] = []
        func place(_ bytes: [UInt8]) -> [UInt8] {
            defer { payload += bytes }
            return field(length: bytes.count, offset: headerLength + payload.count)
        }
        var m = signature + le32(3)
        // Order in the header: Lm, Nt, Domain, User, Workstation, EncryptedRandomSessionKey.
        let domainField = place(domain)
        let userField = place(user)
        let hostField = place(host)
        let lmField = place(lm)
        let ntField = place(response.ntChallengeResponse)
        let keyField = place([])
        m += lmField + ntField + domainField + userField + hostField + keyField
        m += le32(flags.rawValue)
        m += versionBytes
        m += [UInt8](repeating: 0, count: 16)  // MIC, filled in below
        m += payload
        if withMIC {
            // ExportedSessionKey = KeyExchangeKey = SessionBaseKey (NTLMv2, no KEY_EXCH).
            let mic = hmacMD5(key: response.sessionBaseKey, negotiate, challenge.raw, m)
            m.replaceSubrange(72..<88, with: mic)
        }
        return m
    }

    // MARK: Little-endian helpers

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> (8 * UInt64($0))) & 0xFF) } }
    static func field(length: Int, offset: Int) -> [UInt8] { le16(UInt16(length)) + le16(UInt16(length)) + le32(UInt32(offset)) }
    static func readLE16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[i]) | UInt16(b[i + 1]) << 8 }
    static func readLE32(_ b: [UInt8], _ i: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[i + $1]) << (8 * UInt32($1)) } }
}
