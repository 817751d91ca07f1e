import Foundation
import Testing

@testable import OutboxConfig

/// Every configuration shown in README.md and docs/*.md (each ```ini block) passes
/// `check-config`'s validation as written. Files it names under /etc/outbox/ are stood in for
/// by files that exist; the environment variables it names are set.
@Suite("Configurations in the documentation")
struct DocumentedConfigurationTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// (file, line, text) of every ```ini block.
    static func blocks() throws -> [(String, Int, String)] {
        var files = ["README.md"]
        let docs = root.appendingPathComponent("docs")
        files += try FileManager.default.contentsOfDirectory(atPath: docs.path).filter { $0.hasSuffix(".md") }.sorted().map { "docs/\($0)" }
        var result: [(String, Int, String)] = []
        for file in files {
            let lines = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8).components(separatedBy: "\n")
            var i = 0
            while i < lines.count {
                if lines[i].trimmingCharacters(in: .whitespaces) == "```ini" {
                    let start = i + 1
                    var j = start
                    while j < lines.count, lines[j].trimmingCharacters(in: .whitespaces) != "```" { j += 1 }
                    result.append((file, start, lines[start..<j].joined(separator: "\n")))
                    i = j
                }
                i += 1
            }
        }
        return result
    }

    @Test("every ini block in README.md and docs/ passes validation")
    func everyBlockIsValid() throws {
        let found = try Self.blocks()
        #expect(found.count >= 3, "the README and docs show configurations: found \(found.count)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-doc-configs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (file, line, text) in found {
            // Stand-ins for the files the example names.
            var body = text
            let paths = Set(text.matches(of: /\/etc\/outbox\/[A-Za-z0-9._-]+/).map { String($0.output) })
            for path in paths {
                let standIn = dir.appendingPathComponent(URL(fileURLWithPath: path).lastPathComponent).path
                FileManager.default.createFile(atPath: standIn, contents: Data("stand-in\n".utf8))
                body = body.replacingOccurrences(of: path, with: standIn)
            }
            let variables = text.matches(of: /env:([A-Z0-9_]+)/).map { String($0.output.1) }
            let environment = Dictionary(variables.map { ($0, "example-value") }, uniquingKeysWith: { a, _ in a })
            do {
                _ = try OutboxConfiguration.parse(text: body, fileName: "\(file):\(line)", overrides: [], environment: environment)
            } catch {
                Issue.record("\(file), the block at line \(line), is not a valid configuration: \(error)")
            }
        }
    }
}
