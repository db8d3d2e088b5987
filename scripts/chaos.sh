#!/usr/bin/env bash
# Chaos test (issue 15): profiler runs over an estate synced from the reference simulator while
# job workers and the launcher are terminated (pg_terminate_backend), workers are SIGKILLed
# (the whole cluster crash-restarts) and the server is restarted; then fault-free runs heal
# and everything is checked against the simulator's truth:
#
#   * no record lost, extra or wrong (ids, and count and amount of every day);
#   * no `success` window whose data differs from the source;
#   * KPI facts equal the records;
#   * nothing left queued or running.
#
# It prints every fault with the time until the windows it hit left `running` (for a
# launcher: until a launcher was back), the number of healing runs and the totals.
#
#   scripts/chaos.sh                          100 terminates, 10 crash-restarts, 3 restarts
#   CHAOS_TERMINATES=8 CHAOS_CRASHES=1 CHAOS_RESTARTS=1 scripts/chaos.sh      short (test.sh)
#
# Env: CHAOS_TERMINATES, CHAOS_CRASHES, CHAOS_RESTARTS, CHAOS_STORES (12), CHAOS_DAYS (60),
#      CHAOS_ROWS_PER_DAY (10), CHAOS_SEED (15), CHAOS_PORT (55470), CHAOS_BUILD (debug or
#      release), ORDERS_SYNC_WORK (scratch dir). Exit status 0 only when every check passes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=pg_env.sh
source scripts/pg_env.sh

terminates="${CHAOS_TERMINATES:-100}"
crashes="${CHAOS_CRASHES:-10}"
restarts="${CHAOS_RESTARTS:-3}"
stores="${CHAOS_STORES:-12}"
days="${CHAOS_DAYS:-60}"
rows_per_day="${CHAOS_ROWS_PER_DAY:-10}"
seed="${CHAOS_SEED:-15}"
port="${CHAOS_PORT:-55470}"
build="${CHAOS_BUILD:-debug}"
work="${ORDERS_SYNC_WORK:-/var/tmp/orders_sync}"
dir="$work/chaos"
db=orders_sync_chaos
as_of=2026-03-01
target="${CARGO_TARGET_DIR:-$repo/target}"
RANDOM=$seed

say() { printf '\n== %s\n' "$*"; }

mkdir -p "$work"
chown postgres: "$work" 2>/dev/null || true
cargo build -q --release -p orders_sync_simulator --bin orders_sync_simulator

# The cluster loads the extension: hold the machine-wide install lock from install to stop.
exec 9>"$INSTALL_LOCK"
flock 9
profile_flag=()
[ "$build" = release ] && profile_flag=(--release)
cargo pgrx install "${profile_flag[@]}" --pg-config "$PG_CONFIG" >/dev/null

sim_pid=""
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
  scripts/pg_cluster.sh stop "$dir"
}
trap cleanup EXIT

scripts/pg_cluster.sh stop "$dir"
rm -rf "$dir"
dsn=$(scripts/pg_cluster.sh start "$dir" "$port" "$db" "fsync = off" "orders_sync.http_retry_base_delay = 20ms")
export PGCONNECT_TIMEOUT=5
q() { psql "$dsn" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
# A query while the server may be restarting: retried until it answers (at most a minute).
q_up() {
  local i
  for i in $(seq 300); do
    if q "$1" 2>/dev/null; then return 0; fi
    [ "$i" -eq 300 ] && return 1
    sleep 0.2
  done
}

"$target/release/orders_sync_simulator" --listen 127.0.0.1:0 --rows-per-day "$rows_per_day" --seed "$seed" \
  > "$dir/simulator.log" 2>&1 &
sim_pid=$!
for _ in $(seq 50); do grep -q listening "$dir/simulator.log" 2>/dev/null && break; sleep 0.1; done
sim="http://$(sed -n 's/^listening on //p' "$dir/simulator.log")"
[ "$sim" != "http://" ] || { echo "chaos: the simulator did not start" >&2; exit 1; }

say "estate: $stores stores over $days days, $rows_per_day rows a day and stream, pages of 25"
psql "$dsn" -Xq -v ON_ERROR_STOP=1 -v sim="$sim" -v stores="$stores" -v days="$days" -v as_of="$as_of" <<'SQL'
CREATE EXTENSION orders_sync CASCADE;
UPDATE orders_sync.pipelines SET base_url = :'sim', page_size = 25, max_attempts = 2, read_timeout_ms = 5000;
INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date, is_active)
SELECT format('CH%s', lpad(i::text, 2, '0')), 'CC01', CASE WHEN i % 2 = 0 THEN 'UC' ELSE 'TD' END,
       :'as_of'::date - (:days - 1 - i % 5), true
