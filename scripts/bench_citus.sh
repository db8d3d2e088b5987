#!/usr/bin/env bash
# Citus benchmark (issue 18): the ingest benchmark (one window of ROWS records, one worker,
# sync_window: first load and unchanged re-sync) and the profiler benchmark (a run_profiler
# backfill of STORES stores x DAYS days) on a single-node PostgreSQL and on a three-node Citus
# cluster (a coordinator and two workers, the store-keyed tables distributed by
# orders_sync.distribute()) in the same run, each REPEAT times alternately, medians and the
# ratio Citus / single node printed. On one 2-core machine the Citus nodes share the cores,
# so no speed-up is expected; the figure is the overhead (goal: first load on Citus at 70%
# or more of single node).
#
# Env: ROWS (default 200000), PAGE_SIZE (default 10000), STORES (default 40), DAYS (default 90),
# ROWS_PER_DAY (default 20), WORKERS (profiler max_workers, default 2), REPEAT (default 3),
# BENCH_PORT (default 55460; the next three ports too), BENCH_KEEP=1 leaves the clusters up.
set -euo pipefail

ROWS="${ROWS:-200000}"
PAGE_SIZE="${PAGE_SIZE:-10000}"
STORES="${STORES:-40}"
DAYS="${DAYS:-90}"
ROWS_PER_DAY="${ROWS_PER_DAY:-20}"
WORKERS="${WORKERS:-2}"
REPEAT="${REPEAT:-3}"
PORT="${BENCH_PORT:-55460}"
INGEST_DAYS=100
PER_DAY=$(( ROWS / INGEST_DAYS ))
# shellcheck source=bench_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_cluster.sh"
bash scripts/setup.sh --with-citus >/dev/null
bench_prepare bench-citus
settings=("shared_buffers = 512MB" "max_wal_size = 4GB" "fsync = off" "synchronous_commit = off"
  "orders_sync.max_workers = 8" "max_connections = 200")
citus_settings=("shared_preload_libraries = 'citus,pg_cron,orders_sync'" "citus.node_conninfo = 'sslmode=prefer'")
# bench_start_cluster: the lock, the release install and the single node (in $dir).
bench_start_cluster "$PORT" bench "${settings[@]}"
single_dsn="$dsn"
nodes=("$dir-coordinator" "$dir-worker1" "$dir-worker2")
stop_nodes() {
  for node in "${nodes[@]}"; do scripts/pg_cluster.sh stop "$node" || true; done
  bench_cleanup
}
trap stop_nodes EXIT
for i in 0 1 2; do
  scripts/pg_cluster.sh stop "${nodes[$i]}"
  rm -rf "${nodes[$i]}"
  node_dsn=$(scripts/pg_cluster.sh start "${nodes[$i]}" "$((PORT + 1 + i))" bench "${settings[@]}" "${citus_settings[@]}")
  command psql "$node_dsn" -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION citus"
done
citus_dsn="host=127.0.0.1 port=$((PORT + 1)) user=postgres dbname=bench"
command psql "$citus_dsn" -X -q -v ON_ERROR_STOP=1 \
  -c "SELECT citus_set_coordinator_host('127.0.0.1', $((PORT + 1)))" \
  -c "SELECT citus_add_node('127.0.0.1', $((PORT + 2)))" \
  -c "SELECT citus_add_node('127.0.0.1', $((PORT + 3)))" >/dev/null
bench_start_simulator --rows-per-day "$PER_DAY" --threads 2

at() { dsn="$1"; shift; psql "$@"; }
for target in "$single_dsn" "$citus_dsn"; do
  at "$target" -v url="$sim_url" -v stores="$STORES" -v page_size="$PAGE_SIZE" <<'SQL'
CREATE EXTENSION orders_sync CASCADE;
UPDATE orders_sync.pipelines SET base_url = :'url', page_size = :'page_size' WHERE code = 'uc_orders_sync';
INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('BENCH', 'UC', '2026-01-01');
INSERT INTO orders_sync.store_master (store_code, sync_group, start_date, is_active)
SELECT format('B%s', lpad(i::text, 4, '0')), 'UC', DATE '2026-01-01', false FROM generate_series(1, :'stores'::int) i;
SQL
done
at "$citus_dsn" -c "SELECT * FROM orders_sync.distribute(shard_count => 32)" >/dev/null

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
elapsed_since() { echo "$(date +%s.%N) - $1" | bc -l; }

