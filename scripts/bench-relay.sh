#!/usr/bin/env bash
# Benchmarks Outbox's SMTP relay listener (`outbox serve` with a [relay] section) against the
# reference for "accept durably over SMTP, then deliver": a private Postfix instance that queues
# every message (with fsync) and relays it to Postfix's smtp-sink. Both get the same load in the
# same invocation, one after the other (never overlapping), from Postfix's own load client:
#
#   smtp-source -s 16 -m N -l 1024 -f a@example.test -t b@example.test 127.0.0.1:PORT
#
# (16 parallel sessions, a new connection per message, N messages of 1 KiB), and each relays to
# a fresh smtp-sink on 127.0.0.1. For each run it measures
#   accepted/s    N / wall time of smtp-source (every message answered 250 after its final dot)
#   end-to-end/s  N / time from the start of smtp-source until smtp-sink has received all N
# Before each timed run one probe message goes the whole way (it proves the path works, so a
# misconfiguration fails in seconds, and warms both sides up); it is not counted.
# The Postfix instance comes from scripts/postfix-testbed.sh (own directory and ports, no OAuth),
# reconfigured as /work/shared/TESTBED.md's "Postfix doing Outbox's job" says.
#
# Usage: scripts/bench-relay.sh
# Prints a table, then as its LAST line (the interface for whoever parses it):
#   bench-relay: outbox_accepted_per_sec=A outbox_e2e_per_sec=B postfix_accepted_per_sec=C postfix_e2e_per_sec=D e2e_ratio=R
# rates as integers, R = B/D with two decimals. A skipped or failed measurement is 0 (and R is
# then 0.00); the exit status is 1 when a run failed (not every message reached smtp-sink within
# the timeout, smtp-source reported errors, a peer did not start), 0 otherwise.
# Quote the ratio, not the absolute rates: they depend on the machine and on what else runs on it.
#
# Environment:
#   BENCH_MESSAGES       messages per timed run (default 20000)
#   OUTBOX_BIN           a prebuilt `outbox` binary; default: `swift build -c release --product outbox`
#                        here and $(swift build -c release --show-bin-path)/outbox
#   BENCH_TIMEOUT        seconds allowed for each timed run, submission plus delivery (default 600);
#                        every other wait is bounded too, so the script always ends
#   BENCH_SINK_PORT      smtp-sink's port (default 2626)
#   BENCH_RELAY_PORT     Outbox's relay listener (default 2625)
#   BENCH_HTTP_PORT      Outbox's HTTP API (default 18726)
#   BENCH_PF_DIR         the Postfix instance's directory (default /tmp/outbox-bench-relay-pf; left
#                        behind with its log for inspection, wiped by the next run)
#   BENCH_PF_PLAIN_PORT  the Postfix instance's plain-text SMTP port, the one fed (default 2788);
#   BENCH_PF_SUBMISSION_PORT / BENCH_PF_SMTPS_PORT  its other two ports (default 2787 / 2765)
#   BENCH_SKIP_OUTBOX=1  run only the Postfix half (no build; the outbox_* values are 0)
#   BENCH_SKIP_POSTFIX=1 run only the Outbox half (the postfix_* values are 0)
#
# Installs what is missing with apt-get (postfix for smtp-sink, smtp-source and the reference;
# dovecot-core and openssl, which the testbed script needs; curl for Outbox's HTTP API), so it
# works on a fresh Debian machine as root. Only loopback (127.0.0.1) is ever listened on or
# connected to.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C # $EPOCHREALTIME and awk must use a decimal point

N=${BENCH_MESSAGES:-20000}
TIMEOUT=${BENCH_TIMEOUT:-600}
SINK_PORT=${BENCH_SINK_PORT:-2626}
RELAY_PORT=${BENCH_RELAY_PORT:-2625}
HTTP_PORT=${BENCH_HTTP_PORT:-18726}
PF_DIR=${BENCH_PF_DIR:-/tmp/outbox-bench-relay-pf}
PF_PLAIN_PORT=${BENCH_PF_PLAIN_PORT:-2788}
PF_SUBMISSION_PORT=${BENCH_PF_SUBMISSION_PORT:-2787}
PF_SMTPS_PORT=${BENCH_PF_SMTPS_PORT:-2765}
SKIP_OUTBOX=${BENCH_SKIP_OUTBOX:-0}
SKIP_POSTFIX=${BENCH_SKIP_POSTFIX:-0}
HOST=127.0.0.1
SESSIONS=16
SIZE=1024