FROM generate_series(1, :stores) AS i;
SQL
# Each page 150 ms late, so that a window takes a second or so and faults fall inside windows.
curl -fsS -X POST -H 'content-type: application/json' -d '{"kind":"slow","delay_ms":150}' "$sim/_control/faults" >/dev/null

start_run() {
  q_up "SELECT orders_sync.run_profiler('chaos', window_days => 7, max_workers => 4, as_of => '$as_of')" >/dev/null
}
running_jobs() { q_up "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM orders_sync.sync_jobs WHERE status = 'running'"; }

# Waits until the jobs (comma-separated ids) have left `running`; prints the seconds.
time_to_leave_running() {
  local jobs="$1" started="$2" left
  for _ in $(seq 1200); do
    if [ -z "$jobs" ]; then break; fi
    left=$(q_up "SELECT count(*) FROM orders_sync.sync_jobs WHERE id IN ($jobs) AND status = 'running'") || left=1
    [ "$left" = 0 ] && break
    sleep 0.05
  done
  echo "$(( $(date +%s%N) - started ))" | awk '{printf "%.2f", $1 / 1e9}'
}

time_to_launcher() {
  local started="$1"
  for _ in $(seq 1200); do
    [ "$(q_up "SELECT state FROM orders_sync.health" 2>/dev/null)" = ok ] && break
    sleep 0.05
  done
  echo "$(( $(date +%s%N) - started ))" | awk '{printf "%.2f", $1 / 1e9}'
}

faults_log="$dir/faults.tsv"
: > "$faults_log"
fault_no=0
record() { # kind target windows seconds-until-they-left-running [seconds-until-a-launcher-is-back]
  fault_no=$((fault_no + 1))
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$fault_no" "$1" "$2" "$3" "$4" "${5:-}" >> "$faults_log"
  printf '  #%-4s %-10s %-22s windows %-14s left running after %5ss%s\n' "$fault_no" "$1" "$2" "${3:-none}" "$4" \
    "${5:+, launcher back after ${5}s}"
}

