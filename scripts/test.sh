#!/usr/bin/env bash
# The test command: installs and starts the real peers the tests need (a private Postfix with
# STARTTLS, implicit TLS and SASL incl. XOAUTH2 through Dovecot; python3 for the MIME
# round-trips), then runs every test with `swift test`. Works on a fresh machine (root, Debian).
# Extra arguments go to `swift test` (e.g. scripts/test.sh --filter Postfix). The unit tests
# alone need no peer: `swift test --skip OutboxIntegrationTests`.
# scripts/test.sh --start-peers: start the peers, print the environment, leave them running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START_ONLY=0
if [ "${1:-}" = "--start-peers" ]; then START_ONLY=1; shift; fi

# Lint first (swift-format with the checked-in .swift-format; --strict: any finding fails the
# run). OUTBOX_LINT_PATHS names what is linted; by default the paths listed in
# .swift-format-paths, one a line, or the whole tree (Sources, Tests, Package.swift) when that
# file is absent, as it is now. Fix findings with
# `swift-format format --in-place --recursive Sources Tests Package.swift`.
if [ "$START_ONLY" = 0 ]; then
  if [ -z "${OUTBOX_LINT_PATHS:-}" ]; then
    if [ -f .swift-format-paths ]; then
      OUTBOX_LINT_PATHS=$(grep -v '^[[:space:]]*\(#\|$\)' .swift-format-paths | tr '\n' ' ')
    else
      OUTBOX_LINT_PATHS="Sources Tests Package.swift"
    fi
  fi
  SWIFT_FORMAT=$(command -v swift-format || echo /opt/swift/usr/bin/swift-format)
  echo "test.sh: swift-format lint --strict $OUTBOX_LINT_PATHS" >&2
  # shellcheck disable=SC2086  # a list of paths
  "$SWIFT_FORMAT" lint --strict --recursive $OUTBOX_LINT_PATHS </dev/null
fi

export PFCI_DIR=${PFCI_DIR:-/tmp/outbox-pfci}
export PFCI_OAUTH=1
export PFCI_OAUTH_TOKEN=${PFCI_OAUTH_TOKEN:-outbox-good-token}

need_pkgs=()
command -v postfix >/dev/null || need_pkgs+=(postfix)
command -v dovecot >/dev/null || need_pkgs+=(dovecot-core)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v python3 >/dev/null || need_pkgs+=(python3)
# libcrypto's headers for the CLibCrypto target (MD4 for NTLM), found through pkg-config.
[ -f /usr/include/openssl/md4.h ] || need_pkgs+=(libssl-dev)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]}" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

bash scripts/postfix-testbed.sh start
cleanup() { bash "$ROOT/scripts/postfix-testbed.sh" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Recipients that Postfix refuses (permanently and temporarily), for per-recipient results.
printf '%s\n' 'reject@example.test REJECT no such user here' 'tempfail@example.test 450 4.2.0 mailbox busy, try later' \
  > "$PFCI_DIR/etc/recipient_access"
postconf -c "$PFCI_DIR/etc" -e "smtpd_recipient_restrictions = check_recipient_access texthash:$PFCI_DIR/etc/recipient_access"
# A clear-text port that allows 2 concurrent connections per client (anvil), to prove the
# pool's limit from Postfix's side: a third connection gets "421 4.7.0 too many connections".
cat >> "$PFCI_DIR/etc/master.cf" <<MASTER
127.0.0.1:2589 inet n - n - - smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_client_connection_count_limit=2
  -o smtpd_client_event_limit_exceptions=
# A clear-text port that drops a client idle for 2 s: a pooled connection goes stale.
127.0.0.1:2590 inet n - n - - smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_timeout=2s
MASTER
postfix -c "$PFCI_DIR/etc" reload >/dev/null 2>&1

# A second, private Postfix that one test stops and starts in the middle of a run (a restart
# must not disturb the tests running in parallel against the first one).
PFCI_DIR=${PFCI_DIR}-b PFCI_OAUTH=0 PFCI_SUBMISSION_PORT=2687 PFCI_SMTPS_PORT=2665 PFCI_PLAIN_PORT=2688 \
  bash scripts/postfix-testbed.sh start
# A third, private Postfix for the pacing tests: a port that throttles like Exchange Online
# (432 4.3.2 after N messages, from a policy service) and a plain one, each counted from its
# own log and maildir.
PFCI_DIR=${PFCI_DIR}-t bash scripts/throttle-testbed.sh start
cleanup() {
  bash "$ROOT/scripts/postfix-testbed.sh" stop >/dev/null 2>&1 || true
  PFCI_DIR=${PFCI_DIR}-b bash "$ROOT/scripts/postfix-testbed.sh" stop >/dev/null 2>&1 || true
  PFCI_DIR=${PFCI_DIR}-t bash "$ROOT/scripts/throttle-testbed.sh" stop >/dev/null 2>&1 || true
}
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/2589) 2>/dev/null && break; sleep 0.1; done

