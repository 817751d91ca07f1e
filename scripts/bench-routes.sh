#!/usr/bin/env bash
# Benchmarks pacing per route in `outbox serve`: three routes to three smtp-sink ports, route c
# limited to BENCH_LIMIT messages a minute (default 600). Reports each route's delivered/s over a
# window (default 5 minutes; BENCH_WINDOW=seconds for a quick run), counted by each smtp-sink,
# in three runs of the same invocation: route a alone, route b alone, then all three together.
# Holds: route c within 2% of its limit; a and b together at least 90% of what each does alone.
#
# Each sink answers DATA after BENCH_SINK_DELAY seconds (default 1, smtp-sink -w), so that a
# route's throughput is set by its own connections (cnx-pool-size, BENCH_POOL, default 16), not
# by the 2 CPU cores the routes share: what is measured is that one route's pacing and backlog
# do not slow the others. Each run preloads every route with a backlog that outlasts the window
# (over HTTP, before the window starts) and measures the sinks' counters over the window.
#
# Usage: scripts/bench-routes.sh [--debug]; BENCH_BIN=path uses that binary (else a release build).
# Env: BENCH_WINDOW (300), BENCH_LIMIT (600), BENCH_SINK_DELAY (1), BENCH_POOL (16),
#      BENCH_PORTS ("2546 2547 2548"), BENCH_HTTP_PORT (18745). Exit status 1 when a hold fails.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=release
if [ "${1:-}" = "--debug" ]; then CONFIG=debug; shift; fi
WINDOW=${BENCH_WINDOW:-300}
LIMIT=${BENCH_LIMIT:-600}
DELAY=${BENCH_SINK_DELAY:-1}
POOL=${BENCH_POOL:-16}
read -r PA PB PC <<<"${BENCH_PORTS:-2546 2547 2548}"
HTTP_PORT=${BENCH_HTTP_PORT:-18745}
WORK=$(mktemp -d /tmp/outbox-bench-routes.XXXXXX)

need=()
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  if [ "$CONFIG" = release ]; then swift build -c release --product outbox >/dev/null; fi
  BIN=$(swift build -c "$CONFIG" --show-bin-path)/outbox
fi

PIDS=()
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# smtp-sink -c writes "sess=S quit=Q mesg=M" and a carriage return after each message.
start_sinks() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  PIDS=()
  for port in $PA $PB $PC; do
    /usr/sbin/smtp-sink -c -w "$DELAY" -u nobody "127.0.0.1:$port" 1024 >"$WORK/sink-$port.out" 2>/dev/null &
    PIDS+=($!)
  done
  for port in $PA $PB $PC; do
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  done
}
count() { # port -> messages the sink received so far
  local c
  c=$(tail -c 256 "$WORK/sink-$1.out" 2>/dev/null | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1) || true
  echo "${c:-0}"
}

start_daemon() { # name
  rm -rf "$WORK/data"
  cat >"$WORK/outbox.cfg" <<CFG
[smtp-client]
server = 127.0.0.1
port = $PA
cnx-pool-size = $POOL

[smtp-client-b]
server = 127.0.0.1
port = $PB
cnx-pool-size = $POOL
senders = *@b.bench.test

[smtp-client-c]
server = 127.0.0.1
port = $PC
cnx-pool-size = $POOL
senders = *@c.bench.test
rate-limit-per-minute = $LIMIT

[outbox]
data-directory = $WORK/data
http-listen = 127.0.0.1:$HTTP_PORT
delivery-concurrency = $((POOL * 4))
CFG
  "$BIN" serve --config "$WORK/outbox.cfg" >"$WORK/$1.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
}
stop_daemon() { kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""; }

preload() { # domain count: submits `count` messages from sender@domain (8 at a time)
  python3 - "$HTTP_PORT" "$1" "$2" <<'PY'
import http.client, json, sys, threading
port, domain, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = json.dumps({"from": "bench@" + domain, "to": "sink@example.test", "subject": "bench", "text": "x" * 800})
def work(share):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(share):
        c.request("POST", "/v1/messages", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status != 202: raise SystemExit("submission refused: %d" % r.status)
threads = [threading.Thread(target=work, args=(total // 8 + (1 if i < total % 8 else 0),)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
PY
}

# Each unlimited route can do about POOL/DELAY a second: a backlog for 1.5 windows.
BACKLOG=$(python3 -c "print(int($POOL / max($DELAY, 0.05) * $WINDOW * 1.5) + 100)")
BACKLOG_C=$(python3 -c "print(int($LIMIT / 60 * $WINDOW * 1.5) + $LIMIT + 100)")

measure() { # name, routes...: prints "route delivered/s" for each
  local name=$1; shift
  local -A before
  sleep 5  # past the first connections
  for r in "$@"; do
    case $r in a) port=$PA ;; b) port=$PB ;; c) port=$PC ;; esac
    before[$r]=$(count "$port")
  done
  local t0; t0=$(date +%s.%N)
  sleep "$WINDOW"
  local t1; t1=$(date +%s.%N)
  for r in "$@"; do
    case $r in a) port=$PA ;; b) port=$PB ;; c) port=$PC ;; esac
    local after; after=$(count "$port")
    python3 -c "print('%s route %s: %d delivered in %.1f s: %.2f delivered/s' % ('$name', '$r', $after - ${before[$r]}, $t1 - $t0, ($after - ${before[$r]}) / ($t1 - $t0)))" | tee -a "$WORK/results"
  done
}

echo "bench-routes: window ${WINDOW}s, sinks -w ${DELAY}, cnx-pool-size $POOL, route c limited to $LIMIT/min; backlog $BACKLOG (a, b), $BACKLOG_C (c)"
for alone in a b; do
  start_sinks; start_daemon "alone-$alone"
  if [ $alone = a ]; then preload example.test "$BACKLOG"; else preload b.bench.test "$BACKLOG"; fi
  measure alone $alone
  stop_daemon
done
start_sinks; start_daemon together
preload c.bench.test "$BACKLOG_C"
preload example.test "$BACKLOG"
preload b.bench.test "$BACKLOG"
measure together a b c
stop_daemon

python3 - "$WORK/results" "$LIMIT" <<'PY'
import re, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+) route (\w): .*: ([0-9.]+) delivered/s", line)
    if m: rates[(m.group(1), m.group(2))] = float(m.group(3))
limit = float(sys.argv[2]) / 60
ok = True
c = rates[("together", "c")]
print("route c (limited to %.2f/s): %.2f/s, %+.1f%% of its limit" % (limit, c, 100 * (c - limit) / limit))
ok &= abs(c - limit) <= 0.02 * limit
for r in "ab":
    alone, together = rates[("alone", r)], rates[("together", r)]
    print("route %s: %.2f/s alone, %.2f/s beside the others: %.1f%%" % (r, alone, together, 100 * together / alone))
    ok &= together >= 0.9 * alone
print("holds: " + ("yes" if ok else "NO"))
sys.exit(0 if ok else 1)
PY
