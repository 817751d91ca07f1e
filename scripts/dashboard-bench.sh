#!/usr/bin/env bash
# The dashboard over 1,000,000 messages, in SQLite and in PostgreSQL: seeds the queue (SQL,
# through the schema the daemon itself creates, so the counters' triggers run), starts a
# release `outbox serve` on it, and times each page with curl (5 runs each; median and worst).
# The target is 200 ms a page.
#   scripts/dashboard-bench.sh [sqlite|postgres|both]   (default both)
# Settings: N (messages, default 1000000), OUTBOX_BIN (default: a release build made here),
# RUNS (default 5). PostgreSQL runs on its own cluster (127.0.0.1:55439, /tmp/outbox-pg-dashbench),
# not on the tests' shared one, and is stopped at the end. BENCH_DIR=DIR keeps the seeded stores
# (in DIR, and the cluster running) and reuses them on the next run instead of seeding again.
# Retention is set past the seeded ages: a first start over 1M old messages would otherwise purge
# them while the pages are timed (a steady queue has no such backlog).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHICH=${1:-both}
N=${N:-1000000}
RUNS=${RUNS:-5}
command -v sqlite3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >/dev/null; }
if [ -z "${OUTBOX_BIN:-}" ]; then
  swift build -c release --product outbox >&2
  OUTBOX_BIN=$(swift build -c release --show-bin-path)/outbox
fi
if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"
  WORK=$(cd "$BENCH_DIR" && pwd)
else
  WORK=$(mktemp -d /tmp/outbox-dashbench.XXXXXX)
fi
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  if [ -z "${BENCH_DIR:-}" ]; then
    PGCI_DIR=/tmp/outbox-pg-dashbench PGCI_PORT=55439 bash "$ROOT/scripts/postgres-testbed.sh" stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
NOW=$(date +%s)

# The rows: 90% delivered, 4% deferred, 3% failed, 1% queued, 1% cancelled, 1% unknown (possible
# duplicates), queued over the last 30 days in order; then 3,000 more sent in the last hour
# (inserted as sending, then updated, so the per-minute counters see them).
STATUS_SQL="CASE WHEN i % 100 < 90 THEN 'delivered' WHEN i % 100 < 94 THEN 'deferred' WHEN i % 100 < 97 THEN 'failed'
  WHEN i % 100 < 98 THEN 'queued' WHEN i % 100 < 99 THEN 'cancelled' ELSE 'unknown' END"

write_config() { # store
  cat >"$WORK/outbox.conf" <<CONF
[outbox]
data-directory = $WORK/data
http-listen = 127.0.0.1:$PORT
store = $1
retry-initial-delay = 01:00:00
retention-content = 8760:00:00
retention-records = 8760:00:00
CONF
}

start_daemon() {
  "$OUTBOX_BIN" serve --config "$WORK/outbox.conf" >"$WORK/stdout.log" 2>"$WORK/stderr.log" &
  PID=$!
  for _ in $(seq 1 600); do grep -q "outbox: ready on" "$WORK/stdout.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "outbox serve did not start:" >&2; tail -20 "$WORK/stderr.log" >&2; exit 1
}

stop_daemon() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

time_pages() { # label
  local id jar=$WORK/cookies
  id=$(curl -s "http://127.0.0.1:$PORT/v1/messages?status=failed&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"][0]["id"])')
  curl -s -c "$jar" -o /dev/null "http://127.0.0.1:$PORT/"
  echo "$1: load average before timing: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
  printf '%-10s %-58s %9s %9s %8s\n' store page median_ms worst_ms bytes
  # Whole addresses (user7@example.test) and duplicates go by indexes; parts of addresses
  # (user7@), the subject and the time range by the bounded scan window.
  for page in "/" "/messages" "/messages?status=deferred" "/messages?status=failed&cursor=500000" \
    "/messages?route=default" "/messages?route=default&status=deferred" \
    "/messages?sender=user7%40example.test" "/messages?sender=user7%40" \
    "/messages?recipient=rcpt42%40example.org" "/messages?recipient=rcpt42%40example.org&status=failed" "/messages?recipient=rcpt42%40" \
    "/messages?subject=Report+999999" "/messages?duplicate=true" "/messages?duplicate=true&status=failed" \
    "/messages?since=$(date -u -d @$((NOW - 86400)) +%Y-%m-%dT%H:%M)" "/messages?until=$(date -u -d @$((NOW - 29 * 86400)) +%Y-%m-%dT%H:%M)" \
    "/messages/$id" "/messages/$id/raw" "/credentials" "/v1/messages?status=deferred&limit=50" \
    "/v1/messages?recipient=rcpt42%40example.org&limit=50" "/v1/status"; do
    local times=() bytes=0
    for _ in $(seq 1 "$RUNS"); do
      read -r t b < <(curl -s -b "$jar" -o /dev/null -w '%{time_total} %{size_download}\n' "http://127.0.0.1:$PORT$page")
      times+=("$t"); bytes=$b
    done
    python3 - "$1" "$page" "$bytes" "${times[@]}" <<'PY'
import statistics, sys
label, page, size, *t = sys.argv[1:]
ms = sorted(float(x) * 1000 for x in t)
print(f"{label:<10} {page[:58]:<58} {statistics.median(ms):9.1f} {ms[-1]:9.1f} {size:>8}")
PY
  done
  echo "$1: load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"
}

