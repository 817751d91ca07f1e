#!/usr/bin/env bash
# The test command: installs and starts the real peers the tests need (a private Postfix with
# STARTTLS, implicit TLS and SASL incl. XOAUTH2 through Dovecot; python3 for the MIME
# round-trips), then runs every test with `swift test`. Works on a fresh machine (root, Debian).
# Extra arguments go to `swift test` (e.g. scripts/test.sh --filter Postfix).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export PFCI_DIR=${PFCI_DIR:-/tmp/outbox-pfci}
export PFCI_OAUTH=1
export PFCI_OAUTH_TOKEN=${PFCI_OAUTH_TOKEN:-outbox-good-token}

need_pkgs=()
command -v postfix >/dev/null || need_pkgs+=(postfix)
command -v dovecot >/dev/null || need_pkgs+=(dovecot-core)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v python3 >/dev/null || need_pkgs+=(python3)
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
postfix -c "$PFCI_DIR/etc" reload >/dev/null 2>&1
sleep 1

export OUTBOX_TEST_POSTFIX=1
export OUTBOX_TEST_SMTP_HOST=127.0.0.1
export OUTBOX_TEST_SUBMISSION_PORT=${PFCI_SUBMISSION_PORT:-2587}
export OUTBOX_TEST_SMTPS_PORT=${PFCI_SMTPS_PORT:-2465}
export OUTBOX_TEST_PLAIN_PORT=${PFCI_PLAIN_PORT:-2588}
export OUTBOX_TEST_CA_FILE=$PFCI_DIR/tls/ca.pem
export OUTBOX_TEST_USER=${PFCI_USER:-testuser@example.test}
export OUTBOX_TEST_PASSWORD=${PFCI_PASS:-testpass}
export OUTBOX_TEST_OAUTH_TOKEN=$PFCI_OAUTH_TOKEN
export OUTBOX_TEST_MAILDIR=$PFCI_DIR/mail/sink/new
export OUTBOX_TEST_POSTFIX_LOG=$PFCI_DIR/log/postfix.log

swift build --build-tests
swift test --skip-build "$@"