log() { echo "bench-relay: $*" >&2; }
die() { log "$*"; exit 1; }

case "$N" in '' | *[!0-9]* | 0) die "BENCH_MESSAGES must be a positive integer" ;; esac
case "$TIMEOUT" in '' | *[!0-9]* | 0) die "BENCH_TIMEOUT must be a positive integer" ;; esac

# --- tools -----------------------------------------------------------------------------------
need=()
{ [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ] && command -v postfix >/dev/null; } || need+=(postfix)
if [ "$SKIP_POSTFIX" != 1 ]; then
  command -v dovecot >/dev/null || need+=(dovecot-core)
  command -v openssl >/dev/null || need+=(openssl)
fi
if [ "$SKIP_OUTBOX" != 1 ]; then command -v curl >/dev/null || need+=(curl); fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # (another apt-get may hold the lock for a while on a fresh machine: wait for it, bounded)
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$SKIP_OUTBOX" != 1 ]; then
  if [ -n "${OUTBOX_BIN:-}" ]; then
    BIN=$OUTBOX_BIN
  else
    log "building outbox (release)"
    swift build -c release --product outbox >&2
    BIN="$(swift build -c release --show-bin-path)/outbox"
  fi
  [ -x "$BIN" ] || die "no outbox binary at $BIN"
fi

WORK=$(mktemp -d /tmp/outbox-bench-relay.XXXXXX)
SINK_PID=""
SOURCE_PID=""
DAEMON_PID=""
PF_STARTED=0

