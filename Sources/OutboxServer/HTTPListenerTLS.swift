import Foundation
import NIOSSL
import OutboxConfig

/// HTTPS for the HTTP listener (`[outbox] http-tls-certificate-file` and `http-tls-key-file`):
/// the files are read, and the key checked against the certificate, before the listener starts,
/// so that a wrong pair stops the daemon with a message naming the option.
enum HTTPListenerTLS {
    /// The server's TLS configuration, or nil for plain HTTP.
    static func configuration(_ settings: OutboxSettings) throws -> TLSConfiguration? {
        guard let certificateFile = settings.httpTLSCertificateFile, let keyFile = settings.httpTLSKeyFile else { return nil }
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
        } catch {
            throw DaemonError(.httpTLS, "http-tls-certificate-file \(certificateFile) cannot be read as PEM certificates: \(error)")
        }
        guard !chain.isEmpty else { throw DaemonError(.httpTLS, "http-tls-certificate-file \(certificateFile) holds no certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        } catch {
            // The key's bytes are never part of the message.
            throw DaemonError(.httpTLS, "http-tls-key-file \(keyFile) cannot be read as a PEM private key")
        }
        let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        do {
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            throw DaemonError(
                .httpTLS, "http-tls-key-file \(keyFile) does not match the certificate of http-tls-certificate-file \(certificateFile)")
        }
        return configuration
    }
}
