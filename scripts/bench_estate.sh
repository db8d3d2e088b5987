#!/usr/bin/env bash
# Estate benchmark (issue 17): the daily run of a chain-sized estate whose history is already
# synced. STORES stores (TD and UC alternately), ROWS_PER_DAY rows per store, stream and day
# at the simulator; HISTORY_DAYS days of history seeded directly in SQL as one success window
# a day per store (the log rows, their runs, and store_sync_state through its triggers), so
# the planner plans only the overlap day and today: run_profiler(window_days => 1,
# overlap_days => 1) gives each store two one-day windows, 2 x STORES windows in all. The
# overlap day's records are not seeded, so its rows load as new records, as today's do.
#
# For every max_workers in WORKERS the run is timed on the same starting state (the previous
# run's log rows, jobs, runs, records and KPI facts removed, then VACUUM ANALYZE) and reports:
# wall time, windows/s, rows/s; the planner's share (call to the first window started); the
# dispatch share (worker slots idle while windows were queued: slots x span minus the
# windows' own time, over slots x wall); the per-window overhead (slots x wall / windows, and
# the mean time one window spends in its worker).
#
# Env: STORES (default 10000; several counts, e.g. "1000 10000", run one after another on
# fresh estates), WORKERS (default "1 2 4 8"), ROWS_PER_DAY (default 50), HISTORY_DAYS
# (default 30), AS_OF (default 2026-03-01), WARMUP (default 1: an untimed run with
# max_workers 4 first), BENCH_PORT (default 55450), BENCH_KEEP=1 leaves
# the cluster running, BENCH_STATEMENTS=1 prints the top statements of the last run from
# pg_stat_statements.
set -euo pipefail

STORES="${STORES:-10000}"
WORKERS="${WORKERS:-1 2 4 8}"
ROWS_PER_DAY="${ROWS_PER_DAY:-50}"
HISTORY_DAYS="${HISTORY_DAYS:-30}"
AS_OF="${AS_OF:-2026-03-01}"
WARMUP="${WARMUP:-1}"
PORT="${BENCH_PORT:-55450}"
# shellcheck source=bench_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_cluster.sh"
bench_prepare bench-estate
bench_start_cluster "$PORT" bench_estate "shared_buffers = 512MB" "max_wal_size = 4GB" \
  "orders_sync.max_workers = 8" "shared_preload_libraries = 'pg_cron,orders_sync,pg_stat_statements'" \
  "pg_stat_statements.track = all"
bench_start_simulator --rows-per-day "$ROWS_PER_DAY" --threads 2
yesterday=$(date -d "$AS_OF - 1 day" +%F)

# A fresh estate of $1 stores with its history synced through yesterday.
seed_estate() {
  psql -v url="$sim_url" -v stores="$1" -v days="$HISTORY_DAYS" -v as_of="$AS_OF" <<'SQL'
DROP EXTENSION IF EXISTS orders_sync CASCADE;
DROP SCHEMA IF EXISTS orders_sync CASCADE;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE EXTENSION orders_sync CASCADE;
UPDATE orders_sync.pipelines SET base_url = :'url', page_size = 10000;
INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date)
SELECT format('E%s', lpad(i::text, 5, '0')), 'CC01', CASE WHEN i % 2 = 0 THEN 'TD' ELSE 'UC' END,
       :'as_of'::date - :'days'::int
FROM generate_series(1, :'stores'::int) i;
-- One daily run per history day, each with one success window (that day) per store.
INSERT INTO orders_sync.pipeline_run_summaries
    (run_id, pipeline_name, run_env, started_at, finished_at, report_date, overall_status, summary_text)
SELECT format('seed-%s', to_char(d, 'YYYYMMDD')), 'orders_sync_run_profiler', 'bench',
       d + time '06:00', d + time '06:30', d, 'success', 'seeded history'
FROM generate_series(:'as_of'::date - :'days'::int, :'as_of'::date - 1, interval '1 day') AS g(d);
INSERT INTO orders_sync.orders_sync_log
    (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
     orders_pulled_at, sales_pulled_at, status, created_at, updated_at)
