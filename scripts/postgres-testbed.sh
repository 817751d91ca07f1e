#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary directory as the
# postgres user, listening on 127.0.0.1 only (trust authentication, loopback only).
# postgres-testbed.sh start | stop | halt | resume | sql "STATEMENTS". Settings: PGCI_DIR (default
# /tmp/outbox-pgci), PGCI_PORT (default 55432): a test that stops its database runs its OWN
# cluster with other values (the default one is shared by everyone's tests). `start` installs
# Debian's postgresql when it is missing and prints the URL. `halt` stops the server keeping its
# data (pg_ctl stop -m fast: sessions end with 57P01), `resume` starts it again on that data and
# waits until it accepts connections, `sql` runs statements on the database outbox.
set -euo pipefail
PGCI_DIR=${PGCI_DIR:-/tmp/outbox-pgci}
PGCI_PORT=${PGCI_PORT:-55432}

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && echo "$d"
}

case "${1:-}" in
  start)
    if [ -z "$(bindir)" ]; then
      echo "postgres-testbed: installing postgresql" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    BIN=$(bindir)
    if [ -f "$PGCI_DIR/data/postmaster.pid" ] && su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGCI_DIR/data status" >/dev/null 2>&1; then
      echo "postgres://postgres@127.0.0.1:$PGCI_PORT/outbox"
      exit 0
    fi
    rm -rf "$PGCI_DIR"
    mkdir -p "$PGCI_DIR"
    chown postgres "$PGCI_DIR"
    su postgres -s /bin/sh -c "$BIN/initdb -D $PGCI_DIR/data -U postgres --auth=trust -E UTF8 >$PGCI_DIR/initdb.log 2>&1"
    su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGCI_DIR/data -l $PGCI_DIR/server.log -w -o \"-c listen_addresses=127.0.0.1 -p $PGCI_PORT -k $PGCI_DIR -c max_connections=200 -c fsync=on\" start >/dev/null"
    su postgres -s /bin/sh -c "$BIN/createdb -h 127.0.0.1 -p $PGCI_PORT -U postgres outbox"
    echo "postgres://postgres@127.0.0.1:$PGCI_PORT/outbox"
    ;;
  halt)
    BIN=$(bindir)
    su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGCI_DIR/data -m fast -w stop >/dev/null"
    ;;
  resume)
    BIN=$(bindir)
    su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGCI_DIR/data -l $PGCI_DIR/server.log -w -o \"-c listen_addresses=127.0.0.1 -p $PGCI_PORT -k $PGCI_DIR -c max_connections=200 -c fsync=on\" start >/dev/null"
    ;;
  sql)
    BIN=$(bindir)
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGCI_PORT" -U postgres -d outbox -c "${2:?sql needs statements}"
    ;;
  stop)
    BIN=$(bindir || true)
    if [ -n "$BIN" ] && [ -d "$PGCI_DIR/data" ]; then
      su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGCI_DIR/data -m fast stop" >/dev/null 2>&1 || true
    fi
    ;;
  *)
    echo "usage: postgres-testbed.sh start|stop|halt|resume|sql STATEMENTS" >&2
    exit 2
    ;;
esac
