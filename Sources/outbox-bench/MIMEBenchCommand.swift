import ArgumentParser
import Foundation
import OutboxMIME

/// `outbox-bench mime`: how fast OutboxMIME builds and serialises typical messages, and how
/// much memory streaming a large file attachment takes. It measures; it asserts nothing.
struct MIMEBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mime",
        abstract: "Serialise N typical messages (text + HTML + a 50 KiB attachment) and stream one large attachment.",
        discussion: """
            Prints two lines:
              outbox-bench mime-stream: size_mib=M seconds=T peak_rss_mib=Y
              outbox-bench mime: messages=N seconds=T msgs_per_sec=X peak_rss_mib=Y
            The streaming case runs first; peak RSS is VmHWM from /proc/self/status, reset before \
            each case by writing 5 to /proc/self/clear_refs (ru_maxrss where that is unavailable).
            """
    )

    @Option(name: .long, help: "Number of typical messages to serialise.")
    var messages: Int = 100_000

    @Option(name: .customLong("stream-mib"), help: "Size in MiB of the streamed file attachment (0 skips it).")
    var streamMiB: Int = 500

    func run() async throws {
        if streamMiB > 0 { try await streamCase() }
        try await messagesCase()
    }

    private func streamCase() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-bench-\(getpid()).bin").path
        defer { unlink(path) }
        try Self.writeFile(path: path, mib: streamMiB)
        Self.resetPeak()
        let start = Date()
        let message = Message(
            from: try Address("bench@example.com", displayName: "Bench"), to: [try Address("sink@example.org")],
            subject: "large attachment", text: "A large file is attached.\n",
            attachments: [.file(path: path, filename: "large.bin")])
        let size = try await message.byteStream(options: .init()).countBytes()
        let seconds = Date().timeIntervalSince(start)
        precondition(size > streamMiB << 20)
        print("outbox-bench mime-stream: size_mib=\(streamMiB) seconds=\(Self.fmt(seconds)) peak_rss_mib=\(Self.fmt(Self.peakMiB()))")
    }

    private func messagesCase() async throws {
        var rng = SystemRandomNumberGenerator()
        let attachment = (0..<(50 * 1024)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let text = String(repeating: "Hello Bob, here is the report for this week. Figures are attached.\n", count: 20)
        let html = "<html><body>" + String(repeating: "<p>Hello Bob, here is the <b>report</b> for this week.</p>\n", count: 20) + "</body></html>"
        let from = try Address("reports@example.com", displayName: "Report Robot")
        let to = [try Address("bob@example.org", displayName: "Bob Müller")]
        Self.resetPeak()
        let start = Date()
        var total = 0
        for i in 0..<messages {
            let m = Message(
                from: from, to: to, subject: "Weekly report #\(i) — résumé", text: text, html: html,
                attachments: [.data(attachment, filename: "report-\(i).pdf")])
            total += try await m.byteStream(options: .init()).countBytes()
        }
        let seconds = Date().timeIntervalSince(start)
        precondition(total > messages * 50 * 1024)
        let rate = Double(messages) / max(seconds, 1e-9)
        print(
            "outbox-bench mime: messages=\(messages) seconds=\(Self.fmt(seconds)) msgs_per_sec=\(Self.fmt(rate)) peak_rss_mib=\(Self.fmt(Self.peakMiB()))"
        )
    }

    /// Writes `mib` MiB of varied (incompressible enough) bytes without holding them.
    private static func writeFile(path: String, mib: Int) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw ValidationError("cannot create \(path)") }
        defer { close(fd) }
        var block = [UInt8](repeating: 0, count: 1 << 20)
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in 0..<mib {
            for j in stride(from: 0, to: block.count, by: 8) {
                x ^= x << 13
                x ^= x >> 7
                x ^= x << 17
                withUnsafeBytes(of: x) { for k in 0..<8 { block[j + k] = $0[k] } }
            }
            block[0] = UInt8(truncatingIfNeeded: i)
            let n = block.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n == block.count else { throw ValidationError("cannot write \(path)") }
        }
    }

    /// Resets VmHWM to the current RSS (Linux); a no-op elsewhere.
    private static func resetPeak() {
        let fd = open("/proc/self/clear_refs", O_WRONLY)
        guard fd >= 0 else { return }
        _ = write(fd, "5", 1)
        close(fd)
    }

    /// Peak resident set size in MiB: VmHWM, or ru_maxrss when /proc is unavailable.
    private static func peakMiB() -> Double {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        {
            let kb = Double(line.split(separator: " ").dropFirst().first.map(String.init) ?? "") ?? 0
            return kb / 1024
        }
        var usage = rusage()
        #if os(Linux)
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_maxrss) / 1024
        #else
        getrusage(RUSAGE_SELF, &usage)
        return Double(usage.ru_maxrss) / (1024 * 1024)
        #endif
    }

    private static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
}
