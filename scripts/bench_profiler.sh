#!/usr/bin/env bash
# Orchestrator benchmark (issue 6): a fresh run_profiler backfill of STORES stores x DAYS days
# from the simulator, with max_workers = 1, 2 and 4 (each on emptied tables), end to end
# through the planner worker, the launcher and the job workers; then the per-window overhead:
# the same plan with every window empty (the source returns no rows).
#
# Env: STORES (default 200), DAYS (default 365), ROWS_PER_DAY (default 20), WORKERS
# (default "1 2 4"), BENCH_PORT (default 55445), BENCH_KEEP=1 leaves the cluster running.
set -euo pipefail

STORES="${STORES:-200}"
DAYS="${DAYS:-365}"
ROWS_PER_DAY="${ROWS_PER_DAY:-20}"
WORKERS="${WORKERS:-1 2 4}"
PORT="${BENCH_PORT:-55445}"
# shellcheck source=bench_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_cluster.sh"
bench_prepare bench-profiler
bench_start_cluster "$PORT" bench_profiler "shared_buffers = 512MB" "max_wal_size = 4GB" \
  "fsync = off" "synchronous_commit = off" "orders_sync.max_workers = 8"
bench_start_simulator --rows-per-day "$ROWS_PER_DAY" --threads 2
as_of=$(date -d "2026-01-01 + $((DAYS - 1)) days" +%F)
psql -v url="$sim_url" -v stores="$STORES" <<'SQL'
CREATE EXTENSION orders_sync CASCADE;
UPDATE orders_sync.pipelines SET base_url = :'url', page_size = 10000 WHERE code = 'uc_orders_sync';
INSERT INTO orders_sync.store_master (store_code, sync_group, start_date)
SELECT format('B%s', lpad(i::text, 4, '0')), 'UC', DATE '2026-01-01' FROM generate_series(1, :'stores'::int) i;
SQL

reset_data() {
  psql -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily, orders_sync.window_pages,
           orders_sync.sync_jobs, orders_sync.orders_sync_log, orders_sync.pipeline_run_summaries" \
       -c "VACUUM ANALYZE" >/dev/null
}

# Prints "seconds windows rows status" for one fresh run with max_workers = $1.
timed_run() {
  local start end run_id
  start=$(date +%s.%N)
  run_id=$(psql -At -c "SELECT orders_sync.run_profiler('bench', sync_group => 'UC', max_workers => $1, wait => true, as_of => '$as_of')" 2>/dev/null)
  end=$(date +%s.%N)
  psql -At -F ' ' -v run_id="$run_id" -v elapsed="$(echo "$end - $start" | bc -l)" <<'SQL'
SELECT :'elapsed', (SELECT count(*) FROM orders_sync.sync_jobs WHERE run_id = :'run_id'),
       (SELECT count(*) FROM orders_sync.records), overall_status
FROM orders_sync.pipeline_run_summaries WHERE run_id = :'run_id';
SQL
}

echo "bench_profiler: $STORES stores x $DAYS days, $ROWS_PER_DAY rows/day (uc_orders_sync, page_size 10000)"
# Untimed warm-up: the simulator builds its data on first use, which is not ours to measure.
reset_data
read -r seconds windows rows status < <(timed_run 4)
printf 'warm-up (untimed for the comparison): %d windows, %d rows in %.2f s\n' "$windows" "$rows" "$seconds"
for workers in $WORKERS; do
  reset_data
  read -r seconds windows rows status < <(timed_run "$workers")
  [ "$status" = success ] || { echo "bench_profiler: run ended $status" >&2; exit 1; }
  printf 'max_workers=%d: %d windows, %d rows in %.2f s = %.0f rows/s, %.1f windows/s\n' \
    "$workers" "$windows" "$rows" "$seconds" "$(echo "$rows / $seconds" | bc -l)" "$(echo "$windows / $seconds" | bc -l)"
done

# Per-window overhead: the source returns nothing, so all that is left is planning,
# dispatch, the log row, one empty page request and the window's completion.
curl -sf -X POST -H 'content-type: application/json' -d '{"rows_per_day": 0}' "$sim_url/_control/config" >/dev/null
for workers in 1 4; do
  reset_data
  read -r seconds windows rows status < <(timed_run "$workers")
  [ "$status" = success ] || { echo "bench_profiler: empty run ended $status" >&2; exit 1; }
  printf 'empty windows, max_workers=%d: %d windows in %.2f s = %.1f ms per window (wall), %.1f ms per window per worker\n' \
    "$workers" "$windows" "$seconds" "$(echo "$seconds * 1000 / $windows" | bc -l)" \
    "$(echo "$seconds * 1000 * $workers / $windows" | bc -l)"
done
