#!/usr/bin/env bash
# Scrape cost of metrics/queries.yaml: every query the exporter runs, under EXPLAIN ANALYZE,
# on an estate of STORES stores (default 10,000, half TD, half UC) with three years of sync
# history written the way runs write it (a window's log row created the day after its last
# day), 90 days of jobs, a day's runs, a few running windows and queued jobs, and pg_cron
# schedules with 90 days of run details. Prints one line per query and
#   metrics: 10000 stores, N log rows, whole scrape X ms (sum of the queries' planning + execution times, best of RUNS)
# The target is under 100 ms.
#
# Like scripts/bench_planner.sh: builds the release package outside the lock, installs it and
# runs a private cluster while holding $INSTALL_LOCK.
# Env: STORES (10000), RUNS (3), PORT (55437), KEEP_DATA=1 keeps the loaded cluster for the
# next run (which then skips the load when the store count matches).
set -euo pipefail

STORES="${STORES:-10000}"
RUNS="${RUNS:-3}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=pg_env.sh
source "$repo/scripts/pg_env.sh"
PSQL="${PG_BIN:?$PG_CONFIG not found: run scripts/setup.sh first}/psql"
work="${ORDERS_SYNC_WORK:-/var/tmp/orders_sync}"
dir="$work/bench-metrics"
port="${PORT:-55437}"
db=bench_metrics

cd "$repo"
mkdir -p "$work"
pkg="$(mktemp -d)"
cluster_started=""
cleanup() {
  if [ -n "$cluster_started" ]; then
    "$repo/scripts/pg_cluster.sh" stop "$dir" || true
    [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$dir"
  fi
  rm -rf "$pkg"
}
trap cleanup EXIT

cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$pkg" >"$pkg.log" 2>&1 ||
  { cat "$pkg.log" >&2; rm -f "$pkg.log"; exit 1; }
rm -f "$pkg.log"

exec 9>>"$INSTALL_LOCK"
flock 9
(cd "$pkg" && find . -type f) | while read -r file; do
  target="/${file#./}"
  mkdir -p "$(dirname "$target")"
  cp "$pkg/$file" "$target.bench-tmp" && mv -f "$target.bench-tmp" "$target"
done
cluster_started=1
dsn="$("$repo/scripts/pg_cluster.sh" start "$dir" "$port" "$db" "shared_buffers = 512MB" 9>&-)"
psql_bench() { "$PSQL" "$dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }

loaded="$(psql_bench -Atc "SELECT count(*) FROM pg_extension WHERE extname = 'orders_sync'")"
if [ "$loaded" = 1 ] && [ "$(psql_bench -Atc "SELECT count(*) FROM orders_sync.store_master")" = "$STORES" ]; then
  echo "bench: reusing the loaded cluster in $dir" >&2
else
  psql_bench -c "SET client_min_messages = warning" -c "DROP EXTENSION IF EXISTS orders_sync CASCADE" \
    -c "CREATE EXTENSION orders_sync CASCADE" >/dev/null
  echo "bench: loading $STORES stores with three years of history..." >&2
  psql_bench -v stores="$STORES" <<'SQL'
SET synchronous_commit = off;
-- No fetching: the launcher must not pick up the queued jobs below.
UPDATE orders_sync.pipelines SET base_url = 'http://127.0.0.1:9', enabled = true;
INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date)
SELECT 'S' || lpad(i::text, 5, '0'), 'CC' || (i % 100), CASE WHEN i % 2 = 0 THEN 'UC' ELSE 'TD' END,
       current_date - 1095 + (i % 30)
FROM generate_series(1, :stores) AS i;

-- One run a day for a year, plus the backfill.
INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, started_at, finished_at, overall_status)
SELECT 'bench-backfill', 'orders_sync_run_profiler', 'bench', now() - interval '366 days', now() - interval '366 days', 'success'
UNION ALL
SELECT 'bench-' || to_char(d, 'YYYYMMDD'), 'orders_sync_run_profiler', 'bench', d + interval '1 day 2 hours',
       d + interval '1 day 3 hours', CASE WHEN extract(day FROM d) = 1 THEN 'partial' ELSE 'success' END
FROM generate_series(current_date - 365, current_date - 1, '1 day') AS d;

-- Two years of 90-day backfill windows, written a year ago...
INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
                                         status, created_at, updated_at)
SELECT p.id, 'bench-backfill', 'bench', s.cost_center, s.store_code,
       s.start_date + 90 * k, least(s.start_date + 90 * k + 89, current_date - 366), 'success',
       now() - interval '366 days', now() - interval '366 days'
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
CROSS JOIN LATERAL generate_series(0, (current_date - 366 - s.start_date) / 90) AS k;

-- ...then a year of daily windows, each written the next night, ~1.5% failed; a few stores
-- stopped syncing some days ago (lagging) and a few have never synced.
INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
                                         status, error_message, created_at, updated_at)