export OUTBOX_TEST_POSTFIX=1
export OUTBOX_TEST_SMTP_HOST=127.0.0.1
export OUTBOX_TEST_SUBMISSION_PORT=${PFCI_SUBMISSION_PORT:-2587}
export OUTBOX_TEST_SMTPS_PORT=${PFCI_SMTPS_PORT:-2465}
export OUTBOX_TEST_PLAIN_PORT=${PFCI_PLAIN_PORT:-2588}
export OUTBOX_TEST_CA_FILE=$PFCI_DIR/tls/ca.pem
export OUTBOX_TEST_TLS_CERT=$PFCI_DIR/tls/server.pem
export OUTBOX_TEST_TLS_KEY=$PFCI_DIR/tls/server.key
export OUTBOX_TEST_USER=${PFCI_USER:-testuser@example.test}
export OUTBOX_TEST_PASSWORD=${PFCI_PASS:-testpass}
export OUTBOX_TEST_OAUTH_TOKEN=$PFCI_OAUTH_TOKEN
export OUTBOX_TEST_MAILDIR=$PFCI_DIR/mail/sink/new
export OUTBOX_TEST_POSTFIX_LOG=$PFCI_DIR/log/postfix.log
export OUTBOX_TEST_LIMITED_PORT=2589
export OUTBOX_TEST_SHORT_TIMEOUT_PORT=2590
export OUTBOX_TEST_RESTART_DIR=${PFCI_DIR}-b
export OUTBOX_TEST_RESTART_PORT=2688
export OUTBOX_TEST_THROTTLE_DIR=${PFCI_DIR}-t
export OUTBOX_TEST_THROTTLE_PORT=2791
export OUTBOX_TEST_THROTTLE_PLAIN_PORT=2788
export OUTBOX_TEST_RCPT_LIMIT_PORT=2793
# A private PostgreSQL cluster (initdb + pg_ctl as the postgres user, 127.0.0.1:55432) for the
# PostgreSQL store and the three-daemons test; installs Debian's postgresql when missing.
export OUTBOX_TEST_POSTGRES_URL=$(bash scripts/postgres-testbed.sh start)
trap 'cleanup; bash "$ROOT/scripts/postgres-testbed.sh" stop >/dev/null 2>&1 || true' EXIT

# pyspnego (pip) for the NTLM acceptor of the EWS NTLM tests (Swift NTLMEWSTests and the
# Python suite below).
bash scripts/ntlm-ews-test.sh --install >&2

if [ "$START_ONLY" = 1 ]; then
  trap - EXIT
  env | grep -E '^(OUTBOX_TEST_|PFCI_)' | sed 's/^/export /'
  exit 0
fi

swift build --build-tests
# One test at a time: the machine has 2 cores, several suites drive real servers, and timing
# assertions (protocol timeouts, idle timers) must not depend on what runs beside them.
swift test --skip-build --no-parallel "$@"
# With arguments (a filter) only the Swift tests run. Otherwise the SMTP relay's acceptance
# suites follow, against the daemon built above: real clients (smtplib, swaks, curl, msmtp,
# Postfix as a relay client), refusals, smuggling and STARTTLS injection; then durability
# (2,000 messages with two kill -9, delivered to this Postfix) and bounces; then a 25 MiB
# message relayed with the daemon's memory sampled.
if [ $# -eq 0 ]; then
  export OUTBOX_BIN=$(swift build --show-bin-path)/outbox
  bash scripts/relay-clients-test.sh
  python3 -m unittest -v Tests/RelayClients/test_relay_durability.py
  python3 -m unittest -v Tests/RelayClients/test_relay_large.py
  # A full disk: the data directory on a small tmpfs (mounted by the test), queue-min-free.
  python3 -m unittest -v Tests/RelayClients/test_storage_full.py
  # PostgreSQL stopped for 30 s under load, then its tables dropped under a running daemon (its
  # own cluster on 127.0.0.1:55433: the one above is shared).
  python3 -m unittest -v Tests/RelayClients/test_store_outage.py
  # openapi.yaml is valid OpenAPI and documents every route the server has.
  python3 -c 'import openapi_spec_validator, yaml' 2>/dev/null ||
    python3 -m pip install --quiet 'openapi-spec-validator==0.9.0' ||
    python3 -m pip install --quiet --break-system-packages 'openapi-spec-validator==0.9.0'
  python3 -m unittest -v Tests/OpenAPI/test_openapi.py
  # The web dashboard in headless Chromium (Debian's chromium and chromium-driver, Selenium from
  # PyPI) against a daemon that delivers to Postfix's smtp-sink; screenshots in
  # .build/test-artifacts/dashboard/.
  command -v chromedriver >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  }
  python3 -c 'import selenium' 2>/dev/null ||
    python3 -m pip install --quiet 'selenium==4.40.0' ||
    python3 -m pip install --quiet --break-system-packages 'selenium==4.40.0'
  python3 -m unittest -v Tests/Dashboard/test_dashboard.py
  # The HTTP listener over HTTPS (a CA and certificate made with openssl), and refused key pairs.
  python3 -m unittest -v Tests/Dashboard/test_https.py
  # EWS with NTLMv2: outbox probe and send against pyspnego's NTLM acceptor.
  bash scripts/ntlm-ews-test.sh
  # Traces: a delivery to this Postfix exported with OTLP/HTTP to a small receiver
  # (opentelemetry-proto from PyPI): the submitting trace id and parent, no secret in any span.
  python3 -c 'import opentelemetry.proto' 2>/dev/null ||
    python3 -m pip install --quiet 'opentelemetry-proto==1.45.2' ||
    python3 -m pip install --quiet --break-system-packages 'opentelemetry-proto==1.45.2'
  python3 -m unittest -v Tests/Traces/test_traces.py
fi
