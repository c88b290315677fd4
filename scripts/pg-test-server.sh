#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (Debian's package, installed when missing).
#
#   eval "$(scripts/pg-test-server.sh start)"   # prints: export TOKEND_TEST_POSTGRES_URL=...
#   cargo test store::postgres                   # the PostgreSQL tests only
#   scripts/pg-test-server.sh stop
#
# The server refuses to run as root, and CI runs as root: as root, initdb and pg_ctl run as the
# `postgres` user the package creates, in a data directory it owns. It listens on 127.0.0.1 at a
# free port and on a Unix socket in the data directory; authentication is `trust` (loopback only,
# throwaway data). State (directory, port) is kept in target/pg-test.env for `stop`, `restart`
# and `url`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/target/pg-test.env"
log() { printf 'pg-test-server: %s\n' "$*" >&2; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

bindir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$initdb" ]; then
    log "installing postgresql (Debian package)"
    if [ "$(id -u)" != 0 ]; then log "initdb missing: install the postgresql package (as root)"; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
  fi
  dirname "$initdb"
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  log "no free port found"; exit 1
}

# A data directory the server's user can reach: target/pg-data when every parent directory lets
# it through, else a private directory under /tmp.
data_dir() {
  local dir="$root/target/pg-data"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      dir=$(mktemp -d /tmp/tokend-pg-data.XXXXXX)
      chown postgres: "$dir"
    fi
  fi
  chmod 700 "$dir"
  echo "$dir"
}

url_of() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }

start() {
  if [ -f "$state" ]; then
    # shellcheck disable=SC1090
    . "$state"
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
      echo "export TOKEND_TEST_POSTGRES_URL=$(url_of "$PG_PORT")"; return
    fi
  fi
  local bin dir port
  bin=$(bindir)
  dir=$(data_dir)
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$dir" -A trust -U postgres --no-sync >/dev/null
  fi
  port=$(free_port)
  printf 'PG_BIN=%q\nPG_DATA=%q\nPG_PORT=%q\n' "$bin" "$dir" "$port" > "$state"
  launch "$bin" "$dir" "$port"
  echo "export TOKEND_TEST_POSTGRES_URL=$(url_of "$port")"
}

launch() {
  # fsync off: throwaway data; synchronous_commit stays on (tokend refuses a server without it).
  as_pg "$1/pg_ctl" -D "$2" -l "$2/server.log" -w -t 30 \
    -o "-p $3 -k $2 -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400" start >/dev/null
  log "PostgreSQL on 127.0.0.1:$3 (data in $2)"
}

load_state() {
  if [ ! -f "$state" ]; then log "not started (no $state)"; exit 1; fi
  # shellcheck disable=SC1090
  . "$state"
}

case "${1:-}" in
  start) start ;;
  stop)
    if [ -f "$state" ]; then
      load_state
      as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
      rm -f "$state"
    fi ;;
  # Stops the server but keeps its state, so `resume` brings it back on the same port (the
  # outage tests use them).
  pause) load_state; as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null ;;
  resume) load_state; launch "$PG_BIN" "$PG_DATA" "$PG_PORT" ;;
  url) load_state; url_of "$PG_PORT" ;;
  *) echo "usage: $0 start|stop|pause|resume|url" >&2; exit 2 ;;
esac
