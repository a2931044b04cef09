#!/usr/bin/env bash
# The main job: installs what is missing, builds dist/flannel-bin, and brings up a multi-host lab on this machine
# (network namespaces, one shared SQLite store), then pings every container from every other one.
# Arguments go to `flannel-bin lab up` (e.g. --hosts 4 --backend host-gw). Tear down: dist/flannel-bin lab down
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node_modules/.bin/bun run build
# A lab left from an earlier run of this script is replaced (only the default-named one, only what it recorded).
dist/flannel-bin lab down >/dev/null 2>&1 || true
exec dist/flannel-bin lab up "$@"
