/// A message's DSN parameters (RFC 3461) as its submitter gave them: RET and ENVID for the
/// message, NOTIFY and ORCPT per recipient (keyed by the recipient's address, lower-cased).
///
/// The listener reads them from `MAIL`/`RCPT` (`SMTPServerCommand`), the queue keeps them with
/// the message's envelope, and the client passes them on when the next server offers DSN.
///
/// C: `MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ+2B1`
/// C: `RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com`
public struct SMTPDSNParameters: Sendable, Hashable {
    /// `FULL` or `HDRS`.
    public var ret: String?
    /// xtext, as received.
    public var envid: String?
    /// `NEVER`, or a list of `SUCCESS`, `FAILURE`, `DELAY`, per recipient.
    public var notify: [String: String]
    /// `addr-type;xtext`, as received, per recipient.
    public var orcpt: [String: String]

    /// Parameters as received; every one may be absent.
    public init(ret: String? = nil, envid: String? = nil, notify: [String: String] = [:], orcpt: [String: String] = [:]) {
        self.ret = ret
        self.envid = envid
        self.notify = notify
        self.orcpt = orcpt
    }
}
