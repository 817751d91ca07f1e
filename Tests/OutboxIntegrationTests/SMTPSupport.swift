import Foundation
import NIOCore

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
