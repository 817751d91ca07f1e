import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import OutboxSMTP
import Testing

/// The real Postfix that `scripts/test.sh` starts. Its absence is a test failure, never a skip:
/// run the tests through `scripts/test.sh`.
struct PostfixPeer {
    var host: String
    var submissionPort: Int
    var smtpsPort: Int
    var plainPort: Int
    var caFile: String
    var user: String
    var password: String
    var oauthToken: String
    var maildir: String

    static func fromEnvironment(sourceLocation: SourceLocation = #_sourceLocation) throws -> PostfixPeer {
        let env = ProcessInfo.processInfo.environment
        guard env["OUTBOX_TEST_POSTFIX"] == "1",
              let host = env["OUTBOX_TEST_SMTP_HOST"],
              let sub = env["OUTBOX_TEST_SUBMISSION_PORT"].flatMap(Int.init),
              let smtps = env["OUTBOX_TEST_SMTPS_PORT"].flatMap(Int.init),
              let plain = env["OUTBOX_TEST_PLAIN_PORT"].flatMap(Int.init),
              let ca = env["OUTBOX_TEST_CA_FILE"], let user = env["OUTBOX_TEST_USER"],
              let password = env["OUTBOX_TEST_PASSWORD"], let maildir = env["OUTBOX_TEST_MAILDIR"]
        else {
            Issue.record("the Postfix test peer is not running: run the tests with scripts/test.sh", sourceLocation: sourceLocation)
            throw PeerMissing()
        }
        return PostfixPeer(host: host, submissionPort: sub, smtpsPort: smtps, plainPort: plain, caFile: ca,
                           user: user, password: password, oauthToken: env["OUTBOX_TEST_OAUTH_TOKEN"] ?? "good-token",
                           maildir: maildir)
    }

    struct PeerMissing: Error {}

    /// Waits until a delivered message contains `token`; returns the stored file's bytes.
    func waitForMessage(containing token: String, timeout: Duration = .seconds(15)) async throws -> [UInt8]? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let found = findMessage(containing: token) { return found }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    func findMessage(containing token: String) -> [UInt8]? {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: maildir) else { return nil }
        let needle = Array(token.utf8)
        for name in names {
            guard let data = fm.contents(atPath: maildir + "/" + name) else { continue }
            let bytes = [UInt8](data)
            if bytes.firstRange(of: needle) != nil { return bytes }
        }
        return nil
    }

    func countMessages(containing token: String) -> Int {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: maildir) else { return 0 }
        let needle = Array(token.utf8)
        return names.filter { name in
            guard let data = fm.contents(atPath: maildir + "/" + name) else { return false }
            return [UInt8](data).firstRange(of: needle) != nil
        }.count
    }
}

/// An AsyncSequence over ready chunks.
struct ChunkSequence: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    var chunks: [ByteBuffer]
    init(_ chunks: [ByteBuffer]) { self.chunks = chunks }
    init(_ text: String) { self.chunks = [ByteBuffer(string: text)] }
    struct AsyncIterator: AsyncIteratorProtocol {
        var index = 0
        let chunks: [ByteBuffer]
        mutating func next() async -> ByteBuffer? {
            guard index < chunks.count else { return nil }
            defer { index += 1 }
            return chunks[index]
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(chunks: chunks) }
}

/// Records every log message (with metadata) so tests can grep for secrets.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    let storage: NIOLockedValueBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    init(storage: NIOLockedValueBox<[String]>) { self.storage = storage }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        let all = self.metadata.merging(explicit ?? [:]) { $1 }
        storage.withLockedValue { $0.append("\(level) \(message) \(all)") }
    }

    static func makeLogger() -> (Logger, NIOLockedValueBox<[String]>) {
        let storage = NIOLockedValueBox<[String]>([])
        let logger = Logger(label: "test") { _ in RecordingLogHandler(storage: storage) }
        return (logger, storage)
    }
}

func uniqueToken(_ prefix: String = "outbox-test") -> String {
    "\(prefix)-\(UUID().uuidString)"
}

func simpleMessage(from: String, to: [String], subject: String, body: String) -> String {
    var text = "From: <\(from)>\r\n"
    text += "To: " + to.map { "<\($0)>" }.joined(separator: ", ") + "\r\n"
    text += "Subject: \(subject)\r\n"
    text += "Message-ID: <\(UUID().uuidString)@example.test>\r\n"
    text += "\r\n"
    text += body
    return text
}
