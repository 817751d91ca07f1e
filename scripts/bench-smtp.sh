#!/usr/bin/env bash
# SMTP benchmark: Outbox's SMTPConnection against Postfix's own load client, smtp-source,
# both sending to Postfix's smtp-sink on a loopback port, in the same invocation.
#
#   scripts/bench-smtp.sh
#
# For each case (1 KiB and 100 KiB messages, 1 and 10 reused connections) it runs
# `smtp-source -d` and `outbox-bench smtp` with the same N, C and size, 5 times each,
# alternating, and prints the medians (messages/second) and the ratio outbox/smtp-source.
# Outbox runs twice per round: with Swift's default global executor, and with
# `--executor nio` (NIO's event loops installed as the global executor, so a task resumed by a
# connection's event loop runs on it without a thread switch: a process-wide choice an
# application embedding Outbox can make).
# Then `outbox-bench mailer` (Mailer.send through the pool) with pool sizes 1, 4 and 10 beside
# `smtp-source -s 1/4/10 -d` (BENCH_POOL_SIZES overrides the list).
# Then it sends one 200 MiB message with `outbox-bench smtp --big-mib 200` and prints the
# peak RSS of the outbox-bench process. It measures; it asserts nothing (exit status 0 unless
# a tool is missing or a run cannot start). Quote the ratios, not the absolute rates: they
# depend on the machine and on whatever else runs on it.
#
# Environment:
#   BENCH_MESSAGES   messages per run (default 20000: a run of 5000 small messages lasts a
#                    fifth of a second, and start-up and scheduling noise then decide ratios)
#   BENCH_REPEATS    runs per client and case; the median is reported (default 5)
#   BENCH_BIG_MIB    size of the big message in MiB (default 200; 0 skips it)
#   BENCH_PORT       first port to try for smtp-sink (default 2525; the first free one is used)
#   BENCH_TIMEOUT    seconds allowed for each single run (default 300)
#   OUTBOX_BENCH_BIN a prebuilt outbox-bench binary (default: build it here in release mode)
#   OUTBOX_BENCH_BASELINE another outbox-bench binary (e.g. built from the commit before a
#                    change): run right after OUTBOX_BENCH_BIN in every round, in the same
#                    invocation, and shown beside it ("base" columns) with the ratio new/base
#
# Installs Postfix (for smtp-sink and smtp-source) when missing. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${BENCH_MESSAGES:-20000}
REPEATS=${BENCH_REPEATS:-5}
BIG_MIB=${BENCH_BIG_MIB:-200}
FIRST_PORT=${BENCH_PORT:-2525}
RUN_TIMEOUT=${BENCH_TIMEOUT:-300}
HOST=127.0.0.1
SBIN=/usr/sbin
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "bench-smtp: $*" >&2; }

# --- tools ---------------------------------------------------------------------------------
if [ ! -x "$SBIN/smtp-sink" ] || [ ! -x "$SBIN/smtp-source" ]; then
  log "installing postfix (for smtp-sink and smtp-source)"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi

if [ -n "${OUTBOX_BENCH_BIN:-}" ]; then
  BENCH=$OUTBOX_BENCH_BIN
else
  log "building outbox-bench (release)"
  swift build -c release --product outbox-bench >&2
  BENCH="$(swift build -c release --show-bin-path)/outbox-bench"
fi
[ -x "$BENCH" ] || { log "no outbox-bench binary at $BENCH"; exit 1; }
BASE=${OUTBOX_BENCH_BASELINE:-}
[ -z "$BASE" ] || [ -x "$BASE" ] || { log "no baseline outbox-bench binary at $BASE"; exit 1; }

# --- smtp-sink -----------------------------------------------------------------------------
port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
PORT=$FIRST_PORT
while port_in_use "$PORT"; do
  PORT=$((PORT + 1))
  [ "$PORT" -lt $((FIRST_PORT + 200)) ] || { log "no free port from $FIRST_PORT"; exit 1; }
done

