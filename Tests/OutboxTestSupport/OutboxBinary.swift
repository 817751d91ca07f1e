import Foundation
import Testing

/// Finds and runs the built `outbox` executable (`swift build --build-tests` builds it beside
/// the tests): `OUTBOX_TEST_BINARY` if set, else `outbox` in the directory of the running test
/// bundle, else `.build/debug/outbox` (and the per-triple directories) under the package.
package enum OutboxBinary {
    /// The package's root directory, found from this file.
    package static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Where the binary is looked for, in order.
    package static var candidates: [URL] {
        var urls: [URL] = []
        if let path = ProcessInfo.processInfo.environment["OUTBOX_TEST_BINARY"], !path.isEmpty {
            urls.append(URL(fileURLWithPath: path))
        }
        // The test bundle lives in the build products directory, next to the executables.
        for bundle in [Bundle.main] + Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            urls.append(bundle.bundleURL.deletingLastPathComponent().appendingPathComponent("outbox"))
        }
        if let executable = Bundle.main.executableURL {
            urls.append(executable.deletingLastPathComponent().appendingPathComponent("outbox"))
        }
        for directory in [".build/debug", ".build/x86_64-unknown-linux-gnu/debug", ".build/aarch64-unknown-linux-gnu/debug"] {
            urls.append(packageRoot.appendingPathComponent(directory).appendingPathComponent("outbox"))
        }
        return urls
    }

    /// The binary; a missing one is a recorded failure (and a thrown `Missing`), never a skip.
    package static func url(sourceLocation: SourceLocation = #_sourceLocation) throws -> URL {
        let candidates = self.candidates
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) { return found }
        let error = Missing(looked: candidates.map(\.path))
        Issue.record("\(error)", sourceLocation: sourceLocation)
        throw error
    }

    package struct Missing: Error, CustomStringConvertible {
        package var looked: [String]
        package var description: String {
            "the outbox binary is not built (looked at \(looked.joined(separator: ", "))): run swift build --build-tests, or set OUTBOX_TEST_BINARY"
        }
    }

    package struct Result: Sendable {
        package var status: Int32
        package var stdout: String
        package var stderr: String
    }

    /// Runs the binary (or `executable`) without blocking a cooperative thread; returns its exit
    /// status and output.
    package static func run(
        _ arguments: [String], cwd: URL? = nil, executable: URL? = nil, environment: [String: String]? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Result {
        let process = Process()
        process.executableURL = try executable ?? url(sourceLocation: sourceLocation)
        process.arguments = arguments
        if let cwd { process.currentDirectoryURL = cwd }
        if let environment { process.environment = environment }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        // The pipes are read on Dispatch threads, not in tasks: a blocking read in a task holds a
        // cooperative thread (there may be only two), which starves whatever else runs in this
        // process while the binary works, such as the emulator it talks to.
        let outData = Task { await readToEnd(out) }
        let errData = Task { await readToEnd(err) }
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        return Result(
            status: status, stdout: String(decoding: await outData.value, as: UTF8.self),
            stderr: String(decoding: await errData.value, as: UTF8.self))
    }

    private static func readToEnd(_ pipe: Pipe) async -> Data {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: pipe.fileHandleForReading.readDataToEndOfFile()) }
        }
    }

    /// A new temporary directory.
    package static func temporaryDirectory(_ prefix: String = "outbox-cli") throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
