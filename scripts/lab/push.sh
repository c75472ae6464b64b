#!/usr/bin/env bash
# scripts/lab/push.sh - push the lab images (built by make-images.sh, and the
# eStargz / zstd:chunked twins when present) to a registry with skopeo.
#
# Usage: scripts/lab/push.sh REGISTRY_HOSTPORT WORKDIR [REPO:TAG...]
#   With no REPO:TAG, every image below whose layout tag exists is pushed.
# Environment:
#   DEST_OPTS  skopeo destination options (default --dest-tls-verify=false;
#              e.g. "--dest-creds lab:labpass --dest-cert-dir DIR/tls/certs.d")
#
# REPO:TAG                    from WORKDIR layout:tag
#   lab/busybox:latest          oci:busybox
#   lab/busybox:v2s2            oci:busybox (Docker schema 2 manifest)
#   lab/debian:bookworm         oci:debian-bookworm
#   lab/python:3.11             oci:python-3.11
#   lab/python:3.11-v2s2        oci:python-3.11 (Docker schema 2 manifest)
#   lab/multi:latest            oci:multi (OCI index, --all)
#   lab/multi:v2s2              oci:multi (Docker manifest list, --all)
#   lab/python:3.11-zstd        oci-zstd:python-3.11-zstd
#   lab/python:3.11-esgz        oci-esgz:python-3.11-esgz (digests preserved)
#   lab/python:3.11-zstdchunked oci-esgz:python-3.11-zstdchunked
set -euo pipefail

die() { echo "push.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 REGISTRY_HOSTPORT WORKDIR [REPO:TAG...]"
REG=$1
WORK=$2
shift 2
read -r -a DEST_OPTS <<<"${DEST_OPTS:---dest-tls-verify=false}"

# REPO:TAG -> "LAYOUT TAG [skopeo options]"
source_of() {
  case "$1" in
    lab/busybox:latest) echo "oci busybox" ;;
    lab/busybox:v2s2) echo "oci busybox --format v2s2" ;;
    lab/debian:bookworm) echo "oci debian-bookworm" ;;
    lab/python:3.11) echo "oci python-3.11" ;;
    lab/python:3.11-v2s2) echo "oci python-3.11 --format v2s2" ;;
    lab/multi:latest) echo "oci multi --all" ;;
    lab/multi:v2s2) echo "oci multi --all --format v2s2" ;;
    lab/python:3.11-zstd) echo "oci-zstd python-3.11-zstd --preserve-digests" ;;
    lab/python:3.11-esgz) echo "oci-esgz python-3.11-esgz --preserve-digests" ;;
    lab/python:3.11-zstdchunked) echo "oci-esgz python-3.11-zstdchunked --preserve-digests" ;;
    *) return 1 ;;
  esac
}
ALL=(lab/busybox:latest lab/busybox:v2s2 lab/debian:bookworm lab/python:3.11
  lab/python:3.11-v2s2 lab/multi:latest lab/multi:v2s2 lab/python:3.11-zstd
  lab/python:3.11-esgz lab/python:3.11-zstdchunked)

has_tag() { # has_tag LAYOUT TAG
  [ -f "$WORK/$1/index.json" ] &&
    jq -r '.manifests[]?.annotations["org.opencontainers.image.ref.name"] // empty' \
      "$WORK/$1/index.json" | grep -qx "$2"
}

explicit=1
[ $# -gt 0 ] || { set -- "${ALL[@]}"; explicit=0; }
for dst in "$@"; do
  src=$(source_of "$dst") || die "unknown lab image $dst (known: ${ALL[*]})"
  read -r -a f <<<"$src"
  if ! has_tag "${f[0]}" "${f[1]}"; then
    [ "$explicit" = 0 ] && continue
    die "$WORK/${f[0]} has no tag ${f[1]} (scripts/lab/make-images.sh builds it)"
  fi
  echo "== push ${f[0]}:${f[1]} -> $REG/$dst" >&2
  skopeo copy -q "${f[@]:2}" "${DEST_OPTS[@]}" "oci:$WORK/${f[0]}:${f[1]}" "docker://$REG/$dst"
done
