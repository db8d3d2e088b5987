#!/usr/bin/env bash
# Ingest benchmark (issue 5): one window of ROWS records from the simulator into an empty
# records table with one worker, end to end through orders_sync.sync_window; then the same
# window again with nothing changed at the source. Prints rows/s for both and how many row
# versions the re-sync wrote (target: none). The pair runs REPEAT times on an emptied table
# (a 2-core machine's timings wander by ±15%); the figures are the medians, each run listed.
# Each run also times a reference on the same machine at the same moment: the same rows
# upserted in one statement from a staging table (payloads already jsonb, sorted by key),
# which is what PostgreSQL itself can do here without any HTTP, JSON or transactions per page.
#
# Env: ROWS (default 1000000), PAGE_SIZE (default 10000), REPEAT (default 3),
# BENCH_PORT (default 55431), BENCH_KEEP=1 leaves the cluster running afterwards.
set -euo pipefail

ROWS="${ROWS:-1000000}"
PAGE_SIZE="${PAGE_SIZE:-10000}"
REPEAT="${REPEAT:-3}"
DAYS=100
PER_DAY=$(( ROWS / DAYS ))
PORT="${BENCH_PORT:-55431}"
# shellcheck source=bench_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_cluster.sh"
bench_prepare bench-ingest
# shellcheck disable=SC2086 # BENCH_PG_SETTINGS: extra settings, one word each
bench_start_cluster "$PORT" bench_ingest "shared_buffers = 1GB" "max_wal_size = 4GB" ${BENCH_PG_SETTINGS:-}
bench_start_simulator --rows-per-day "$PER_DAY"
psql -c "CREATE EXTENSION orders_sync CASCADE" \
     -c "UPDATE orders_sync.pipelines SET base_url = '$sim_url', page_size = $PAGE_SIZE WHERE code = 'uc_orders_sync'" \
     -c "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('BENCH', 'UC', '2026-01-01')"

from=2026-01-01
to=$(date -d "$from + $((DAYS - 1)) days" +%F)
sync_seconds() {
  local start end status
  start=$(date +%s.%N)
  status=$(psql -At -c "SELECT orders_sync.sync_window('uc_orders_sync', 'BENCH', '$from', '$to')")
  end=$(date +%s.%N)
  [ "$status" = success ] || { echo "bench_ingest: sync_window returned $status" >&2; exit 1; }
  echo "$end - $start" | bc -l
}
versions() { psql -At -c "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relid = 'orders_sync.records'::regclass"; }

reference_seconds() {
  local start end
  psql -c "DROP TABLE IF EXISTS bench_staging, bench_target" \
       -c "CREATE UNLOGGED TABLE bench_staging AS
             SELECT pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5
             FROM orders_sync.records ORDER BY pipeline_id, store_code, stream, record_id" \
       -c "CREATE TABLE bench_target (LIKE orders_sync.records INCLUDING ALL)" -c "CHECKPOINT" 2>/dev/null
  start=$(date +%s.%N)
  psql -c "INSERT INTO bench_target AS t
             (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
           SELECT * FROM bench_staging
           ON CONFLICT (pipeline_id, store_code, stream, record_id) DO UPDATE
           SET record_date = EXCLUDED.record_date, amount = EXCLUDED.amount, payload = EXCLUDED.payload,
               payload_md5 = EXCLUDED.payload_md5"
  end=$(date +%s.%N)
  psql -c "DROP TABLE bench_staging, bench_target"
  echo "$end - $start" | bc -l
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
firsts=() seconds=() written=() references=()
for run in $(seq "$REPEAT"); do
  psql -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily" -c "CHECKPOINT"
  first=$(sync_seconds)
  rows=$(psql -At -c "SELECT count(*) FROM orders_sync.records WHERE store_code = 'BENCH'")
  [ "$rows" -eq "$(( PER_DAY * DAYS ))" ] || { echo "bench_ingest: expected $(( PER_DAY * DAYS )) rows, found $rows" >&2; exit 1; }
  psql -c "VACUUM ANALYZE orders_sync.records" >/dev/null
  sleep 1; before=$(versions)
  second=$(sync_seconds)
  sleep 1; after=$(versions)
  reference=$(reference_seconds)
  printf 'ingest: run %d: first load %.2f s, re-sync %.2f s, %d row versions written by the re-sync; reference upsert %.2f s\n' \
    "$run" "$first" "$second" "$(( after - before ))" "$reference"
  firsts+=("$first") seconds+=("$second") written+=("$(( after - before ))") references+=("$reference")
done
first=$(printf '%s\n' "${firsts[@]}" | median)
second=$(printf '%s\n' "${seconds[@]}" | median)
most_written=$(printf '%s\n' "${written[@]}" | sort -g | tail -1)
reference=$(printf '%s\n' "${references[@]}" | median)

printf 'ingest: first load  %d rows in %.2f s = %.0f rows/s (median of %d)\n' \
  "$rows" "$first" "$(echo "$rows / $first" | bc -l)" "$REPEAT"
printf 'ingest: re-sync     %d rows in %.2f s = %.0f rows/s (median of %d), at most %d row versions written\n' \
  "$rows" "$second" "$(echo "$rows / $second" | bc -l)" "$REPEAT" "$most_written"
printf 'ingest: re-sync is %.1fx the first load\n' "$(echo "$first / $second" | bc -l)"
printf 'ingest: reference   %d rows in %.2f s = %.0f rows/s (median of %d): one INSERT ... ON CONFLICT from a staging table; the first load runs at %.0f%% of it\n' \
  "$rows" "$reference" "$(echo "$rows / $reference" | bc -l)" "$REPEAT" "$(echo "100 * $reference / $first" | bc -l)"