say "faults: $terminates terminates (about one in ten of the launcher), $crashes crash-restarts, $restarts restarts"
left_terminates=$terminates left_crashes=$crashes left_restarts=$restarts
start_run
while [ $((left_terminates + left_crashes + left_restarts)) -gt 0 ]; do
  sleep "0.$((RANDOM % 8 + 2))"
  # A job worker to hit; a new run when the last one has ended.
  victim=$(q_up "SELECT j.worker_pid || ' ' || j.id FROM orders_sync.sync_jobs j
                 JOIN pg_stat_activity a ON a.pid = j.worker_pid
                 WHERE j.status = 'running' ORDER BY random() LIMIT 1")
  if [ -z "$victim" ]; then
    active=$(q_up "SELECT count(*) FROM orders_sync.pipeline_run_summaries WHERE overall_status = 'running'")
    [ "$active" = 0 ] && start_run
    continue
  fi
  pid=${victim% *}
  roll=$((RANDOM % (left_terminates + left_crashes + left_restarts)))
  started=$(date +%s%N)
  if [ "$roll" -lt "$left_terminates" ]; then
    left_terminates=$((left_terminates - 1))
    if [ $((RANDOM % 10)) -eq 0 ]; then
      launcher=$(q_up "SELECT pid FROM pg_stat_activity WHERE backend_type = 'orders_sync launcher'")
      q_up "SELECT pg_terminate_backend($launcher)" >/dev/null
      record terminate "launcher pid $launcher" "" "0.00" "$(time_to_launcher "$started")"
    else
      jobs=$(q_up "SELECT coalesce(string_agg(id::text, ','), '') FROM orders_sync.sync_jobs WHERE worker_pid = $pid AND status = 'running'")
      q_up "SELECT pg_terminate_backend($pid)" >/dev/null
      record terminate "job worker pid $pid" "$jobs" "$(time_to_leave_running "$jobs" "$started")"
    fi
  elif [ "$roll" -lt $((left_terminates + left_crashes)) ]; then
    left_crashes=$((left_crashes - 1))
    jobs=$(running_jobs)
    kill -9 "$pid" 2>/dev/null || true
    left=$(time_to_leave_running "$jobs" "$started")
    record crash "SIGKILL pid $pid" "$jobs" "$left" "$(time_to_launcher "$started")"
  else
    left_restarts=$((left_restarts - 1))
    jobs=$(running_jobs)
    scripts/pg_cluster.sh restart "$dir"
    left=$(time_to_leave_running "$jobs" "$started")
    record restart "pg_ctl restart" "$jobs" "$left" "$(time_to_launcher "$started")"
  fi
done

say "healing: fault-free runs until one succeeds with nothing left to plan"
curl -fsS -X DELETE "$sim/_control/faults" >/dev/null
healing_runs=0
heal_deadline=$((SECONDS + 600))
while [ "$healing_runs" -lt 10 ] && [ "$SECONDS" -lt "$heal_deadline" ]; do
  # The last fault run may still be finishing; a run started now would only say so.
  [ "$(q_up "SELECT state FROM orders_sync.health")" = ok ] || { sleep 0.5; continue; }
  active=$(q_up "SELECT count(*) FROM orders_sync.pipeline_run_summaries WHERE overall_status = 'running'")
  if [ "$active" != 0 ]; then sleep 0.5; continue; fi
  healing_runs=$((healing_runs + 1))
  run=$(q_up "SELECT orders_sync.run_profiler('chaos', window_days => 7, max_workers => 4, as_of => '$as_of', wait => true)")
  status=$(q_up "SELECT overall_status FROM orders_sync.pipeline_run_summaries WHERE run_id = '$run'")
  todo=$(q_up "SELECT count(*) FROM orders_sync.plan_sync_windows('chaos', window_days => 7, overlap_days => 0, as_of => '$as_of') WHERE will_run")
  echo "  healing run $healing_runs: $run $status, windows still to plan: $todo"
  [ "$status" = success ] && [ "$todo" = 0 ] && break
done

say "checks against the simulator's truth"
: > "$dir/truth_days.tsv"
: > "$dir/truth_ids.tsv"
while read -r store stream from pipeline; do
  curl -fsS "$sim/_truth/stores/$store/$stream?from=$from&to=$as_of&ids=true" > "$dir/truth.json"
  jq -r --arg p "$pipeline" --arg s "$store" --arg t "$stream" \
    '.days[] | [$p, $s, $t, .date, .count, .amount_sum] | @tsv' "$dir/truth.json" >> "$dir/truth_days.tsv"
  jq -r --arg p "$pipeline" --arg s "$store" --arg t "$stream" \
    '.ids[] | [$p, $s, $t, .] | @tsv' "$dir/truth.json" >> "$dir/truth_ids.tsv"
done < <(q_up "SELECT s.store_code, stream, s.start_date, p.code FROM orders_sync.store_master s
               JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group, unnest(p.streams) AS stream
               WHERE s.is_active ORDER BY 1, 2" | tr '|' ' ')
checks=$(psql "$dsn" -XAtq -v ON_ERROR_STOP=1 -F ' ' -v days_file="$dir/truth_days.tsv" -v ids_file="$dir/truth_ids.tsv" <<'SQL'
CREATE TEMP TABLE truth_days (pipeline text, store_code text, stream text, day date, record_count bigint, amount_sum numeric);
CREATE TEMP TABLE truth_ids (pipeline text, store_code text, stream text, record_id text);
COPY truth_days FROM :'days_file';
COPY truth_ids FROM :'ids_file';
CREATE TEMP VIEW synced_days AS
SELECT p.code AS pipeline, r.store_code::text, r.stream, r.record_date AS day, count(*) AS record_count,
       coalesce(sum(r.amount), 0) AS amount_sum
FROM orders_sync.records r JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
GROUP BY 1, 2, 3, 4;
SELECT
  (SELECT count(*) FROM truth_ids t WHERE NOT EXISTS (
       SELECT 1 FROM orders_sync.records r JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
       WHERE p.code = t.pipeline AND r.store_code = t.store_code AND r.stream = t.stream AND r.record_id = t.record_id)),
  (SELECT count(*) FROM orders_sync.records r JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
   WHERE NOT EXISTS (SELECT 1 FROM truth_ids t WHERE p.code = t.pipeline AND r.store_code = t.store_code
                                                 AND r.stream = t.stream AND r.record_id = t.record_id)),
  (SELECT count(*) FROM truth_days t FULL JOIN synced_days s USING (pipeline, store_code, stream, day)
   WHERE coalesce(t.record_count, 0) <> coalesce(s.record_count, 0) OR coalesce(t.amount_sum, 0) <> coalesce(s.amount_sum, 0)),
  (SELECT count(*) FROM orders_sync.orders_sync_log l JOIN orders_sync.pipelines p ON p.id = l.pipeline_id
   WHERE l.status = 'success' AND EXISTS (
       SELECT 1 FROM truth_days t FULL JOIN synced_days s USING (pipeline, store_code, stream, day)
       WHERE coalesce(t.pipeline, s.pipeline) = p.code AND coalesce(t.store_code, s.store_code) = l.store_code
         AND coalesce(t.day, s.day) BETWEEN l.from_date AND l.to_date
         AND (coalesce(t.record_count, 0) <> coalesce(s.record_count, 0) OR coalesce(t.amount_sum, 0) <> coalesce(s.amount_sum, 0)))),
  (SELECT count(*) FROM synced_days s FULL JOIN orders_sync.kpi_facts_daily k
       ON k.pipeline = s.pipeline AND k.store_code = s.store_code AND k.stream = s.stream AND k.day = s.day
   WHERE k.record_count IS DISTINCT FROM s.record_count OR k.amount_sum IS DISTINCT FROM s.amount_sum),
  (SELECT count(*) FROM orders_sync.sync_jobs WHERE status IN ('queued', 'running'))
    + (SELECT count(*) FROM orders_sync.orders_sync_log WHERE status = 'running')
    + (SELECT count(*) FROM orders_sync.pipeline_run_summaries WHERE overall_status = 'running'),
  (SELECT count(*) FROM truth_ids),
  (SELECT count(*) FROM orders_sync.records),
  (SELECT count(*) FROM orders_sync.orders_sync_log),
  (SELECT count(*) FROM orders_sync.pipeline_run_summaries)
SQL
)
read -r lost extra wrong_days false_success kpi_off still_running truth_records records attempts runs <<< "$checks"

say "totals"
awk -F '\t' '
  { n[$2]++; if ($4 != "") { h = split($4, _, ","); w[$2] += h; s[$2] += $5 * h; if ($5 > m[$2]) m[$2] = $5 }
    if ($6 != "") { ln[$2]++; ls[$2] += $6; if ($6 > lm[$2]) lm[$2] = $6 } }
  END { for (k in n) {
          printf "  %-10s %4d faults, %4d windows hit", k, n[k], w[k]
          if (w[k] > 0) printf ", left running after %.2f s mean / %.2f s max", s[k] / w[k], m[k]
          if (ln[k] > 0) printf ", launcher back after %.2f s mean / %.2f s max", ls[k] / ln[k], lm[k]
          printf "\n" } }
' "$faults_log"
echo "  healing runs: $healing_runs; runs in all: $runs; attempts (log rows): $attempts"
echo "  records: $records synced, $truth_records at the source"
echo "  lost $lost, extra $extra, days differing $wrong_days, false successes $false_success, KPI days off $kpi_off, left running $still_running"
if [ "$lost$extra$wrong_days$false_success$kpi_off$still_running" = 000000 ] && [ "$healing_runs" -le 10 ]; then
  echo "chaos: PASS"
else
  echo "chaos: FAIL"
  exit 1
fi
