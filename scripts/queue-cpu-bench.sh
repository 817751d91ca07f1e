#!/bin/bash
# The daemon against a closed port with COUNT queued messages: CPU over 30 s after a 15 s warm-up
# (issue 13: a paused route makes no attempts but its probe). usage: scripts/queue-cpu-bench.sh BINARY LABEL [COUNT]
# Needs sqlite3, curl, bc. Binds the relay default 127.0.0.1:2525 while it runs.
set -u
BIN=$1; LABEL=$2; COUNT=${3:-30000}
D=/tmp/qbench/$LABEL; rm -rf $D; mkdir -p $D/data
HTTP=$(( 31000 + RANDOM % 1000 )); DEAD=$(( 33000 + RANDOM % 1000 ))
OPTS=(-o server=127.0.0.1 -o port=$DEAD -o outbox.data-directory=$D/data -o outbox.http-listen=127.0.0.1:$HTTP)
# Seed: one message through the API, daemon stopped, then COUNT copies in SQLite.
$BIN serve "${OPTS[@]}" -o outbox.delivery-concurrency=1 >$D/seed.log 2>&1 &
P=$!
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$HTTP/healthz && break; sleep 0.2; done
curl -s -X POST -H 'Content-Type: application/json' http://127.0.0.1:$HTTP/v1/messages \
  -d '{"from":"sender@example.test","to":"rcpt@elsewhere.example","subject":"bench","text":"x"}' >/dev/null
sleep 1; kill $P; wait $P 2>/dev/null
NOW=$(date +%s)
sqlite3 $D/data/outbox.sqlite <<SQL
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $COUNT)
INSERT INTO messages (id, mail_from, recipients, content, message_id, size, status, created_at, updated_at, age_base, next_attempt_at)
SELECT m.id || '-' || n.i, m.mail_from, '[{"address":"rcpt@elsewhere.example","status":"pending"}]', m.content, m.message_id, m.size,
       'queued', $NOW, $NOW, $NOW, $NOW
FROM messages m, n WHERE m.seq = (SELECT MIN(seq) FROM messages);
SQL
sqlite3 $D/data/outbox.sqlite "SELECT status, COUNT(*) FROM messages GROUP BY status"
$BIN serve "${OPTS[@]}" >$D/run.log 2>&1 &
P=$!
sleep 15
t() { awk '{print $14+$15}' /proc/$P/stat; }
A=$(t); sleep 30; B=$(t)
HZ=$(getconf CLK_TCK)
echo "$LABEL: CPU over 30 s after 15 s: $(echo "scale=1; ($B-$A)*100/$HZ/30" | bc) %"
echo "$LABEL: ps %cpu (lifetime average): $(ps -o %cpu= -p $P)"
curl -s http://127.0.0.1:$HTTP/v1/status | python3 -c "import json,sys; s=json.load(sys.stdin); print('$LABEL: queue', s.get('queue'), 'held', s.get('held'), 'dispatcher', s.get('dispatcher'))"
kill $P; wait $P 2>/dev/null
