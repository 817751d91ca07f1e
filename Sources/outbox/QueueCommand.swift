import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import OutboxConfig

/// `outbox queue`: the daemon's queue from the command line, in the manner of Postfix's
/// `mailq`/`postqueue`, through the HTTP API.
struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "Show and act on a running daemon's queue (through its HTTP API).",
        discussion: """
            The daemon is found at --url, else at http://<[outbox] http-listen> of the configuration; \
            the API token is --token, else $OUTBOX_API_TOKEN, else the first of [outbox] api-tokens. \
            Exit status: 0 done, 1 the daemon refused (no such message, not in a state that allows it), \
            2 a usage or configuration error, 69 the daemon cannot be reached.
            """,
        subcommands: [QueueList.self, QueueShow.self, QueueRetry.self, QueueCancel.self, QueuePurge.self, QueueMove.self, QueueWatch.self]
    )
}

/// Where the daemon is and how to authenticate to it.
struct QueueConnection: ParsableArguments {
    @Option(name: .long, help: "The daemon's HTTP API, e.g. http://127.0.0.1:8025.")
    var url: String?

    @Option(name: .long, help: "An API token ([outbox] api-tokens).")
    var token: String?

    @Option(name: .long, help: "The configuration file to read http-listen and api-tokens from (default: ./outbox.cfg when it exists).")
    var config: String?

    @Option(
        name: .customShort("o"),
        help: ArgumentHelp("Set an option by its reference name, overriding the file. Repeatable.", valueName: "NAME=VALUE"))
    var overrides: [String] = []

    func client() throws -> QueueAPI {
        var base = url
        var token = token ?? ProcessInfo.processInfo.environment["OUTBOX_API_TOKEN"]
        if base == nil || token == nil {
            let c = try loadConfiguration(file: config, overrides: overrides)
            if base == nil { base = "http://\(c.outbox.httpListen)" }
            if token == nil { token = c.outbox.apiTokenList.first }
        }
        let trimmed = (base ?? "").hasSuffix("/") ? String(base!.dropLast()) : base!
        guard trimmed.hasPrefix("http://") || trimmed.hasPrefix("https://") else {
            FileHandle.standardError.write(Data("outbox queue: --url \(trimmed) is not an http:// or https:// URL\n".utf8))
            throw ExitCode(2)
        }
        return QueueAPI(base: trimmed, token: token)
    }
}

/// The few API calls `outbox queue` makes; errors become the command's exit status.
struct QueueAPI: Sendable {
    let base: String
    let token: String?

    /// A daemon that is not there fails at once (no retried connection), one that hangs after 5 s
    /// of connecting. Never shut down: the process ends with the command.
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout.connect = .seconds(5)
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// A JSON answer; a refusal (4xx) prints the API's code and message and exits 1; a daemon
    /// that cannot be reached exits 69.
    func call(_ method: HTTPMethod, _ path: String, body: Any? = nil) async throws -> [String: Any] {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "User-Agent", value: "outbox-queue")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            let data = try JSONSerialization.data(withJSONObject: body)
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: data))
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            response = try await Self.client.execute(request, timeout: .seconds(120))
            bytes = try await response.body.collect(upTo: 64 << 20)
        } catch {
            FileHandle.standardError.write(Data("outbox queue: the daemon at \(base) cannot be reached: \(error)\n".utf8))
            throw ExitCode(69)
        }
        let object = (try? JSONSerialization.jsonObject(with: Data(buffer: bytes))) as? [String: Any] ?? [:]
        guard (200..<300).contains(Int(response.status.code)) else {
            let error = object["error"] as? [String: Any]
            let code = error?["code"] as? String ?? "http_\(response.status.code)"
            let message = error?["message"] as? String ?? String(buffer: bytes).prefix(300).description
            FileHandle.standardError.write(Data("outbox queue: \(code): \(message)\n".utf8))
            throw ExitCode(response.status.code == 401 ? 2 : 1)
        }
        return object
    }

    /// Every message of a listing, page after page (`limit`: at most that many).
    func messages(status: String?, limit: Int?, route: String? = nil) async throws -> [[String: Any]] {
        var out: [[String: Any]] = []
        var cursor: String?
        repeat {
            var query = ["limit=\(min(1000, limit.map { $0 - out.count } ?? 1000))"]
            if let status { query.append("status=\(status)") }
            if let route { query.append("route=\(route.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? route)") }
            if let cursor { query.append("cursor=\(cursor)") }
            let page = try await call(.GET, "/v1/messages?" + query.joined(separator: "&"))
            out += page["messages"] as? [[String: Any]] ?? []
            cursor = page["next_cursor"] as? String
        } while cursor != nil && (limit.map { out.count < $0 } ?? true)
        return out
    }

    static func printJSON(_ value: Any) {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data()
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    /// One message's action: prints the API's JSON, or `line` of the message as it now is.
    static func act(
        _ connection: QueueConnection, _ method: HTTPMethod, _ path: String, json: Bool, _ line: ([String: Any]) -> String
    ) async throws {
        let m = try await connection.client().call(method, path)
        if json { printJSON(m) } else { print(line(m)) }
    }

    static func path(_ id: String) -> String {
        "/v1/messages/" + (id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id)
    }
}

