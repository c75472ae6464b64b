# shellcheck shell=bash
# scripts/lib.sh - helpers shared by scripts/test and scripts/demo.
# Source it: . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Functions:
#   repo_root        absolute path of the repository (parent of scripts/)
#   lab_dir          absolute path of scripts/lab (registry.sh, make-images.sh,
#                    push.sh, esgz.sh, check-rootfs.sh)
#   ensure_packages  install the Debian packages the tests and demo need
#                    (only when one of their commands/files is missing)
#   ensure_images [busybox|python]
#                    build the lab OCI layout into ${REGFS_LAB:-REPO/.lab/images}
#                    when a tag is missing, plus the zstd twin layout oci-zstd
#                    and the eStargz / zstd:chunked layout oci-esgz; with
#                    `busybox`, only the busybox image (seconds); with
#                    `python`, busybox, debian and python (debootstrap, ~2 min)
#   free_port [FROM] print a TCP port on 127.0.0.1 nobody listens on
#   say / die        messages on stderr

say() { echo "== $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

lab_dir() { echo "$(repo_root)/scripts/lab"; }

# The lab image layout; exported so that cargo test sees it.
lab_images() { echo "${REGFS_LAB:-$(repo_root)/.lab/images}"; }

# Command (or absolute file path) -> Debian package.
REGFS_PACKAGES=(
  fusermount3 fuse3
  docker-registry docker-registry
  skopeo skopeo
  umoci umoci
  debootstrap debootstrap
  /bin/busybox busybox-static
  htpasswd apache2-utils
  openssl openssl
  jq jq
  curl curl
  zstd zstd
  /usr/share/keyrings/debian-archive-keyring.gpg debian-archive-keyring
  # tests/runtimes and tests/containerd: podman through the layer store,
  # containerd through the remote snapshotter (both with runc)
  podman podman
  conmon conmon
  # podman's recommends, as on the machines the tests were written on (apt
  # here installs without recommends)
  catatonit catatonit
  newuidmap uidmap
  slirp4netns slirp4netns
  fuse-overlayfs fuse-overlayfs
  /usr/sbin/runc runc
  containerd containerd
  ctr-remote stargz-snapshotter
)

_apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

ensure_packages() {
  local missing=() i cmd pkg
  for ((i = 0; i < ${#REGFS_PACKAGES[@]}; i += 2)); do
    cmd=${REGFS_PACKAGES[i]}
    pkg=${REGFS_PACKAGES[i + 1]}
    case "$cmd" in
      /*) [ -e "$cmd" ] && continue ;;
      *) command -v "$cmd" >/dev/null 2>&1 && continue ;;
    esac
    missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}; run as root or install them"
    say "installing ${missing[*]}"
    # A fresh machine has no package lists: on failure update them and retry.
    if ! _apt_install "${missing[@]}"; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
    fi
  fi
  # FUSE needs the kernel module (built in on most kernels).
  if [ ! -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
    modprobe fuse >/dev/null 2>&1 || true
  fi
  # rustfmt and clippy (CI images with rustup may lack them).
  if command -v rustup >/dev/null 2>&1; then
    local comp=()
    cargo fmt --version >/dev/null 2>&1 || comp+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || comp+=(clippy)
    if [ ${#comp[@]} -gt 0 ]; then
      say "rustup component add ${comp[*]}"
      rustup component add "${comp[@]}" >/dev/null 2>&1 || die "rustup component add ${comp[*]} failed"
    fi
  fi
}

# True when something answers on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print the first port >= FROM (default: random in 20000-29999) that is free.
free_port() {
  local p=${1:-$((20000 + RANDOM % 10000))} n
  for ((n = 0; n < 200; n++, p++)); do
    if ! port_in_use "$p" && ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  die "no free TCP port found from ${1:-random}"
}

REGFS_LAB_TAGS=(busybox busybox-arm64 multi debian-bookworm python-3.11)

# Tags in an OCI layout (one per line); empty if there is no layout.
_layout_tags() { # _layout_tags LAYOUT_DIR
  [ -f "$1/index.json" ] || return 0
  jq -r '.manifests[]?.annotations["org.opencontainers.image.ref.name"] // empty' "$1/index.json"
}

# True when the zstd and eStargz / zstd:chunked layouts have their tags.
_extra_layouts_done() { # _extra_layouts_done LAB_DIR
  local t
  grep -qx python-3.11-zstd <<<"$(_layout_tags "$1/oci-zstd" 2>/dev/null)" || return 1
  for t in "${REGFS_ESGZ_TAGS[@]}"; do
    grep -qx "$t" <<<"$(_layout_tags "$1/oci-esgz" 2>/dev/null)" || return 1
  done
}

ensure_images() { # ensure_images [busybox|python]
  local L missing=() t tags want=("${REGFS_LAB_TAGS[@]}") steps="busybox debian multiarch"
  case "${1:-}" in
    busybox) want=(busybox) steps=busybox ;;
    python) want=(busybox debian-bookworm python-3.11) steps="busybox debian" ;;
  esac
  L=$(lab_images)
  mkdir -p "$L"
  L=$(cd "$L" && pwd)
  export REGFS_LAB="$L"
  # Everything there already: no lock, so that a builder working on other
  # tags (the demo's background build) does not hold this caller up.
  tags=$(_layout_tags "$L/oci" 2>/dev/null || true)
  for t in "${want[@]}"; do
    grep -qx "$t" <<<"$tags" || missing+=("$t")
  done
  if [ ${#missing[@]} -eq 0 ] && { [ -n "${1:-}" ] || _extra_layouts_done "$L"; }; then
    return 0
  fi
  missing=()
  # One builder at a time (test binaries, bench and demo may call this at once).
  local lockfd
  exec {lockfd}>"$L/.ensure.lock"
  flock "$lockfd"
  tags=$(_layout_tags "$L/oci")
  for t in "${want[@]}"; do
    grep -qx "$t" <<<"$tags" || missing+=("$t")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "building lab images into $L/oci (missing: ${missing[*]})"
    STEPS="$steps" "$(lab_dir)/make-images.sh" "$L" || die "make-images.sh failed"
    tags=$(_layout_tags "$L/oci")
    for t in "${want[@]}"; do
      grep -qx "$t" <<<"$tags" || die "tag $t still missing from $L/oci after make-images.sh"
    done
  fi
  if [ -z "${1:-}" ]; then
    if ! grep -qx python-3.11-zstd <<<"$(_layout_tags "$L/oci-zstd")"; then
      say "recompressing python-3.11 with zstd into $L/oci-zstd"
      STEPS=zstd "$(lab_dir)/make-images.sh" "$L" || die "zstd recompression failed"
    fi
    ensure_esgz_images
  fi
  flock -u "$lockfd"
  exec {lockfd}>&-
}

# eStargz and zstd:chunked twins of python-3.11, converted by a real tool
# (ctr-remote, via scripts/lab/esgz.sh) and kept byte-identical (manifests
# with their TOC annotations) in the layout oci-esgz. ~1-2 minutes, once.
REGFS_ESGZ_TAGS=(python-3.11-esgz python-3.11-zstdchunked)

ensure_esgz_images() {
  local L t missing=0 lab port reg rc=0 work
  L=$(lab_images)
  L=$(cd "$L" && pwd)
  for t in "${REGFS_ESGZ_TAGS[@]}"; do
    grep -qx "$t" <<<"$(_layout_tags "$L/oci-esgz")" || missing=1
  done
  [ "$missing" = 1 ] || return 0
  [ "$(id -u)" = 0 ] || die "building $L/oci-esgz needs root (containerd)"
  local c
  for c in containerd:containerd ctr-remote:stargz-snapshotter; do
    command -v "${c%%:*}" >/dev/null 2>&1 || _apt_install "${c#*:}" ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
        _apt_install "${c#*:}" || die "apt-get install ${c#*:} failed"; }
  done
  lab=$(lab_dir)
  port=$(free_port)
  reg="$L/../esgz-registry"
  work="$L/../esgz-work"
  say "converting python-3.11 to eStargz and zstd:chunked into $L/oci-esgz (~1-2 minutes)"
  rm -rf "$reg"
  "$lab/registry.sh" start "$reg" "$port" >/dev/null
  (
    "$lab/push.sh" "127.0.0.1:$port" "$L" lab/python:3.11 &&
      "$lab/esgz.sh" "127.0.0.1:$port" "$work" lab/python:3.11 lab/python:3.11-esgz >/dev/null &&
      rm -rf "$L/oci-esgz" &&
      for t in esgz zstdchunked; do
        skopeo copy -q --src-tls-verify=false --preserve-digests \
          "docker://127.0.0.1:$port/lab/python:3.11-$t" "oci:$L/oci-esgz:python-3.11-$t" || exit 1
      done
  ) || rc=$?
  "$lab/registry.sh" stop "$reg" "$port" >/dev/null || true
  rm -rf "$reg" "$work"
  [ "$rc" = 0 ] || die "eStargz conversion failed ($rc)"
}
