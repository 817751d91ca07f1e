import NIOCore

/// The SMTP client's protocol, as a value: events in (a reply received, the TLS handshake done,
/// a body written, a timer fired at an instant, the channel gone), actions out (write these
/// bytes, add TLS, fetch a token, complete or fail a waiter, close). No I/O, no clock: time
/// comes in with the events, so every path is tested without sockets
/// (`Tests/OutboxSMTPTests/StateMachine`). `SMTPClientHandler` runs the actions.
///
/// Split by concern: session set-up (greeting, EHLO/HELO, STARTTLS) in
/// `SMTPClientStateMachine+Session.swift`, AUTH in `+Authentication.swift`, transactions
/// (pipelined MAIL/RCPT/DATA, the body, the hand-back at the final dot) in `+Transaction.swift`.
///
/// A waiter (`Completion`, the runner's promise or continuation) is only kept and handed back in
/// an action. (Not a generic parameter: the machine's values then move on every reply through
/// generic value witnesses, which cost the single-connection path about a tenth of its speed.)
package struct SMTPClientStateMachine {
    /// Who waits for an outcome: opaque to the machine.
    package typealias Completion = SMTPWaiter

    /// Where the session stands.
    package enum State {
        /// The channel is not active yet.
        case initialized
        /// TLS is being negotiated: from the first byte (implicit TLS), or after STARTTLS's 220.
        case tlsHandshake(afterStartTLS: Bool)
        /// Waiting for the server's greeting.
        case greeting
        /// EHLO (or, after it was not understood, HELO) sent.
        case hello(ehlo: Bool)
        /// STARTTLS sent.
        case startTLS
        /// An OAuth 2.0 token is being fetched for XOAUTH2.
        case fetchingToken
        /// An AUTH exchange is under way.
        case authenticating(AuthStep)
        /// The session is set up: transactions and simple commands run (see `operations`).
        case ready
        /// The connection is closed or closing; every later event is ignored.
        case closed
    }

    /// What the runner does after an event. (The rare cases with large payloads, the session's
    /// facts and errors, are boxed: every event returns an action, and the common ones, a write
    /// or a transaction's replies, then move a third of the bytes.)
    package enum Action {
        case none
        /// Write these bytes and flush.
        case write(ByteBuffer)
        /// STARTTLS was accepted and nothing followed its 220: add the TLS handler first in the
        /// pipeline; report `tlsHandshakeCompleted` when it is done.
        case addTLSHandler
        /// Fetch an OAuth 2.0 access token for XOAUTH2; report `tokenReceived` or `tokenFailed`.
        case fetchToken
        /// The session is set up (greeting, EHLO, STARTTLS, AUTH): complete its waiter.
        indirect case sessionReady(Completion, SMTPSessionFacts)
        /// Write a message's body (ending with the final dot) and flush; report
        /// `bodyWritten(transaction:)` when the write completed. When `handBack` is set, the
        /// connection can take its next transaction as soon as this write was issued: run the
        /// hand-back of that waiter then (its commands may follow the dot in the same write).
        case writeBody(ByteBuffer, transaction: Int, handBack: Completion?)
        /// Write one chunk of a streamed body, flush, and report `bodyChunkWritten` when done.
        case writeBodyChunk(ByteBuffer)
        /// A transaction reached a result: its replies (the final reply when the body was sent).
        /// `acknowledgeAtOnce`: a transaction pipelined behind it awaits its replies now.
        case transactionDone(Completion, SMTPTransactionReplies, acknowledgeAtOnce: Bool)
        /// A streamed transaction's commands were accepted: its sender streams the body now.
        case sendBody(Completion, SMTPTransactionReplies)
        /// A simple command (NOOP, RSET, QUIT) was answered.
        case commandDone(Completion, SMTPReply)
        /// One waiter failed; the connection stays usable.
        indirect case fail(Completion, SMTPError)
        /// The connection is over: fail each waiter with its error, then close the channel.
        indirect case close(SMTPError, [(Completion, SMTPError)])
    }

    let configuration: SMTPClientConfiguration
    let helloName: String
    package internal(set) var state: State = .initialized
    /// When the current wait ends (nil: nothing awaited).
    var waitDeadline: NIODeadline? {
        didSet { updateNextDeadline() }
    }
    /// What the session learnt, as it goes.
    package internal(set) var facts = SMTPSessionFacts()
    var session: Completion?
    var authentication: Authentication?
    var stepStarted = NIODeadline.uptimeNanoseconds(0)
    /// Transactions and simple commands written or about to be (the first one is answered next).
    /// Rarely more than two (a message awaiting the reply to its dot and the next one behind it):
    /// an array, whose elements the standard library moves without generic witnesses.
    var operations: [Operation] = []
    /// Operations waiting until nothing is awaited any more (see `enqueue`).
    var deferred: [Operation] = []
    /// The transaction whose body is being streamed, when one is.
    var streaming: Streaming? {
        didSet { updateNextDeadline() }
    }
    var nextTransactionID = 0
    var transcriptLines: [String] = []
    /// The first failure; everything after it fails with it.
    package internal(set) var failure: SMTPError? {
        didSet { hasFailed = failure != nil }
    }
    /// `failure != nil`, as a flag the runner checks for every reply.
    package private(set) var hasFailed = false

    /// A machine for one connection with `configuration`, saying `EHLO helloName`; `session` is
    /// completed when the session is set up (`sessionReady`) or failed (`close`).
    package init(configuration: SMTPClientConfiguration, helloName: String, session: Completion) {
        self.configuration = configuration
        self.protocolTimeout = configuration.protocolTimeout.timeAmount
        self.dataTerminationTimeout = configuration.dataTerminationTimeout.timeAmount
        self.operations.reserveCapacity(4)
        self.helloName = helloName
        self.session = session
    }

    /// `configuration`'s protocol and end-of-data timeouts, converted once.
    let protocolTimeout: TimeAmount
    let dataTerminationTimeout: TimeAmount

    /// The instant the runner's timer must fire at next, if any. (Stored, kept up to date as
    /// the waits change: the runner reads it after every event, and reading a stored property
    /// of the machine never copies the machine.)
    package private(set) var nextDeadline: NIODeadline?

    mutating func updateNextDeadline() {
        if let streaming, streaming.writesPending > 0 {
            nextDeadline = min(streaming.stallDeadline, waitDeadline ?? .distantFuture)
        } else {
            nextDeadline = waitDeadline
        }
    }

    // MARK: events every state handles

    /// The channel became active (connected; with implicit TLS, the handshake has started).
    package mutating func channelActive(now: NIODeadline) -> Action {
        guard case .initialized = state else { return .none }
        stepStarted = now
        if configuration.security == .implicitTLS {
            state = .tlsHandshake(afterStartTLS: false)
            waitDeadline = now + configuration.connectTimeout.timeAmount
        } else {
            state = .greeting
            waitDeadline = now + protocolTimeout
        }
        return .none
    }

    /// One complete reply was parsed. `unprocessedBytes`: what the read buffer still holds after
    /// it (bytes after STARTTLS's 220 are an injection attempt: the connection is closed).
    package mutating func replyReceived(_ reply: SMTPReply, unprocessedBytes: Int, now: NIODeadline) -> Action {
        switch state {
        case .initialized, .tlsHandshake, .fetchingToken:
            return closeUnexpected(reply)
        case .greeting:
            return greetingReceived(reply, now: now)
        case .hello(let ehlo):
            return helloAnswered(reply, ehlo: ehlo, now: now)
        case .startTLS:
            return startTLSAnswered(reply, unprocessedBytes: unprocessedBytes, now: now)
        case .authenticating(let step):
            return authAnswered(reply, step: step, now: now)
        case .ready:
            return operationAnswered(reply, now: now)
        case .closed:
            return .none
        }
    }

    /// A reply nobody asked for: a 421 shutdown notice, or a broken server.
    mutating func closeUnexpected(_ reply: SMTPReply) -> Action {
        closeWithFailure(unexpectedReplyError(reply))
    }

    /// What a reply nobody asked for means.
    func unexpectedReplyError(_ reply: SMTPReply) -> SMTPError {
        if reply.code == 421 {
            return SMTPError(
                stage: currentStage, code: .reply, reply: reply,
                message: "the server is closing the connection: \(reply)")
        }
        return SMTPError(
            stage: .protocol, code: .protocolViolation, reply: reply,
            message: "the server sent a reply nobody asked for: \(reply)")
    }

    /// The server's bytes could not be parsed, or the pipeline failed.
    package mutating func errorCaught(_ error: SMTPError) -> Action {
        if case .closed = state { return .none }
        return closeWithFailure(error)
    }

    /// The channel is gone.
    package mutating func channelInactive() -> Action {
        if case .closed = state { return .none }
        let greeted = facts.greeting != nil
        return closeWithFailure(
            SMTPError(
                stage: currentStage, code: .connectionClosed,
                message: greeted ? "the server closed the connection" : "the server closed the connection before its greeting"))
    }

    /// The runner's timer fired at `now`: a wait whose deadline passed fails the connection.
    package mutating func timerFired(now: NIODeadline) -> Action {
        if case .closed = state { return .none }
        if let streaming, streaming.writesPending > 0, streaming.stallDeadline <= now {
            return closeWithFailure(
                SMTPError(
                    stage: .data, code: .timeout,
                    message: "no answer from the server within \(SMTPConnection.format(configuration.protocolTimeout)) during DATA",
                    isTransient: true))
        }
        guard let deadline = waitDeadline, deadline <= now else { return .none }
        let stage = currentStage
        let timeout: Duration
        switch state {
        case .tlsHandshake: timeout = configuration.connectTimeout
        case .ready where operations.first?.awaitsDot == true: timeout = configuration.dataTerminationTimeout
        default: timeout = configuration.protocolTimeout
        }
        if case .ready = state, let head = operations.first, head.awaitsDot {
            return closeWithFailure(
                SMTPError(
                    stage: .data, code: .timeout,
                    message: "no answer within \(SMTPConnection.format(timeout)) after the end of the message",
                    isTransient: true))
        }
        return closeWithFailure(
            SMTPError(
                stage: stage, code: .timeout,
                message: "no answer from the server within \(SMTPConnection.format(timeout)) during \(stage.rawValue.uppercased())",
                isTransient: true))
    }

    /// The step a failure nobody else names happened at.
    var currentStage: SMTPError.Stage {
        switch state {
        case .initialized, .greeting: return .greeting
        case .tlsHandshake: return .tls
        case .hello: return .ehlo
        case .startTLS: return .starttls
        case .fetchingToken, .authenticating: return .auth
        case .ready: return operations.first?.stage ?? .mail
        case .closed: return failure?.stage ?? .protocol
        }
    }

    /// Ends the connection: every waiter fails with what the failure means for it.
    mutating func closeWithFailure(_ error: SMTPError) -> Action {
        if case .closed = state { return .none }
        let first = failure ?? error
        failure = first
        state = .closed
        waitDeadline = nil
        var failures: [(Completion, SMTPError)] = []
        if let session {
            self.session = nil
            failures.append((session, Self.sessionError(error)))
        }
        var isHead = true
        for operation in operations {
            if let completion = operation.completion {
                failures.append((completion, operation.error(for: error, isHead: isHead)))
            }
            isHead = false
        }
        operations = []
        for operation in deferred {
            if let completion = operation.completion { failures.append((completion, Self.notSent(error))) }
        }
        deferred = []
        streaming = nil
        return .close(error, failures)
    }

    /// The error a session waiter gets.
    static func sessionError(_ error: SMTPError) -> SMTPError { error }

    /// Nothing of an operation was written before the connection ended: it can go out on a
    /// fresh connection.
    static func notSent(_ error: SMTPError) -> SMTPError {
        SMTPError(
            stage: .mail, code: .connectionClosed,
            message: "the connection had closed before the message was sent: \(error.message)", isTransient: true)
    }

    /// `state` after the set-up: ready, with the session's waiter completed.
    mutating func sessionReady(now: NIODeadline) -> Action {
        state = .ready
        waitDeadline = nil
        guard let session else { return .none }
        self.session = nil
        return .sessionReady(session, facts)
    }

    /// Records how long a step of the set-up took.
    mutating func mark(_ step: String, now: NIODeadline) {
        facts.stepTimings.append((step, .nanoseconds((now - stepStarted).nanoseconds)))
        stepStarted = now
    }

    /// Notes a command for the transcript (only when `enable-debug` is on; secrets redacted).
    mutating func transcript(_ command: SMTPCommand) {
        if configuration.enableDebug { transcriptLines.append("C: " + command.redactedText) }
    }

    /// The transcript lines since the last call (`enable-debug`), for the runner to log.
    package mutating func takeTranscript() -> [String] {
        defer { transcriptLines = [] }
        return transcriptLines
    }

    /// Encodes a command the machine built itself (validated when it was planned).
    mutating func encode(_ command: SMTPCommand) -> ByteBuffer {
        transcript(command)
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        command.writeValidated(into: &buffer)
        return buffer
    }
}

