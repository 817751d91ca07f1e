import ArgumentParser
import Foundation
import NIOHTTP1

/// `outbox queue move ID --route R`, or `outbox queue move --from-route F --route R`: waiting
/// messages go to another route (e.g. the messages of a route that a reload removed).
struct QueueMove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move",
        abstract: "Move a queued or deferred message to another route; or every waiting message of a route (--from-route).")

    @OptionGroup var connection: QueueConnection

    @Argument(help: "The message's id (or use --from-route).")
    var id: String?

    @Option(name: .long, help: "The route to move to (default, or NAME of [smtp-client-NAME]).")
    var route: String

    @Option(name: .customLong("from-route"), help: "Every queued or deferred message of this route.")
    var fromRoute: String?

    @Flag(name: .long, help: "Print the API's JSON.")
    var json = false

    func validate() throws {
        guard (id == nil) != (fromRoute == nil) else { throw ValidationError("give a message id or --from-route, not both") }
    }

    func run() async throws {
        let api = try connection.client()
        if let id {
            let m = try await api.call(.POST, QueueAPI.path(id) + "/route", body: ["route": route])
            if json { QueueAPI.printJSON(m) } else { print("\(id): route \(m["route"] as? String ?? route) (\(m["status"] as? String ?? "?"))") }
            return
        }
        let answer = try await api.call(.POST, "/v1/messages/route", body: ["route": route, "from_route": fromRoute ?? ""])
        if json {
            QueueAPI.printJSON(answer)
        } else {
            let done = (answer["done"] as? [Any])?.count ?? 0
            let conflicts = (answer["conflicts"] as? [Any])?.count ?? 0
            print("\(done) moved to route \(route)\(conflicts > 0 ? ", \(conflicts) not waiting (not moved)" : "")")
        }
    }
}
