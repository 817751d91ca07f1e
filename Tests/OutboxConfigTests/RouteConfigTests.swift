import Foundation
import Testing

@testable import OutboxConfig

/// `[smtp-client-NAME]` routes: parsing, validation, effective values, route choice and reload
/// plans.
@Suite("Routes")
struct RouteConfigTests {
    static let three = """
        [smtp-client]
        server = smtp.example.test
        port = 587
        smtp-connection-security = start-tls-required
        cnx-pool-size = 4

        [smtp-client-billing]
        server = billing.example.test
        senders = *@billing.example.test, invoices@example.test

        [smtp-client-helpdesk]
        server-type = GRAPH
        user = helpdesk@example.test
        client-id = app-1
        directory-id = tenant-1
        password = app-secret
        send-as = support@example.test
        """

    @Test("each route is complete on its own: an unset option has the reference's default, not the default route's")
    func routesAreIndependent() throws {
        let c = try load(Self.three)
        #expect(c.routeNames == ["default", "billing", "helpdesk"])
        #expect(c.smtpClient.port == 587)
        let billing = try #require(c.options(forRoute: "billing"))
        #expect(billing.server == "billing.example.test")
        #expect(billing.port == 25)
        #expect(billing.cnxPoolSize == 10)
        #expect(billing.smtpConnectionSecurity == .none)
        #expect(billing.senders == ["*@billing.example.test", "invoices@example.test"])
        let helpdesk = try #require(c.options(forRoute: "helpdesk"))
        #expect(helpdesk.serverType == .graph)
        #expect(helpdesk.sendAs == ["support@example.test"])
        #expect(c.options(forRoute: "nope") == nil)
    }

    @Test("check-config shows every route's effective values with their sources; secrets masked")
    func effectiveValues() throws {
        let c = try load(Self.three)
        #expect(value(of: "smtp-client-billing.port", in: c) == "25")
        #expect(value(of: "smtp-client-billing.server", in: c) == "billing.example.test")
        #expect(value(of: "smtp-client-helpdesk.password", in: c) == "********")
        #expect(c.source(of: "smtp-client-billing.server").description == "outbox.cfg:8")
        #expect(c.source(of: "smtp-client-billing.port") == .default)
        let table = CheckConfig.renderTable(c)
        #expect(table.contains("[smtp-client-billing]"))
        #expect(table.contains("[smtp-client-helpdesk]"))
        #expect(!table.contains("app-secret"))
        // The GRAPH scope note names its route.
        #expect(c.notes.contains { $0.hasPrefix("[smtp-client-helpdesk] scope:") })
    }

    @Test("the projection for a route's transport has its options and sources under plain names")
    func projection() throws {
        let c = try load(Self.three)
        let p = try #require(c.forRoute("billing"))
        #expect(p.smtpClient.server == "billing.example.test")
        #expect(p.routes.isEmpty)
        #expect(p.source(of: "server").description == "outbox.cfg:8")
        #expect(p.source(of: "port") == .default)
        #expect(try #require(c.forRoute("default")).smtpClient.port == 587)
    }

    @Test("route names: letters, digits, - and _; [smtp-client-default] is refused")
    func routeNames() {
        let bad = problems("[smtp-client-bill.ing]\nserver = a.example.test\n")
        #expect(bad.count == 1)
        #expect(bad.first?.contains("[smtp-client-bill.ing] = bill.ing is not a route name") == true, "\(bad)")
        #expect(bad.first?.contains("letters, digits") == true)
        #expect(problemCodes("[smtp-client-default]\nport = 25\n") == ["reserved_route_name"])
        #expect(problemCodes("[smtp-client-a_b-9]\nport = 25\n") == [])
    }

    @Test("problems in a route name the option as -o does, with the value and what is valid")
    func problemsNameTheRoute() {
        let found = problems("[smtp-client]\n\n[smtp-client-x]\nport = 70000\nfoo = 1\n")
        #expect(found.contains("outbox.cfg:4: smtp-client-x.port = 70000 is not a port number (1-65535)"), "\(found)")
        #expect(found.contains { $0.hasPrefix("outbox.cfg:5: smtp-client-x.foo is not an option of [smtp-client-x]") }, "\(found)")
        // A cross-option rule: GRAPH needs user and password.
        let graph = problems("[smtp-client-g]\nserver-type = GRAPH\nclient-id = c\ndirectory-id = d\n")
        #expect(graph.contains { $0.contains("smtp-client-g.server-type = GRAPH needs user") }, "\(graph)")
        #expect(problemCodes("[smtp-client-x]\nsenders = billing.example.test\n") == ["invalid_value"])
    }

    @Test("-o smtp-client-NAME.KEY=VALUE sets a route's option, and may define the route")
    func overrides() throws {
        let c = try load(Self.three, ["smtp-client-billing.port=2525", "smtp-client-extra.server=x.example.test"])
        #expect(c.options(forRoute: "billing")?.port == 2525)
        #expect(c.source(of: "smtp-client-billing.port") == .commandLine)
        #expect(c.options(forRoute: "extra")?.server == "x.example.test")
        #expect(problemCodes("", ["smtp-client-a#b.port=1"]) == ["invalid_route_name"])
    }

