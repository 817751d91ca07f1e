#!/usr/bin/env bash
# Acceptance tests of `outbox serve`'s SMTP submission listener ([relay]) with real SMTP clients:
# Python's smtplib, swaks, curl, msmtp and Postfix (a private testbed instance relaying through
# it), plus raw-socket refusal, STARTTLS-injection and SMTP-smuggling cases
# (Tests/RelayClients/test_relay_clients.py, Python 3 stdlib unittest).
#
#   scripts/relay-clients-test.sh [unittest args, e.g. -k Smuggling -k ClientsTest.test_curl_plain]
#
# Installs what is missing with apt-get (works on a fresh Debian machine as root), makes the
# testbed's TLS files (CA + server certificate for 127.0.0.1/localhost) when there are none,
# then runs the suite. Exit status: the suite's.
# env: OUTBOX_BIN    the binary to test; when unset, `swift build --product outbox` is run first
#                    and .build/debug/outbox is used
#      RELAY_TEST_TLS_DIR  a folder with ca.pem, server.pem, server.key to use instead of the
#                    testbed's ($PFCI_DIR/tls when it has them, else /tmp/outbox-relay-pfci/tls)
#      RELAY_TEST_KEEP=1   keep each daemon's folder (config, data/sent/*.eml, stderr.log)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/sbin:/sbin"

have() { command -v "$1" >/dev/null 2>&1; }
need=()
have python3 || need+=(python3)
have swaks || need+=(swaks)
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
have msmtp || need+=(msmtp)
have curl || need+=(curl)
{ have postfix && have smtp-source && have postconf; } || need+=(postfix)
have dovecot || need+=(dovecot-core)
have openssl || need+=(openssl)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  echo "relay-clients-test: installing ${need[*]}" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -z "${OUTBOX_BIN:-}" ]; then
  swift build --product outbox
  OUTBOX_BIN=$ROOT/.build/debug/outbox
fi
export OUTBOX_BIN

tls_ok() { # folder: has the three files and the certificate is valid for another hour
  [ -f "$1/ca.pem" ] && [ -f "$1/server.pem" ] && [ -f "$1/server.key" ] &&
    openssl x509 -checkend 3600 -noout -in "$1/server.pem" >/dev/null 2>&1
}
if [ -n "${RELAY_TEST_TLS_DIR:-}" ]; then
  tls_ok "$RELAY_TEST_TLS_DIR" || { echo "relay-clients-test: no valid ca.pem/server.pem/server.key in $RELAY_TEST_TLS_DIR" >&2; exit 2; }
elif [ -n "${PFCI_DIR:-}" ] && tls_ok "$PFCI_DIR/tls"; then
  RELAY_TEST_TLS_DIR=$PFCI_DIR/tls
else
  # A private testbed instance (own folder, free ports) only for its CA and server certificate:
  # started, then stopped at once; the files stay.
  TLS_PFCI=/tmp/outbox-relay-pfci
  if ! tls_ok "$TLS_PFCI/tls"; then
    read -r p1 p2 p3 < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
    PFCI_DIR=$TLS_PFCI PFCI_OAUTH=0 PFCI_SUBMISSION_PORT=$p1 PFCI_SMTPS_PORT=$p2 PFCI_PLAIN_PORT=$p3 \
      bash scripts/postfix-testbed.sh start
    PFCI_DIR=$TLS_PFCI bash scripts/postfix-testbed.sh stop >/dev/null 2>&1 || true
  fi
  RELAY_TEST_TLS_DIR=$TLS_PFCI/tls
fi
export RELAY_TEST_TLS_DIR
echo "relay-clients-test: OUTBOX_BIN=$OUTBOX_BIN RELAY_TEST_TLS_DIR=$RELAY_TEST_TLS_DIR" >&2

rc=0
python3 -m unittest discover -v -s Tests/RelayClients -p 'test_relay_clients.py' "$@" || rc=$?
exit $rc