/// What the session set-up learnt: the greeting, the capabilities of the last EHLO, whether
/// TLS and AUTH were used, how long each step took.
package struct SMTPSessionFacts: Sendable {
    package var greeting: SMTPReply?
    package var capabilities = SMTPCapabilities(extensions: [:], isExtended: false)
    package var tlsEstablished = false
    package var authMechanism: SASLMechanism?
    /// When the AUTH credential (an OAuth 2.0 token) expires, when known.
    package var credentialExpiry: ContinuousClock.Instant? {
        get { expiry?.instant }
        set { expiry = newValue.map(InstantBox.init) }
    }
    /// (Boxed: `ContinuousClock.Instant` is a resilient type of the standard library, of unknown
    /// size at compile time. Held inline, it gave these facts, the state machine holding them
    /// and its actions a layout computed at run time: every event's field access, enum tag and
    /// copy went through the runtime.)
    private var expiry: InstantBox?
    package var stepTimings: [(step: String, duration: Duration)] = []
    /// Things worth a notice in the log (STARTTLS not offered or refused with start-tls).
    package var notices: [String] = []
    /// What TLS negotiated (filled in by the runner, which reads it from the TLS handler).
    package var tlsInfo: SMTPTLSInfo?
}

/// An instant behind a reference, of fixed size (see `SMTPSessionFacts.credentialExpiry`).
final class InstantBox: Sendable {
    let instant: ContinuousClock.Instant
    init(_ instant: ContinuousClock.Instant) { self.instant = instant }
}