SELECT p.id, format('seed-%s', to_char(d, 'YYYYMMDD')), 'bench', s.cost_center, s.store_code, d, d,
       d + time '06:10', CASE WHEN p.code = 'td_orders_sync' THEN d + time '06:10' END, 'success',
       d + time '06:00', d + time '06:10'
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
CROSS JOIN generate_series(:'as_of'::date - :'days'::int, :'as_of'::date - 1, interval '1 day') AS g(d);
VACUUM ANALYZE;
SQL
}

# Removes what a timed run wrote, so that every run starts from the same state.
reset_run() {
  psql -v since="$yesterday" <<'SQL' >/dev/null
DELETE FROM orders_sync.sync_jobs;
DELETE FROM orders_sync.window_pages;
DELETE FROM orders_sync.orders_sync_log WHERE run_id NOT LIKE 'seed-%';
DELETE FROM orders_sync.pipeline_run_summaries WHERE run_id NOT LIKE 'seed-%';
DELETE FROM orders_sync.records WHERE record_date >= :'since';
DELETE FROM orders_sync.kpi_facts_daily WHERE day >= :'since';
VACUUM ANALYZE;
SELECT pg_stat_statements_reset();
SQL
}

# Prints the figures of one timed run with max_workers = $1 on an estate of $2 stores.
timed_run() {
  local workers="$1" stores="$2" start end run_id
  start=$(date +%s.%N)
  run_id=$(psql -At -c "SELECT orders_sync.run_profiler('bench', sync_group => 'ALL', window_days => 1,
             overlap_days => 1, max_workers => $workers, wait => true, as_of => '$AS_OF')" 2>/dev/null)
  end=$(date +%s.%N)
  psql -At -v run_id="$run_id" -v started="$start" -v ended="$end" -v workers="$workers" -v stores="$stores" <<'SQL'
WITH j AS (
    SELECT count(*) AS windows, sum(rows_written) AS rows,
           count(*) FILTER (WHERE status <> 'success') AS not_success,
           min(started_at) AS first_start, max(finished_at) AS last_end,
           sum(extract(epoch FROM finished_at - started_at)) AS busy
    FROM orders_sync.sync_jobs WHERE run_id = :'run_id'
), t AS (
    SELECT j.*, :'ended'::numeric - :'started'::numeric AS wall,
           extract(epoch FROM j.first_start) - :'started'::numeric AS planning,
           extract(epoch FROM j.last_end - j.first_start) AS span,
           r.overall_status
    FROM j, orders_sync.pipeline_run_summaries r WHERE r.run_id = :'run_id'
)
SELECT format('estate: %s stores, max_workers=%s: %s windows (%s not success), %s rows in %s s = %s windows/s, %s rows/s; '
              'planner %s s (%s%%); dispatch idle %s%% of worker time; per window %s ms x worker (%s ms in its worker); run %s',
              :'stores', :'workers', windows, not_success, rows, round(wall, 2),
              round(windows / wall, 1), round(rows / wall), round(planning::numeric, 2),
              round(100 * planning::numeric / wall, 1),
              round(100 * greatest(0, least(:'workers'::int, windows) * span - busy)::numeric
                    / (least(:'workers'::int, windows) * wall), 1),
              round(1000 * wall * least(:'workers'::int, windows) / windows, 2),
              round(1000 * busy::numeric / windows, 2), overall_status)
FROM t;
SQL
}

top_statements() {
  psql -At -F ' | ' <<'SQL'
SELECT round(total_exec_time::numeric, 0) AS ms, calls, round((total_exec_time / calls)::numeric, 3) AS ms_per_call,
       left(regexp_replace(query, '\s+', ' ', 'g'), 110)
FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15;
SQL
}

for stores in $STORES; do
  seed_estate "$stores"
  log_rows=$(psql -At -c "SELECT count(*) FROM orders_sync.orders_sync_log")
  echo "bench_estate: $stores stores, $log_rows log rows of history, $ROWS_PER_DAY rows per store, stream and day, as of $AS_OF"
  if [ "$WARMUP" = 1 ]; then
    # Untimed warm-up: the simulator builds each store's data on first use.
    reset_run
    timed_run 4 "$stores" | sed 's/^estate:/warm-up (untimed for the comparison):/'
  fi
  for workers in $WORKERS; do
    reset_run
    timed_run "$workers" "$stores"
  done
  if [ -n "${BENCH_STATEMENTS:-}" ]; then top_statements; fi
done