/// `outbox queue list`
struct QueueList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the queue's messages, oldest first.")

    @OptionGroup var connection: QueueConnection

    @Option(name: .long, help: "Only messages in this status: queued, sending, deferred, delivered, failed, unknown, cancelled.")
    var status: String?

    @Option(name: .long, help: "At most this many messages (default: all).")
    var limit: Int?

    @Option(name: .long, help: "Only messages of this route (default, or NAME of [smtp-client-NAME]).")
    var route: String?

    @Flag(name: .long, help: "Print JSON: {\"messages\": [...]}.")
    var json = false

    func run() async throws {
        let api = try connection.client()
        let messages = try await api.messages(status: status, limit: limit, route: route)
        if json {
            QueueAPI.printJSON(["messages": messages])
            return
        }
        var rows = [["ID", "STATUS", "ROUTE", "ATTEMPTS", "CREATED", "FROM", "RECIPIENTS"]]
        for m in messages {
            let recipients = m["recipients"] as? [String] ?? []
            let rcpt = recipients.first.map { recipients.count > 1 ? "\($0) +\(recipients.count - 1)" : $0 } ?? ""
            rows.append([
                m["id"] as? String ?? "", m["status"] as? String ?? "", m["route"] as? String ?? "", "\(m["attempt_count"] as? Int ?? 0)",
                m["created_at"] as? String ?? "", (m["from"] as? String).map { $0.isEmpty ? "<>" : $0 } ?? "", rcpt,
            ])
        }
        print(Table.render(rows))
        print("\(messages.count) message\(messages.count == 1 ? "" : "s")")
    }
}

/// `outbox queue show ID`
struct QueueShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one message, its recipients and its attempts.")

    @OptionGroup var message: QueueMessageArguments

    func run() async throws {
        let (connection, id, json) = (message.connection, message.id, message.json)
        let m = try await connection.client().call(.GET, QueueAPI.path(id))
        if json {
            QueueAPI.printJSON(m)
            return
        }
        func text(_ key: String) -> String {
            switch m[key] {
            case let s as String: s
            case let n as Int: "\(n)"
            case let b as Bool: "\(b)"
            default: "-"
            }
        }
        var lines = ["id:              \(text("id"))", "status:          \(text("status"))", "from:            \(text("from"))"]
        for r in m["recipients"] as? [[String: Any]] ?? [] {
            let code = (r["code"] as? Int).map { " \($0)" } ?? ""
            lines.append("recipient:       \(r["address"] as? String ?? "") \(r["status"] as? String ?? "")\(code) \(r["text"] as? String ?? "")")
        }
        for key in [
            "message_id", "size", "created_at", "updated_at", "next_attempt_at", "attempt_count", "possible_duplicate", "content_purged",
            "last_error",
        ] {
            lines.append("\((key + ":").padding(toLength: 17, withPad: " ", startingAt: 0))\(text(key))")
        }
        for a in m["attempts"] as? [[String: Any]] ?? [] {
            let reply = (a["reply"] as? String) ?? (a["error"] as? String) ?? ""
            lines.append(
                "attempt \(a["number"] as? Int ?? 0):       \(a["time"] as? String ?? "") \(a["outcome"] as? String ?? "") via \(a["transport"] as? String ?? "") \(a["destination"] as? String ?? "") \(reply)"
            )
        }
        print(lines.joined(separator: "\n"))
    }
}

/// `outbox queue retry ID|--all-deferred`
struct QueueRetry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry", abstract: "Send a failed, unknown or deferred message again now; or every deferred message.")

    @OptionGroup var connection: QueueConnection

    @Argument(help: "The message's id.")
    var id: String?

    @Flag(name: .long, help: "Every deferred message (progress on standard error).")
    var allDeferred = false

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func validate() throws {
        guard (id == nil) != !allDeferred else { throw ValidationError("give a message id or --all-deferred (not both)") }
    }

    func run() async throws {
        let api = try connection.client()
        if let id {
            try await QueueAPI.act(connection, .POST, QueueAPI.path(id) + "/retry", json: json) { "\(id): \($0["status"] as? String ?? "?")" }
            return
        }
        try await QueueBulk.run(
            api, action: "retry", ids: try await api.messages(status: "deferred", limit: nil).compactMap { $0["id"] as? String }, json: json)
    }
}

