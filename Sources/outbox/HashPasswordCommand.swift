import ArgumentParser
import Foundation
import HummingbirdBcrypt

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `outbox hash-password`: reads a password from standard input and prints its bcrypt hash for
/// a `[client-NAME] password-hash`. On a terminal it asks twice with echo off.
struct HashPasswordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash-password",
        abstract: "Reads a password from standard input and prints its bcrypt hash, for [client-NAME] password-hash.",
        discussion: """
            The password is the first line of standard input (its line end removed). On a terminal it is \
            asked for twice, without echo. The hash is printed on standard output; the password never is.
            """
    )

    @Option(name: .long, help: "bcrypt's cost (log2 of the rounds), 4 to 31. Each step doubles the time of every AUTH check.")
    var cost: Int = 12

    func validate() throws {
        guard (4...31).contains(cost) else { throw ValidationError("--cost \(cost) is not from 4 to 31") }
    }

    func run() throws {
        let password: String
        if isatty(STDIN_FILENO) == 1 {
            guard let first = Self.readHidden(prompt: "Password: "), let second = Self.readHidden(prompt: "Again: ") else {
                FileHandle.standardError.write(Data("outbox hash-password: no password given\n".utf8))
                throw ExitCode(2)
            }
            guard first == second else {
                FileHandle.standardError.write(Data("outbox hash-password: the two passwords differ\n".utf8))
                throw ExitCode(2)
            }
            password = first
        } else {
            var line = readLine(strippingNewline: true) ?? ""
            if line.hasSuffix("\r") { line.removeLast() }
            password = line
        }
        guard !password.isEmpty else {
            FileHandle.standardError.write(Data("outbox hash-password: the password is empty\n".utf8))
            throw ExitCode(2)
        }
        guard password.utf8.count <= 72 else {
            // bcrypt reads 72 bytes at most: a longer password would match any with the same start.
            FileHandle.standardError.write(Data("outbox hash-password: the password is longer than 72 bytes, bcrypt's limit\n".utf8))
            throw ExitCode(2)
        }
        print(Bcrypt.hash(password, cost: UInt8(cost)))
    }

    /// Reads a line from the terminal with echo off.
    static func readHidden(prompt: String) -> String? {
        FileHandle.standardError.write(Data(prompt.utf8))
        var old = termios()
        tcgetattr(STDIN_FILENO, &old)
        var quiet = old
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(STDIN_FILENO, TCSANOW, &quiet)
        defer {
            tcsetattr(STDIN_FILENO, TCSANOW, &old)
            FileHandle.standardError.write(Data("\n".utf8))
        }
        return readLine(strippingNewline: true)
    }
}
