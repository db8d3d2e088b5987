#!/usr/bin/env bash
# The main job, on a fresh machine: a private PostgreSQL cluster with pg_cron and
# orders_sync, the reference source simulator, a realistic estate of stores, schedules in
# pg_cron, and a full sync run that you watch advance.
#
#   scripts/demo.sh          set up (or reuse) everything and run the profiler
#   scripts/demo.sh stop     stop the demo's cluster and simulator
#
# Env: DEMO_STORES (60), DEMO_DAYS (730: start dates spread over this many past days),
# DEMO_ROWS_PER_DAY (20), DEMO_PORT (55400), DEMO_SIM_PORT (55401), DEMO_BUILD (release |
# debug), DEMO_DIR ($ORDERS_SYNC_WORK/demo), ORDERS_SYNC_WORK (/var/tmp/orders_sync).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${ORDERS_SYNC_WORK:-/var/tmp/orders_sync}"
dir="${DEMO_DIR:-$work/demo}"
port="${DEMO_PORT:-55400}"
sim_port="${DEMO_SIM_PORT:-55401}"
db=orders_sync_demo
stores="${DEMO_STORES:-60}"
days="${DEMO_DAYS:-730}"
rows_per_day="${DEMO_ROWS_PER_DAY:-20}"
build="${DEMO_BUILD:-release}"
target="${CARGO_TARGET_DIR:-$repo/target}"
cd "$repo"
# shellcheck source=pg_env.sh
source scripts/pg_env.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_demo() {
  if [ -f "$dir/simulator.pid" ]; then
    kill "$(cat "$dir/simulator.pid")" 2>/dev/null || true
    rm -f "$dir/simulator.pid"
  fi
  scripts/pg_cluster.sh stop "$dir"
}

if [ "${1:-}" = stop ]; then
  stop_demo
  echo "demo stopped (data kept in $dir; remove it to start from scratch)"
  exit 0
fi

say "machine setup"
bash scripts/setup.sh
mkdir -p "$work"
chown postgres: "$work" 2>/dev/null || true

say "build"
profile_flag=()
[ "$build" = release ] && profile_flag=(--release)
cargo build -q --release -p orders_sync_simulator --bin orders_sync_simulator

# A running server must not have its .so replaced under it: stop, install, start. A caller that
# holds the install lock for the whole demo (scripts/test.sh) says so with
# ORDERS_SYNC_INSTALL_LOCK_HELD=1, so that nothing is installed under the demo's cluster either.
stop_demo
if [ "${ORDERS_SYNC_INSTALL_LOCK_HELD:-0}" = 1 ]; then
  cargo pgrx install "${profile_flag[@]}" --pg-config "$PG_CONFIG" >/dev/null
else
  (
    flock 9
    cargo pgrx install "${profile_flag[@]}" --pg-config "$PG_CONFIG" >/dev/null
  ) 9>"$INSTALL_LOCK"
fi

say "cluster on port $port"
dsn=$(scripts/pg_cluster.sh start "$dir" "$port" "$db")
psql_demo() { psql "$dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }

say "source simulator on 127.0.0.1:$sim_port"
"$target/release/orders_sync_simulator" --listen "127.0.0.1:$sim_port" --rows-per-day "$rows_per_day" \
  > "$dir/simulator.log" 2>&1 &
echo $! > "$dir/simulator.pid"
for _ in $(seq 50); do grep -q listening "$dir/simulator.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$dir/simulator.log" || { cat "$dir/simulator.log"; exit 1; }

say "extension, pipelines and $stores stores"
psql_demo -v sim_url="http://127.0.0.1:$sim_port" -v stores="$stores" -v days="$days" <<'SQL'
CREATE EXTENSION IF NOT EXISTS orders_sync CASCADE;
UPDATE orders_sync.pipelines SET base_url = :'sim_url', page_size = 5000;
-- Two thirds TD, one third UC; start dates spread over the past; every 15th store closed.
INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date, is_active)
SELECT format('S%s', lpad(i::text, 3, '0')),
       format('CC%s', lpad((1 + i % 7)::text, 2, '0')),
       CASE WHEN i % 3 = 0 THEN 'UC' ELSE 'TD' END,
       current_date - ((i * 37) % :days),
       i % 15 <> 0
FROM generate_series(1, :stores) AS i
ON CONFLICT (store_code) DO NOTHING;
SELECT sync_group, count(*) FILTER (WHERE is_active) AS active, count(*) FILTER (WHERE NOT is_active) AS inactive,
       min(start_date) AS earliest_start
FROM orders_sync.store_master GROUP BY sync_group ORDER BY sync_group;
SQL

# The launcher starts with the server, before this database existed, and retries every 5 s.
for _ in $(seq 60); do
  [ "$(psql_demo -At -c "SELECT count(*) FROM pg_stat_activity
                          WHERE backend_type = 'orders_sync launcher' AND datname = current_database()")" -gt 0 ] && break
  sleep 0.5
done

say "schedules in pg_cron"
psql_demo <<'SQL'
SELECT orders_sync.schedule_profiler('*/30 * * * *', env => 'demo') AS profiler_job_id;
SELECT * FROM orders_sync.schedule_maintenance();
SQL

say "what the planner will do"
psql_demo -c "SELECT pipeline_code, reason, count(*) AS windows, min(from_date), max(to_date)
              FROM orders_sync.plan_sync_windows('demo') WHERE will_run GROUP BY 1, 2 ORDER BY 1, 2"

say "run_profiler('demo', max_workers => 3, wait => true)"
run_id=$(psql_demo -At -c "SELECT orders_sync.run_profiler('demo', max_workers => 3, wait => true)")

say "the run"
psql_demo -v run_id="$run_id" <<'SQL'
SELECT run_id, overall_status, duration, summary_text FROM orders_sync.run_history WHERE run_id = :'run_id';
SQL

say "store freshness (first 10)"
psql_demo -c "SELECT pipeline, store_code, start_date, last_success_day, lag_days, state
              FROM orders_sync.store_freshness ORDER BY store_code, pipeline LIMIT 10"
psql_demo -c "SELECT state, count(*) FROM orders_sync.store_freshness GROUP BY state ORDER BY state"

say "scheduler health"
psql_demo -c "SELECT job_name, schedule, state, expected_interval FROM orders_sync.scheduler_health ORDER BY job_name"

say "KPI facts (latest days)"
psql_demo -c "SELECT pipeline, stream, day, sum(record_count) AS records, sum(amount_sum) AS amount
              FROM orders_sync.kpi_facts_daily GROUP BY 1, 2, 3 ORDER BY day DESC, pipeline, stream LIMIT 6"

say "done"
echo "connect:  psql '$dsn'"
echo "stop:     scripts/demo.sh stop"
echo "run id:   $run_id"
