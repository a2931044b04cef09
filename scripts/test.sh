#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds dist/flannel-bin, runs every test (unit, store
# conformance against real etcd/nats-server/SQLite, end-to-end on network namespaces), then prints one line
# "N passed, N failed". Needs root (network namespaces).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
node_modules/.bin/bun run build || exit 1
out=$(mktemp)
node_modules/.bin/bun test --timeout 120000 "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
pass=$(grep -E '^ *[0-9]+ pass$' "$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
fail=$(grep -E '^ *[0-9]+ fail$' "$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
rm -f "$out"
# A crash that prints no summary still fails the run.
[ "$rc" -ne 0 ] && [ "$fail" = 0 ] && fail=1
echo "${pass:-0} passed, ${fail:-0} failed"
exit "$rc"
