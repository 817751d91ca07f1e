import Foundation

@testable import OutboxConfig

/// Parses `text` as `outbox.cfg`.
func load(_ text: String, _ overrides: [String] = [], env: [String: String] = [:]) throws(ConfigurationError) -> OutboxConfiguration {
    try OutboxConfiguration.parse(text: text, fileName: "outbox.cfg", overrides: overrides, environment: env)
}

/// The problem descriptions for `text`, or [] when it is valid.
func problems(_ text: String, _ overrides: [String] = [], env: [String: String] = [:]) -> [String] {
    do {
        _ = try load(text, overrides, env: env)
        return []
    } catch {
        return error.problems.map(\.description)
    }
}

func problemCodes(_ text: String, _ overrides: [String] = [], env: [String: String] = [:]) -> [String] {
    do {
        _ = try load(text, overrides, env: env)
        return []
    } catch {
        return error.problems.map(\.code)
    }
}

func smtpClient(_ lines: String) -> String { "[smtp-client]\n" + lines + "\n" }

func value(of name: String, in configuration: OutboxConfiguration) -> String? {
    configuration.effectiveOptions().first { $0.name == name }?.value
}

/// A temporary file with `contents`; returns its path.
func temporaryFile(_ contents: String, name: String = UUID().uuidString) -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-config-test-\(name)").path
    FileManager.default.createFile(atPath: path, contents: Data(contents.utf8))
    return path
}
