#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds dist/flannel-bin, typechecks (tsc), lints and checks the
# format (Biome), then runs every test tier with bun test and prints one line "N passed, N failed".
#   scripts/test.sh            everything (needs root: network namespaces, real servers)
#   scripts/test.sh unit       the unit tier only (test/unit: no root, no servers, seconds)
#   scripts/test.sh e2e        the root tier only (stores against real servers, agent processes, labs)
#   scripts/test.sh -- ARGS    everything, ARGS passed to bun test (e.g. a file filter)
# FLANNEL_BIN_TEST_PREFIX=x prefixes lab and namespace names, so two checkouts can run side by side.
set -uo pipefail
cd "$(dirname "$0")/.."
tier=all
case "${1:-}" in
  unit | e2e | all) tier=$1; shift ;;
  --) shift ;;
esac
[ "${1:-}" = "--" ] && shift

bash scripts/setup.sh || exit 1
node_modules/.bin/bun run build || exit 1

checks=0
echo "typecheck: tsc --noEmit"
if node_modules/.bin/tsc --noEmit; then checks=$((checks + 1)); else echo "typecheck FAILED"; tsc_failed=1; fi
echo "lint and format: biome check"
if node_modules/.bin/biome check --error-on-warnings . >/tmp/biome.$$ 2>&1; then
  checks=$((checks + 1))
else
  cat /tmp/biome.$$; echo "biome check FAILED (node_modules/.bin/biome check --write . fixes most)"; lint_failed=1
fi
rm -f /tmp/biome.$$

# Root-tier files: every test file outside test/unit.
case "$tier" in
  unit) paths=(test/unit) ;;
  e2e) mapfile -t paths < <(find test -name '*.test.ts' -not -path 'test/unit/*' | sort) ;;
  all) paths=() ;;
esac

out=$(mktemp)
node_modules/.bin/bun test --timeout 120000 "${paths[@]}" "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
pass=$(grep -E '^ *[0-9]+ pass$' "$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
fail=$(grep -E '^ *[0-9]+ fail$' "$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
rm -f "$out"
# A crash that prints no summary still fails the run.
[ "$rc" -ne 0 ] && [ "$fail" = 0 ] && fail=1
# typecheck and lint count as one check each.
pass=$((${pass:-0} + checks))
[ -n "${tsc_failed:-}" ] && fail=$((fail + 1)) && rc=1
[ -n "${lint_failed:-}" ] && fail=$((fail + 1)) && rc=1
echo "${pass} passed, ${fail:-0} failed"
exit "$rc"
