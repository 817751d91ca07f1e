import Foundation
import Outbox
import OutboxConfig
import OutboxSMTPGrammar

/// `[client-NAME] intake-limit-per-minute` on the listener.
extension RelayServer {
    /// The client's limit, from the identities in force.
    private func intakeLimit(client: String) -> Int? {
        current.clients.first { $0.name == client }?.intakeLimitPerMinute
    }

    /// The `452 4.7.0` for a client over its limit; nil when it may submit.
    func intakeRefusal(client: String) -> SMTPServerReply? {
        guard let wait = intakeLimiter.wait(client: client, limit: intakeLimit(client: client), now: Date().timeIntervalSince1970) else {
            return nil
        }
        metrics.messages(result: "refused", reason: "intake_limit").increment()
        return SMTPServerReply(
            452, "4.7.0", "Too many messages from this client, try again in \(Int(wait.rounded(.up))) s (intake-limit-per-minute)")
    }

    /// Counts an accepted message of `client`.
    func noteIntake(client: String) {
        intakeLimiter.record(client: client, limit: intakeLimit(client: client), now: Date().timeIntervalSince1970)
    }
}
