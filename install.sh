#!/bin/sh
# flannel-bin installer.
#
#   curl -fsSL <release folder>/install.sh | sh -s - --etcd-endpoints=http://10.0.0.1:2379
#
# Installs the flannel-bin binary that fits this host into BIN_DIR (sha256-checked against sha256sum.txt), a
# systemd unit (or an OpenRC script), an env file with the FLANNELD_* variables set now, the mk-docker-opts.sh
# link and BIN_DIR/flannel-bin-uninstall.sh, then enables and starts the service. On any download or checksum
# error it exits non-zero and leaves the system as it was. Arguments after `sh -s -` are flags for `flannel-bin run`.
#
# Settings (environment):
#   INSTALL_FLANNEL_BIN_URL            folder holding the release files (install.sh, flannel-bin-linux-*, sha256sum.txt);
#                                      default: the project's release for INSTALL_FLANNEL_BIN_VERSION, else the latest
#   INSTALL_FLANNEL_BIN_VERSION        version to install, e.g. 0.1.0 (also checked against the downloaded binary)
#   INSTALL_FLANNEL_BIN_BIN_DIR        where the binary goes (default /usr/local/bin)
#   INSTALL_FLANNEL_BIN_SKIP_DOWNLOAD  true: air-gap install, BIN_DIR/flannel-bin is already there
#   INSTALL_FLANNEL_BIN_SKIP_ENABLE    true: do not enable the service at boot
#   INSTALL_FLANNEL_BIN_SKIP_START     true: do not (re)start the service
#   INSTALL_FLANNEL_BIN_FORCE_RESTART  true: restart even when nothing changed
#   INSTALL_FLANNEL_BIN_EXEC           flags for `flannel-bin run` (split on blanks; put before the arguments)
#   FLANNELD_*                         written to /etc/flannel-bin/flannel-bin.env (mode 0600), read by the service
#
# The whole script is one function called on the last line: a truncated download runs nothing.

flannel_bin_install() {
  set -eu

  RELEASES=https://github.com/flannel-bin/flannel-bin/releases
  ENV_DIR=/etc/flannel-bin
  ENV_FILE=$ENV_DIR/flannel-bin.env
  SYSTEMD_UNIT=/etc/systemd/system/flannel-bin.service
  TMPFILES=/etc/tmpfiles.d/flannel-bin.conf
  OPENRC_SCRIPT=/etc/init.d/flannel-bin
  TMP_DIR=
  CREATED_DIRS=
  DONE=

  info() { echo "[flannel-bin install] $*"; }
  warn() { echo "[flannel-bin install] warning: $*" >&2; }
  fatal() {
    echo "[flannel-bin install] error: $*" >&2
    exit 1
  }

  # Runs on every exit: removes the download folder, and on failure also the folders this run created.
  cleanup() {
    rc=$?
    [ -n "$TMP_DIR" ] && rm -rf "$TMP_DIR"
    if [ "$rc" -ne 0 ] && [ -z "$DONE" ]; then
      for d in $CREATED_DIRS; do rmdir "$d" 2>/dev/null || true; done
    fi
    exit "$rc"
  }

  is_true() {
    case "${1:-}" in
      true) return 0 ;;
      "" | false) return 1 ;;
      *) fatal "a setting says '$1'; use true or false" ;;
    esac
  }

  NL='