    @Test("a client's route and routes must name configured routes")
    func clientRoutes() throws {
        let client = """
            [client-app]
            user = app
            password-hash = $2b$12$OQmzGmxZl8G.yTsLT7QunOUVEp7EdnjN2LCXshj3UlLRTplx8U.He
            allowed-senders = *@example.test
            """
        let c = try load(Self.three + "\n" + client + "\nroute = billing\nroutes = billing helpdesk\napi-token = token-0123456789abcdef\n")
        let app = try #require(c.clients.first)
        #expect(app.route == "billing")
        #expect(app.mayChoose == ["billing", "helpdesk"])
        #expect(app.apiToken?.value == "token-0123456789abcdef")
        #expect(value(of: "client-app.api-token", in: c) == "********")
        let bad = problems(Self.three + "\n" + client + "\nroute = nowhere\n")
        #expect(bad.contains { $0.contains("route = nowhere names the route nowhere") }, "\(bad)")
        #expect(problemCodes(Self.three + "\n" + client + "\nroutes = default nowhere\n") == ["unknown_route"])
        // An operator's token is not a client's.
        let shared = "[outbox]\napi-tokens = token-0123456789abcdef\n" + client + "\napi-token = token-0123456789abcdef\n"
        #expect(problemCodes(shared) == ["duplicate_api_token"])
    }

    @Test("route choice, first match wins: client's request within its routes, client's route, senders, default")
    func choice() throws {
        let c = try load(Self.three)
        let hash = Secret("$2b$12$OQmzGmxZl8G.yTsLT7QunOUVEp7EdnjN2LCXshj3UlLRTplx8U.He")
        let pinned = ClientIdentity(name: "app", user: "app", passwordHash: hash, allowedSenders: ["*"], route: "helpdesk")
        let chooser = ClientIdentity(
            name: "multi", user: "m", passwordHash: hash, allowedSenders: ["*"], route: "default", routes: ["default", "billing"])
        let free = ClientIdentity(name: "free", user: "f", passwordHash: hash, allowedSenders: ["*"])
        func pick(_ client: ClientIdentity?, _ requested: String?, _ sender: String) -> String {
            switch c.chooseRoute(client: client, requested: requested, sender: sender) {
            case .success(let r): r
            case .failure(let e): "refused: \(e.code)"
            }
        }
        #expect(pick(pinned, nil, "x@billing.example.test") == "helpdesk")
        #expect(pick(pinned, "helpdesk", "x@example.test") == "helpdesk")
        #expect(pick(pinned, "billing", "x@example.test") == "refused: route_not_allowed")
        #expect(pick(chooser, "billing", "x@example.test") == "billing")
        #expect(pick(chooser, nil, "x@billing.example.test") == "default")
        #expect(pick(free, nil, "X@Billing.Example.Test") == "billing")
        #expect(pick(free, nil, "invoices@example.test") == "billing")
        #expect(pick(free, nil, "someone@example.test") == "default")
        #expect(pick(free, "billing", "someone@example.test") == "refused: route_not_allowed")
        #expect(pick(nil, "helpdesk", "someone@example.test") == "helpdesk")
        #expect(pick(nil, "nowhere", "someone@example.test") == "refused: unknown_route")
        #expect(pick(nil, nil, "") == "default")
    }

    @Test("a reload plan adds and removes routes whole and applies a kept route's options by their take-effect rules")
    func reloadPlan() throws {
        let old = try load(Self.three)
        let new = try load(
            """
            [smtp-client]
            server = smtp.example.test
            port = 587
            smtp-connection-security = start-tls-required
            cnx-pool-size = 4

            [smtp-client-billing]
            server = billing2.example.test
            cnx-pool-size = 3
            senders = *@billing.example.test

            [smtp-client-printers]
            server = printers.example.test
            """)
        let plan = old.planReload(to: new)
        #expect(plan.configuration.routeNames == ["default", "billing", "printers"])
        let billing = try #require(plan.configuration.options(forRoute: "billing"))
        #expect(billing.server == "billing2.example.test")
        #expect(billing.cnxPoolSize == 10)  // at restart: kept
        #expect(billing.senders == ["*@billing.example.test"])
        let applied = Set(plan.applied.map(\.name))
        #expect(
            applied.isSuperset(of: ["smtp-client-billing.server", "smtp-client-billing.senders", "smtp-client-printers", "smtp-client-helpdesk"]))
        #expect(plan.waiting.map(\.name) == ["smtp-client-billing.cnx-pool-size"])
        #expect(plan.configuration.source(of: "smtp-client-billing.server").description == "outbox.cfg:8")
        #expect(plan.configuration.options(forRoute: "printers")?.server == "printers.example.test")
    }
}
