#!/usr/bin/env bash
# Benchmarks `outbox serve`: accepted messages per second over HTTP (wrk, POST /v1/messages with
# a small JSON message) with SQLite and with PostgreSQL, and end-to-end delivered messages per
# second to smtp-sink, beside smtp-source against the same smtp-sink in the same invocation.
# Usage: scripts/bench-daemon.sh [--debug] [seconds-of-wrk (default 10)]; BENCH_BIN=path uses that binary.
# Builds the release binary unless --debug. Installs wrk and postgresql when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONFIG=release
if [ "${1:-}" = "--debug" ]; then CONFIG=debug; shift; fi
SECONDS_WRK=${1:-10}
SINK_PORT=${BENCH_SINK_PORT:-2526}
HTTP_PORT=${BENCH_HTTP_PORT:-18725}
WORK=$(mktemp -d /tmp/outbox-bench-daemon.XXXXXX)

need=()
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
if [ ${#need[@]} -gt 0 ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PG_URL=$(bash scripts/postgres-testbed.sh start)

# BENCH_BIN: an already built outbox binary (skips the build).
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  if [ "$CONFIG" = release ]; then swift build -c release --product outbox >/dev/null; fi
  BIN=$(swift build -c "$CONFIG" --show-bin-path)/outbox
fi

SINK_PID=""
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

/usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK_PORT 1024 &
SINK_PID=$!
sleep 0.5

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"from":"bench@example.test","to":"sink@example.test","subject":"bench","text":"A small benchmark message of about one kilobyte. ' .. string.rep("x", 800) .. '"}'
LUA

# Prints "<open> <delivered>"; retries a status request that failed (a busy daemon must not end
# the drain measurement early).
queue_open() {
  local out=""
  for _ in $(seq 1 50); do
    out=$(curl -s "http://127.0.0.1:$HTTP_PORT/v1/status" | python3 -c 'import json,sys; q=json.load(sys.stdin)["queue"]; print(q.get("queued",0)+q.get("deferred",0)+q.get("sending",0), q.get("delivered",0))' 2>/dev/null) && [ -n "$out" ] && break
    sleep 0.2
  done
  echo "${out:-0 0}"
}

run_store() {
  local name=$1 store=$2
  rm -rf "$WORK/data"
  if [ "$name" = postgres ]; then psql -q "$PG_URL" -c "DROP TABLE IF EXISTS outbox_messages; DROP TABLE IF EXISTS outbox_schema" >/dev/null 2>&1 || true; fi
  "$BIN" serve -o server=127.0.0.1 -o port=$SINK_PORT -o outbox.store="$store" -o outbox.data-directory="$WORK/data" \
    -o outbox.http-listen=127.0.0.1:$HTTP_PORT -o outbox.delivery-concurrency=10 -o cnx-pool-size=10 >"$WORK/$name.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
  local out
  out=$(wrk -t2 -c16 -d"${SECONDS_WRK}s" -s "$WORK/post.lua" "http://127.0.0.1:$HTTP_PORT/v1/messages")
  local rps non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  echo "$name: HTTP accepted/s (wrk -t2 -c16, ${SECONDS_WRK}s, deliveries running beside): $rps (non-2xx: ${non2xx:-0})"
  # End to end: from the end of the submissions until the queue is empty.
  local start end left delivered
  start=$(date +%s.%N)
  read -r left delivered < <(queue_open)
  local before=$delivered
  while [ "$left" -gt 0 ]; do sleep 0.2; read -r left delivered < <(queue_open); done
  end=$(date +%s.%N)
  read -r left delivered < <(queue_open)
  python3 -c "print('$name: end-to-end: %d messages delivered in total; drain of the last %d took %.2f s: %.0f delivered/s' % ($delivered, $delivered-$before, $end-$start, ($delivered-$before)/max($end-$start,1e-3)))"
  echo "$name: overall delivered/s over the whole run: $(python3 -c "print(round($delivered/($end-$start+$SECONDS_WRK)))")"
  kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
}

run_store sqlite sqlite
run_store postgres "$PG_URL"

N=20000
t0=$(date +%s.%N)
/usr/sbin/smtp-source -s 10 -m $N -l 1024 -d 127.0.0.1:$SINK_PORT
t1=$(date +%s.%N)
python3 -c "print('smtp-source -s 10 -m $N -l 1024 -d -> smtp-sink: %.0f messages/s' % ($N/($t1-$t0)))"