SINK_PID=
cleanup() {
  if [ -n "$SINK_PID" ]; then kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$SBIN/smtp-sink" -u nobody "$HOST:$PORT" 1024 &
SINK_PID=$!
for _ in $(seq 50); do
  port_in_use "$PORT" && break
  sleep 0.1
done
port_in_use "$PORT" || { log "smtp-sink did not start on $HOST:$PORT"; exit 1; }
log "smtp-sink (pid $SINK_PID) on $HOST:$PORT; $MESSAGES messages per run, $REPEATS runs per client"

# --- runs ------------------------------------------------------------------------------------
# Each prints one rate (messages/second) on stdout, or "fail".
run_source() { # C SIZE
  local start end err
  err=$(mktemp)
  start=$(date +%s.%N)
  if ! timeout "$RUN_TIMEOUT" "$SBIN/smtp-source" -s "$1" -m "$MESSAGES" -l "$2" -d \
      -f a@example.test -t b@example.test "$HOST:$PORT" 2>"$err" >/dev/null; then
    log "smtp-source -s $1 -l $2 failed: $(head -c 300 "$err")"; rm -f "$err"; echo fail; return
  fi
  end=$(date +%s.%N)
  [ -s "$err" ] && log "smtp-source said: $(head -c 300 "$err")"
  rm -f "$err"
  awk -v n="$MESSAGES" -v s="$start" -v e="$end" 'BEGIN { printf "%.1f\n", n / (e - s) }'
}

run_outbox() { # C SIZE EXECUTOR [BINARY]
  local out last
  if ! out=$(timeout "$RUN_TIMEOUT" "${4:-$BENCH}" smtp --host "$HOST" --port "$PORT" \
      --messages "$MESSAGES" --connections "$1" --size "$2" --executor "$3" 2>&1); then
    log "outbox-bench smtp -c $1 --size $2 failed: $(echo "$out" | tail -3)"; echo fail; return
  fi
  last=$(echo "$out" | tail -1)
  if [ "$(echo "$out" | wc -l)" -gt 1 ]; then log "outbox-bench said: $(echo "$out" | head -n -1 | head -c 300)"; fi
  echo "$last" | sed -n 's/.*msgs_per_sec=\([0-9.]*\).*/\1/p'
}

median() { printf '%s\n' "$@" | grep -v '^fail$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "fail"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ratio() { awk -v s="$1" -v o="$2" 'BEGIN { if (s + 0 > 0 && o + 0 > 0) printf "%.2f", o / s; else print "n/a" }'; }

CASES=("1 1024" "10 1024" "1 102400" "10 102400")
RESULTS=()
for case in "${CASES[@]}"; do
  read -r C SIZE <<<"$case"
  src=(); obx_swift=(); obx_nio=(); base_swift=(); base_nio=()
  for r in $(seq "$REPEATS"); do
    s=$(run_source "$C" "$SIZE"); o=$(run_outbox "$C" "$SIZE" swift); n=$(run_outbox "$C" "$SIZE" nio)
    log "C=$C size=$SIZE run $r: smtp-source $s/s, outbox $o/s, outbox --executor nio $n/s"
    src+=("$s"); obx_swift+=("$o"); obx_nio+=("$n")
    if [ -n "$BASE" ]; then
      bo=$(run_outbox "$C" "$SIZE" swift "$BASE"); bn=$(run_outbox "$C" "$SIZE" nio "$BASE")
      log "C=$C size=$SIZE run $r: baseline $bo/s, baseline --executor nio $bn/s"
      base_swift+=("$bo"); base_nio+=("$bn")
    else
      base_swift+=(fail); base_nio+=(fail)
    fi
  done
  RESULTS+=("$C $SIZE $(median "${src[@]}") $(median "${obx_swift[@]}") $(median "${obx_nio[@]}") $(median "${base_swift[@]}") $(median "${base_nio[@]}")")
done

echo
echo "SMTP to smtp-sink on $HOST:$PORT, $MESSAGES messages per run, median of $REPEATS (messages/second)"
echo "outbox: Swift's default executor; outbox-nio: --executor nio (NIO's event loops as the global executor)"
if [ -n "$BASE" ]; then
  echo "base: the baseline binary ($BASE), run alternately with the new one; new/base: outbox / base"
  printf '%-22s %12s %9s %7s %9s %7s %8s %10s %7s %10s %8s\n' "case" "smtp-source" "outbox" "ratio" "base" "ratio" "new/base" "outbox-nio" "ratio" "base-nio" "new/base"
else
  printf '%-22s %14s %12s %8s %12s %8s\n' "case" "smtp-source" "outbox" "ratio" "outbox-nio" "ratio"
fi
for row in "${RESULTS[@]}"; do
  read -r C SIZE S O N BO BN <<<"$row"
  label="C=$C size=$((SIZE / 1024))KiB"
  if [ -n "$BASE" ]; then
    printf '%-22s %12s %9s %7s %9s %7s %8s %10s %7s %10s %8s\n' "$label" "$S" "$O" "$(ratio "$S" "$O")" "$BO" "$(ratio "$S" "$BO")" "$(ratio "$BO" "$O")" \
      "$N" "$(ratio "$S" "$N")" "$BN" "$(ratio "$BN" "$N")"
  else
    printf '%-22s %14s %12s %8s %12s %8s\n' "$label" "$S" "$O" "$(ratio "$S" "$O")" "$N" "$(ratio "$S" "$N")"
  fi
done

# Mailer.send through the connection pool, beside smtp-source with as many sessions.
run_mailer() { # S SIZE EXECUTOR [BINARY]
  local out last
  if ! out=$(timeout "$RUN_TIMEOUT" "${4:-$BENCH}" mailer --host "$HOST" --port "$PORT" \
      --messages "$MESSAGES" --pool-size "$1" --size "$2" --executor "$3" 2>&1); then
    log "outbox-bench mailer --pool-size $1 failed: $(echo "$out" | tail -3)"; echo "fail fail fail"; return
  fi
  last=$(echo "$out" | tail -1)
  if [ "$(echo "$out" | wc -l)" -gt 1 ]; then log "outbox-bench said: $(echo "$out" | head -n -1 | head -c 300)"; fi
  echo "$last" | sed -n 's/.*msgs_per_sec=\([0-9.]*\) p50_ms=\([0-9.]*\) p99_ms=\([0-9.]*\).*/\1 \2 \3/p'
}

MAILER_RESULTS=()
for S in ${BENCH_POOL_SIZES:-1 4 10}; do
  src=(); obx=(); p50=(); p99=(); nio=(); nio50=(); nio99=(); bobx=(); bnio=()
  for r in $(seq "$REPEATS"); do
    s=$(run_source "$S" 1024)
    read -r o a b <<<"$(run_mailer "$S" 1024 swift)"
    read -r n c d <<<"$(run_mailer "$S" 1024 nio)"
    log "mailer pool-size=$S run $r: smtp-source $s/s, outbox mailer $o/s (p50 $a ms, p99 $b ms), --executor nio $n/s (p50 $c ms, p99 $d ms)"
    src+=("$s"); obx+=("$o"); p50+=("$a"); p99+=("$b"); nio+=("$n"); nio50+=("$c"); nio99+=("$d")
    if [ -n "$BASE" ]; then
      read -r bo _ _ <<<"$(run_mailer "$S" 1024 swift "$BASE")"
      read -r bn _ _ <<<"$(run_mailer "$S" 1024 nio "$BASE")"
      log "mailer pool-size=$S run $r: baseline $bo/s, baseline --executor nio $bn/s"
      bobx+=("$bo"); bnio+=("$bn")
    else
      bobx+=(fail); bnio+=(fail)
    fi
  done
  MAILER_RESULTS+=("$S $(median "${src[@]}") $(median "${obx[@]}") $(median "${p50[@]}") $(median "${p99[@]}") $(median "${nio[@]}") $(median "${nio50[@]}") $(median "${nio99[@]}") $(median "${bobx[@]}") $(median "${bnio[@]}")")
done

echo
echo "Mailer.send through a pool of S connections vs smtp-source -s S -d, 1 KiB, $MESSAGES messages, median of $REPEATS"
echo "outbox: Swift's default executor; outbox-nio: --executor nio (NIO's event loops as the global executor)"
printf '%-10s %12s %10s %7s %8s %8s %11s %7s %8s %8s\n' "pool-size" "smtp-source" "outbox" "ratio" "p50_ms" "p99_ms" "outbox-nio" "ratio" "p50_ms" "p99_ms"
for row in "${MAILER_RESULTS[@]}"; do
  read -r S SRC O A B N C D BO BN <<<"$row"
  printf '%-10s %12s %10s %7s %8s %8s %11s %7s %8s %8s\n' "$S" "$SRC" "$O" "$(ratio "$SRC" "$O")" "$A" "$B" "$N" "$(ratio "$SRC" "$N")" "$C" "$D"
done
if [ -n "$BASE" ]; then
  echo "baseline ($BASE), run alternately:"
  printf '%-10s %12s %10s %7s %9s %11s %7s %9s\n' "pool-size" "smtp-source" "base" "ratio" "new/base" "base-nio" "ratio" "new/base"
  for row in "${MAILER_RESULTS[@]}"; do
    read -r S SRC O A B N C D BO BN <<<"$row"
    printf '%-10s %12s %10s %7s %9s %11s %7s %9s\n' "$S" "$SRC" "$BO" "$(ratio "$SRC" "$BO")" "$(ratio "$BO" "$O")" "$BN" "$(ratio "$SRC" "$BN")" "$(ratio "$BN" "$N")"
  done
fi

if [ "$BIG_MIB" -gt 0 ]; then
  echo
  for bin in "$BENCH" $BASE; do
    if out=$(timeout "$RUN_TIMEOUT" "$bin" smtp --host "$HOST" --port "$PORT" --big-mib "$BIG_MIB" 2>&1); then
      if [ -n "$BASE" ]; then echo "$([ "$bin" = "$BASE" ] && echo base || echo new): $(echo "$out" | tail -1)"; else echo "$out" | tail -1; fi
    else
      log "the $BIG_MIB MiB run ($bin) failed: $(echo "$out" | tail -3)"
    fi
  done
fi
