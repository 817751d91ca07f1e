import Foundation

/// A test certificate authority and a server certificate it signed for `localhost` and
/// `127.0.0.1` (ECDSA P-256, valid until 2126), so that the local HTTPS emulators run without
/// the Postfix testbed's certificates. Test material only: the key protects nothing.
/// Made with `openssl req -x509 -newkey ec` (CA) and `openssl x509 -req` (server, with
/// subjectAltName DNS:localhost, IP:127.0.0.1 and extendedKeyUsage serverAuth).
package struct TestCertificates: Sendable {
    /// PEM file of the CA that signed `certificateFile`.
    package var caFile: String
    /// PEM file of the server certificate.
    package var certificateFile: String
    /// PEM file of the server's private key.
    package var keyFile: String

    package init(caFile: String, certificateFile: String, keyFile: String) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }

    /// The built-in certificates, written once per process to a temporary directory.
    package static let builtIn: TestCertificates = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-test-certificates-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func write(_ name: String, _ text: String) -> String {
            let path = directory.appendingPathComponent(name).path
            try! Data((text + "\n").utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        return TestCertificates(
            caFile: write("ca.pem", caPEM), certificateFile: write("server.pem", certificatePEM),
            keyFile: write("server.key", keyPEM))
    }()

    static let caPEM = """
        -----BEGIN CERTIFICATE-----
        MIIBmDCCAT+gAwIBAgIUY3imOkn4kTpnZ6sKxyl2uO0HpLAwCgYIKoZIzj0EAwIw
        GTEXMBUGA1UEAwwOT3V0Ym94IFRlc3QgQ0EwIBcNMjYxMjA3MDUzNDI4WhgPMjEy
        NjExMTMwNTM0MjhaMBkxFzAVBgNVBAMMDk91dGJveCBUZXN0IENBMFkwEwYHKoZI
        zj0CAQYIKoZIzj0DAQcDQgAEktKo6oAHW4+d+nC0bH/uBGCerMNawgY8g7pZ/hhS
        N3BCYjYe6U2CqmWxXGEQ2rhBbAz+RvSxt9g1q9O8bw0/qqNjMGEwHQYDVR0OBBYE
        FDMo+bDyufIPeUgT1Tqs2OpM5kRyMB8GA1UdIwQYMBaAFDMo+bDyufIPeUgT1Tqs
        2OpM5kRyMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49
        BAMCA0cAMEQCIBQzVji6CKDbdPtTh+cQz0yKO6x3kcjaIYxoya/wOWZPAiBndTaE
        ju6lmVdlO/eIellGo7ZOJjiSWAQlQr5hWZIYbA==
        -----END CERTIFICATE-----
        """

    static let certificatePEM = """
        -----BEGIN CERTIFICATE-----
        MIIBwTCCAWegAwIBAgIUVhYkg6VSlcWDz0YJiiGwlCPTjNowCgYIKoZIzj0EAwIw
        GTEXMBUGA1UEAwwOT3V0Ym94IFRlc3QgQ0EwIBcNMjYxMjA3MDUzNDI4WhgPMjEy
        NjExMTMwNTM0MjhaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEG
        CCqGSM49AwEHA0IABJaDUrot9JYlUamNFaL9R8BdOt1jQmSYASw2Rp7lON7Zy2Ch
        gonTbLWAReIUUSgPG3JRqpcwVP3rhDrsmxjIcLajgY8wgYwwGgYDVR0RBBMwEYIJ
        bG9jYWxob3N0hwR/AAABMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1Ud
        JQQMMAoGCCsGAQUFBwMBMB0GA1UdDgQWBBTCDsSlS2ey+uLiOI4TvOiXLi/2nTAf
        BgNVHSMEGDAWgBQzKPmw8rnyD3lIE9U6rNjqTOZEcjAKBggqhkjOPQQDAgNIADBF
        AiArgf1BZ85mxkGcGC3hDtwUlTSW3nIXAeDit5NIbAMoHwIhALectAnCKhWs7EN8
        pP+w5PDWJB42SMbkPjuW7NUQw/9V
        -----END CERTIFICATE-----
        """

    static let keyPEM = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1BKgKoBBeMDtcoIB
        cuRdCUNH0vpdalGmchCZMnWqpU6hRANCAASWg1K6LfSWJVGpjRWi/UfAXTrdY0Jk
        mAEsNkae5Tje2ctgoYKJ02y1gEXiFFEoDxtyUaqXMFT964Q67JsYyHC2
        -----END PRIVATE KEY-----
        """
}
