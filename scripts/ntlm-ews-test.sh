#!/usr/bin/env bash
# `outbox probe` and `outbox send` with server-type = EWS against a real NTLM acceptor
# (Tests/NTLM/test_ntlm_ews.py; the server is Tests/NTLM/ntlm_ews_server.py, pyspnego's NTLM
# acceptor behind a small HTTPS EWS endpoint). Also what the Swift NTLMEWSTests need.
#
#   scripts/ntlm-ews-test.sh [unittest args]     run the suite
#   scripts/ntlm-ews-test.sh --install            only install what the tests need
#
# Installs python3, pip, openssl (apt-get) and pyspnego (pip) when missing; works as root on a
# fresh Debian machine. env: OUTBOX_BIN the binary to test (default: `swift build --product
# outbox` and its path).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "ntlm-ews-test: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! python3 -c 'import spnego' 2>/dev/null; then
  echo "ntlm-ews-test: installing pyspnego" >&2
  python3 -m pip install -q pyspnego 2>/dev/null || python3 -m pip install -q --break-system-packages pyspnego
fi
python3 -c 'import spnego'
if [ "${1:-}" = "--install" ]; then exit 0; fi

if [ -z "${OUTBOX_BIN:-}" ]; then
  swift build --product outbox >&2
  OUTBOX_BIN=$(swift build --show-bin-path)/outbox
fi
export OUTBOX_BIN
python3 -m unittest -v Tests/NTLM/test_ntlm_ews.py "$@"
