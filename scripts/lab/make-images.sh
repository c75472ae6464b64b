#!/usr/bin/env bash
# scripts/lab/make-images.sh - build the lab images regfs is tested, shown and
# measured with, from Debian packages, into OCI layouts (no registry needed;
# scripts/lab/push.sh pushes them). Run as root (debootstrap, chroot, owners).
#
# Usage: scripts/lab/make-images.sh WORKDIR
#   WORKDIR/oci       OCI layout, tags busybox busybox-arm64 multi
#                     debian-bookworm python-3.11
#   WORKDIR/oci-zstd  python-3.11-zstd (layers recompressed with zstd)
#   WORKDIR/debcache  downloaded .deb files (kept for rebuilds)
# Environment:
#   STEPS="busybox debian multiarch zstd"  steps to run (default all)
#   FORCE=1        rebuild images already present
#   SUITE          Debian suite for debootstrap (default bookworm)
#
# Images (all linux):
#   busybox          amd64, 1 layer (busybox-static, one symlink per applet)
#   busybox-arm64    the same from busybox-static:arm64
#   multi            OCI image index: busybox (amd64) + busybox-arm64 (arm64/v8)
#   debian-bookworm  amd64, 1 layer, debootstrap --variant=minbase
#   python-3.11      amd64, 4 layers: the debian base, +python3, deletions
#                    (.wh. whiteouts) + hardlink/symlinks, an opaque directory
#   python-3.11-zstd the python layers recompressed with zstd (oci-zstd)
# The eStargz / zstd:chunked twins need a registry and containerd:
# scripts/lab/esgz.sh (scripts/lib.sh ensure_esgz_images calls it).
set -euo pipefail

die() { echo "make-images.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 WORKDIR"
WORK=$1
STEPS=${STEPS:-busybox debian multiarch zstd}
FORCE=${FORCE:-0}
SUITE=${SUITE:-bookworm}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, file ownership)"

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
OCI="$WORK/oci"
DEBS="$WORK/debcache"
mkdir -p "$DEBS"

# Install Debian packages whose commands are missing.
need() { # need CMD PACKAGE [CMD PACKAGE ...]
  local missing=()
  while [ $# -ge 2 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2"); shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}
need skopeo skopeo umoci umoci debootstrap debootstrap jq jq curl curl zstd zstd
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need /nonexistent debian-archive-keyring

has_step() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
# Tags are read with jq, not `umoci ls | grep -q` (umoci writes a line per
# write(2) and dies of SIGPIPE once grep has matched, under pipefail).
layout_tags() { # layout_tags LAYOUT
  [ -f "$1/index.json" ] || return 0
  jq -r '.manifests[]?.annotations["org.opencontainers.image.ref.name"] // empty' "$1/index.json"
}
has_tag() { layout_tags "$OCI" | grep -qx "$1"; }

# Debian mirror URL as configured for apt (first "deb" source carrying SUITE).
mirror_url() {
  local u
  u=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER) $(TARGET_OF)' 2>/dev/null |
      awk -v s="$SUITE" '$2==s && $3=="Packages" && $4=="deb" {print $1; exit}')
  if [ -z "$u" ]; then # fall back to parsing the source files
    u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v s="$SUITE" '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1)==s) {print $i; exit} } }')
  fi
  if [ -z "$u" ]; then
    u=$(awk -v s="$SUITE" 'BEGIN{RS=""} /Types:[^\n]*deb( |$|\n)/ && $0 ~ "Suites:[^\n]*"s"( |\n|$)" {
          if (match($0, /URIs: *[^ \n]+/)) { split(substr($0,RSTART,RLENGTH), a, / +/); print a[2]; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  fi
  [ -n "$u" ] || die "no Debian mirror for $SUITE found in the apt configuration"
  echo "${u%/}"
}

# Fetch a .deb into the cache (apt-get download, host architecture or ARCH).
fetch_deb() { # fetch_deb PACKAGE [APT_OPTIONS...]
  local pkg=$1; shift
  (cd "$DEBS" && apt-get -o APT::Sandbox::User=root download "$@" "$pkg" >/dev/null)
  ls -t "$DEBS/${pkg%%:*}"_*.deb | head -1
}

init_layout() { [ -f "$OCI/index.json" ] || umoci init --layout "$OCI"; }

# Replace tag TAG with a new image built from directory ROOTFS (one layer).
image_from_rootfs() { # image_from_rootfs TAG ROOTFS CREATED_BY
  local tag=$1 rootfs=$2 by=$3 b="$WORK/bundle-$1"
  rm -rf "$b"
  umoci rm --image "$OCI:$tag" 2>/dev/null || true
  umoci new --image "$OCI:$tag"
  umoci unpack --image "$OCI:$tag" "$b" >/dev/null
  cp -a "$rootfs/." "$b/rootfs/"
  umoci repack --image "$OCI:$tag" --history.created_by "$by" "$b"
  rm -rf "$b"
}

# ---------------------------------------------------------------- busybox
# A busybox rootfs: /bin/busybox from Debian's busybox-static, one absolute
# symlink per applet, minimal /etc.
busybox_rootfs() { # busybox_rootfs DEB DIR
  local deb=$1 r=$2 x="$WORK/busybox-deb"
  rm -rf "$r" "$x"; mkdir -p "$r" "$x"
  dpkg-deb -x "$deb" "$x"
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,var/log,proc,sys,dev}
  chmod 1777 "$r/tmp"; chmod 700 "$r/root"
  install -m 0755 "$x/bin/busybox" "$r/bin/busybox"
  # The applet list comes from the amd64 binary (same build for every arch).
  local list="$WORK/busybox-applets.txt"
  [ -s "$list" ] || die "no applet list (build amd64 first)"
  while read -r p; do
    [ "$p" = bin/busybox ] && continue
    mkdir -p "$r/$(dirname "$p")"; ln -sfn /bin/busybox "$r/$p"
  done <"$list"
  printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n' >"$r/etc/group"
  printf 'root::19000:0:99999:7:::\n' >"$r/etc/shadow"; chmod 640 "$r/etc/shadow"
  echo "lab" >"$r/etc/hostname"
  cp -a "$x/usr/share/doc/busybox-static/copyright" "$r/etc/busybox.copyright" 2>/dev/null || true
  rm -rf "$x"
}

