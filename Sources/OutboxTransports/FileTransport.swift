import Foundation
import NIOCore
import NIOFoundationCompat
import OutboxMIME

/// The embedded default when no `server` is configured: each message is written as an `.eml`
/// file under `<data-dir>/sent/` (written to a temporary name, synced, then renamed, so a file
/// that exists is complete). Every recipient counts as accepted.
public struct FileTransport: MailTransport {
    /// `file`.
    public let name = "file"
    /// Where the `.eml` files are written: `<data-dir>/sent`.
    public let directory: String

    /// Writes under `dataDirectory`/sent (created when the first message is written).
    public init(dataDirectory: String) {
        self.directory = (dataDirectory as NSString).appendingPathComponent("sent")
    }

    /// Returns at once: the file transport has no background work.
    public func run() async {}
    /// Returns at once: there is nothing to close.
    public func shutdown() async {}

    /// Writes the message to a new `.eml` file; every recipient is reported accepted. Throws a
    /// permanent ``DeliveryError`` for an invalid envelope or a file that cannot be created, and
    /// a transient one when writing fails (including a message that cannot be serialised).
    public func send(_ content: any MailContent, envelope: Envelope?) async throws(DeliveryError) -> DeliveryReport {
        let started = Date()
        let clock = ContinuousClock.now
        let env: Envelope
        do throws(MIMEError) {
            if let envelope { env = envelope } else { env = try content.envelope() }
        } catch {
            throw DeliveryError(kind: .permanent, message: "the message's envelope is invalid: \(error.message)")
        }
        let stamp = ISO8601DateFormatter().string(from: started).replacingOccurrences(of: ":", with: "")
        let base = "\(stamp)-\(UUID().uuidString.lowercased())"
        let temporary = (directory as NSString).appendingPathComponent(".\(base).tmp")
        let final = (directory as NSString).appendingPathComponent("\(base).eml")
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: temporary, contents: nil) else {
                throw DeliveryError(kind: .permanent, message: "cannot create \(temporary)")
            }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
            do {
                for try await chunk in content.byteStream(options: MIMEEncodingOptions(allow8BitMIME: true, smtpUTF8: true)) {
                    try handle.write(contentsOf: Data(chunk.readableBytesView))
                }
                try handle.synchronize()
                try handle.close()
            } catch {
                try? handle.close()
                throw error
            }
            try FileManager.default.moveItem(atPath: temporary, toPath: final)
        } catch let error as DeliveryError {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw DeliveryError(kind: .transient, message: "writing \(final) failed: \(error)")
        }
        return DeliveryReport(
            transport: name, destination: final, messageID: content.outboxMessageID,
            recipients: env.recipients.map { RecipientOutcome(address: $0, status: .accepted, text: "written to \(final)") },
            finalReply: "written to \(final)", startedAt: started,
            durationSeconds: (ContinuousClock.now - clock).seconds)
    }
}

extension Duration {
    /// The duration in seconds, as a `Double` (for reports and the queue's store).
    package var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
