import NIOConcurrencyHelpers
import NIOCore

/// The first bytes of a message's DATA stream (line ends repaired, dot-stuffed): the whole
/// stream, final dot included, when the message is small (`isComplete`).
package struct SMTPBodyStart: Sendable {
    var prefix = ByteBufferAllocator().buffer(capacity: 4096)
    var encoder = SMTPDataEncoder()
    /// True when the whole message (and the final dot) is in the prefix.
    package private(set) var isComplete = false
    /// Bytes of the message itself read so far (before line-end repair and dot-stuffing): its
    /// size, for SIZE=, when `isComplete`.
    package private(set) var messageByteCount = 0

    /// Reads and encodes chunks from `iterator` until about 64 KiB are ready or the message ends.
    /// Throws what the iterator throws (a message that cannot be produced).
    package static func read<Iterator: AsyncIteratorProtocol>(from iterator: inout Iterator) async throws -> SMTPBodyStart
    where Iterator.Element == ByteBuffer {
        var start = SMTPBodyStart()
        try await start.read(from: &iterator, upTo: SMTPConnection.chunkTarget)
        return start
    }

    /// Reads on from `iterator` until `limit` bytes of DATA stream are ready or the message ends.
    mutating func read<Iterator: AsyncIteratorProtocol>(from iterator: inout Iterator, upTo limit: Int) async throws
    where Iterator.Element == ByteBuffer {
        while !isComplete, prefix.readableBytes < limit {
            guard let chunk = try await iterator.next() else {
                encoder.finish(into: &prefix)
                isComplete = true
                return
            }
            messageByteCount += chunk.readableBytes
            encoder.encode(chunk, into: &prefix)
        }
    }

    /// The error a send reports when the message could not be read before anything of it was
    /// sent: the message is unusable (not retried), the connection stays usable.
    package static func readError(_ error: any Error) -> SMTPError {
        if let smtp = error as? SMTPError { return smtp }
        return SMTPError(stage: .mail, code: .invalidArgument, message: "reading the message failed: \(error)", isTransient: false)
    }
}

/// What a transaction's commands depend on: the server's capabilities and the transaction
/// options of the configuration. Every connection has one; connections to the same server with
/// the same settings have matching ones.
package final class SMTPTransactionProfile: Sendable {
    package let capabilities: SMTPCapabilities
    let configuration: SMTPClientConfiguration

    init(capabilities: SMTPCapabilities, configuration: SMTPClientConfiguration) {
        self.capabilities = capabilities
        self.configuration = configuration
    }

    /// A transaction prepared for `other` can run on a connection with this profile.
    package func matches(_ other: SMTPTransactionProfile) -> Bool {
        self === other
            || (capabilities.known == other.capabilities.known
                && capabilities.isExtended == other.capabilities.isExtended
                && configuration.sendPartial == other.configuration.sendPartial
                && configuration.enableDebug == other.configuration.enableDebug
                && configuration.dsnRet == other.configuration.dsnRet
                && configuration.dsnNotify == other.configuration.dsnNotify)
    }

    /// Transactions can be prepared ahead: the server pipelines, the whole transaction goes in one
    /// exchange (sendpartial), and no debug transcript is written.
    package var allowsPreparing: Bool {
        capabilities.pipelining && configuration.sendPartial && !configuration.enableDebug
    }
}

/// A small message's whole pipelined transaction, made ready before a connection is at hand:
/// MAIL, the RCPTs and DATA encoded and validated, the complete DATA stream. A connection
/// whose profile matches runs it as one exchange (`SMTPConnection.start` on its event loop, or
/// `send(_:handBack:)` from a task).
package struct SMTPPreparedTransaction: Sendable {
    package let profile: SMTPTransactionProfile
    let from: String
    let recipients: [String]
    let commands: ByteBuffer
    let body: ByteBuffer
    let bytes: Int
}

