# A throwaway PostgreSQL server on loopback for the shared-sweep tests; sourced by run.sh.
#
#   pg_test_start   initdb a cluster in a temporary folder, start it on 127.0.0.1 at a free port,
#                   export ONMKD_TEST_POSTGRES=postgresql+psycopg://onmkd@127.0.0.1:PORT/optuna
#   pg_test_stop    stop the server and remove the folder (run.sh calls it on exit)
#   pg_test_install install the Debian package when the server binaries are missing (.ci/run)
#
# The server runs as the calling user, or as "postgres" when called as root (PostgreSQL refuses
# to run as root). Nothing outside the temporary folder is touched.

_pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
  return 1
}

pg_test_install() {
  if _pg_bindir >/dev/null; then return 0; fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing the postgresql Debian package for the shared-sweep tests" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

_pg_as() {  # run a server binary as a user PostgreSQL accepts (from /, which that user can enter)
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

pg_test_start() {
  local bin port
  bin=$(_pg_bindir) || { echo "PostgreSQL not found: the shared-sweep test on PostgreSQL will be skipped" >&2; return 0; }
  PG_TEST_DIR=$(mktemp -d "${TMPDIR:-/tmp}/onmkd-pg.XXXXXX")
  export PG_TEST_DIR
  [ "$(id -u)" -eq 0 ] && chown postgres "$PG_TEST_DIR"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  _pg_as "$bin/initdb" -D "$PG_TEST_DIR/data" -U onmkd --auth=trust -E UTF8 >"$PG_TEST_DIR/initdb.log" 2>&1 \
    || { cat "$PG_TEST_DIR/initdb.log" >&2; return 1; }
  _pg_as "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TEST_DIR -c fsync=off" start >/dev/null \
    || { cat "$PG_TEST_DIR/server.log" >&2; return 1; }
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U onmkd optuna || return 1
  export ONMKD_TEST_POSTGRES="postgresql+psycopg://onmkd@127.0.0.1:$port/optuna"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port for the shared-sweep tests" >&2
}

pg_test_stop() {
  [ -n "${PG_TEST_DIR:-}" ] || return 0
  local bin
  if bin=$(_pg_bindir) && [ -d "$PG_TEST_DIR/data" ]; then
    _pg_as "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_TEST_DIR"
  unset PG_TEST_DIR ONMKD_TEST_POSTGRES
}