bench_sqlite() {
  write_config sqlite
  local db=$WORK/data/outbox.sqlite t0
  if [ -f "$WORK/seeded-sqlite" ]; then
    echo "sqlite: reusing the seeded $db" >&2
    start_daemon; time_pages sqlite; stop_daemon
    return
  fi
  rm -rf "$WORK/data"
  start_daemon; stop_daemon # creates the schema (migrations, triggers)
  t0=$(date +%s)
  sqlite3 "$db" >/dev/null <<SQL
PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $N)
INSERT INTO messages (id, mail_from, recipients, content, message_id, size, status, created_at, updated_at, age_base,
                      next_attempt_at, attempt_count, possible_duplicate, attempts, subject)
SELECT printf('bench-%08d', i), printf('user%d@example.test', i % 1000),
       printf('[{"address":"rcpt%d@example.org","status":"accepted"}]', i % 5000),
       zeroblob(300), printf('<%d@bench>', i), 300, $STATUS_SQL,
       $NOW - 2592000 + i * 2592000.0 / $N, $NOW - 2592000 + i * 2592000.0 / $N, $NOW - 2592000 + i * 2592000.0 / $N,
       CASE WHEN i % 100 BETWEEN 90 AND 93 THEN $NOW + 3600 WHEN i % 100 = 97 THEN $NOW + 3600 ELSE NULL END,
       1, CASE WHEN i % 100 = 99 THEN 1 ELSE 0 END,
       '[{"number":1,"startedAt":0,"durationSeconds":0.2,"transport":"smtp","reply":"250 2.0.0 Ok","outcome":"delivered","recipients":[]}]',
       printf('Report %d', i)
FROM s;
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
INSERT INTO messages (id, mail_from, recipients, content, size, status, created_at, updated_at, age_base, subject)
SELECT printf('recent-%05d', i), 'recent@example.test', '[{"address":"r@example.org","status":"pending"}]', zeroblob(300), 300,
       'sending', $NOW - 3600 + i * 1.2, $NOW - 3600 + i * 1.2, $NOW - 3600 + i * 1.2, printf('Recent %d', i) FROM s;
UPDATE messages SET status = CASE WHEN seq % 10 = 0 THEN 'failed' ELSE 'delivered' END WHERE id LIKE 'recent-%';
PRAGMA wal_checkpoint(TRUNCATE);
SQL
  echo "sqlite: seeded $N + 3000 messages in $(($(date +%s) - t0)) s ($(du -h "$db" | cut -f1))" >&2
  touch "$WORK/seeded-sqlite"
  start_daemon
  time_pages sqlite
  stop_daemon
}

bench_postgres() {
  local url t0
  url=$(PGCI_DIR=/tmp/outbox-pg-dashbench PGCI_PORT=55439 bash scripts/postgres-testbed.sh start)
  write_config "$url"
  if [ -f "$WORK/seeded-postgres" ]; then
    echo "postgres: reusing the seeded tables" >&2
    start_daemon; time_pages postgres; stop_daemon
    return
  fi
  psql -q "$url" -c "DROP TABLE IF EXISTS outbox_messages, outbox_schema, outbox_message_chunks, outbox_message_counts, outbox_message_rates, outbox_message_recipients CASCADE" >/dev/null
  write_config "$url"
  start_daemon; stop_daemon
  t0=$(date +%s)
  psql -q -v ON_ERROR_STOP=1 "$url" <<SQL
SET synchronous_commit = off;
INSERT INTO outbox_messages (id, mail_from, recipients, content, message_id, size, status, created_at, updated_at, age_base,
                             next_attempt_at, attempt_count, possible_duplicate, attempts, subject)
SELECT format('bench-%s', lpad(i::text, 8, '0')), format('user%s@example.test', i % 1000),
       format('[{"address":"rcpt%s@example.org","status":"accepted"}]', i % 5000),
       decode(repeat('00', 300), 'hex'), format('<%s@bench>', i), 300, $STATUS_SQL,
       $NOW - 2592000 + i * 2592000.0 / $N, $NOW - 2592000 + i * 2592000.0 / $N, $NOW - 2592000 + i * 2592000.0 / $N,
       CASE WHEN i % 100 BETWEEN 90 AND 93 THEN $NOW + 3600 WHEN i % 100 = 97 THEN $NOW + 3600 ELSE NULL END,
       1, CASE WHEN i % 100 = 99 THEN 1 ELSE 0 END,
       '[{"number":1,"startedAt":0,"durationSeconds":0.2,"transport":"smtp","reply":"250 2.0.0 Ok","outcome":"delivered","recipients":[]}]',
       format('Report %s', i)
FROM generate_series(1, $N) AS i;
INSERT INTO outbox_messages (id, mail_from, recipients, content, size, status, created_at, updated_at, age_base, subject)
SELECT format('recent-%s', i), 'recent@example.test', '[{"address":"r@example.org","status":"pending"}]', decode(repeat('00', 300), 'hex'),
       300, 'sending', $NOW - 3600 + i * 1.2, $NOW - 3600 + i * 1.2, $NOW - 3600 + i * 1.2, format('Recent %s', i)
FROM generate_series(1, 3000) AS i;
UPDATE outbox_messages SET status = CASE WHEN seq % 10 = 0 THEN 'failed' ELSE 'delivered' END WHERE id LIKE 'recent-%';
VACUUM ANALYZE outbox_messages;
SQL
  echo "postgres: seeded $N + 3000 messages in $(($(date +%s) - t0)) s" >&2
  touch "$WORK/seeded-postgres"
  start_daemon
  time_pages postgres
  stop_daemon
}

echo "outbox: $OUTBOX_BIN; $N messages; $RUNS runs a page; target 200 ms" >&2
case "$WHICH" in
  sqlite) bench_sqlite ;;
  postgres) bench_postgres ;;
  both) bench_sqlite; bench_postgres ;;
  *) echo "usage: $0 [sqlite|postgres|both]" >&2; exit 2 ;;
esac
