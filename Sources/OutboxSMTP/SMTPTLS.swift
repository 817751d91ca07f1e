import Foundation
import NIOCore
import NIOSSL

/// What TLS the connection negotiated.
public struct SMTPTLSInfo: Sendable {
    /// `TLSv1.3`, `TLSv1.2`...
    public var version: String
    /// The server certificate's common name and subject alternative names.
    public var peerSubject: String?
    /// When the server's certificate expires.
    public var peerNotValidAfter: Date?
}

extension SMTPClientHandler {
    /// Reads what the TLS handler negotiated (on the event loop, after the handshake).
    static func readTLSInfo(_ pipeline: ChannelPipeline) -> SMTPTLSInfo? {
        guard let handler = try? pipeline.syncOperations.handler(type: NIOSSLClientHandler.self) else { return nil }
        let version: String
        switch handler.tlsVersion {
        case .tlsv13: version = "TLSv1.3"
        case .tlsv12: version = "TLSv1.2"
        case .tlsv11: version = "TLSv1.1"
        case .tlsv1: version = "TLSv1"
        case .none: version = "unknown"
        }
        let cert = handler.peerCertificate
        return SMTPTLSInfo(
            version: version, peerSubject: cert.map { commonName(of: $0) },
            peerNotValidAfter: cert.map { Date(timeIntervalSince1970: TimeInterval($0.notValidAfter)) })
    }

    /// `CN=... SAN=...` from a certificate, for the operator's eyes.
    static func commonName(of cert: NIOSSLCertificate) -> String {
        var parts: [String] = []
        let text = cert.description
        // NIOSSLCertificate's description: <NIOSSLCertificate;serial_number=..;common_name=..;alternative_names=..>
        for (key, label) in [("common_name=", "CN="), ("alternative_names=", "SAN=")] {
            if let range = text.range(of: key) {
                parts.append(label + String(text[range.upperBound...].prefix { $0 != ";" && $0 != ">" }))
            }
        }
        return parts.isEmpty ? text : parts.joined(separator: " ")
    }

    /// Whether an error came from the TLS layer (by type, never by its text).
    static func isTLSError(_ error: any Error) -> Bool {
        error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError
    }

    /// A TLS failure in words an operator can act on.
    static func describeTLS(_ error: any Error) -> String {
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "the server's certificate does not match the host name (\(extra))"
        }
        if let ssl = error as? NIOSSLError, case .handshakeFailed = ssl {
            return "\(ssl) (if the server's certificate is not trusted, add its CA with [outbox] tls-ca-file)"
        }
        return String(describing: error)
    }
}
