#!/usr/bin/env bash
# The main job: installs what is missing, builds dist/flannel-bin, and brings up a multi-host lab on this machine
# (network namespaces, one shared SQLite store), then pings every container from every other one.
# Arguments go to `flannel-bin lab up` (e.g. --hosts 4 --backend host-gw). Tear down: dist/flannel-bin lab down
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node_modules/.bin/bun run build
# A lab of the same name left from an earlier run is replaced (only what its lab.json recorded).
name=(); prev=""
for a in "$@"; do
  case "$a" in --name=*|-name=*) name=(--name "${a#*=}") ;; esac
  case "$prev" in --name|-name) name=(--name "$a") ;; esac
  prev=$a
done
dist/flannel-bin lab down "${name[@]}" >/dev/null 2>&1 || true
exec dist/flannel-bin lab up "$@"