# Stops a child process: SIGTERM, up to $2 seconds, then SIGKILL; reaps it quietly.
stop_pid() { # pid seconds
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
pf_stop() {
  if [ "$PF_STARTED" = 1 ]; then
    PFCI_DIR=$PF_DIR bash scripts/postfix-testbed.sh stop >>"$WORK/pf-testbed.log" 2>&1 || true
    PF_STARTED=0
  fi
}
cleanup() {
  if [ -n "$SOURCE_PID" ]; then stop_pid "$SOURCE_PID" 5; SOURCE_PID=""; fi # timeout passes TERM on
  if [ -n "$DAEMON_PID" ]; then stop_pid "$DAEMON_PID" 30; DAEMON_PID=""; fi
  pf_stop
  if [ -n "$SINK_PID" ]; then stop_pid "$SINK_PID" 5; SINK_PID=""; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
now() { echo "$EPOCHREALTIME"; }
# awk does the floating-point arithmetic (no python needed).
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%d", (t > 0 ? n / t + 0.5 : 0) }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# --- smtp-sink with a counter ------------------------------------------------------------------
# "Received by smtp-sink" is counted by smtp-sink itself, the same yardstick for both runs:
# with -c it writes running counters to stdout ("sess=S quit=Q mesg=M" then a carriage return)
# whenever a session ends, a QUIT is executed or a final "." is received, flushed at once. The
# last "mesg=" value in its output file is the number of messages received so far. (Counting
# `status=sent` in Postfix's log depends on postlogd's lag, and Outbox's `delivered` count on its
# store; both are printed as cross-checks.) A record read while it is being written can only
# show a prefix of the number, i.e. too small, never too large: the wait just goes on.
# Each run gets a fresh smtp-sink, so its counter starts at 0.
start_sink() { # name
  SINK_OUT="$WORK/sink-$1.out"
  if port_open "$SINK_PORT"; then log "port $SINK_PORT (smtp-sink) is already in use; set BENCH_SINK_PORT"; return 1; fi
  /usr/sbin/smtp-sink -c -u nobody "$HOST:$SINK_PORT" 1024 >"$SINK_OUT" 2>"$WORK/sink-$1.err" &
  SINK_PID=$!
  local i
  for ((i = 0; i < 50; i++)); do port_open "$SINK_PORT" && return 0; sleep 0.1; done
  log "smtp-sink did not start on $HOST:$SINK_PORT: $(cat "$WORK/sink-$1.err")"; return 1
}
sink_count() {
  local c
  c=$(tail -c 256 "$SINK_OUT" 2>/dev/null | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1) || true
  echo "${c:-0}"
}
stop_sink() { if [ -n "$SINK_PID" ]; then stop_pid "$SINK_PID" 5; SINK_PID=""; fi; }

# Waits until smtp-sink has received $1 messages or $2 (epoch seconds) has passed, or the
# function named $3 (checked every 2 s) says the run cannot finish. Prints the time of arrival
# of the last message, or nothing.
wait_sink() { # target deadline give-up-check
  local target=$1 deadline=$2 check=$3 i=0
  while :; do
    if [ "$(sink_count)" -ge "$target" ]; then now; return 0; fi
    awk -v a="$(now)" -v d="$deadline" 'BEGIN { exit !(a > d) }' && return 0
    i=$((i + 1))
    if [ $((i % 20)) = 0 ] && ! "$check"; then return 0; fi
    sleep 0.1
  done
}

# Sends one probe message to port $1 and waits (up to $2 s) until smtp-sink has it.
probe() { # port seconds
  if ! timeout 60 /usr/sbin/smtp-source -s 1 -m 1 -l "$SIZE" -f a@example.test -t b@example.test "$HOST:$1" >"$WORK/probe.out" 2>&1; then
    log "probe message to $HOST:$1 failed: $(cat "$WORK/probe.out")"; return 1
  fi
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ "$(sink_count)" -ge 1 ] && return 0; sleep 0.1; done
  log "the probe message did not reach smtp-sink within $2 s"; return 1
}

# The timed run: smtp-source against port $2, then the wait for smtp-sink. Sets
# ACC_S (seconds of smtp-source), E2E_S (seconds until smtp-sink had all N; empty if not reached)
# and SOURCE_OK.
timed_run() { # name port give-up-check
  local name=$1 port=$2 check=$3 base t0 t1 t2 rc=0
  base=$(sink_count)
  log "$name: smtp-source -s $SESSIONS -m $N -l $SIZE -> $HOST:$port"
  t0=$(now)
  # (in the background: `wait` lets an INT or TERM trap run at once, not after smtp-source)
  timeout "$TIMEOUT" /usr/sbin/smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f a@example.test -t b@example.test \
    "$HOST:$port" >"$WORK/source-$name.out" 2>&1 &
  SOURCE_PID=$!
  wait "$SOURCE_PID" || rc=$?
  SOURCE_PID=""
  t1=$(now)
  SOURCE_OK=1
  if [ "$rc" != 0 ] || [ -s "$WORK/source-$name.out" ]; then
    SOURCE_OK=0
    if [ "$rc" = 124 ]; then log "$name: smtp-source did not finish within ${TIMEOUT}s (killed)"; fi
    log "$name: smtp-source exited with $rc; its output (first lines):"
    head -n 5 "$WORK/source-$name.out" >&2
  fi
  ACC_S=$(secs "$t0" "$t1")
  t2=$(wait_sink $((base + N)) "$(awk -v a="$t0" -v t="$TIMEOUT" 'BEGIN { printf "%.6f", a + t }')" "$check")
  E2E_S=""
  if [ -n "$t2" ]; then E2E_S=$(secs "$t0" "$t2"); fi
  RECEIVED=$(($(sink_count) - base))
}

# Results (0 = not measured).
O_ACC=0 O_E2E=0 P_ACC=0 P_E2E=0
O_NOTE="skipped" P_NOTE="skipped"
O_ROW="" P_ROW=""
FAILED=0

# --- Postfix: the reference ------------------------------------------------------------------
pf_alive() { [ -f "$PF_DIR/queue/pid/master.pid" ] && kill -0 "$(cat "$PF_DIR/queue/pid/master.pid")" 2>/dev/null; }
pf_check() { # gives up when Postfix is gone or has bounced a message (it will not get to N)
  pf_alive || { log "postfix: the instance has stopped"; return 1; }
  if grep -q 'status=bounced' "$PF_DIR/log/postfix.log" 2>/dev/null; then
    log "postfix: messages bounced:"; grep 'status=bounced' "$PF_DIR/log/postfix.log" | head -n 3 >&2; return 1
  fi
}

run_postfix() {
  local p
  for p in "$PF_PLAIN_PORT" "$PF_SUBMISSION_PORT" "$PF_SMTPS_PORT"; do
    port_open "$p" && { P_NOTE="port $p is in use"; log "postfix: $P_NOTE"; return 1; }
  done
  start_sink postfix || { P_NOTE="smtp-sink did not start"; return 1; }
  log "postfix: starting a private instance in $PF_DIR (plain SMTP on $HOST:$PF_PLAIN_PORT)"
  PF_STARTED=1
  if ! PFCI_DIR=$PF_DIR PFCI_OAUTH=0 PFCI_DELIVERY=maildir PFCI_SUBMISSION_PORT=$PF_SUBMISSION_PORT \
    PFCI_SMTPS_PORT=$PF_SMTPS_PORT PFCI_PLAIN_PORT=$PF_PLAIN_PORT bash scripts/postfix-testbed.sh start >"$WORK/pf-testbed.log" 2>&1; then
    cat "$WORK/pf-testbed.log" >&2; P_NOTE="the Postfix instance did not start"; return 1
  fi
  # Relay everything to smtp-sink (TESTBED.md). The testbed's catch-all `virtual_mailbox_maps =
  # static:sink/` would also make every domain a virtual mailbox domain (Postfix's default is
  # virtual_mailbox_domains = $virtual_mailbox_maps), delivered to the local maildir by the
  # `virtual` transport rather than by default_transport: both are emptied.
  postconf -c "$PF_DIR/etc" -e \
    "default_transport = smtp:[$HOST]:$SINK_PORT" \
    "relay_transport = smtp:[$HOST]:$SINK_PORT" \
    "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "default_destination_concurrency_limit = 20" \
    "smtp_tls_security_level = none" \
    "virtual_mailbox_domains =" \
    "virtual_mailbox_maps =" >>"$WORK/pf-testbed.log" 2>&1 || { P_NOTE="postconf failed"; return 1; }
  postfix -c "$PF_DIR/etc" reload >>"$WORK/pf-testbed.log" 2>&1 </dev/null || { P_NOTE="postfix reload failed"; return 1; }
  sleep 1
  if ! probe "$PF_PLAIN_PORT" 30; then
    tail -n 20 "$PF_DIR/log/postfix.log" >&2 || true; P_NOTE="the probe message did not get through"; return 1
  fi
  grep -q "relay=$HOST\[$HOST\]:$SINK_PORT.*status=sent" "$PF_DIR/log/postfix.log" ||
    log "postfix: warning: the probe's status=sent line (relay=$HOST[$HOST]:$SINK_PORT) is not in the log yet"

  timed_run postfix "$PF_PLAIN_PORT" pf_check
  local sent
  sleep 1 # let postlogd write the last lines
  sent=$(grep -c 'status=sent' "$PF_DIR/log/postfix.log" || true)
  sent=$((sent - 1)) # the probe
  pf_stop
  stop_sink
  if [ "$SOURCE_OK" = 1 ]; then P_ACC=$(rate "$N" "$ACC_S"); fi # a failed submission run is no rate
  [ -n "$E2E_S" ] && P_E2E=$(rate "$N" "$E2E_S")
  P_ROW=$(printf '%-8s %10s %10s %12s %14s %10s %10s' postfix "$ACC_S" "${E2E_S:--}" "$P_ACC" "$P_E2E" "$RECEIVED" "$sent")
  P_NOTE="ok; log in $PF_DIR/log/postfix.log"
  if [ "$SOURCE_OK" != 1 ]; then P_NOTE="smtp-source reported errors"; return 1; fi
  if [ -z "$E2E_S" ]; then P_NOTE="only $RECEIVED of $N reached smtp-sink within ${TIMEOUT}s"; return 1; fi
}

# --- Outbox ------------------------------------------------------------------------------------
# Prints the queue counts of GET /v1/status as "queued sending deferred delivered failed unknown"
# (the "queue" object is flat; other objects, e.g. "dispatcher", have a "delivered" key too).
outbox_queue() {
  local json q k v out=""
  json=$(curl -s --max-time 5 "http://$HOST:$HTTP_PORT/v1/status" 2>/dev/null) || true
  q=$(printf '%s' "$json" | grep -o '"queue": *{[^}]*}' | head -n 1) || true
  [ -n "$q" ] || return 1
  for k in queued sending deferred delivered failed unknown; do
    v=$(printf '%s' "$q" | grep -o "\"$k\": *[0-9]*" | grep -o '[0-9]*$') || true
    out="$out ${v:-0}"
  done
  echo "${out# }"
}
outbox_check() { # gives up when the daemon is gone or its queue has nothing left to send
  kill -0 "$DAEMON_PID" 2>/dev/null || { log "outbox: the daemon has exited"; return 1; }
  local q queued sending deferred delivered failed unknown
  q=$(outbox_queue) || return 0 # a busy daemon may not answer in time: keep waiting
  read -r queued sending deferred delivered failed unknown <<<"$q"
  if [ $((queued + sending + deferred)) = 0 ] && [ $((delivered + failed + unknown)) -ge $((N + 1)) ]; then
    log "outbox: queue empty but smtp-sink short: delivered=$delivered failed=$failed unknown=$unknown"; return 1
  fi
}

run_outbox() {
  local p
  for p in "$RELAY_PORT" "$HTTP_PORT"; do
    port_open "$p" && { O_NOTE="port $p is in use"; log "outbox: $O_NOTE"; return 1; }
  done
  start_sink outbox || { O_NOTE="smtp-sink did not start"; return 1; }
  # The [smtp-client] and [outbox] keys are those bench-daemon.sh passes with -o (docs/options.md).
  cat >"$WORK/outbox.cfg" <<EOF
[smtp-client]
server = $HOST
port = $SINK_PORT
smtp-connection-security = none
cnx-pool-size = 10

[outbox]
data-directory = $WORK/outbox-data
http-listen = $HOST:$HTTP_PORT
delivery-concurrency = 16

[relay]
listen = $HOST:$RELAY_PORT
allowed-networks = 127.0.0.0/8
EOF
  log "outbox: starting $BIN serve (relay on $HOST:$RELAY_PORT, HTTP on $HOST:$HTTP_PORT)"
  : >"$WORK/outbox.out"; : >"$WORK/outbox.err"
  "$BIN" serve --config "$WORK/outbox.cfg" >>"$WORK/outbox.out" 2>>"$WORK/outbox.err" </dev/null &
  DAEMON_PID=$!
  # Ready when it prints "outbox: relay listening on smtp://127.0.0.1:PORT". If its stdout is
  # block-buffered (a file, not a terminal) that line may come late: an open relay port plus a
  # healthy HTTP API also counts, with a warning.
  local i ready="" line="outbox: relay listening on smtp://$HOST:$RELAY_PORT"
  for ((i = 0; i < 600; i++)); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    if grep -qF "$line" "$WORK/outbox.out"; then ready=line; break; fi
    if [ $((i % 10)) = 9 ] && port_open "$RELAY_PORT" && curl -sf --max-time 2 "http://$HOST:$HTTP_PORT/healthz" >/dev/null; then
      sleep 1; grep -qF "$line" "$WORK/outbox.out" && ready=line || ready=port
      break
    fi
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
      log "outbox: the relay did not come up within 60 s; stdout and stderr (last lines):"
    else
      local rc=0; wait "$DAEMON_PID" 2>/dev/null || rc=$?; DAEMON_PID=""
      log "outbox: the daemon exited with status $rc before its relay came up; stdout and stderr (last lines):"
    fi
    tail -n 20 "$WORK/outbox.out" "$WORK/outbox.err" >&2 || true
    O_NOTE="the relay did not come up"; return 1
  fi
  [ "$ready" = port ] && log "outbox: warning: the relay port is open but \"$line\" was not printed (stdout buffered?)"
  for ((i = 0; i < 100; i++)); do curl -sf --max-time 2 "http://$HOST:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
  if ! probe "$RELAY_PORT" 60; then
    tail -n 20 "$WORK/outbox.err" >&2 || true; O_NOTE="the probe message did not get through"; return 1
  fi

  timed_run outbox "$RELAY_PORT" outbox_check
  local q queued sending deferred delivered failed unknown
  q=$(outbox_queue) || q="? ? ? ? ? ?"
  read -r queued sending deferred delivered failed unknown <<<"$q"
  stop_pid "$DAEMON_PID" 30; DAEMON_PID=""
  stop_sink
  if [ "$SOURCE_OK" = 1 ]; then O_ACC=$(rate "$N" "$ACC_S"); fi # a failed submission run is no rate
  [ -n "$E2E_S" ] && O_E2E=$(rate "$N" "$E2E_S")
  local said=$delivered
  case "$delivered" in *[!0-9]* | '') ;; *) said=$((delivered - 1)) ;; esac # the probe
  O_ROW=$(printf '%-8s %10s %10s %12s %14s %10s %10s' outbox "$ACC_S" "${E2E_S:--}" "$O_ACC" "$O_E2E" "$RECEIVED" "$said")
  O_NOTE="ok; store counts after the run: queued=$queued sending=$sending deferred=$deferred delivered=$delivered failed=$failed unknown=$unknown (incl. the probe)"
  if [ "$SOURCE_OK" != 1 ]; then O_NOTE="smtp-source reported errors; $O_NOTE"; return 1; fi
  if [ -z "$E2E_S" ]; then O_NOTE="only $RECEIVED of $N reached smtp-sink within ${TIMEOUT}s; $O_NOTE"; return 1; fi
}

