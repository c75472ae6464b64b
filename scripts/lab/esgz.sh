#!/usr/bin/env bash
# scripts/lab/esgz.sh - convert an image in the registry to eStargz (and zstd:chunked)
# with ctr-remote (Debian package stargz-snapshotter) and push it back.
# ctr-remote needs a containerd content store: a private containerd is started
# with its root, state and socket under WORKDIR and stopped (by pid) on exit.
#
# Usage: esgz.sh REGISTRY_HOSTPORT [WORKDIR] [SRC_REPO:TAG] [DST_REPO:TAG]
#   defaults: WORKDIR ${TMPDIR:-/tmp}/regfs-esgz,
#             SRC lab/python:3.11, DST lab/python:3.11-esgz
# Environment:
#   ZSTDCHUNKED_DST  also push a zstd:chunked conversion under this name
#                    (default: SRC with tag suffix -zstdchunked; "" to skip)
#   CTR_OPTS         registry options for pull/push (default --plain-http;
#                    e.g. "--user lab:labpass --tlscacert ca.crt")
#   KEEP_CONTAINERD=1  leave containerd running (socket WORKDIR/containerd.sock)
set -euo pipefail

die() { echo "esgz.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 REGISTRY_HOSTPORT [WORKDIR] [SRC_REPO:TAG] [DST_REPO:TAG]"
REG=$1
W=${2:-${TMPDIR:-/tmp}/regfs-esgz}
SRC=${3:-lab/python:3.11}
DST=${4:-lab/python:3.11-esgz}
ZDST=${ZSTDCHUNKED_DST-${SRC}-zstdchunked}
read -r -a CTR_OPTS <<<"${CTR_OPTS:---plain-http}"
[ "$(id -u)" = 0 ] || die "run as root (containerd)"

for c in containerd:containerd ctr-remote:stargz-snapshotter; do
  command -v "${c%%:*}" >/dev/null || {
    log "installing ${c#*:}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${c#*:}" >/dev/null; }
done

mkdir -p "$W"; W=$(cd "$W" && pwd)
SOCK="$W/containerd.sock"
PIDF="$W/containerd.pid"
CTR=(ctr-remote --address "$SOCK" --namespace lab)

# A containerd confined to WORKDIR: no CRI, no default /opt or /run paths.
cat >"$W/config.toml" <<EOF
version = 2
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/opt"
EOF

ctd_pid() {
  [ -f "$PIDF" ] || return 1
  local p; p=$(cat "$PIDF")
  [ -d "/proc/$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "containerd --config $W/config.toml" && echo "$p"
}
stop_containerd() {
  local p
  if p=$(ctd_pid); then
    kill "$p"; for _ in $(seq 1 50); do [ -d "/proc/$p" ] || break; sleep 0.1; done
    [ -d "/proc/$p" ] && kill -9 "$p"
    log "containerd stopped (pid $p)"
  fi
  rm -f "$PIDF" "$SOCK" "$SOCK.ttrpc"
  # Drop the content store and snapshots unless something is still mounted.
  findmnt -rn -o TARGET | grep -q "^$W/" || rm -rf "$W/root" "$W/state" "$W/opt"
}

if ! ctd_pid >/dev/null; then
  rm -f "$SOCK"
  setsid containerd --config "$W/config.toml" >"$W/containerd.log" 2>&1 </dev/null &
  echo $! >"$PIDF"
fi
[ "${KEEP_CONTAINERD:-0}" = 1 ] || trap stop_containerd EXIT
# (ctr-remote prints a harmless version-mismatch warning: it is built apart)
for _ in $(seq 1 100); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${CTR[@]}" version >/dev/null 2>&1 || { tail -20 "$W/containerd.log" >&2; die "containerd did not start"; }
log "containerd up (pid $(cat "$PIDF"), socket $SOCK)"

log "pull $REG/$SRC"
"${CTR[@]}" images pull "${CTR_OPTS[@]}" "$REG/$SRC" >"$W/pull.log" 2>&1 ||
  { tail -20 "$W/pull.log" >&2; die "pull failed"; }

convert_push() { # convert_push DST FLAGS...
  local dst=$1; shift
  log "convert $SRC -> $dst ($*)"
  "${CTR[@]}" images rm "$REG/$dst" >/dev/null 2>&1 || true
  "${CTR[@]}" images convert "$@" --oci "$REG/$SRC" "$REG/$dst" >"$W/convert.log" 2>&1 ||
    { tail -20 "$W/convert.log" >&2; die "convert failed"; }
  log "push $REG/$dst"
  "${CTR[@]}" images push "${CTR_OPTS[@]}" "$REG/$dst" >"$W/push.log" 2>&1 ||
    { tail -20 "$W/push.log" >&2; die "push failed"; }
}
convert_push "$DST" --estargz
[ -n "$ZDST" ] && convert_push "$ZDST" --zstdchunked
log "done"
