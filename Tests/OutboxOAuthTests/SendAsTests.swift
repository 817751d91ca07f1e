import Foundation
import OutboxConfig
import OutboxMIME
import OutboxTestSupport
import Testing

@testable import OutboxTransports

/// `send-as` and `allow-delegate` per route, against the Graph emulator (which checks the
/// mailbox in the path, the From and the Sender as Exchange does).
@Suite("Send-as per route")
struct SendAsTests {
    @Test("the policy: own From, a From in send-as, on behalf with allow-delegate, refusals that name the route and the address")
    func policy() throws {
        let open = SendAsPolicy(route: "helpdesk", user: "agent@contoso.test", allowDelegate: true, sendAs: nil)
        #expect(try open.decide(from: "AGENT@contoso.test", component: "graph") == .own)
        #expect(try open.decide(from: "x@contoso.test", component: "graph") == .delegate("x@contoso.test"))
        let listed = SendAsPolicy(
            route: "helpdesk", user: "agent@contoso.test", allowDelegate: true, sendAs: ["support@contoso.test", "*@team.contoso.test"])
        #expect(try listed.decide(from: "support@contoso.test", component: "graph") == .sendAs("support@contoso.test"))
        #expect(try listed.decide(from: "a@team.contoso.test", component: "graph") == .sendAs("a@team.contoso.test"))
        #expect(try listed.decide(from: "boss@contoso.test", component: "graph") == .onBehalf("boss@contoso.test"))
        var strict = listed
        strict.allowDelegate = false
        #expect(try strict.decide(from: "support@contoso.test", component: "graph") == .sendAs("support@contoso.test"))
        do {
            _ = try strict.decide(from: "boss@contoso.test", component: "ews")
            Issue.record("a From outside send-as without allow-delegate was allowed")
        } catch {
            #expect(error.kind == .permanent)
            #expect(error.message.contains("route helpdesk"))
            #expect(error.message.contains("boss@contoso.test"))
        }
        let none = SendAsPolicy(route: "r2", user: "agent@contoso.test", allowDelegate: false, sendAs: nil)
        #expect(throws: DeliveryError.self) { try none.decide(from: "x@contoso.test", component: "graph") }
    }

    @Test("Graph: a From in send-as goes through /users/{from}/sendMail; another goes on behalf with a Sender header; refused without allow-delegate")
    func graph() async throws {
        let state = EmulatorState()
        await state.set {
            $0.tenantMailboxes = ["support@contoso.test"]
            $0.delegates = ["boss@contoso.test"]
        }
        try await withEmulator(state) { base in
            let c = configuration(base, type: .graph) {
                $0.smtpClient.allowDelegate = true
                $0.smtpClient.sendAs = ["support@contoso.test"]
            }
            let transport = try TransportFactory.make(configuration: c, route: "helpdesk")
            let (asSupport, supportBytes) = try rawMessage(from: "support@contoso.test")
            _ = try await transport.send(asSupport)
            #expect(await state.sendMailMailboxes == ["support@contoso.test"])
            #expect(await state.delivered == [supportBytes])
            // On behalf: from agent's mailbox, with Sender: agent.
            _ = try await transport.send(try rawMessage(from: "boss@contoso.test").0)
            #expect(await state.sendMailMailboxes == ["support@contoso.test", "agent@contoso.test"])
            let onBehalf = try #require(await state.delivered.last)
            #expect(Emulator.headerAddress(onBehalf, "Sender") == "agent@contoso.test")
            #expect(Emulator.fromHeader(onBehalf) == "boss@contoso.test")
            await transport.shutdown()

            // allow-delegate = false: only send-as (and the user's own) go; the refusal names the route and the address.
            let strict = try TransportFactory.make(
                configuration: configuration(base, type: .graph) { $0.smtpClient.sendAs = ["support@contoso.test"] }, route: "helpdesk")
            let requests = await state.graphRequests
            var refused: DeliveryError?
            do { _ = try await strict.send(try rawMessage(from: "boss@contoso.test").0) } catch let error as DeliveryError { refused = error }
            #expect(refused?.kind == .permanent)
            #expect(refused?.message.contains("route helpdesk") == true, "\(refused?.message ?? "")")
            #expect(refused?.message.contains("boss@contoso.test") == true)
            #expect(await state.graphRequests == requests, "refused before any request")
            _ = try await strict.send(try rawMessage(from: "support@contoso.test").0)
            #expect(await state.sendMailMailboxes.last == "support@contoso.test")
            await strict.shutdown()
        }
    }

    @Test("the Graph emulator refuses a Sender that is not the sending mailbox (the contract it checks)")
    func emulatorChecksSender() async throws {
        let state = EmulatorState()
        await state.set { $0.delegates = ["boss@contoso.test"] }
        try await withEmulator(state) { base in
            let transport = try TransportFactory.make(configuration: configuration(base, type: .graph) { $0.smtpClient.allowDelegate = true })
            var refused: DeliveryError?
            do {
                _ = try await transport.send(try rawMessage(from: "boss@contoso.test", extra: "Sender: <someone@contoso.test>\r\n").0)
            } catch let error as DeliveryError { refused = error }
            await transport.shutdown()
            #expect(refused?.message.contains("ErrorSendAsDenied") == true, "\(refused?.message ?? "")")
        }
    }

    @Test("EWS: a From in send-as goes with t:From (Exchange checks the right); another is refused without allow-delegate, naming the route")
    func ews() async throws {
        let state = EmulatorState()
        await state.set { $0.delegates = ["support@contoso.test"] }
        try await withEmulator(state) { base in
            let c = configuration(base, type: .ews) { $0.smtpClient.sendAs = ["support@contoso.test"] }
            let transport = try TransportFactory.make(configuration: c, route: "desk")
            let (message, bytes) = try rawMessage(from: "support@contoso.test")
            _ = try await transport.send(message)
            #expect(await state.delivered == [bytes])
            let before = await state.ewsRequests
            var refused: DeliveryError?
            do { _ = try await transport.send(try rawMessage(from: "boss@contoso.test").0) } catch let error as DeliveryError { refused = error }
            await transport.shutdown()
            #expect(refused?.kind == .permanent)
            #expect(refused?.message.contains("route desk") == true, "\(refused?.message ?? "")")
            #expect(refused?.message.contains("boss@contoso.test") == true)
            #expect(await state.ewsRequests == before, "refused before any request")
        }
    }
}
