#!/usr/bin/env bash
# Builds the DocC documentation of every library product with swift-docc-plugin, and fails when
# DocC or the compiler warns (an unresolved symbol link, a bad Topics entry, ...).
#
#   scripts/docs.sh                 # one .doccarchive per target, under .build/plugins/Swift-DocC/outputs/
#   scripts/docs.sh --output DIR    # static HTML instead: DIR/<Target>/, served from DIR
#   scripts/docs.sh OutboxMIME ...  # only these targets (either form)
#
# Open an archive with `swift package --disable-sandbox preview-documentation --target Outbox`
# (a local server that rebuilds on change), or serve the static HTML:
# `python3 -m http.server --directory DIR 8000`, then
# http://localhost:8000/Outbox/documentation/outbox/ (the target name in lower case).
set -euo pipefail
cd "$(dirname "$0")/.."

output=""
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --output) output="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(OutboxSMTPGrammar OutboxSMTP OutboxMIME OutboxConfig OutboxTransports Outbox)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
total=0
for target in "${targets[@]}"; do
    args=(--target "$target")
    if [ -n "$output" ]; then
        mkdir -p "$output/$target"
        args+=(--transform-for-static-hosting --hosting-base-path "$target" --output-path "$output/$target")
    fi
    echo "== $target"
    if ! swift package --disable-sandbox generate-documentation "${args[@]}" >"$log" 2>&1; then
        cat "$log"
        echo "docs.sh: generate-documentation failed for $target" >&2
        exit 1
    fi
    grep -E '^(Generated|Documentation archive|Converting)' "$log" | sed 's/^/   /' || true
    # DocC's and the compiler's warnings both read "warning: ...". SwiftPM's note about a
    # dependency's own layout ("'swift-distributed-tracing': found 1 file(s) which are
    # unhandled") is about that package, not ours, and is left out.
    warnings=$(grep -E '(^|[[:space:]:])warning:' "$log" | grep -v -E "^warning: '[^']+': found [0-9]+ file\(s\) which are unhandled" || true)
    if [ -n "$warnings" ]; then
        echo "$warnings"
        count=$(printf '%s\n' "$warnings" | wc -l)
        echo "   $target: $count warning(s)"
        total=$((total + count))
    fi
done
echo "warnings: $total"
[ "$total" -eq 0 ]
