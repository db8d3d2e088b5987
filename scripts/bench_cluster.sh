# shellcheck shell=bash
# Start-up shared by the benchmarks that need a private cluster and the reference simulator
# (bench_ingest.sh, bench_profiler.sh). Sourced, not run: it defines `repo`, `work`,
# `target`, a `psql` wrapper and an EXIT trap, and these steps:
#
#   bench_prepare NAME                  setup.sh, the simulator's release build; the cluster
#                                       lives in $work/NAME (with BENCH_KEEP=1 it is left
#                                       running at exit)
#   bench_start_cluster PORT DB CONF... holds $INSTALL_LOCK from here on (the installed .so
#                                       must not change under the benchmark), installs the
#                                       release build, starts a fresh cluster; sets `dsn`
#   bench_start_simulator ARGS...       starts the simulator on an ephemeral port; sets
#                                       `sim_url`

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${ORDERS_SYNC_WORK:-/var/tmp/orders_sync}"
target="${CARGO_TARGET_DIR:-$repo/target}"
bench_name="" dir="" sim_pid="" dsn="" sim_url=""
# shellcheck source=pg_env.sh
source "$repo/scripts/pg_env.sh"

bench_cleanup() {
  if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; fi
  [ -n "$dir" ] || return 0
  if [ -n "${BENCH_KEEP:-}" ]; then
    echo "$bench_name: cluster left running for inspection: psql '$dsn'; stop: scripts/pg_cluster.sh stop $dir"
  else
    "$repo/scripts/pg_cluster.sh" stop "$dir" || true
  fi
}
trap bench_cleanup EXIT

psql() { command psql "$dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }

bench_prepare() {
  bench_name="$1"
  cd "$repo" || exit 1
  bash scripts/setup.sh >/dev/null
  mkdir -p "$work"
  chown postgres: "$work" 2>/dev/null || true
  cargo build -q --release -p orders_sync_simulator --bin orders_sync_simulator
  dir="$work/$bench_name"
}

bench_start_cluster() {
  local port="$1" db="$2"
  shift 2
  exec 9>"$INSTALL_LOCK"
  flock 9
  cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
  scripts/pg_cluster.sh stop "$dir"
  rm -rf "$dir"
  dsn=$(scripts/pg_cluster.sh start "$dir" "$port" "$db" "$@")
}

bench_start_simulator() {
  "$target/release/orders_sync_simulator" --listen 127.0.0.1:0 "$@" > "$dir/sim.out" &
  sim_pid=$!
  for _ in $(seq 50); do grep -q listening "$dir/sim.out" 2>/dev/null && break; sleep 0.1; done
  # shellcheck disable=SC2034 # read by the benchmark that sources this file
  sim_url="http://$(sed -n 's/^listening on //p' "$dir/sim.out")"
}
