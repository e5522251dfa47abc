# Sourced by .ci/run. start_postgres starts a throwaway PostgreSQL server for
# the store's conformance suite and exports its URL as
# HEARTBEAT_TEST_POSTGRES; the server and its directory are removed when the
# calling shell exits.
#
# - The server comes from the distribution's packages: if no initdb is found
#   under /usr/lib/postgresql/*/bin, it runs `apt-get update` and
#   `apt-get install -y postgresql` (once; later runs find it installed).
# - It runs as its own non-root user (the package's "postgres" user when
#   this script runs as root, else the calling user), listens on 127.0.0.1
#   only, and keeps everything in a fresh temporary directory.
# - A HEARTBEAT_TEST_POSTGRES already set is used as is (an existing server).

start_postgres() {
  if [ -n "${HEARTBEAT_TEST_POSTGRES:-}" ]; then
    echo "== PostgreSQL: using HEARTBEAT_TEST_POSTGRES from the environment"
    return 0
  fi
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "== PostgreSQL: installing the distribution's package"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi

  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/heartbeat-pg.XXXXXX")
  local run=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_DIR"
    run=(runuser -u postgres --)
  fi
  PG_RUN=("${run[@]}")
  PG_BIN=$bindir
  "${run[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U heartbeat -A trust --no-sync -E UTF8 >"$PG_DIR/initdb.log" 2>&1 || {
    cat "$PG_DIR/initdb.log"; return 1; }
  trap stop_postgres EXIT

  # A free port: try a few at random (another job may hold one).
  local port tries
  for tries in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 20000))
    if "${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c max_connections=200" start >/dev/null; then
      export HEARTBEAT_TEST_POSTGRES="postgres://heartbeat@127.0.0.1:$port/postgres?sslmode=disable"
      echo "== PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($PG_DIR)"
      return 0
    fi
  done
  cat "$PG_DIR/server.log"
  return 1
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ]; then
    "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