# Ingest: the BENCH store alone.
from=2026-01-01
to=$(date -d "$from + $((INGEST_DAYS - 1)) days" +%F)
sync_seconds() {
  local start status
  start=$(date +%s.%N)
  status=$(at "$1" -At -c "SELECT orders_sync.sync_window('uc_orders_sync', 'BENCH', '$from', '$to')")
  [ "$status" = success ] || { echo "bench_citus: sync_window returned $status" >&2; exit 1; }
  elapsed_since "$start"
}
# Profiler: the B* stores alone, a fresh backfill each time.
as_of=$(date -d "2026-01-01 + $((DAYS - 1)) days" +%F)
profiler_seconds() {
  local start run_id status
  # Distributed and local tables in separate statements (Citus truncates the former itself).
  at "$1" -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily, orders_sync.window_pages" \
          -c "TRUNCATE orders_sync.sync_jobs, orders_sync.orders_sync_log, orders_sync.pipeline_run_summaries" \
          -c "UPDATE orders_sync.store_master SET is_active = (store_code <> 'BENCH')" >/dev/null
  curl -sf -X POST -H 'content-type: application/json' -d "{\"rows_per_day\": $ROWS_PER_DAY}" "$sim_url/_control/config" >/dev/null
  start=$(date +%s.%N)
  run_id=$(at "$1" -At -c "SELECT orders_sync.run_profiler('bench', sync_group => 'UC', max_workers => $WORKERS, wait => true, as_of => '$as_of')")
  local seconds
  seconds=$(elapsed_since "$start")
  status=$(at "$1" -At -c "SELECT overall_status FROM orders_sync.pipeline_run_summaries WHERE run_id = '$run_id'")
  [ "$status" = success ] || { echo "bench_citus: profiler run ended $status" >&2; exit 1; }
  at "$1" -c "UPDATE orders_sync.store_master SET is_active = (store_code = 'BENCH')" >/dev/null
  curl -sf -X POST -H 'content-type: application/json' -d "{\"rows_per_day\": $PER_DAY}" "$sim_url/_control/config" >/dev/null
  echo "$seconds"
}

declare -A firsts=() resyncs=() profiles=()
echo "bench_citus: ingest $ROWS rows (page_size $PAGE_SIZE), profiler $STORES stores x $DAYS days x $ROWS_PER_DAY rows/day (max_workers $WORKERS), $REPEAT runs each, alternately"
for run in $(seq "$REPEAT"); do
  for setup in single citus; do
    if [ "$setup" = single ]; then target="$single_dsn"; else target="$citus_dsn"; fi
    at "$target" -c "UPDATE orders_sync.store_master SET is_active = (store_code = 'BENCH')" \
                 -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily" -c "CHECKPOINT" >/dev/null
    first=$(sync_seconds "$target")
    resync=$(sync_seconds "$target")
    profile=$(profiler_seconds "$target")
    firsts[$setup]+="$first "
    resyncs[$setup]+="$resync "
    profiles[$setup]+="$profile "
    printf 'bench_citus: run %d %-6s first load %.2f s, re-sync %.2f s, profiler %.2f s\n' "$run" "$setup" "$first" "$resync" "$profile"
  done
done

med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
profile_rows=$(( STORES * DAYS * ROWS_PER_DAY ))
report() {
  local what="$1" rows="$2" single citus
  single=$(med "$3")
  citus=$(med "$4")
  printf 'bench_citus: %-10s single node %7.2f s = %8.0f rows/s | Citus 3 nodes %7.2f s = %8.0f rows/s | Citus at %3.0f%% of single node\n' \
    "$what" "$single" "$(echo "$rows / $single" | bc -l)" "$citus" "$(echo "$rows / $citus" | bc -l)" \
    "$(echo "100 * $single / $citus" | bc -l)"
}
report "first load" "$ROWS" "${firsts[single]}" "${firsts[citus]}"
report "re-sync" "$ROWS" "${resyncs[single]}" "${resyncs[citus]}"
report "profiler" "$profile_rows" "${profiles[single]}" "${profiles[citus]}"