step_busybox() {
  init_layout
  if [ "$FORCE" = 1 ] || ! has_tag busybox; then
    log "build busybox (amd64)"
    local deb; deb=$(fetch_deb busybox-static)
    local x="$WORK/busybox-list"; rm -rf "$x"; mkdir -p "$x"
    dpkg-deb -x "$deb" "$x"; "$x/bin/busybox" --list-full | sort >"$WORK/busybox-applets.txt"; rm -rf "$x"
    busybox_rootfs "$deb" "$WORK/rootfs-busybox"
    image_from_rootfs busybox "$WORK/rootfs-busybox" "busybox-static $(dpkg-deb -f "$deb" Version)"
    umoci config --image "$OCI:busybox" --no-history --os linux --architecture amd64 \
      --config.cmd sh --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin
    rm -rf "$WORK/rootfs-busybox"
  fi
}

# ---------------------------------------------------------------- debian + python
in_chroot() { # in_chroot ROOTFS CMD... (private mount namespace, /dev /proc bound)
  local r=$1; shift
  cp -L /etc/resolv.conf "$r/etc/resolv.conf"
  unshare -m --propagation private /bin/sh -c '
    r=$1; shift
    mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && mount -t sysfs sys "$r/sys" &&
    exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"' sh "$r" "$@"
  rm -f "$r/etc/resolv.conf"
}

