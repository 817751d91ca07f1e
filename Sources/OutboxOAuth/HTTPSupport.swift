import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import OutboxConfig

/// HTTP clients for the token endpoints, Graph and EWS: `connect-timeout` bounds the connect,
/// `protocol-timeout` every read; `[outbox] tls-ca-file` is an additional trust root; TLS 1.2
/// at least. A timeout of zero means none (as in JavaMail).
package enum OutboxHTTP {
    /// The stand-in for "no timeout".
    static let forever: Duration = .seconds(365 * 24 * 3600)

    package static func tlsConfiguration(caFile: String?) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caFile, !caFile.isEmpty {
            tls.additionalTrustRoots = [.file(caFile)]
        }
        return tls
    }

    package static func makeClient(connectTimeout: Duration, protocolTimeout: Duration, caFile: String?) -> HTTPClient {
        let timeout = HTTPClient.Configuration.Timeout(
            connect: timeAmount(connectTimeout == .zero ? forever : connectTimeout),
            read: timeAmount(protocolTimeout == .zero ? forever : protocolTimeout))
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tlsConfiguration(caFile: caFile),
            redirectConfiguration: .disallow,
            timeout: timeout,
            connectionPool: HTTPClient.Configuration.ConnectionPool(),
            proxy: nil,
            ignoreUncleanSSLShutdown: false,
            decompression: .disabled)
        configuration.httpVersion = .http1Only
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    package static func makeClient(options: SMTPClientOptions, settings: OutboxSettings) -> HTTPClient {
        makeClient(connectTimeout: options.connectTimeout, protocolTimeout: options.protocolTimeout, caFile: settings.tlsCAFile)
    }

    package static func timeAmount(_ d: Duration) -> TimeAmount {
        let (s, atto) = d.components
        let capped = min(s, 10 * 365 * 24 * 3600)
        return .nanoseconds(capped * 1_000_000_000 + atto / 1_000_000_000)
    }

    /// `application/x-www-form-urlencoded`: every value percent-encoded (RFC 3986 unreserved
    /// characters stay as they are; space is %20).
    package static func formEncode(_ pairs: [(String, String)]) -> String {
        pairs.map { "\(percentEncode($0.0))=\(percentEncode($0.1))" }.joined(separator: "&")
    }

    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    package static func percentEncode(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: unreserved) ?? s
    }

    /// Whether an error from AsyncHTTPClient is a timeout.
    package static func isTimeout(_ error: any Error) -> Bool {
        if let e = error as? HTTPClientError {
            return e == .readTimeout || e == .connectTimeout || e == .deadlineExceeded || e == .writeTimeout
        }
        return false
    }
}
