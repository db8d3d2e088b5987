#!/usr/bin/env bash
# A private PostgreSQL cluster (the version scripts/pg_env.sh names) for tests, the demo and
# benchmarks: pg_cron and orders_sync preloaded, owned by the postgres OS user, on a loopback
# port and its own socket directory.
#
#   scripts/pg_cluster.sh start DIR PORT DBNAME [extra postgresql.conf lines...]
#   scripts/pg_cluster.sh stop DIR
#   scripts/pg_cluster.sh restart DIR
#
# start initialises DIR/data when missing, (re)writes the orders_sync settings, starts the
# server, creates DBNAME and prints the connection string on stdout. A server left running
# in DIR by an earlier, interrupted run is stopped first.
set -euo pipefail

# shellcheck source=pg_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg_env.sh"
: "${PG_BIN:?$PG_CONFIG not found: run scripts/setup.sh first}"
OS_USER="${PG_OS_USER:-postgres}"

as_pg() {
  if [ "$(id -un)" = "$OS_USER" ]; then "$@"; else sudo -u "$OS_USER" -- "$@"; fi
}

cmd="${1:?usage: pg_cluster.sh start|stop|restart DIR [PORT DBNAME]}"
dir="${2:?missing DIR}"
data="$dir/data"

stop_cluster() {
  if [ -f "$data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
      as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  stop)
    stop_cluster
    ;;
  restart)
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -m fast -w -t 120 restart >/dev/null
    ;;
  start)
    port="${3:?missing PORT}"
    db="${4:?missing DBNAME}"
    shift 4
    stop_cluster
    mkdir -p "$dir"
    chown "$OS_USER": "$dir" 2>/dev/null || true
    if [ ! -f "$data/PG_VERSION" ]; then
      as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    fi
    {
      echo "# written by scripts/pg_cluster.sh"
      echo "port = $port"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$dir'"
      echo "shared_preload_libraries = 'pg_cron,orders_sync'"
      echo "cron.database_name = '$db'"
      echo "orders_sync.database = '$db'"
      echo "max_worker_processes = 32"
      echo "log_min_messages = warning"
      echo "log_line_prefix = '%m [%p] %b '"
      for line in "$@"; do echo "$line"; done
    } | as_pg tee "$data/orders_sync.conf" >/dev/null
    # Our settings live in their own file, so ALTER SYSTEM (postgresql.auto.conf) still works.
    grep -qx "include = 'orders_sync.conf'" "$data/postgresql.conf" ||
      echo "include = 'orders_sync.conf'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 120 start >/dev/null
    if ! as_pg "$PG_BIN/psql" -h "$dir" -p "$port" -U postgres -d postgres -Atqc \
         "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
      as_pg "$PG_BIN/createdb" -h "$dir" -p "$port" -U postgres "$db"
    fi
    echo "host=127.0.0.1 port=$port user=postgres dbname=$db"
    ;;
  *)
    echo "pg_cluster.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
