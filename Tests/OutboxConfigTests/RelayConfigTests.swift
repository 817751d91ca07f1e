import Foundation
import Testing

@testable import OutboxConfig

@Suite("Configuration: [relay] and [client-NAME]")
struct RelayConfigTests {
    let hash = "$2b$04$" + String(repeating: "A", count: 53)

    @Test("defaults: loopback listener, loopback networks, limits")
    func defaults() throws {
        let c = try load("")
        #expect(c.relay.listen == ["127.0.0.1:2525"])
        #expect(c.relay.allowedNetworks.map(\.description) == ["127.0.0.0/8", "::1"])
        #expect(c.relay.maxMessageSize == 26_214_400)
        #expect(c.relay.maxRecipients == 100)
        #expect(c.relay.requireTLSForAuth)
        #expect(c.clients.isEmpty)
        #expect(value(of: "relay.command-timeout", in: c) == "00:05:00")
    }

    @Test("an empty listen turns the listener off; overrides with -o relay.KEY and -o client-NAME.KEY")
    func overrides() throws {
        let c = try load(
            "[relay]\nlisten =\n",
            ["relay.max-recipients=7", "client-a.user=a", "client-a.password-hash=\(hash)", "client-a.allowed-senders=*@x.test"])
        #expect(c.relay.listen.isEmpty)
        #expect(c.relay.maxRecipients == 7)
        #expect(c.clients.map(\.user) == ["a"])
        #expect(c.source(of: "relay.max-recipients") == .commandLine)
    }

    @Test("a wrong value names the option, the value and what is valid")
    func wrongValues() {
        #expect(
            problems("[relay]\nmax-recipients = lots\nlisten = localhost\nallowed-networks = 10.0.0.0/33\n") == [
                "outbox.cfg:2: max-recipients = lots is not an integer from 1 to 100000",
                "outbox.cfg:3: listen = localhost is not a list of host:port addresses with ports 1-65535 (e.g. 127.0.0.1:2525, [::1]:2525 or 0.0.0.0:587)",
                "outbox.cfg:4: allowed-networks = 10.0.0.0/33 is not a list of networks: 10.0.0.0/33 is not an address or CIDR (e.g. 127.0.0.0/8, 192.0.2.10, 2001:db8::/32)",
            ])
        #expect(problemCodes("[relay]\nmax-recipent = 3\n") == ["unknown_option"])
    }

    @Test("never an open relay: a non-loopback listen with everyone allowed is refused")
    func openRelay() {
        #expect(problemCodes("[relay]\nlisten = 0.0.0.0:25\nallowed-networks = 0.0.0.0/0\n") == ["open_relay"])
        #expect(problemCodes("[relay]\nlisten = 127.0.0.1:25\nallowed-networks = 0.0.0.0/0\n") == [])
        #expect(problemCodes("[relay]\nlisten = 0.0.0.0:25\nallowed-networks = 192.0.2.0/24\n") == [])
        #expect(problemCodes("[relay]\nlisten = [::]:25\nallowed-networks = ::/0\n") == ["open_relay"])
    }

    @Test("TLS: listen-tls needs a certificate; certificate and key go together")
    func tls() {
        #expect(problemCodes("[relay]\nlisten-tls = 127.0.0.1:465\n") == ["relay_tls_needs_certificate"])
        let cert = temporaryFile("x")
        #expect(problemCodes("[relay]\ntls-certificate-file = \(cert)\n") == ["relay_tls_incomplete"])
        #expect(problemCodes("[relay]\ntls-certificate-file = /nonexistent.pem\n").contains("invalid_value"))
    }

    @Test("clients: complete, bcrypt hash, unique users; the hash is never printed")
    func clients() throws {
        let c = try load("[client-scanner]\nuser = scanner@x.test\npassword-hash = \(hash)\nallowed-senders = *@x.test, a@y.test\n")
        #expect(c.clients.first?.allowedSenders == ["*@x.test", "a@y.test"])
        #expect(c.clients.first?.allows(sender: "Bob@X.test") == true)
        #expect(c.clients.first?.allows(sender: "bob@y.test") == false)
        let rows = c.effectiveOptions().filter { $0.name.hasPrefix("client-scanner.") }
        // user, password-hash, allowed-senders, route, routes, api-token, intake-limit-per-minute.
        #expect(rows.count == 7)
        #expect(!rows.contains { $0.value.contains(hash) })
        #expect(problemCodes("[client-a]\nuser = a\n") == ["client_incomplete"])
        #expect(problemCodes("[client-a]\nuser = a\npassword-hash = secret\nallowed-senders = *\n") == ["invalid_value"])
        let wrongHash = problems("[client-a]\nuser = a\npassword-hash = hunter2\nallowed-senders = *\n").joined()
        #expect(!wrongHash.contains("hunter2"))
        #expect(problemCodes("[client-a]\nuser = a\npassword-hash = \(hash)\nallowed-senders = a*b@x\n") == ["invalid_value"])
        #expect(
            problemCodes(
                "[client-a]\nuser = u\npassword-hash = \(hash)\nallowed-senders = *\n[client-b]\nuser = U\npassword-hash = \(hash)\nallowed-senders = *\n"
            ) == ["duplicate_client_user"])
    }

    @Test("CIDR matching, IPv4-mapped IPv6 included")
    func cidr() throws {
        let net = try #require(CIDR("192.0.2.0/24"))
        #expect(net.contains(CIDR.parse(address: "192.0.2.77")!))
        #expect(!net.contains(CIDR.parse(address: "192.0.3.1")!))
        #expect(net.contains(CIDR.parse(address: "::ffff:192.0.2.1")!))
        #expect(CIDR("2001:db8::/32")!.contains(CIDR.parse(address: "2001:db8:1::5")!))
        #expect(CIDR("10.1.2.3/8")?.description == "10.0.0.0/8")
        #expect(CIDR("nonsense") == nil)
    }
}