/// `outbox queue cancel ID`
struct QueueCancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Stop trying a queued or deferred message (its record stays).")

    @OptionGroup var message: QueueMessageArguments

    func run() async throws {
        try await message.act(.DELETE, "") { "\($0["status"] as? String ?? "?")" }
    }
}

/// `outbox queue purge ID`
struct QueuePurge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge", abstract: "Remove a finished message's content (its record and attempts stay).")

    @OptionGroup var message: QueueMessageArguments

    func run() async throws {
        try await message.act(.POST, "/purge") { "content purged (\($0["status"] as? String ?? "?"))" }
    }
}

/// What `show`, `cancel` and `purge` take: the daemon, one message's id, `--json`.
struct QueueMessageArguments: ParsableArguments {
    @OptionGroup var connection: QueueConnection

    @Argument(help: "The message's id.")
    var id: String

    @Flag(name: .long, help: "Print the API's JSON.")
    var json = false

    /// `method` on the message's path plus `suffix`; prints the JSON, or `id: line(message)`.
    func act(_ method: HTTPMethod, _ suffix: String, _ line: ([String: Any]) -> String) async throws {
        try await QueueAPI.act(connection, method, QueueAPI.path(id) + suffix, json: json) { "\(id): \(line($0))" }
    }
}

/// Bulk actions in batches, with progress.
enum QueueBulk {
    static func run(_ api: QueueAPI, action: String, ids: [String], json: Bool) async throws {
        var done = 0
        var conflicts = 0
        var missing = 0
        var index = 0
        while index < ids.count {
            let batch = Array(ids[index..<min(ids.count, index + 500)])
            let answer = try await api.call(.POST, "/v1/messages/\(action)", body: ["ids": batch])
            done += (answer["done"] as? [Any])?.count ?? 0
            conflicts += (answer["conflicts"] as? [Any])?.count ?? 0
            missing += (answer["not_found"] as? [Any])?.count ?? 0
            index += batch.count
            FileHandle.standardError.write(Data("outbox queue: \(action): \(index) of \(ids.count)\n".utf8))
        }
        if json {
            QueueAPI.printJSON(["requested": ids.count, "done": done, "conflicts": conflicts, "not_found": missing])
        } else {
            print("\(action): \(done) done, \(conflicts) in another state, \(missing) gone, of \(ids.count)")
        }
    }
}

/// `outbox queue watch`
struct QueueWatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch", abstract: "A live view of the queue's counts and delivery rates (redrawn in place on a terminal).")

    @OptionGroup var connection: QueueConnection

    @Option(name: .long, help: "Seconds between refreshes.")
    var interval: Double = 2

    @Option(name: .long, help: "Stop after this many refreshes (0: until interrupted).")
    var count: Int = 0

    func run() async throws {
        let api = try connection.client()
        let terminal = isatty(STDOUT_FILENO) == 1
        var previous: (counts: [String: Int], at: ContinuousClock.Instant)?
        var frame = 0
        while count == 0 || frame < count {
            let status = try await api.call(.GET, "/v1/status")
            let counts = status["queue"] as? [String: Int] ?? [:]
            let now = ContinuousClock.now
            func rate(_ key: String) -> String {
                guard let previous else { return "-" }
                let seconds = Double((now - previous.at).components.seconds) + Double((now - previous.at).components.attoseconds) / 1e18
                guard seconds > 0 else { return "-" }
                return String(format: "%.1f/s", Double((counts[key] ?? 0) - (previous.counts[key] ?? 0)) / seconds)
            }
            let order = ["queued", "sending", "deferred", "delivered", "failed", "unknown", "cancelled"]
            let line = order.map { "\($0) \(counts[$0] ?? 0)" }.joined(separator: "  ")
            let rates = "delivered \(rate("delivered"))  failed \(rate("failed"))"
            let transport = status["transport"] as? String ?? "?"
            let screen =
                terminal
                ? "\u{1B}[H\u{1B}[2Joutbox queue at \(api.base) (transport \(transport)), every \(interval) s; Ctrl-C to stop\n\n\(line)\n\(rates)\n"
                : "\(ISO8601DateFormatter().string(from: Date())) \(line)  rates: \(rates)\n"
            FileHandle.standardOutput.write(Data(screen.utf8))
            previous = (counts, now)
            frame += 1
            if count == 0 || frame < count { try await Task.sleep(for: .milliseconds(Int(interval * 1000))) }
        }
    }
}

/// A plain text table with columns padded to their widest cell.
enum Table {
    static func render(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        var widths = Array(repeating: 0, count: first.count)
        for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
