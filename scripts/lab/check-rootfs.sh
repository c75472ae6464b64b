#!/usr/bin/env bash
# scripts/lab/check-rootfs.sh - check that a directory shows the flattened
# content of a lab image as scripts/lab/make-images.sh builds it: whiteouts
# applied, opaque directory hiding lower content, hardlinks sharing an inode,
# symlink targets, modes.
# Use it on a FUSE mount of the registry image or on an umoci/tar unpack.
#
# Usage: check-rootfs.sh ROOTFS [python|busybox|debian]   (default: guessed)
# Prints one line per check and "N passed, N failed"; exit 1 if any failed.
# Environment: EXPECT_ENTRIES overrides the expected entry count (it depends
# on the Debian packages current at build time; tests/rootfs.rs counts an
# umoci unpack of the same image); ARCH=arm64 for the arm64 busybox.
set -uo pipefail

R=${1:?usage: $0 ROOTFS [python|busybox|debian]}
KIND=${2:-}
[ -d "$R" ] || { echo "not a directory: $R" >&2; exit 2; }
if [ -z "$KIND" ]; then
  if [ -d "$R/usr/lib/python3.11" ]; then KIND=python
  elif [ -f "$R/bin/busybox" ] && [ ! -e "$R/var/lib/dpkg/status" ]; then KIND=busybox
  else KIND=debian; fi
fi

pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { # check DESCRIPTION CMD...
  local d=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi
}
absent() { [ ! -e "$R$1" ] && [ ! -L "$R$1" ]; }
same_inode() { [ "$(stat -c %i "$R$1")" = "$(stat -c %i "$R$2")" ] && [ "$(stat -c %h "$R$1")" -ge 2 ]; }
link_is() { [ "$(readlink "$R$1")" = "$2" ]; }
mode_is() { [ "$(stat -c %A "$R$1")" = "$2" ]; }
content_is() { [ "$(cat "$R$1")" = "$2" ]; }
count_is() { [ "$(find "$R" -mindepth 1 | wc -l)" = "${EXPECT_ENTRIES:-$1}" ]; }
is_elf() { # is_elf FILE MACHINE(hex byte at offset 18, 3e=x86-64, b7=aarch64)
  [ "$(od -An -tx1 -j18 -N1 "$R$1" | tr -d ' ')" = "$2" ]
}

common_debian() {
  check "/etc/debian_version is 12.x" grep -q '^12\.' "$R/etc/debian_version"
  check "/bin is a symlink to usr/bin (merged /usr)" link_is /bin usr/bin
  check "/usr/bin/perl and perl5.36.0 are one inode (layer-1 hardlink)" same_inode /usr/bin/perl /usr/bin/perl5.36.0
  check "/usr/bin/gunzip and uncompress are one inode" same_inode /usr/bin/gunzip /usr/bin/uncompress
  check "/usr/bin/chfn is setuid root" mode_is /usr/bin/chfn -rwsr-xr-x
  check "/usr/bin/chage is setgid" mode_is /usr/bin/chage -rwxr-sr-x
  check "/usr/bin/chage group is shadow (gid 42)" test "$(stat -c %g "$R/usr/bin/chage")" = 42
  check "/tmp is 1777" mode_is /tmp drwxrwxrwt
  check "/dev is empty" test -z "$(ls -A "$R/dev")"
  check "/usr/bin/dpkg is an x86-64 ELF" is_elf /usr/bin/dpkg 3e
}

case "$KIND" in
  python)
    common_debian
    check "entry count is 8221 (find -mindepth 1)" count_is 8221
    check "python3 -> python3.11" link_is /usr/bin/python3 python3.11
    check "os.py readable and non-empty" test -s "$R/usr/lib/python3.11/os.py"
    check "whiteout: /usr/lib/python3.11/antigravity.py gone" absent /usr/lib/python3.11/antigravity.py
    check "whiteout: /usr/lib/python3.11/pydoc_data gone" absent /usr/lib/python3.11/pydoc_data
    check "whiteout: /etc/issue.net (layer 1) gone" absent /etc/issue.net
    check "/etc/issue (sibling) still there" test -f "$R/etc/issue"
    check "opaque: /opt/lab/old (layer 3) hidden" absent /opt/lab/old
    check "opaque: /opt/lab has exactly 4 entries" test "$(ls -A "$R/opt/lab" | wc -l)" = 4
    check "/opt/lab/numbers.txt is seq 1 20000" test "$(sha256sum <"$R/opt/lab/numbers.txt" | cut -d' ' -f1)" = \
      f6351f5ead9a700e34275480b3856ea738122a7c57bdeb744a631251c069587a
    check "/opt/lab/numbers-hardlink.txt same inode" same_inode /opt/lab/numbers.txt /opt/lab/numbers-hardlink.txt
    check "/opt/lab/numbers-symlink.txt -> numbers.txt" link_is /opt/lab/numbers-symlink.txt numbers.txt
    check "/opt/lab/sub/up-symlink.txt -> ../numbers.txt" link_is /opt/lab/sub/up-symlink.txt ../numbers.txt
    check "relative symlink resolves" test "$(head -1 "$R/opt/lab/sub/up-symlink.txt")" = 1
    check "/opt/lab/sub/file.txt is 'layer 4'" content_is /opt/lab/sub/file.txt "layer 4"
    check "/usr/local/share/lab.txt content" content_is /usr/local/share/lab.txt "lab layer 3 data"
    check "/usr/local/share/lab-hardlink.txt same inode" same_inode /usr/local/share/lab.txt /usr/local/share/lab-hardlink.txt
    check "/usr/local/share/lab-symlink.txt -> lab.txt" link_is /usr/local/share/lab-symlink.txt lab.txt
    check "/usr/local/bin/py -> /usr/bin/python3 (absolute)" link_is /usr/local/bin/py /usr/bin/python3
    check "no .wh. names visible" test -z "$(find "$R" -name '.wh.*' -print -quit)"
    ;;
  debian)
    common_debian
    check "entry count is 6657 (find -mindepth 1)" count_is 6657
    check "/etc/issue.net present" test -f "$R/etc/issue.net"
    ;;
  busybox)
    check "/bin/busybox is a regular executable" test -f "$R/bin/busybox" -a -x "$R/bin/busybox"
    check "/bin/sh -> /bin/busybox (absolute)" link_is /bin/sh /bin/busybox
    check "/usr/bin/wc -> /bin/busybox" link_is /usr/bin/wc /bin/busybox
    check "entry count is 288 (find -mindepth 1)" count_is 288
    check "/etc/passwd has root" grep -q '^root:x:0:0:' "$R/etc/passwd"
    check "/tmp is 1777" mode_is /tmp drwxrwxrwt
    check "/etc/shadow mode 640" mode_is /etc/shadow -rw-r-----
    if [ "${ARCH:-amd64}" = arm64 ]; then check "busybox is aarch64 ELF" is_elf /bin/busybox b7
    else check "busybox is x86-64 ELF" is_elf /bin/busybox 3e; fi
    ;;
  *) echo "unknown kind: $KIND" >&2; exit 2 ;;
esac

echo "$KIND: $pass passed, $fail failed"
[ "$fail" = 0 ]