/// What became of a prepared transaction started on an event loop; `SMTPConnection.finish`
/// turns it into the transaction's result.
package struct SMTPPreparedOutcome: Sendable {
    let result: Result<SMTPTransactionStep, any Error>
    let handBack: SMTPHandBack
}

extension SMTPConnection {
    /// What this connection's transactions depend on.
    package var transactionProfile: SMTPTransactionProfile { profile }

    /// MAIL and one RCPT per recipient for `envelope`, validated; throws what the server's
    /// capabilities rule out (SMTPUTF8 not offered, over the SIZE limit) before anything is sent.
    static func plan(
        envelope: SMTPEnvelope, capabilities: SMTPCapabilities,
        configuration: SMTPClientConfiguration
    ) throws(SMTPError) -> (mail: SMTPCommand, rcpts: [SMTPCommand]) {
        guard !envelope.recipients.isEmpty else {
            throw SMTPError(stage: .rcpt, code: .invalidArgument, message: "the message has no recipients")
        }
        if envelope.requiresSMTPUTF8 && !capabilities.smtpUTF8 {
            throw SMTPError(
                stage: .mail, code: .unsupportedByServer,
                message:
                    "the message has non-ASCII addresses or headers that need SMTPUTF8, which \(configuration.host) does not offer; nothing was sent")
        }
        if let size = envelope.size, let limit = capabilities.sizeLimit, limit > 0, size > limit {
            throw SMTPError(
                stage: .mail, code: .unsupportedByServer,
                message: "the message is \(size) bytes, over the server's SIZE limit of \(limit) bytes; nothing was sent")
        }
        var mailParameters: [String] = []
        if let size = envelope.size, capabilities.sizeLimit != nil { mailParameters.append("SIZE=\(size)") }
        if envelope.eightBitMIME && capabilities.eightBitMIME { mailParameters.append("BODY=8BITMIME") }
        if envelope.requiresSMTPUTF8 { mailParameters.append("SMTPUTF8") }
        let dsn = envelope.dsn
        if capabilities.dsn, let ret = dsn?.ret ?? configuration.dsnRet { mailParameters.append("RET=\(ret.uppercased())") }
        if capabilities.dsn, let envid = dsn?.envid { mailParameters.append("ENVID=\(envid)") }
        let mail = SMTPCommand.mailFrom(envelope.from, parameters: mailParameters)
        var rcptParameters: [String] = []
        if capabilities.dsn, let notify = configuration.dsnNotify { rcptParameters.append("NOTIFY=\(notify.uppercased())") }
        let rcpts: [SMTPCommand]
        if capabilities.dsn, let dsn, !dsn.notify.isEmpty || !dsn.orcpt.isEmpty {
            // A relayed message's own NOTIFY and ORCPT, per recipient.
            rcpts = envelope.recipients.map { address in
                let key = address.lowercased()
                var parameters: [String] = []
                if let notify = dsn.notify[key] ?? configuration.dsnNotify { parameters.append("NOTIFY=\(notify.uppercased())") }
                if let orcpt = dsn.orcpt[key] { parameters.append("ORCPT=\(orcpt)") }
                return SMTPCommand.rcptTo(address, parameters: parameters)
            }
        } else {
            rcpts = envelope.recipients.map { SMTPCommand.rcptTo($0, parameters: rcptParameters) }
        }
        // Validate everything before the first byte leaves.
        try mail.validate()
        for rcpt in rcpts { try rcpt.validate() }
        return (mail, rcpts)
    }

