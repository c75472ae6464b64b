#!/usr/bin/env bash
# scripts/peers/stargz-store.sh - build stargz-store (the closest peer of
# regfs's lazy layers) from Debian's own Go sources, offline, and print the
# binary's path. Debian's golang-github-containerd-stargz-snapshotter-dev
# (0.12) has the library but no cmd/: scripts/peers/stargz-store/main.go makes
# the calls upstream's cmd/stargz-store/main.go makes (without the CRI
# keychain, which needs k8s.io/cri-api, absent from Debian). Built in GOPATH
# mode (GO111MODULE=off) against /usr/share/gocode; the output lives under
# OUT (default: the cargo target dir's peers/), never in the repository.
#   scripts/peers/stargz-store.sh [OUT]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
REPO=$(repo_root)
OUT=${1:-${CARGO_TARGET_DIR:-$REPO/target}/peers}
BIN="$OUT/stargz-store"
SRC="$REPO/scripts/peers/stargz-store/main.go"

need=()
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/containerd/stargz-snapshotter/store ] ||
  need+=(golang-github-containerd-stargz-snapshotter-dev)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  _apt_install "${need[@]}"
fi

if [ -x "$BIN" ] && [ "$BIN" -nt "$SRC" ]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$OUT/gopath/src/regfs-peers/stargz-store" "$OUT/gocache"
cp "$SRC" "$OUT/gopath/src/regfs-peers/stargz-store/main.go"
# The resolver package without cri.go (the CRI keychain's k8s.io/cri-api is
# not in Debian): GOPATH mode takes a package from the first GOPATH entry
# that has it, so this copy shadows Debian's and the rest comes from Debian.
RES=github.com/containerd/stargz-snapshotter/service/resolver
rm -rf "$OUT/gopath/src/$RES"
mkdir -p "$OUT/gopath/src/$RES"
cp /usr/share/gocode/src/$RES/registry.go "$OUT/gopath/src/$RES/"
say "building stargz-store from Debian's sources (GOPATH mode, offline; about a minute the first time)"
(
  cd "$OUT/gopath/src/regfs-peers/stargz-store"
  GO111MODULE=off GOPATH="$OUT/gopath:/usr/share/gocode" GOCACHE="$OUT/gocache" \
    GOPROXY=off GOFLAGS= CGO_ENABLED=0 go build -o "$BIN.tmp" .
)
mv "$BIN.tmp" "$BIN"
echo "$BIN"
