import Foundation
import Testing

/// Runs the built `outbox` binary (scripts/test.sh builds it with the tests).
struct CLI {
    static let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var binary: URL {
        let candidates = [".build/debug/outbox", ".build/x86_64-unknown-linux-gnu/debug/outbox", ".build/aarch64-unknown-linux-gnu/debug/outbox"]
        for c in candidates {
            let url = repoRoot.appendingPathComponent(c)
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return repoRoot.appendingPathComponent(candidates[0])
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs without blocking a cooperative thread.
    static func run(_ arguments: [String], cwd: URL? = nil, executable: URL? = nil, environment: [String: String]? = nil) async throws -> Result {
        let process = Process()
        process.executableURL = executable ?? binary
        process.arguments = arguments
        if let cwd { process.currentDirectoryURL = cwd }
        if let environment { process.environment = environment }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let outData = Task.detached { out.fileHandleForReading.readDataToEndOfFile() }
        let errData = Task.detached { err.fileHandleForReading.readDataToEndOfFile() }
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        return Result(status: status, stdout: String(decoding: await outData.value, as: UTF8.self),
                      stderr: String(decoding: await errData.value, as: UTF8.self))
    }

    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

struct CLIPeer {
    var plainPort: Int
    var submissionPort: Int
    var caFile: String
    var user: String
    var password: String
    var maildir: String

    static func fromEnvironment(sourceLocation: SourceLocation = #_sourceLocation) throws -> CLIPeer {
        let env = ProcessInfo.processInfo.environment
        guard env["OUTBOX_TEST_POSTFIX"] == "1",
              let plain = env["OUTBOX_TEST_PLAIN_PORT"].flatMap(Int.init),
              let sub = env["OUTBOX_TEST_SUBMISSION_PORT"].flatMap(Int.init),
              let ca = env["OUTBOX_TEST_CA_FILE"], let user = env["OUTBOX_TEST_USER"],
              let password = env["OUTBOX_TEST_PASSWORD"], let maildir = env["OUTBOX_TEST_MAILDIR"]
        else {
            Issue.record("the Postfix test peer is not running: run the tests with scripts/test.sh", sourceLocation: sourceLocation)
            throw Missing()
        }
        return CLIPeer(plainPort: plain, submissionPort: sub, caFile: ca, user: user, password: password, maildir: maildir)
    }

    struct Missing: Error {}

    var plainOptions: [String] {
        ["-o", "server=localhost", "-o", "port=\(plainPort)", "-o", "enable-authentication=true",
         "-o", "user=\(user)", "-o", "password=\(password)"]
    }

    var tlsOptions: [String] {
        ["-o", "server=localhost", "-o", "port=\(submissionPort)", "-o", "smtp-connection-security=start-tls-required",
         "-o", "outbox.tls-ca-file=\(caFile)", "-o", "enable-authentication=true",
         "-o", "user=\(user)", "-o", "password=\(password)"]
    }

    func waitForFiles(containing token: String, count: Int = 1, timeout: Duration = .seconds(20)) async throws -> [Data] {
        let deadline = ContinuousClock.now + timeout
        var found: [Data] = []
        while ContinuousClock.now < deadline {
            found = []
            for name in (try? FileManager.default.contentsOfDirectory(atPath: maildir)) ?? [] {
                if let data = FileManager.default.contents(atPath: maildir + "/" + name), data.range(of: Data(token.utf8)) != nil {
                    found.append(data)
                }
            }
            if found.count >= count { return found }
            try await Task.sleep(for: .milliseconds(100))
        }
        return found
    }
}
