#!/usr/bin/env bash
# throttle-testbed.sh - a private Postfix (its own directory, ports, log and maildir: the shared
# testbed is not touched) for the pacing tests, with one port that throttles like Exchange Online:
#
#   127.0.0.1:$PFCI_PLAIN_PORT (2788)      plain, AUTH PLAIN/LOGIN in clear (postfix-testbed.sh)
#   127.0.0.1:$THROTTLE_PORT (2791)        the same, plus check_policy_service: after N messages it
#                                          answers RCPT with "432 4.3.2 STOREDRV.ClientSubmit; sender
#                                          thread limit exceeded" for T seconds, then takes N again
#   127.0.0.1:$RCPT_LIMIT_PORT (2793)      plain, at most 2 recipients a transaction: the third RCPT
#                                          gets "452 4.5.3 Error: too many recipients"
#
# N and T come from $PFCI_DIR/policy.conf ("N T", default "5 4"), read at every request, so a
# test sets its own. Every decision is logged to $PFCI_DIR/log/policy.log ("<epoch> <action>
# <instance>"). Maildir: $PFCI_DIR/mail/sink/new; Postfix's log: $PFCI_DIR/log/postfix.log.
#
# usage: throttle-testbed.sh start | stop      env: PFCI_DIR (default /tmp/outbox-pfci-t)
set -euo pipefail
cd "$(dirname "$0")/.."
export PFCI_DIR=${PFCI_DIR:-/tmp/outbox-pfci-t}
export PFCI_OAUTH=0
export PFCI_SUBMISSION_PORT=${PFCI_SUBMISSION_PORT:-2787}
export PFCI_SMTPS_PORT=${PFCI_SMTPS_PORT:-2765}
export PFCI_PLAIN_PORT=${PFCI_PLAIN_PORT:-2788}
THROTTLE_PORT=${THROTTLE_PORT:-2791}
POLICY_PORT=${POLICY_PORT:-2792}
RCPT_LIMIT_PORT=${RCPT_LIMIT_PORT:-2793}

stop_policy() {
  if [ -f "$PFCI_DIR/policy.pid" ] && kill -0 "$(cat "$PFCI_DIR/policy.pid")" 2>/dev/null; then
    kill "$(cat "$PFCI_DIR/policy.pid")" || true
  fi
}

case "${1:-start}" in
  stop)
    stop_policy
    bash scripts/postfix-testbed.sh stop
    exit 0
    ;;
  start) ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

stop_policy
bash scripts/postfix-testbed.sh start
echo "5 4" > "$PFCI_DIR/policy.conf"
chmod 666 "$PFCI_DIR/policy.conf"
cat > "$PFCI_DIR/policy.py" <<'PY'
# A Postfix policy service (SMTPD_POLICY_README): allows N messages (by transaction instance),
# then answers 432 4.3.2 for T seconds, then allows N again.
import socketserver, sys, threading, time
port, conf, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
state = {"seen": set(), "until": 0.0}
def limits():
    try:
        n, t = open(conf).read().split()[:2]
        return int(n), float(t)
    except Exception:
        return 5, 4.0
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        attrs = {}
        for raw in self.rfile:
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                key, _, value = line.partition("=")
                attrs[key] = value
                continue
            n, t = limits()
            now = time.time()
            instance = attrs.get("instance", "?")
            with lock:
                if now < state["until"]:
                    action = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
                elif instance in state["seen"] or len(state["seen"]) < n:
                    state["seen"].add(instance)
                    action = "DUNNO"
                else:
                    state["until"] = now + t
                    state["seen"] = set()
                    action = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
                with open(log, "a") as f:
                    f.write("%.3f %s %s\n" % (now, action.split()[0], instance))
            self.wfile.write(("action=%s\n\n" % action).encode())
            self.wfile.flush()
            attrs = {}
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("127.0.0.1", port), Handler).serve_forever()
PY
: > "$PFCI_DIR/log/policy.log"
chmod 666 "$PFCI_DIR/log/policy.log"
python3 "$PFCI_DIR/policy.py" "$POLICY_PORT" "$PFCI_DIR/policy.conf" "$PFCI_DIR/log/policy.log" </dev/null >>"$PFCI_DIR/log/policy.err" 2>&1 &
echo $! > "$PFCI_DIR/policy.pid"
cat >> "$PFCI_DIR/etc/master.cf" <<MASTER
127.0.0.1:$THROTTLE_PORT inet n - n - - smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_recipient_restrictions=check_policy_service,inet:127.0.0.1:$POLICY_PORT
127.0.0.1:$RCPT_LIMIT_PORT inet n - n - - smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_recipient_limit=2
MASTER
postfix -c "$PFCI_DIR/etc" reload >/dev/null 2>&1
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$THROTTLE_PORT") 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$POLICY_PORT") 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$RCPT_LIMIT_PORT") 2>/dev/null && break; sleep 0.1; done
echo "throttle-testbed: ready: plain 127.0.0.1:$PFCI_PLAIN_PORT, throttling 127.0.0.1:$THROTTLE_PORT (policy 127.0.0.1:$POLICY_PORT, $PFCI_DIR/policy.conf)" >&2