# --- runs (one after the other) -----------------------------------------------------------------
if [ "$SKIP_POSTFIX" != 1 ]; then
  run_postfix || { FAILED=1; P_NOTE="FAILED: $P_NOTE"; pf_stop; stop_sink; }
fi
if [ "$SKIP_OUTBOX" != 1 ]; then
  run_outbox || {
    FAILED=1; O_NOTE="FAILED: $O_NOTE"
    if [ -n "$DAEMON_PID" ]; then stop_pid "$DAEMON_PID" 30; DAEMON_PID=""; fi
    stop_sink
  }
fi

RATIO=$(awk -v b="$O_E2E" -v d="$P_E2E" 'BEGIN { printf "%.2f", (b > 0 && d > 0 ? b / d : 0) }')
echo
echo "bench-relay: $N messages of $SIZE bytes, smtp-source -s $SESSIONS (a new connection per message), relayed to smtp-sink on $HOST:$SINK_PORT"
printf '%-8s %10s %10s %12s %14s %10s %10s\n' run accepted_s e2e_s accepted/s end-to-end/s at_sink peer_says
[ -n "$P_ROW" ] && echo "$P_ROW"
[ -n "$O_ROW" ] && echo "$O_ROW"
echo "postfix: $P_NOTE"
echo "outbox: $O_NOTE"
echo "(accepted_s: wall time of smtp-source; e2e_s: from its start until smtp-sink had all $N; at_sink: messages smtp-sink"
echo " received in the timed run; peer_says: the relay's own count, Postfix's status=sent log lines or Outbox's store's"
echo " delivered count, without the probe message sent before the timed run)"
echo "bench-relay: outbox_accepted_per_sec=$O_ACC outbox_e2e_per_sec=$O_E2E postfix_accepted_per_sec=$P_ACC postfix_e2e_per_sec=$P_E2E e2e_ratio=$RATIO"
exit "$FAILED"