    /// Prepares `envelope` with its complete body for connections with `profile`. Nil when the
    /// transaction cannot go as one prepared exchange (the server does not pipeline, the body is
    /// larger than one chunk, debug transcripts are on) or is invalid: `send` then runs it, and
    /// reports what is wrong.
    package static func prepare(envelope: SMTPEnvelope, start: SMTPBodyStart, for profile: SMTPTransactionProfile) -> SMTPPreparedTransaction? {
        guard start.isComplete, profile.allowsPreparing,
            let (mail, rcpts) = try? plan(envelope: envelope, capabilities: profile.capabilities, configuration: profile.configuration)
        else { return nil }
        var wire = ByteBufferAllocator().buffer(capacity: 128 * (rcpts.count + 2))
        mail.writeValidated(into: &wire)
        for rcpt in rcpts { rcpt.writeValidated(into: &wire) }
        SMTPCommand.data.writeValidated(into: &wire)
        return SMTPPreparedTransaction(
            profile: profile, from: envelope.from, recipients: envelope.recipients,
            commands: wire, body: start.prefix, bytes: start.encoder.bytesWritten)
    }

    func request(_ prepared: SMTPPreparedTransaction, handBack: Bool) -> SMTPTransactionRequest {
        SMTPTransactionRequest(
            commands: .pipelined(prepared.commands, dataIncluded: true), sender: prepared.from,
            rcptCount: prepared.recipients.count, body: prepared.body, sendPartial: true, handBack: handBack)
    }

    /// On the connection's event loop: starts `prepared` when the connection is free and its
    /// profile matches; returns false (and changes nothing) otherwise. `handBack` runs as in
    /// `send`; `completion` runs on the event loop when the exchange ended (give what it gets to
    /// `finish`). A connection pool calls this where a connection is handed back, so the next
    /// transaction's commands leave with the previous message's body, with no task woken first.
    package func start(
        _ prepared: SMTPPreparedTransaction, handBack: @escaping @Sendable () -> Void,
        completion: @escaping @Sendable (SMTPPreparedOutcome) -> Void
    ) -> Bool {
        guard channel.eventLoop.inEventLoop, profile.matches(prepared.profile), (try? acquire()) != nil else { return false }
        let token = makeHandBack(handBack)
        let waiter = SMTPTransactionWaiter(.prepared(completion), handBack: token)
        handler.value.startTransaction(request(prepared, handBack: true), waiter: waiter)
        return true
    }

    /// The result of a prepared transaction started with `start`: as `send` reports it (a
    /// refused MAIL or message throws, refused recipients are listed).
    package func finish(_ prepared: SMTPPreparedTransaction, _ outcome: SMTPPreparedOutcome) async throws(SMTPError) -> SMTPTransactionResult {
        do throws(SMTPError) {
            let step: SMTPTransactionStep
            do {
                step = try outcome.result.get()
            } catch {
                throw error as? SMTPError ?? SMTPError(stage: .mail, code: .connectionClosed, message: "\(error)")
            }
            guard case .done(let replies) = step else {
                throw SMTPError(stage: .data, code: .protocolViolation, message: "a prepared transaction asked for its body")
            }
            var result = try Self.conclude(replies, recipients: prepared.recipients, bytes: prepared.bytes)
            if outcome.handBack.done { result.handedBack = true } else { release() }
            return result
        } catch {
            if !outcome.handBack.done { settle() }
            throw error
        }
    }

    /// Runs a prepared transaction from a task (the connection was leased the usual way). Nil,
    /// with nothing sent, when the connection's profile does not match the one it was prepared
    /// for: `send` it the usual way then.
    package func send(_ prepared: SMTPPreparedTransaction, handBack: (@Sendable () -> Void)? = nil) async throws(SMTPError) -> SMTPTransactionResult?
    {
        guard profile.matches(prepared.profile) else { return nil }
        try acquire()
        let token = handBack.map { makeHandBack($0) }
        do throws(SMTPError) {
            let step = try await run(request(prepared, handBack: token != nil), waiter: SMTPTransactionWaiter(nil, handBack: token))
            guard case .done(let replies) = step else {
                throw SMTPError(stage: .data, code: .protocolViolation, message: "a prepared transaction asked for its body")
            }
            var result = try Self.conclude(replies, recipients: prepared.recipients, bytes: prepared.bytes)
            if token?.done == true { result.handedBack = true } else { release() }
            return result
        } catch {
            if token?.done != true { settle() }
            throw error
        }
    }
}