step_debian() {
  init_layout
  local mirror; mirror=$(mirror_url)
  local b="$WORK/bundle-python"
  if [ "$FORCE" = 1 ] || ! has_tag debian-$SUITE || ! has_tag python-3.11; then
    local r="$WORK/rootfs-debian"
    log "debootstrap --variant=minbase $SUITE from $mirror"
    rm -rf "$r"
    debootstrap --variant=minbase --cache-dir="$DEBS" "$SUITE" "$r" "$mirror" \
      >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    findmnt -rn -o TARGET | grep -q "^$r/" && die "something is still mounted under $r"
    # Trim like the official images: no caches, no device nodes, neutral names.
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/var/log/*.log
    find "$r/dev" -mindepth 1 -delete
    rm -f "$r/etc/resolv.conf"; echo localhost >"$r/etc/hostname"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"

    log "layer 1: debian base"
    image_from_rootfs "debian-$SUITE" "$r" "debootstrap --variant=minbase $SUITE"
    umoci config --image "$OCI:debian-$SUITE" --no-history --config.cmd bash \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    rm -rf "$r"

    log "layer 2: + python3 (apt-get in chroot)"
    rm -rf "$b"
    umoci unpack --image "$OCI:debian-$SUITE" "$b" >/dev/null
    in_chroot "$b/rootfs" /bin/sh -ec '
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3 >/dev/null
      apt-get clean; rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log'
    umoci rm --image "$OCI:python-3.11" 2>/dev/null || true
    umoci repack --refresh-bundle --image "$OCI:python-3.11" \
      --history.created_by "apt-get install --no-install-recommends python3" "$b"

    log "layer 3: deletions (whiteouts), hardlink, symlinks"
    local R="$b/rootfs"
    rm -f "$R/usr/lib/python3.11/antigravity.py"          # file from layer 2
    rm -rf "$R/usr/lib/python3.11/pydoc_data"             # directory from layer 2
    rm -f "$R/etc/issue.net"                              # file from layer 1
    mkdir -p "$R/opt/lab/old"
    echo "from layer 3, hidden by the opaque layer 4" >"$R/opt/lab/old/hidden.txt"
    echo "lab layer 3 data" >"$R/usr/local/share/lab.txt"
    ln "$R/usr/local/share/lab.txt" "$R/usr/local/share/lab-hardlink.txt"
    ln -s lab.txt "$R/usr/local/share/lab-symlink.txt"
    ln -s /usr/bin/python3 "$R/usr/local/bin/py"
    umoci repack --refresh-bundle --image "$OCI:python-3.11" \
      --history.created_by "rm antigravity.py pydoc_data issue.net; add links" "$b"

    log "layer 4: opaque directory /opt/lab"
    local o="$WORK/opaque-src"; rm -rf "$o"; mkdir -p "$o/sub"
    seq 1 20000 >"$o/numbers.txt"
    ln "$o/numbers.txt" "$o/numbers-hardlink.txt"
    ln -s numbers.txt "$o/numbers-symlink.txt"
    ln -s ../numbers.txt "$o/sub/up-symlink.txt"
    echo "layer 4" >"$o/sub/file.txt"
    umoci insert --image "$OCI:python-3.11" --opaque \
      --history.created_by "rm -rf /opt/lab && mkdir /opt/lab && add files" "$o" /opt/lab
    rm -rf "$o" "$b"
    umoci config --image "$OCI:python-3.11" --no-history --config.cmd python3 \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.env LANG=C.UTF-8
  fi
}

# ---------------------------------------------------------------- multi-arch
# arm64 busybox-static is fetched with a private apt state (no change to the
# host's dpkg architectures); the index is written into the OCI layout and
# copied with skopeo --all.
step_multiarch() {
  init_layout
  has_tag busybox || die "multiarch needs the busybox step first"
  if [ "$FORCE" = 1 ] || ! has_tag busybox-arm64 || ! has_tag multi; then
    local mirror; mirror=$(mirror_url)
    local A="$WORK/apt-arm64"
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
    : >"$A/status"
    echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" >"$A/sources.list"
    local aopts=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64
      -o Dir::State::Lists="$A/lists" -o Dir::State::status="$A/status"
      -o Dir::Cache="$A/cache" -o Dir::Etc::SourceList="$A/sources.list"
      -o Dir::Etc::SourceParts=/dev/null -o Acquire::Languages=none)
    log "fetch busybox-static:arm64 (private apt lists in $A)"
    apt-get "${aopts[@]}" -qq update
    local deb; deb=$(fetch_deb busybox-static:arm64 "${aopts[@]}")
    case "$deb" in *_arm64.deb) ;; *) die "no arm64 busybox-static .deb" ;; esac
    busybox_rootfs "$deb" "$WORK/rootfs-busybox-arm64"
    image_from_rootfs busybox-arm64 "$WORK/rootfs-busybox-arm64" "busybox-static arm64"
    umoci config --image "$OCI:busybox-arm64" --no-history --os linux --architecture arm64 \
      --config.cmd sh --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin
    rm -rf "$WORK/rootfs-busybox-arm64"

    log "write OCI image index (amd64 + arm64/v8)"
    local desc_amd desc_arm idx dig size
    desc_amd=$(jq -c '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="busybox") | {mediaType,digest,size}' "$OCI/index.json")
    desc_arm=$(jq -c '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="busybox-arm64") | {mediaType,digest,size}' "$OCI/index.json")
    idx=$(jq -cn --argjson a "$desc_amd" --argjson b "$desc_arm" '{schemaVersion:2,
      mediaType:"application/vnd.oci.image.index.v1+json",
      manifests:[($a + {platform:{architecture:"amd64",os:"linux"}}),
                 ($b + {platform:{architecture:"arm64",os:"linux",variant:"v8"}})]}')
    dig=$(printf '%s' "$idx" | sha256sum | cut -d' ' -f1)
    size=$(printf '%s' "$idx" | wc -c)
    printf '%s' "$idx" >"$OCI/blobs/sha256/$dig"
    jq --arg d "sha256:$dig" --argjson s "$size" '
      .manifests |= ([.[] | select(.annotations["org.opencontainers.image.ref.name"]!="multi")]
        + [{mediaType:"application/vnd.oci.image.index.v1+json", digest:$d, size:$s,
            annotations:{"org.opencontainers.image.ref.name":"multi"}}])' \
      "$OCI/index.json" >"$OCI/index.json.new"
    mv "$OCI/index.json.new" "$OCI/index.json"
  fi
}

# ---------------------------------------------------------------- zstd
# A layout of its own, so that its blobs never replace the gzip ones.
step_zstd() {
  has_tag python-3.11 || die "zstd needs the debian step first"
  local Z="$WORK/oci-zstd"
  [ "$FORCE" = 1 ] || ! layout_tags "$Z" | grep -qx python-3.11-zstd || return 0
  log "recompress python-3.11 with zstd into $Z"
  rm -rf "$Z"
  skopeo copy -q --format oci --dest-compress-format zstd "oci:$OCI:python-3.11" "oci:$Z:python-3.11-zstd"
}

for s in busybox debian multiarch zstd; do
  has_step "$s" && "step_$s"
done
[ -f "$OCI/index.json" ] && umoci gc --layout "$OCI"
log "done; OCI layout: $OCI"
