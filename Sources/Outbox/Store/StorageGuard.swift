import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import OutboxConfig
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Keeps the queue's disk from filling (`[outbox] queue-min-free`) and applies the retention
/// settings, as Postfix's `queue_minfree` does for its queue:
///
/// - Every second it measures the free space of the data directory's file system. Below
///   `queue-min-free`, it first purges the content of delivered messages, oldest first, and
///   gives the pages back; if the space is still short, **intake** is refused (HTTP 507,
///   SMTP `452 4.3.1`) while claims, attempts and outcomes go on, so delivery frees the space
///   that lets intake resume on its own. One log line and one metric change per change of state.
/// - Every minute it purges the content of finished messages older than `retention-content`
///   and the records older than `retention-records`.
///
/// With PostgreSQL there is no local disk to watch (`directory` nil): the database's own
/// `53100` answers stand for a full disk.
package final class StorageGuard: Service, Sendable {
    /// What intake may take now.
    package enum Intake: Sendable, Equatable {
        /// Open; `room`: bytes that may be taken before `queue-min-free` is reached (nil: unknown).
        case open(room: Int64?)
        /// Refused: `free` bytes left, `minimum` kept.
        case refused(free: Int64, minimum: Int64)

        /// True unless refused.
        package var isOpen: Bool { if case .open = self { true } else { false } }

        /// Whether a message of `size` bytes fits.
        package func admits(size: Int) -> Bool {
            switch self {
            case .open(let room): room.map { Int64(size) <= $0 } ?? true
            case .refused: false
            }
        }

        /// Words for an error or a log line.
        package var explanation: String {
            switch self {
            case .open(let room): room.map { "\($0) bytes may be queued before queue-min-free is reached" } ?? "open"
            case .refused(let free, let minimum):
                "the queue's disk has \(free) bytes free, less than [outbox] queue-min-free (\(minimum) bytes): new messages are refused until deliveries free space"
            }
        }
    }

    /// The settings it reads (`queue-min-free`, `retention-content`, `retention-records`).
    package struct Settings: Sendable, Equatable {
        package var minFree: QueueMinFree
        package var retentionContent: Duration
        package var retentionRecords: Duration

        package init(_ s: OutboxSettings) {
            minFree = s.queueMinFree
            retentionContent = s.retentionContent
            retentionRecords = s.retentionRecords
        }
    }

    /// Free and total bytes of the file system holding a path.
    package typealias DiskSpace = @Sendable (_ path: String) -> (free: Int64, capacity: Int64)?

    private struct State {
        var settings: Settings
        var intake: Intake = .open(room: nil)
        var lastRetention: Double = 0
        /// When the free space was last measured.
        var measuredAt: ContinuousClock.Instant?
    }

    private let store: any OutboxStore
    private let directory: String?
    private let state: NIOLockedValueBox<State>
    private let logger: Logger
    private let space: DiskSpace
    private let refusedGauge: Gauge
    private let purgedCounter: Counter
    private let refusalsCounter: Counter
    private let interval: Duration

    /// A guard for `store`, watching the file system of `directory` (nil: none to watch).
    package init(
        store: any OutboxStore, directory: String?, settings: Settings, logger: Logger,
        metricsFactory: any MetricsFactory = MetricsSystem.factory, interval: Duration = .seconds(1),
        space: @escaping DiskSpace = StorageGuard.measure
    ) {
        self.store = store
        self.directory = directory
        self.state = NIOLockedValueBox(State(settings: settings))
        self.logger = logger
        self.space = space
        self.interval = interval
        self.refusedGauge = Gauge(label: "outbox_intake_refused", factory: metricsFactory)
        self.purgedCounter = Counter(label: "outbox_storage_content_purged_total", factory: metricsFactory)
        self.refusalsCounter = Counter(label: "outbox_intake_refusals_total", factory: metricsFactory)
        refusedGauge.record(0)
    }

    /// What intake may take now. While open, the free space is measured again when the last
    /// measure is older than 50 ms (a `statvfs`), so a burst of submissions cannot run past
    /// `queue-min-free` between two checks; resuming is the background check's decision.
    package var intake: Intake {
        let (current, minFree, measuredAt) = state.withLockedValue { ($0.intake, $0.settings.minFree, $0.measuredAt) }
        guard let directory, current.isOpen else { return current }
        let now = ContinuousClock.now
        if let measuredAt, now - measuredAt < .milliseconds(50) { return current }
        guard let measured = space(directory) else { return current }
        let minimum = minFree.bytes(ofCapacity: measured.capacity)
        let decision: Intake = measured.free < minimum ? .refused(free: measured.free, minimum: minimum) : .open(room: measured.free - minimum)
        let changed = state.withLockedValue { s -> Bool in
            let changed = s.intake.isOpen != decision.isOpen
            s.intake = decision
            s.measuredAt = now
            return changed
        }
        if changed { announce(decision, free: measured.free, minimum: minimum) }
        return decision
    }

    private func announce(_ decision: Intake, free: Int64, minimum: Int64) {
        refusedGauge.record(decision.isOpen ? 0 : 1)
        if decision.isOpen {
            logger.notice("intake resumed: the queue's disk has \(free) bytes free again (queue-min-free \(minimum))")
        } else {
            logger.error("intake refused: \(decision.explanation)")
        }
    }

    /// Counts one submission refused for lack of space (for the metric).
    package func countRefusal() { refusalsCounter.increment() }

    /// New settings (a reload): `queue-min-free` at the next check, retention at the next pass.
    package func update(_ settings: Settings) {
        state.withLockedValue { $0.settings = settings }
    }

    /// Checks every second until graceful shutdown; retention once a minute.
    package func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            await check()
            let due = state.withLockedValue { Date().timeIntervalSince1970 - $0.lastRetention >= 60 }
            if due { await applyRetention(now: Date().timeIntervalSince1970) }
            try? await Task.sleep(for: interval)
        }
    }

    /// Measures the free space; below `queue-min-free`, purges delivered content (oldest first)
    /// and gives the pages back before deciding to refuse intake. Returns the decision.
    @discardableResult
    package func check() async -> Intake {
        guard let directory, let measured = space(directory) else { return intake }
        let minimum = state.withLockedValue { $0.settings.minFree }.bytes(ofCapacity: measured.capacity)
        var free = measured.free
        if free < minimum {
            free = await purgeDelivered(directory: directory, minimum: minimum, free: free)
        }
        // Resume a little above the threshold, so intake does not flap on every message.
        let resumeAt = minimum + max(minimum / 20, 64 * 1024)
        let changed = state.withLockedValue { s -> (Intake, Bool) in
            let previous = s.intake
            let decision: Intake
            if free < minimum || (!previous.isOpen && free < resumeAt) {
                decision = .refused(free: free, minimum: minimum)
            } else {
                decision = .open(room: free - minimum)
            }
            s.intake = decision
            s.measuredAt = .now
            return (decision, previous.isOpen != decision.isOpen)
        }
        if changed.1 { announce(changed.0, free: free, minimum: minimum) }
        return changed.0
    }

    /// Purges delivered messages' content, oldest first, in batches, until `minimum` is free
    /// or nothing is left to purge; returns the free space measured after.
    private func purgeDelivered(directory: String, minimum: Int64, free: Int64) async -> Int64 {
        var free = free
        var purged = 0
        do {
            while free < minimum {
                let now = Date().timeIntervalSince1970
                let n = try await store.purgeContent(statuses: [.delivered], finishedBefore: now + 1, limit: 200, now: now)
                purged += n
                _ = try await store.reclaimSpace()
                free = space(directory)?.free ?? free
                if n == 0 { break }
            }
        } catch {
            logger.warning("purging delivered messages' content to free space failed: \(error)")
        }
        if purged > 0 {
            purgedCounter.increment(by: purged)
            logger.notice("the queue's disk was below queue-min-free: purged the content of \(purged) delivered messages, oldest first")
        }
        return free
    }

    /// Purges content past `retention-content` and records past `retention-records`.
    package func applyRetention(now: Double) async {
        let settings = state.withLockedValue { s -> Settings in
            s.lastRetention = now
            return s.settings
        }
        do {
            var contents = 0
            var records = 0
            while true {
                let n = try await store.purgeContent(
                    statuses: [.delivered, .failed, .cancelled, .unknown],
                    finishedBefore: now - Double(settings.retentionContent.components.seconds), limit: 500, now: now)
                contents += n
                // A large backlog (a first start over an old queue) must not hold up a shutdown:
                // what is left is purged at the next run.
                if n < 500 || Task.isCancelled || Task.isShuttingDownGracefully { break }
            }
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                let n = try await store.purgeRecords(finishedBefore: now - Double(settings.retentionRecords.components.seconds), limit: 500)
                records += n
                if n < 500 { break }
            }
            if contents + records > 0 {
                _ = try await store.reclaimSpace()
                purgedCounter.increment(by: contents)
                logger.info("retention: purged the content of \(contents) finished messages and \(records) records")
            }
        } catch {
            logger.warning("retention purge failed (it is tried again in a minute): \(error)")
        }
    }

    /// `statvfs` of `path`: the bytes available to this process and the file system's size.
    package static let measure: DiskSpace = { path in
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        let unit = Int64(s.f_frsize == 0 ? s.f_bsize : s.f_frsize)
        return (free: Int64(s.f_bavail) * unit, capacity: Int64(s.f_blocks) * unit)
    }
}
