import Foundation

/// Reads the messages a peer stored, one file each (Postfix's maildir sink, `new/`). Every read
/// is a fresh listing: Postfix delivers shortly after it accepts, so the `wait` functions poll.
package struct Maildir: Sendable, CustomStringConvertible {
    package var path: String

    package init(_ path: String) { self.path = path }

    package var description: String { path }

    /// Every stored file's name and bytes.
    package func messages() -> [(name: String, bytes: [UInt8])] {
        let fm = FileManager.default
        return ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted().compactMap { name in
            fm.contents(atPath: path + "/" + name).map { (name, [UInt8]($0)) }
        }
    }

    /// The stored messages that contain `token`.
    package func messages(containing token: String) -> [[UInt8]] {
        let needle = Array(token.utf8)
        return messages().map(\.bytes).filter { $0.firstRange(of: needle) != nil }
    }

    /// The first stored message that contains `token`.
    package func findMessage(containing token: String) -> [UInt8]? {
        messages(containing: token).first
    }

    package func countMessages(containing token: String) -> Int {
        messages(containing: token).count
    }

    /// Waits until a stored message contains `token`; nil after `timeout`.
    package func waitForMessage(containing token: String, timeout: Duration = .seconds(15)) async throws -> [UInt8]? {
        try await waitForMessages(containing: token, count: 1, timeout: timeout).first
    }

    /// Waits until `count` stored messages contain `token`; returns what is there after `timeout`.
    package func waitForMessages(containing token: String, count: Int, timeout: Duration = .seconds(20)) async throws -> [[UInt8]] {
        let deadline = ContinuousClock.now + timeout
        var found = messages(containing: token)
        while found.count < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            found = messages(containing: token)
        }
        return found
    }

    /// Counts the stored messages per subject that starts with `prefix` (headers in the first 4 KiB).
    package func subjects(prefix: String) -> [String: Int] {
        var counts: [String: Int] = [:]
        for (_, bytes) in messages() {
            let text = String(decoding: bytes.prefix(4096), as: UTF8.self)
            for line in text.split(separator: "\n") where line.hasPrefix("Subject: \(prefix)") {
                counts[String(line.dropFirst("Subject: ".count)).trimmingCharacters(in: .whitespacesAndNewlines), default: 0] += 1
            }
        }
        return counts
    }

    /// Waits until `count` distinct subjects with `prefix` are stored; returns the counts then,
    /// or after `timeout`.
    package func waitForSubjects(prefix: String, count: Int, timeout: Duration = .seconds(20)) async throws -> [String: Int] {
        let deadline = ContinuousClock.now + timeout
        var counts = subjects(prefix: prefix)
        while counts.count < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            counts = subjects(prefix: prefix)
        }
        return counts
    }

    /// What Postfix stored per subject: the queue ids of its copies. Two copies with one queue id
    /// are Postfix delivering a message it had accepted once a second time (its local delivery is
    /// at-least-once when it is stopped mid-delivery); two queue ids are two submissions.
    package func queueIDs(prefix: String) -> [String: [String]] {
        var ids: [String: [String]] = [:]
        for (name, bytes) in messages() {
            let text = String(decoding: bytes.prefix(4096), as: UTF8.self)
            guard let subjectLine = text.split(separator: "\n").first(where: { $0.hasPrefix("Subject: \(prefix)") }) else { continue }
            let subject = String(subjectLine.dropFirst("Subject: ".count)).trimmingCharacters(in: .whitespacesAndNewlines)
            var queueID = "unknown-\(name)"
            if let postfix = text.range(of: "(Postfix) with "), let idMark = text.range(of: " id ", range: postfix.upperBound..<text.endIndex) {
                queueID = String(text[idMark.upperBound...].prefix { !$0.isWhitespace && $0 != ";" })
            }
            ids[subject, default: []].append(queueID)
        }
        return ids
    }
}