'
  # A word for a generated file: plain words as they are, others quoted. Control characters are refused.
  check_word() {
    case "$1" in *"$NL"*) fatal "a flag contains a line break: $(printf '%s' "$1" | head -n 1)..." ;; esac
    if printf '%s' "$1" | LC_ALL=C grep -q '[[:cntrl:]]'; then fatal "a flag contains a control character"; fi
  }
  plain_word() {
    case "$1" in "" | *[!A-Za-z0-9_./:=,@+-]*) return 1 ;; esac
  }
  # systemd ExecStart quoting: "..." with \ and " escaped; $ and % doubled (systemd expands them).
  systemd_word() {
    if plain_word "$1"; then printf '%s' "$1"; else
      printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\$/$$/g' -e 's/%/%%/g')"
    fi
  }
  # POSIX sh quoting (OpenRC's command_args and the env file): '...' with ' as '\''.
  sh_word() {
    if plain_word "$1"; then printf '%s' "$1"; else printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; fi
  }

  sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
      sha256sum "$1" | awk '{print $1}'
    elif command -v shasum >/dev/null 2>&1; then
      shasum -a 256 "$1" | awk '{print $1}'
    elif command -v openssl >/dev/null 2>&1; then
      openssl dgst -sha256 "$1" | awk '{print $NF}'
    else
      fatal "no sha256sum, shasum or openssl found: cannot verify the download"
    fi
  }

  # Hash of an installed file, or "-" when it is missing (for the "did anything change" check).
  file_hash() {
    if [ -f "$1" ]; then sha256 "$1"; else echo -; fi
  }

  download() { # url file
    case "$DOWNLOADER" in
      curl) curl -fsSL --retry 3 --connect-timeout 10 -o "$2" "$1" ;;
      wget) wget -q -T 30 -O "$2" "$1" ;; # busybox wget knows -q -T -O, not -t
    esac || fatal "download of $1 failed"
  }

  # ---- generated files -------------------------------------------------

  # The unit. Type=notify: flannel-bin sends READY=1 once subnet.env is written, so Before=docker.service is meaningful.
  # Hardening: only the capabilities a network agent needs; the file system is read-only except what it writes.
  # No MemoryDenyWriteExecute (Bun's JIT needs writable+executable memory) and no RuntimeDirectory= for /run/flannel
  # (systemd would delete subnet.env on every stop, under the feet of docker and CNI).
  # Environment=: the runtime settings the agent would otherwise re-execute itself to get (README: systemd), so a start
  # or restart under this unit is one runtime start; the env file, read after it, can still override them.
  systemd_unit() {
    cat <<EOF
# Written by flannel-bin install.sh; rerun the installer to change it.
[Unit]
Description=flannel-bin: flannel's subnet leases and overlay network in one binary
Documentation=https://github.com/flannel-bin/flannel-bin
Wants=network-online.target
After=network-online.target
Before=docker.service

[Service]
Type=notify
NotifyAccess=main
Environment=BUN_GC_TIMER_DISABLE=1 MIMALLOC_PURGE_DELAY=0
EnvironmentFile=-$ENV_FILE
ExecStart=$BINARY run$SYSTEMD_ARGS
$DOCKER_OPTS_LINE
Restart=always
RestartSec=5
WatchdogSec=30s
TimeoutStopSec=15s
LimitNOFILE=65536
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths=/run/flannel /var/lib/flannel-bin /run/xtables.lock
PrivateTmp=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
EOF
  }

  tmpfiles_conf() {
    cat <<EOF
# Written by flannel-bin install.sh: what flannel-bin.service may write (ReadWritePaths=), made at boot.
d /run/flannel 0755 root root -
d /var/lib/flannel-bin 0700 root root -
f /run/xtables.lock 0600 root root -
EOF
  }

  openrc_script() {
    cat <<EOF
#!/sbin/openrc-run
# Written by flannel-bin install.sh; rerun the installer to change it.
description="flannel-bin: flannel's subnet leases and overlay network in one binary"
supervisor=supervise-daemon
command=$BINARY
command_args="run$OPENRC_ARGS"
respawn_delay=5
respawn_max=0
output_log=/var/log/flannel-bin.log
error_log=/var/log/flannel-bin.log

depend() {
  need net
  before docker
}

start_pre() {
  mkdir -p /run/flannel /var/lib/flannel-bin
  if [ -f $ENV_FILE ]; then
    set -o allexport
    . $ENV_FILE
    set +o allexport
  fi
}

# OpenRC has no readiness message: wait (bounded) for subnet.env, then write docker's options as the unit does.
start_post() {
  i=0
  while [ ! -s /run/flannel/subnet.env ] && [ \$i -lt 60 ]; do sleep 1; i=\$((i + 1)); done
  $DOCKER_OPTS_LINK -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker
}
EOF
  }

  write_uninstall() {
    cat >"$UNINSTALL.tmp" <<EOF
#!/bin/sh
# Written by flannel-bin install.sh: removes flannel-bin from this host.
#   $UNINSTALL           stop and remove the service, binary, links, env file and this script
#   $UNINSTALL --purge   also remove its network devices, routes (protocol 159), FLANNEL-* iptables chains,
#                        flannel nft tables, /run/flannel and /var/lib/flannel-bin
flannel_bin_uninstall() {
  set -eu
  PURGE=false
  for a in "\$@"; do
    case "\$a" in
      --purge) PURGE=true ;;
      *) echo "usage: \$0 [--purge]" >&2; exit 2 ;;
    esac
  done
  [ "\$(id -u)" -eq 0 ] || { echo "flannel-bin-uninstall: must run as root" >&2; exit 1; }
  trap 'rm -f "$UNINSTALL"' EXIT

  if [ -f $SYSTEMD_UNIT ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop flannel-bin.service 2>/dev/null || true
    systemctl disable flannel-bin.service >/dev/null 2>&1 || true
    systemctl reset-failed flannel-bin.service 2>/dev/null || true
    rm -f $SYSTEMD_UNIT $TMPFILES
    systemctl daemon-reload 2>/dev/null || true
  fi
  if [ -f $OPENRC_SCRIPT ]; then
    rc-service flannel-bin stop 2>/dev/null || true
    rc-update delete flannel-bin default 2>/dev/null || true
    rm -f $OPENRC_SCRIPT
  fi
  if [ -L $DOCKER_OPTS_LINK ] && [ "\$(readlink $DOCKER_OPTS_LINK)" = flannel-bin ]; then rm -f $DOCKER_OPTS_LINK; fi
  rm -f $BINARY $ENV_FILE
  rmdir $ENV_DIR 2>/dev/null || true

  if [ "\$PURGE" = true ]; then
    # Devices: vxlan flannel.<VNI> and flannel-v6.<VNI>, wireguard flannel-wg(-v6).
    for dev in \$(ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", \$2); print \$2 }' | grep -E '^flannel([.-]|\$)' || true); do
      ip link delete "\$dev" || true
    done
    # Routes flannel-bin installed carry protocol 159, and so do the nexthop objects they go through (deleting
    # those takes their routes along; iproute2 6.1 cannot flush routes through nexthops).
    ip nexthop flush proto 159 >/dev/null 2>&1 || true
    ip -4 route flush table all proto 159 2>/dev/null || true
    ip -6 route flush table all proto 159 2>/dev/null || true
    for ipt in iptables ip6tables iptables-legacy ip6tables-legacy; do
      command -v \$ipt >/dev/null 2>&1 || continue
      # Legacy tables: only those that exist (listing one would create it).
      case \$ipt in
        ip6tables-legacy) tables=\$(cat /proc/net/ip6_tables_names 2>/dev/null || true) ;;
        iptables-legacy) tables=\$(cat /proc/net/ip_tables_names 2>/dev/null || true) ;;
        *) tables="filter nat mangle" ;;
      esac
      for table in \$tables; do
        chains=\$(\$ipt -w 5 -t \$table -S 2>/dev/null | awk '\$1 == "-N" && \$2 ~ /^FLANNEL-/ { print \$2 }') || true
        [ -n "\$chains" ] || continue
        \$ipt -w 5 -t \$table -S 2>/dev/null | grep -E -e '-j FLANNEL-' | grep -v '^-N' | sed 's/^-A /-D /' | while IFS= read -r rule; do
          eval "\$ipt -w 5 -t \$table \$rule" || true
        done
        for c in \$chains; do \$ipt -w 5 -t \$table -F "\$c" || true; done
        for c in \$chains; do \$ipt -w 5 -t \$table -X "\$c" || true; done
      done
    done
    if command -v nft >/dev/null 2>&1; then
      nft list tables 2>/dev/null | awk '\$1 == "table" && \$3 ~ /^flannel/ { print \$2, \$3 }' | while read -r family name; do
        nft delete table "\$family" "\$name" || true
      done
    fi
    rm -f /run/flannel/subnet.env /run/flannel/docker
    rmdir /run/flannel 2>/dev/null || true
    rm -rf /var/lib/flannel-bin
  fi
  echo "flannel-bin removed"
}
flannel_bin_uninstall "\$@"
EOF
    chmod 0755 "$UNINSTALL.tmp"
    mv -f "$UNINSTALL.tmp" "$UNINSTALL"
  }

  # ---- checks: nothing on the system is changed until the binary is verified ----------------------------------
  [ "$(id -u)" -eq 0 ] || fatal "must run as root (try: curl -fsSL <url>/install.sh | sudo sh -s - <flags>)"

  BIN_DIR=${INSTALL_FLANNEL_BIN_BIN_DIR:-/usr/local/bin}
  case "$BIN_DIR" in
    /*) ;;
    *) fatal "INSTALL_FLANNEL_BIN_BIN_DIR must be an absolute path, got '$BIN_DIR'" ;;
  esac
  case "$BIN_DIR" in *[!A-Za-z0-9_./-]*) fatal "INSTALL_FLANNEL_BIN_BIN_DIR may only hold letters, digits and _ . / -" ;; esac
  BIN_DIR=${BIN_DIR%/}
  [ -n "$BIN_DIR" ] || fatal "INSTALL_FLANNEL_BIN_BIN_DIR must not be /"
  BINARY=$BIN_DIR/flannel-bin
  UNINSTALL=$BIN_DIR/flannel-bin-uninstall.sh
  DOCKER_OPTS_LINK=$BIN_DIR/mk-docker-opts.sh
  VERSION=${INSTALL_FLANNEL_BIN_VERSION:-}
  VERSION=${VERSION#v}
  case "$VERSION" in *[!A-Za-z0-9._+-]*) fatal "INSTALL_FLANNEL_BIN_VERSION '$VERSION' is not a version" ;; esac
  SKIP_DOWNLOAD=false SKIP_ENABLE=false SKIP_START=false FORCE_RESTART=false
  is_true "${INSTALL_FLANNEL_BIN_SKIP_DOWNLOAD:-}" && SKIP_DOWNLOAD=true
  is_true "${INSTALL_FLANNEL_BIN_SKIP_ENABLE:-}" && SKIP_ENABLE=true
  is_true "${INSTALL_FLANNEL_BIN_SKIP_START:-}" && SKIP_START=true
  is_true "${INSTALL_FLANNEL_BIN_FORCE_RESTART:-}" && FORCE_RESTART=true

  # Flags for `run`: INSTALL_FLANNEL_BIN_EXEC (split on blanks, no globbing), then the arguments.
  set -f
  # shellcheck disable=SC2086
  set -- ${INSTALL_FLANNEL_BIN_EXEC:-} "$@"
  set +f
  [ "${1:-}" = run ] && shift
  SYSTEMD_ARGS=
  OPENRC_ARGS=
  for a in "$@"; do
    check_word "$a"
    SYSTEMD_ARGS="$SYSTEMD_ARGS $(systemd_word "$a")"
    # OpenRC: sh-quoted words inside command_args="…", so also escaped for double quotes.
    OPENRC_ARGS="$OPENRC_ARGS $(sh_word "$a" | sed -e 's/[\\"$`]/\\&/g')"
  done

  # Environment for the service: FLANNELD_* set now.
  ENV_TEXT=
  for name in $(env | sed -n 's/^\(FLANNELD_[A-Za-z0-9_]*\)=.*/\1/p' | sort -u); do
    value=
    eval "value=\${$name}"
    check_word "$value"
    case "$value" in *"'"*) fatal "$name contains a single quote: write it into $ENV_FILE yourself" ;; esac
    ENV_TEXT="$ENV_TEXT$name=$(sh_word "$value")$NL"
  done

  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    INIT=systemd
  elif [ -x /sbin/openrc-run ]; then
    INIT=openrc
  else
    fatal "neither systemd (/run/systemd/system and systemctl) nor OpenRC (/sbin/openrc-run) found: install the binary by hand and run 'flannel-bin run'"
  fi

  if [ "$SKIP_DOWNLOAD" = false ]; then
    case "$(uname -m)" in
      x86_64 | amd64)
        LOADER=/lib64/ld-linux-x86-64.so.2
        # Bun's default x64 build needs AVX2; without it the binary dies with "Illegal instruction".
        if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then ASSET=flannel-bin-linux-amd64; else ASSET=flannel-bin-linux-amd64-baseline; fi
        ;;
      aarch64 | arm64)
        LOADER=/lib/ld-linux-aarch64.so.1
        ASSET=flannel-bin-linux-arm64
        ;;
      *) fatal "unsupported architecture $(uname -m): flannel-bin is built for x86_64 (amd64, amd64-baseline) and aarch64 (arm64) Linux with glibc" ;;
    esac
    if ls /lib/ld-musl-* >/dev/null 2>&1 || { ldd --version 2>&1 | grep -qi musl; }; then
      fatal "this system uses musl libc: flannel-bin is built for glibc Linux (x86_64 or aarch64) only"
    fi
    [ -e "$LOADER" ] || fatal "no glibc found ($LOADER is missing): flannel-bin is built for glibc Linux (x86_64 or aarch64) only"

    if command -v curl >/dev/null 2>&1; then
      DOWNLOADER=curl
    elif command -v wget >/dev/null 2>&1; then
      DOWNLOADER=wget
    else
      fatal "neither curl nor wget found"
    fi
    if [ -n "${INSTALL_FLANNEL_BIN_URL:-}" ]; then
      URL=${INSTALL_FLANNEL_BIN_URL%/}
    elif [ -n "$VERSION" ]; then
      URL=$RELEASES/download/v$VERSION
    else
      URL=$RELEASES/latest/download
    fi
  fi

  # ---- download and verify, into a temporary folder inside BIN_DIR (same file system: the move is atomic) -----
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  # Folders this run creates (deepest first), removed again if it fails.
  d=$BIN_DIR
  while [ ! -e "$d" ]; do
    CREATED_DIRS="$CREATED_DIRS $d"
    d=$(dirname "$d")
  done
  mkdir -p "$BIN_DIR"
  NEW_BINARY=
  if [ "$SKIP_DOWNLOAD" = true ]; then
    [ -x "$BINARY" ] || fatal "INSTALL_FLANNEL_BIN_SKIP_DOWNLOAD=true but $BINARY is missing or not executable"
    info "air-gap install: using $BINARY as it is"
    CHECK=$BINARY
  else
    TMP_DIR=$(mktemp -d "$BIN_DIR/.flannel-bin-install.XXXXXX")
    info "downloading $URL/sha256sum.txt"
    download "$URL/sha256sum.txt" "$TMP_DIR/sha256sum.txt"
    EXPECTED=$(awk -v f="$ASSET" '$2 == f || $2 == "*" f { print $1 }' "$TMP_DIR/sha256sum.txt")
    case "$EXPECTED" in
      "") fatal "$URL/sha256sum.txt has no line for $ASSET" ;;
      *[!0-9a-f]* | *"$NL"*) fatal "$URL/sha256sum.txt: the line for $ASSET is not one sha256" ;;
    esac
    [ "${#EXPECTED}" -eq 64 ] || fatal "$URL/sha256sum.txt: the line for $ASSET is not one sha256"
    if [ -f "$BINARY" ] && [ "$(sha256 "$BINARY")" = "$EXPECTED" ]; then
      info "$BINARY is already $ASSET ($EXPECTED): not downloading it again"
      CHECK=$BINARY
    else
      info "downloading $URL/$ASSET"
      download "$URL/$ASSET" "$TMP_DIR/flannel-bin"
      ACTUAL=$(sha256 "$TMP_DIR/flannel-bin")
      [ "$ACTUAL" = "$EXPECTED" ] || fatal "sha256 of $ASSET is $ACTUAL, sha256sum.txt says $EXPECTED: nothing was installed"
      chmod 0755 "$TMP_DIR/flannel-bin"
      NEW_BINARY=$TMP_DIR/flannel-bin
      CHECK=$NEW_BINARY
    fi
  fi
  # Smoke test before anything is installed: a wrong CPU level or libc fails here, not in the service.
  GOT=$("$CHECK" --version 2>&1) || fatal "$CHECK does not run on this host (${GOT:-no output}): nothing was installed"
  GOT=$(printf '%s\n' "$GOT" | head -n 1)
  if [ -n "$VERSION" ] && [ "$GOT" != "$VERSION" ]; then
    fatal "$CHECK is version $GOT, INSTALL_FLANNEL_BIN_VERSION is $VERSION: nothing was installed"
  fi

  # Docker's options after every start, as flannel's guides do; only if this binary has the mk-docker-opts command.
  if "$CHECK" --help 2>&1 | grep -q mk-docker-opts; then
    DOCKER_OPTS_LINE="ExecStartPost=$DOCKER_OPTS_LINK -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker"
  else
    DOCKER_OPTS_LINE="# (no ExecStartPost for docker: this flannel-bin has no mk-docker-opts command)"
    warn "$GOT has no mk-docker-opts command: the service will not write /run/flannel/docker"
  fi

  # ---- install ------------------------------------------------------------------------------------------------
  if [ "$INIT" = systemd ]; then SERVICE_FILE=$SYSTEMD_UNIT; else SERVICE_FILE=$OPENRC_SCRIPT; fi
  BEFORE="$(file_hash "$BINARY") $(file_hash "$SERVICE_FILE") $(file_hash "$ENV_FILE")"

  if [ -n "$NEW_BINARY" ]; then
    mv -f "$NEW_BINARY" "$BINARY"
    info "installed $BINARY ($GOT, $ASSET)"
  fi

  # flannel's docker guides run mk-docker-opts.sh; flannel-bin answers to that name. A real script there is kept.
  if [ -L "$DOCKER_OPTS_LINK" ] || [ ! -e "$DOCKER_OPTS_LINK" ]; then
    ln -sfn flannel-bin "$DOCKER_OPTS_LINK"
  else
    warn "$DOCKER_OPTS_LINK exists and is not a link: left as it is"
  fi

  write_uninstall

  if [ -n "$ENV_TEXT" ]; then
    mkdir -p "$ENV_DIR"
    chmod 0700 "$ENV_DIR"
    (
      umask 077
      printf '# FLANNELD_* settings for flannel-bin run, written by install.sh\n%s' "$ENV_TEXT" >"$ENV_FILE.tmp"
    )
    mv -f "$ENV_FILE.tmp" "$ENV_FILE"
    info "wrote $ENV_FILE (mode 0600)"
  elif [ -f "$ENV_FILE" ]; then
    info "no FLANNELD_* variables set: $ENV_FILE kept as it is"
  fi

  if [ "$INIT" = systemd ]; then
    # ReadWritePaths= needs the paths to exist when the service starts; tmpfiles makes them at every boot.
    mkdir -p "$(dirname "$TMPFILES")"
    tmpfiles_conf >"$TMPFILES.tmp"
    mv -f "$TMPFILES.tmp" "$TMPFILES"
    systemd-tmpfiles --create "$TMPFILES"
    systemd_unit >"$SYSTEMD_UNIT.tmp"
    chmod 0644 "$SYSTEMD_UNIT.tmp"
    mv -f "$SYSTEMD_UNIT.tmp" "$SYSTEMD_UNIT"
  else
    openrc_script >"$OPENRC_SCRIPT.tmp"
    chmod 0755 "$OPENRC_SCRIPT.tmp"
    mv -f "$OPENRC_SCRIPT.tmp" "$OPENRC_SCRIPT"
  fi
  AFTER="$(file_hash "$BINARY") $(file_hash "$SERVICE_FILE") $(file_hash "$ENV_FILE")"
  DONE=1

  # ---- enable and start ---------------------------------------------------------------------------------------
  if [ "$INIT" = systemd ]; then
    systemctl daemon-reload
    [ "$SKIP_ENABLE" = true ] || systemctl enable flannel-bin.service >/dev/null 2>&1 || fatal "systemctl enable flannel-bin failed"
    if [ "$SKIP_START" = true ]; then
      info "not starting flannel-bin (INSTALL_FLANNEL_BIN_SKIP_START=true)"
    elif [ "$BEFORE" = "$AFTER" ] && [ "$FORCE_RESTART" = false ] && systemctl is-active --quiet flannel-bin.service; then
      info "no change detected: flannel-bin keeps running"
    else
      info "starting flannel-bin.service"
      systemctl restart flannel-bin.service || fatal "flannel-bin.service did not start: see journalctl -u flannel-bin"
      info "flannel-bin.service is $(systemctl is-active flannel-bin.service || true)"
    fi
  else
    [ "$SKIP_ENABLE" = true ] || rc-update add flannel-bin default >/dev/null
    if [ "$SKIP_START" = true ]; then
      info "not starting flannel-bin (INSTALL_FLANNEL_BIN_SKIP_START=true)"
    elif [ "$BEFORE" = "$AFTER" ] && [ "$FORCE_RESTART" = false ] && rc-service flannel-bin status >/dev/null 2>&1; then
      info "no change detected: flannel-bin keeps running"
    else
      rc-service flannel-bin restart || fatal "flannel-bin did not start: see /var/log/flannel-bin.log"
    fi
  fi
  info "done; uninstall with $UNINSTALL (--purge also removes its network devices, routes, rules and state)"
}

flannel_bin_install "$@"
