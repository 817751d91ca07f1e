import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A port for a server under test: below the kernel's ephemeral range (32768-60999 by default),
/// so that no outgoing connection of the tests can take it between this choice and the server's
/// bind (which made `outbox serve` exit with "Address already in use"), and free now, with the
/// next three.
package func freePort(sourceLocation: SourceLocation = #_sourceLocation) -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: 20000..<30000)
        if (port..<port + 4).allSatisfy(canBind) { return port }
    }
    Issue.record("no free port found between 20000 and 30000", sourceLocation: sourceLocation)
    return 29990
}

private func canBind(_ port: Int) -> Bool {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr = in_addr(s_addr: inet_addr("127.0.0.1"))
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}
