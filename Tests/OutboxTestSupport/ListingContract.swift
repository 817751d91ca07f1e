import Foundation
import Outbox
import Testing

/// The dashboard's store reads, the same in every store: the filtered keyset listing (each filter
/// and their combination, both orders, paged to the end, with and without a scan window) against
/// the same filter applied in Swift to every message; the counters kept by triggers against the
/// messages themselves; the per-minute rates and the oldest waiting message.
package enum ListingContract {
    package static func run(_ store: any OutboxStore) async throws {
        var ids: [String] = []
        let senders = ["alice@one.test", "Bob@Two.test", "carol_x@one.test"]
        for i in 0..<36 {
            let recipients = ["r\(i % 4)@dest.test"] + (i % 6 == 0 ? ["Shared@Dest.test"] : [])
            let subject = i % 9 == 0 ? "Invoice 50%_off \(i)" : "Report \(i)"
            let new = NewMessage(
                from: senders[i % 3], recipients: recipients,
                content: Array("From: \(senders[i % 3])\r\nSubject: \(subject)\r\n\r\nbody \(i)\r\n".utf8))
            ids.append(try await store.enqueue(new, now: 1000 + Double(i) * 10).id)
        }
        // Outcomes: claimed at 2000 (all due), then delivered, deferred, failed or left sending;
        // a few cancelled before, a few taken over after their lease (possible duplicates).
        for i in stride(from: 3, to: 36, by: 11) { _ = try await store.cancel(id: ids[i], now: 1500) }
        let claimed = try await store.claim(limit: 100, owner: "w", now: 2000, lease: 60)
        #expect(claimed.count == 33)
        for (n, c) in claimed.enumerated() where n % 4 != 3 {
            let status: MessageStatus = [.delivered, .deferred, .failed][n % 4]
            let outcome = AttemptOutcome(
                status: status,
                recipients: c.message.recipients.map { RecipientState(address: $0.address, status: status == .delivered ? .accepted : .deferred) },
                attempt: AttemptRecord(number: 1, startedAt: 2000, durationSeconds: 0.1, transport: "smtp", outcome: status.rawValue, recipients: []),
                nextAttemptAt: status == .deferred ? 9000 : nil, lastError: status == .delivered ? nil : "450 later", unknown: false)
            #expect(try await store.record(id: c.message.id, owner: "w", outcome: outcome, now: 2010 + Double(n)))
        }
        // The ones left sending are taken over after their lease: possible duplicates.
        let takenOver = try await store.claim(limit: 100, owner: "w2", now: 2100, lease: 60)
        #expect(!takenOver.isEmpty && takenOver.allSatisfy(\.tookOverExpiredLease))
        var all: [StoredMessage] = []
        for id in ids { all.append(try #require(try await store.get(id: id))) }
        #expect(all.contains { $0.possibleDuplicate } && all.contains { !$0.possibleDuplicate })

        // Counters against the rows.
        var truth: [MessageStatus: Int] = [:]
        for m in all { truth[m.status, default: 0] += 1 }
        let counts = try await store.countsByRoute()
        #expect(Set(counts.keys) == [MessageFilter.defaultRoute])
        #expect(counts[MessageFilter.defaultRoute] == truth, "counters \(counts) rows \(truth)")
        #expect(try await store.counts() == truth)
        // Rates: delivered and failed in the minutes they were recorded (2010...2042 s: minutes 33 and 34).
        let rates = try await store.rates(since: 0)
        #expect(rates.reduce(0) { $0 + $1.delivered } == all.filter { $0.status == .delivered }.count)
        #expect(rates.reduce(0) { $0 + $1.failed } == all.filter { $0.status == .failed }.count)
        #expect(rates.allSatisfy { [33 * 60, 34 * 60].contains(Int($0.minute)) }, "\(rates)")
        #expect(try await store.rates(since: 35 * 60).isEmpty)
        // The oldest waiting (queued, deferred or sending) message.
        let waiting = all.filter { [.queued, .deferred, .sending].contains($0.status) }
        #expect(try await store.oldestWaiting() == waiting.map(\.createdAt).min())

        // Listings.
        var filters: [(String, MessageFilter, (StoredMessage) -> Bool)] = []
        func add(_ name: String, _ change: (inout MessageFilter) -> Void, _ predicate: @escaping (StoredMessage) -> Bool) {
            var f = MessageFilter()
            change(&f)
            filters.append((name, f, predicate))
        }
        add("all", { _ in }, { _ in true })
        add("deferred or failed", { $0.statuses = [.deferred, .failed] }, { [.deferred, .failed].contains($0.status) })
        add("sender substring, any case", { $0.sender = "BOB@two" }, { $0.from == "Bob@Two.test" })
        add("sender with LIKE characters", { $0.sender = "l_x" }, { $0.from == "carol_x@one.test" })
        add("sender whole address", { $0.sender = "alice@one.test" }, { $0.from == "alice@one.test" })
        add("recipient", { $0.recipient = "shared@dest" }, { $0.recipients.contains { $0.address == "Shared@Dest.test" } })
        add("recipient r1", { $0.recipient = "r1@dest.test" }, { $0.recipients.contains { $0.address == "r1@dest.test" } })
        add(
            "recipient, whole address in another case", { $0.recipient = "SHARED@dest.test" },
            { $0.recipients.contains { $0.address == "Shared@Dest.test" } })
        add("sender, whole address in another case", { $0.sender = "bob@two.TEST" }, { $0.from == "Bob@Two.test" })
        add(
            "whole addresses and duplicates together",
            {
                $0.recipient = "r0@dest.test"; $0.possibleDuplicate = true; $0.sender = "alice@one.test"
            },
            { $0.recipients.contains { $0.address == "r0@dest.test" } && $0.possibleDuplicate && $0.from == "alice@one.test" })
        add(
            "whole recipient with a status and a time",
            {
                $0.recipient = "r2@dest.test"; $0.statuses = [.delivered, .failed]; $0.until = 1300
            },
            { $0.recipients.contains { $0.address == "r2@dest.test" } && [.delivered, .failed].contains($0.status) && $0.createdAt < 1300 })
        add(
            "sender whole address with a duplicate flag",
            {
                $0.sender = "carol_x@one.test"; $0.possibleDuplicate = false
            }, { $0.from == "carol_x@one.test" && !$0.possibleDuplicate })
        add("subject with % and _", { $0.subject = "50%_off" }, { ($0.subject ?? "").contains("50%_off") })
        add("subject any case", { $0.subject = "report 1" }, { ($0.subject ?? "").hasPrefix("Report 1") })
        add("since", { $0.since = 1100 }, { $0.createdAt >= 1100 })
        add("until", { $0.until = 1100 }, { $0.createdAt < 1100 })
        add(
            "since and until",
            {
                $0.since = 1050; $0.until = 1250
            }, { $0.createdAt >= 1050 && $0.createdAt < 1250 })
        add("possible duplicates", { $0.possibleDuplicate = true }, { $0.possibleDuplicate })
        add("no duplicates", { $0.possibleDuplicate = false }, { !$0.possibleDuplicate })
        add(
            "possible duplicates still sending",
            {
                $0.possibleDuplicate = true; $0.statuses = [.sending]
            }, { $0.possibleDuplicate && $0.status == .sending })
        add(
            "possible duplicates of two statuses",
            {
                $0.possibleDuplicate = true; $0.statuses = [.sending, .delivered]
            },
            { $0.possibleDuplicate && [.sending, .delivered].contains($0.status) })
        add("route default", { $0.route = MessageFilter.defaultRoute }, { _ in true })
        add("another route", { $0.route = "eu" }, { _ in false })
        add(
            "combined",
            {
                $0.statuses = [.delivered, .deferred]; $0.sender = "one.test"; $0.since = 1060
            },
            { [.delivered, .deferred].contains($0.status) && $0.from.hasSuffix("one.test") && $0.createdAt >= 1060 })
        add("nothing matches", { $0.subject = "no such subject" }, { _ in false })

        for (name, base, predicate) in filters {
            let expected = all.filter(predicate).sorted { $0.sequence < $1.sequence }.map(\.id)
            for newestFirst in [false, true] {
                for (limit, budget) in [(100, MessageFilter.scanBudget), (4, MessageFilter.scanBudget), (3, 5)] as [(Int, Int64)] {
                    var filter = base
                    filter.newestFirst = newestFirst
                    filter.limit = limit
                    filter.scanWindow = budget
                    var got: [String] = []
                    var pages = 0
                    while pages < 100 {
                        pages += 1
                        let page = try await store.list(filter)
                        #expect(page.messages.count <= limit)
                        got += page.messages.map(\.id)
                        guard let next = page.nextCursor else { break }
                        filter.cursor = next
                    }
                    let want = newestFirst ? Array(expected.reversed()) : expected
                    #expect(got == want, "\(name), newest first \(newestFirst), limit \(limit), window \(budget): \(got.count) of \(want.count)")
                }
            }
        }
    }
}
