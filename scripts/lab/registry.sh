#!/usr/bin/env bash
# scripts/lab/registry.sh - run a local Docker/OCI v2 registry (CNCF
# distribution 2.8.x, Debian package "docker-registry") for regfs's demo and
# benchmarks. (The Rust tests start theirs from tests/harness, the same way.)
#
# Usage: scripts/lab/registry.sh start|stop|status|restart [DIR] [PORT]
#   DIR   data directory (default REPO/.lab/registry)
#         DIR/storage        blobs and repositories (shared by all instances)
#         DIR/run/PORT/      config.yml, registry.pid, registry.log
#         DIR/auth/htpasswd  bcrypt htpasswd file (AUTH=1)
#         DIR/tls/           ca.crt, server.crt, server.key (TLS=1)
#   PORT  TCP port on 127.0.0.1 (default 5000)
# Environment for variants (each instance is one PORT):
#   AUTH=1   require HTTP basic auth; user/password from LAB_USER/LAB_PASS
#            (default lab / labpass)
#   TLS=1    serve HTTPS with a certificate signed by a private CA made with
#            openssl; clients trust DIR/tls/ca.crt (curl --cacert ...;
#            skopeo --src-cert-dir DIR/tls/certs.d, which holds only the CA)
# Examples:
#   scripts/lab/registry.sh start                       # plain HTTP on :5000
#   AUTH=1 scripts/lab/registry.sh start "" 5001        # basic auth on :5001
#   TLS=1 AUTH=1 scripts/lab/registry.sh start "" 5443  # HTTPS + auth on :5443
#   scripts/lab/registry.sh stop "" 5001
# Deletion is enabled (DELETE /v2/<name>/manifests/<digest> works).
set -euo pipefail

die() { echo "registry.sh: $*" >&2; exit 1; }

CMD=${1:-}
DIR=${2:-}
PORT=${3:-}
[ -n "$DIR" ] || DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.lab/registry"
[ -n "$PORT" ] || PORT=5000
case "$PORT" in ''|*[!0-9]*) die "bad port: $PORT" ;; esac
AUTH=${AUTH:-0}
TLS=${TLS:-0}
LAB_USER=${LAB_USER:-lab}
LAB_PASS=${LAB_PASS:-labpass}

RUN="$DIR/run/$PORT"
PIDFILE="$RUN/registry.pid"
LOG="$RUN/registry.log"
CONF="$RUN/config.yml"

# Install a Debian package if its command is missing.
need() { # need CMD PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "$1 missing; install Debian package $2"
  echo "installing $2 ..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null
}

# Print the pid if the recorded registry process is alive, else fail.
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "docker-registry serve $CONF" || return 1
  echo "$pid"
}

scheme() { if [ "$TLS" = 1 ]; then echo https; else echo http; fi; }

# Make a private CA and a server certificate for 127.0.0.1/localhost (once).
make_tls() {
  local t="$DIR/tls"
  [ -s "$t/server.crt" ] && [ -s "$t/ca.crt" ] && return 0
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=lab test CA" \
    -keyout "$t/ca.key" -out "$t/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" \
    -CAcreateserial -days 3650 -extfile "$t/ext.cnf" -out "$t/server.crt" 2>/dev/null
  chmod 600 "$t/ca.key" "$t/server.key"
  # A directory holding only the CA, for skopeo --dest-cert-dir/--src-cert-dir.
  mkdir -p "$t/certs.d"; cp "$t/ca.crt" "$t/certs.d/ca.crt"
}

write_config() {
  mkdir -p "$DIR/storage" "$RUN"
  {
    echo "version: 0.1"
    echo "log:"
    echo "  level: info"
    echo "  fields: {service: registry, port: $PORT}"
    echo "storage:"
    echo "  filesystem:"
    echo "    rootdirectory: $DIR/storage"
    echo "  delete:"
    echo "    enabled: true"
    echo "  maintenance:"
    echo "    uploadpurging: {enabled: false}"
    echo "http:"
    echo "  addr: 127.0.0.1:$PORT"
    echo "  secret: lab-secret-$PORT"
    echo "  headers:"
    echo "    X-Content-Type-Options: [nosniff]"
    if [ "$TLS" = 1 ]; then
      echo "  tls:"
      echo "    certificate: $DIR/tls/server.crt"
      echo "    key: $DIR/tls/server.key"
    fi
    if [ "$AUTH" = 1 ]; then
      echo "auth:"
      echo "  htpasswd:"
      echo "    realm: lab-registry"
      echo "    path: $DIR/auth/htpasswd"
    fi
  } >"$CONF"
}

start() {
  need docker-registry docker-registry
  need curl curl
  if pid=$(running_pid); then
    echo "registry already running on port $PORT (pid $pid)"; return 0
  fi
  if [ "$AUTH" = 1 ]; then
    need htpasswd apache2-utils
    mkdir -p "$DIR/auth"
    htpasswd -Bbn "$LAB_USER" "$LAB_PASS" >"$DIR/auth/htpasswd"
  fi
  [ "$TLS" = 1 ] && { need openssl openssl; make_tls; }
  write_config
  # The registry reads REGISTRY_* variables as config overrides: drop them.
  local unset=() v
  for v in $(compgen -e); do case "$v" in REGISTRY_*) unset+=(-u "$v") ;; esac; done
  env "${unset[@]}" setsid docker-registry serve "$CONF" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local url; url="$(scheme)://127.0.0.1:$PORT/v2/"
  local copts=(-s -o /dev/null -w '%{http_code}')
  [ "$TLS" = 1 ] && copts+=(--cacert "$DIR/tls/ca.crt")
  for _ in $(seq 1 100); do
    code=$(curl "${copts[@]}" "$url" || true)
    case "$code" in
      200|401) echo "registry up: $url (pid $(cat "$PIDFILE"), storage $DIR/storage, auth=$AUTH tls=$TLS)"; return 0 ;;
    esac
    running_pid >/dev/null || { tail -20 "$LOG" >&2; die "registry exited; log: $LOG"; }
    sleep 0.1
  done
  tail -20 "$LOG" >&2
  die "registry did not answer on $url; log: $LOG"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"; echo "registry on port $PORT not running"; return 0
  fi
  kill "$pid"
  for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -9 "$pid"
  rm -f "$PIDFILE"
  echo "registry on port $PORT stopped (pid $pid); data kept in $DIR/storage"
}

status() {
  local pid
  if pid=$(running_pid); then
    echo "running: pid $pid port $PORT config $CONF"
    grep -qE '^  tls:' "$CONF" && echo "  https, CA: $DIR/tls/ca.crt"
    grep -qE '^auth:' "$CONF" && echo "  basic auth, htpasswd: $DIR/auth/htpasswd"
    return 0
  fi
  echo "not running (port $PORT)"; return 3
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart [DIR] [PORT]  (env AUTH=1, TLS=1)" >&2; exit 2 ;;
esac
