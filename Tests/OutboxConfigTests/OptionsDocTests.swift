import Foundation
import Testing

@testable import OutboxConfig

extension OptionDescriptor: CustomTestStringConvertible {
    public var testDescription: String { name }
}

/// docs/options.md is generated from OptionTable; this fails when the committed file differs.
@Suite struct OptionsDocTests {
    static var docsPath: String {
        // Resolve symlinks: the side package links this directory into another checkout.
        let testFile = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
        return testFile.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/options.md").path
    }

    @Test func committedReferenceIsUpToDate() throws {
        let generated = OptionTable.markdownReference()
        let path = Self.docsPath
        if ProcessInfo.processInfo.environment[OptionTable.regenerateVariable] == "1" {
            try generated.write(toFile: path, atomically: true, encoding: .utf8)
        }
        let committed = try? String(contentsOfFile: path, encoding: .utf8)
        #expect(
            committed == generated,
            "docs/options.md differs from OptionTable.markdownReference(); regenerate it with `\(OptionTable.regenerateVariable)=1 swift test --filter OptionsDocTests` and commit it"
        )
    }

    @Test func referenceMentionsEveryOption() {
        let text = OptionTable.markdownReference()
        for d in OptionTable.smtpClient + OptionTable.mailProperties + OptionTable.outbox {
            #expect(text.contains("### \(d.section == .outbox ? "outbox." : "")\(d.name)\n"), "\(d.name)")
            #expect(text.contains("| \(d.effect.rawValue) |"))
        }
    }
}