SELECT p.id, 'bench-' || to_char(d, 'YYYYMMDD'), 'bench', s.cost_center, s.store_code, d, d,
       CASE WHEN (hashtext(s.store_code || d::text) & 63) = 0 THEN 'failed' ELSE 'success' END,
       CASE WHEN (hashtext(s.store_code || d::text) & 63) = 0 THEN 'orders: HTTP 503' END,
       d + interval '1 day 2 hours', d + interval '1 day 2 hours'
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
CROSS JOIN generate_series(current_date - 365, current_date - 1, '1 day') AS g(d)
WHERE d < current_date - (hashtext(s.store_code) & 1023) / 200;

INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
                                         status, attempt_no, created_at, updated_at)
SELECT pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date, 'success', 2,
       created_at + interval '1 hour', created_at + interval '1 hour'
FROM orders_sync.orders_sync_log
WHERE status = 'failed' AND (hashtext(store_code) & 7) <> 0
ON CONFLICT DO NOTHING;

-- Jobs of the last 90 days (prune_history keeps 90 days), a run in progress with a few
-- windows running and the rest queued.
INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, reason, status,
                                   log_id, started_at, finished_at, pages_done, rows_written, created_at)
SELECT l.run_id, l.pipeline_id, l.store_code, l.from_date, l.to_date, p.streams, 'incremental', l.status,
       l.id, l.created_at, l.created_at + interval '20 seconds', 2, 150, l.created_at
FROM orders_sync.orders_sync_log l
JOIN orders_sync.pipelines p ON p.id = l.pipeline_id
WHERE l.created_at > now() - interval '90 days';

INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, started_at, overall_status)
VALUES ('bench-now', 'orders_sync_run_profiler', 'bench', now() - interval '5 minutes', 'running');
INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
                                         status, created_at)
SELECT p.id, 'bench-now', 'bench', s.cost_center, s.store_code, current_date, current_date, 'running',
       now() - interval '4 minutes'
FROM orders_sync.store_master s JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
WHERE s.store_code < 'S00005';
INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, status, log_id,
                                   worker_pid, heartbeat_at, started_at, created_at)
SELECT 'bench-now', l.pipeline_id, l.store_code, l.from_date, l.to_date, p.streams, 'running', l.id, 0,
       now() - interval '3 minutes', l.created_at, l.created_at
FROM orders_sync.orders_sync_log l JOIN orders_sync.pipelines p ON p.id = l.pipeline_id
WHERE l.run_id = 'bench-now';
INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, status, created_at)
SELECT 'bench-now', p.id, s.store_code, current_date, current_date, p.streams, 'queued', now() - interval '5 minutes'
FROM orders_sync.store_master s JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
WHERE s.store_code >= 'S00005' AND s.store_code < 'S02000';

-- Schedules (yearly, so pg_cron never fires during the bench) with 90 days of history.
SELECT orders_sync.schedule_profiler('0 0 1 1 *', env => 'bench');
SELECT count(*) FROM orders_sync.schedule_maintenance();
UPDATE cron.job SET schedule = '0 0 1 1 *';
INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status, return_message,
                                  start_time, end_time)
SELECT j.jobid, nextval('cron.runid_seq'), 0, current_database(), current_user, j.command, 'succeeded', 'ok',
       t, t + interval '1 minute'
FROM cron.job j
CROSS JOIN generate_series(now() - interval '90 days', now(), interval '30 minutes') AS t;
SQL
fi
psql_bench -c "VACUUM ANALYZE" >/dev/null

log_rows="$(psql_bench -Atc "SELECT count(*) FROM orders_sync.orders_sync_log")"
jobs="$(psql_bench -Atc "SELECT count(*) FROM orders_sync.sync_jobs")"
cron_runs="$(psql_bench -Atc "SELECT count(*) FROM cron.job_run_details")"
echo "bench: $STORES stores, $log_rows log rows, $jobs jobs, $cron_runs pg_cron run details" >&2

# Each query of the exporter's file under EXPLAIN (ANALYZE, TIMING OFF): planning plus
# execution time read back from the plan (TIMING OFF: no clock call per row, which would
# otherwise double the cost of the per-store probes). jit = off, as the README sets for the
# exporter's role: compiling the plans would cost more than running them.
queries="$(python3 - "$repo/metrics/queries.yaml" <<'PY'
import json, sys, yaml
for name, spec in yaml.safe_load(open(sys.argv[1])).items():
    print(json.dumps({"name": name, "query": spec["query"]}))
PY
)"
best=""
for run in $(seq 1 "$RUNS"); do
  total=0
  report=""
  while IFS= read -r line; do
    query_name="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["name"])' "$line")"
    query="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["query"])' "$line")"
    ms="$(PGOPTIONS="-c jit=off" psql_bench -At -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $query" |
      python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; print(p["Planning Time"] + p["Execution Time"])')"
    total="$(python3 -c "print($total + $ms)")"
    report+="$(printf '  %-32s %8.1f ms' "$query_name" "$ms")"$'\n'
  done <<<"$queries"
  echo "run $run:" >&2
  printf '%s' "$report" >&2
  if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $total < $best else 1)"; then best="$total"; fi
done
printf 'metrics: %s stores, %s log rows, whole scrape %.1f ms (sum of the queries'"'"' planning + execution times, best of %s)\n' \
  "$STORES" "$log_rows" "$best" "$RUNS"
