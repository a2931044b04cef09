#!/usr/bin/env bash
# Installs what flannel-bin's build, lab and tests need, only when missing: Debian packages and npm packages
# (Bun itself comes from npm, pinned in package.json). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v nats-server >/dev/null || need+=(nats-server)
# install.sh tests: a Debian 12 root booted with systemd-nspawn, and the shells the installer must run under.
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v busybox >/dev/null || need+=(busybox)
command -v shellcheck >/dev/null || need+=(shellcheck)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# dockerd for the Docker workflow e2e test, which runs its own dockerd inside each lab host. The package's service
# must not start in the root namespace (Docker rewrites the host's iptables): policy-rc.d's 101 keeps it stopped.
if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ]; then
  echo "setup: installing docker.io (its service is not started)"
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null; }
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl disable docker.service docker.socket >/dev/null 2>&1 || true; fi
fi

if [ ! -x node_modules/.bin/bun ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  # npm install, not npm ci: npm 11's ci refuses this lock over cbor-extract's per-platform optional packages.
  npm install --no-fund --no-audit --loglevel=error
fi

# Test peers, built from source with Go (only the interop and current-NATS tests use them; none of their code is in
# this repository): flanneld, a current nats-server (Debian's 2.9.10 lacks per-key TTL) and the nats CLI. Pinned to
# exact versions, built only when missing or another version (a stamp beside each binary names what it was built
# from), cached across runs in one GOPATH/GOCACHE. The first build takes minutes, later runs a second. Tests find them
# in $peer_bin (test/helpers/peers.ts).
peer_root=/var/cache/flannel-bin-test
peer_bin=$peer_root/bin
peers=(
  "nats-server github.com/nats-io/nats-server/v2 v2.15.2"
  "nats github.com/nats-io/natscli/nats v0.5.0"
  "flannel github.com/flannel-io/flannel v0.28.9"
)
go_bin=$(command -v go || echo /usr/local/go/bin/go)
go_env=(GOPATH="$peer_root/go" GOCACHE="$peer_root/go/cache" GOMODCACHE="$peer_root/go/pkg/mod" GOFLAGS=-modcacherw
  GOTOOLCHAIN=local CGO_ENABLED=0) # static binaries

# flanneld: `go install github.com/flannel-io/flannel@v0.28.9` cannot work where the module proxy serves no version of
# tencentcloud-sdk-go/tencentcloud/vpc (flanneld's Tencent Cloud VPC backend). So: the same module source, copied out
# of the module cache, built without that backend and without the udp one (cgo only; flannel-bin has neither), the
# version string set as flannel's Makefile sets it.
build_flanneld() {
  local version=$1 dir src
  dir=$(env "${go_env[@]}" "$go_bin" mod download -json "github.com/flannel-io/flannel@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -f "$dir/main.go" ] || { echo "setup: go mod download of flannel $version gave no source" >&2; return 1; }
  src=$peer_root/src/flannel-$version
  rm -rf "$src" && mkdir -p "$peer_root/src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  sed -i -e '\#"github.com/flannel-io/flannel/pkg/backend/tencentvpc"#d' -e '\#"github.com/flannel-io/flannel/pkg/backend/udp"#d' "$src/main.go"
  (cd "$src" && env "${go_env[@]}" "$go_bin" mod edit -droprequire=github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc &&
    env "${go_env[@]}" "$go_bin" build -mod=mod -trimpath -o "$peer_bin/flannel" \
      -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$version" .)
}

if [ ! -x "$go_bin" ]; then
  missing=()
  for p in "${peers[@]}"; do read -r name _ _ <<<"$p"; [ -x "$peer_bin/$name" ] || missing+=("$name"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: the Go toolchain is not installed (no go on PATH nor /usr/local/go/bin/go): cannot build the test peers ${missing[*]}" >&2
    echo "setup: install Go (https://go.dev/doc/install, or Debian's golang-go if new enough) and run scripts/setup.sh again;" >&2
    echo "setup: until then the interop and current-NATS tests fail, naming the missing binary" >&2
  fi
else
  mkdir -p "$peer_bin" "$peer_root/go"
  # One build at a time even when two checkouts run setup together.
  exec 9>"$peer_root/.lock"
  flock 9
  for p in "${peers[@]}"; do
    read -r name module version <<<"$p"
    stamp=$peer_bin/.$name.built
    [ -x "$peer_bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$module@$version" ] && continue
    echo "setup: building test peer $name ($module@$version) into $peer_bin; the first build takes minutes"
    rm -f "$stamp"
    if [ "$name" = flannel ]; then
      build_flanneld "$version"
    else
      env "${go_env[@]}" GOBIN="$peer_bin" "$go_bin" install "$module@$version"
    fi || {
      echo "setup: building $name ($module@$version) failed (Go $("$go_bin" env GOVERSION)); see the errors above" >&2
      exit 1
    }
    echo "$module@$version" >"$stamp"
  done
  exec 9>&-
fi
