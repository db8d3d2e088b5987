#!/usr/bin/env bash
# Ingest benchmark (issue 5): one window of ROWS records from the simulator into an empty
# records table with one worker, end to end through orders_sync.sync_window; then the same
# window again with nothing changed at the source. Prints rows/s for both and how many row
# versions the re-sync wrote (target: none). The pair runs REPEAT times on an emptied table
# (a 2-core machine's timings wander by ±15%); the figures are the medians, each run listed.
# Each run also times a reference on the same machine at the same moment: the same rows
# upserted in one statement from a staging table (payloads already jsonb, sorted by key),
# which is what PostgreSQL itself can do here without any HTTP, JSON or transactions per page;
# and a second one (issue 17): the same rows loaded by one binary COPY into a table made
# LIKE the records table INCLUDING ALL (its indexes and defaults), the durable bulk-write
# limit. The medians of both are printed beside the first load.
#
# With SQL_PATH=1 (the default) each run also times the first load with
# orders_sync.bulk_load = off (new records through a SQL INSERT, as before issue 17).
#
# Env: ROWS (default 1000000), PAGE_SIZE (default 10000), REPEAT (default 3), SQL_PATH,
# BENCH_PORT (default 55431), BENCH_KEEP=1 leaves the cluster running afterwards.
set -euo pipefail

ROWS="${ROWS:-1000000}"
PAGE_SIZE="${PAGE_SIZE:-10000}"
REPEAT="${REPEAT:-3}"
SQL_PATH="${SQL_PATH:-1}"
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

# Prints "upsert copy": seconds for each reference over the rows the first load stored.
reference_seconds() {
  local start end upsert copy
  psql -c "DROP TABLE IF EXISTS bench_staging, bench_target, bench_copy" \
       -c "CREATE UNLOGGED TABLE bench_staging AS
             SELECT pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5
             FROM orders_sync.records ORDER BY pipeline_id, store_code, stream, record_id" \
       -c "CREATE TABLE bench_target (LIKE orders_sync.records INCLUDING ALL)" \
       -c "COPY bench_staging TO '$copy_file' (FORMAT binary)" \
       -c "CREATE TABLE bench_copy (LIKE orders_sync.records INCLUDING ALL)" -c "CHECKPOINT" 2>/dev/null
  start=$(date +%s.%N)
  psql -c "INSERT INTO bench_target AS t
             (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
           SELECT * FROM bench_staging
           ON CONFLICT (pipeline_id, store_code, stream, record_id) DO UPDATE
           SET record_date = EXCLUDED.record_date, amount = EXCLUDED.amount, payload = EXCLUDED.payload,
               payload_md5 = EXCLUDED.payload_md5"
  end=$(date +%s.%N)
  upsert=$(echo "$end - $start" | bc -l)
  psql -c "CHECKPOINT"
  # The durable bulk-write limit: the same rows, binary COPY (no text or JSON parsing of
  # the lines themselves) into a table with the records table's indexes and defaults.
  start=$(date +%s.%N)
  psql -c "COPY bench_copy (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
           FROM '$copy_file' (FORMAT binary)"
  end=$(date +%s.%N)
  copy=$(echo "$end - $start" | bc -l)
  psql -c "DROP TABLE bench_staging, bench_target, bench_copy"
  rm -f "$copy_file"
  echo "$upsert $copy"
}
# Source profiles (issue 13): the same window read through a profile with nested paths, RFC 3339
# timestamps converted to the pipeline's zone and string amounts (the simulator's nexturl shape),
# timed in the same run as the built-in contract's first load. BENCH_PROFILE=0 skips it.
NESTED_PROFILE='{"request": {"path": "/nexturl/v2/orders", "query": {"store_code": "{store_code}", "channel": "{stream}", "since": "{from}", "until": "{to}", "limit": "{page_size}"}},
 "dates": {"format": "rfc3339", "end": "exclusive"}, "pagination": {"style": "next_url", "url_path": "links.next"},
 "records": {"path": "result.items", "id": "order.number", "date": "created_at", "date_format": "rfc3339", "amount": "total", "amount_format": "string"},
 "auth": {"type": "none"}}'
nested_seconds() {
  local seconds rows
  psql -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily" \
       -c "UPDATE orders_sync.pipelines SET source = '$NESTED_PROFILE', timezone = 'Asia/Ho_Chi_Minh' WHERE code = 'uc_orders_sync'" \
       -c "CHECKPOINT" >/dev/null
  seconds=$(sync_seconds)
  rows=$(psql -At -c "SELECT count(*) FROM orders_sync.records WHERE store_code = 'BENCH'")
  psql -c "UPDATE orders_sync.pipelines SET source = NULL, timezone = 'UTC' WHERE code = 'uc_orders_sync'" >/dev/null
  [ "$rows" -eq "$(( PER_DAY * DAYS ))" ] || { echo "bench_ingest: nested profile loaded $rows rows, not $(( PER_DAY * DAYS ))" >&2; exit 1; }
  echo "$seconds"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
copy_file="$dir/reference.copy"
firsts=() seconds=() written=() references=() copies=() sql_firsts=() nesteds=()
set_bulk_load() { psql -c "ALTER SYSTEM SET orders_sync.bulk_load = $1" -c "SELECT pg_reload_conf()" >/dev/null; }
for run in $(seq "$REPEAT"); do
  if [ "$SQL_PATH" = 1 ]; then
    # The same first load with new records through the SQL INSERT (the path before issue 17).
    set_bulk_load off
    psql -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily" -c "CHECKPOINT"
    sql_first=$(sync_seconds)
    set_bulk_load on
    sql_firsts+=("$sql_first")
    printf 'ingest: run %d: first load with orders_sync.bulk_load = off %.2f s\n' "$run" "$sql_first"
  fi
  psql -c "TRUNCATE orders_sync.records, orders_sync.kpi_facts_daily" -c "CHECKPOINT"
  first=$(sync_seconds)
  rows=$(psql -At -c "SELECT count(*) FROM orders_sync.records WHERE store_code = 'BENCH'")
  [ "$rows" -eq "$(( PER_DAY * DAYS ))" ] || { echo "bench_ingest: expected $(( PER_DAY * DAYS )) rows, found $rows" >&2; exit 1; }
  psql -c "VACUUM ANALYZE orders_sync.records" >/dev/null
  sleep 1; before=$(versions)
  second=$(sync_seconds)
  sleep 1; after=$(versions)
  read -r reference copy < <(reference_seconds)
  printf 'ingest: run %d: first load %.2f s, re-sync %.2f s, %d row versions written by the re-sync; reference upsert %.2f s, reference COPY %.2f s (first load at %.0f%% of COPY)\n' \
    "$run" "$first" "$second" "$(( after - before ))" "$reference" "$copy" "$(echo "100 * $copy / $first" | bc -l)"
  firsts+=("$first") seconds+=("$second") written+=("$(( after - before ))") references+=("$reference") copies+=("$copy")
  if [ "${BENCH_PROFILE:-1}" = 1 ]; then
    nested=$(nested_seconds)
    printf 'ingest: run %d: first load through the nested profile %.2f s\n' "$run" "$nested"
    nesteds+=("$nested")
  fi
done
first=$(printf '%s\n' "${firsts[@]}" | median)
second=$(printf '%s\n' "${seconds[@]}" | median)
most_written=$(printf '%s\n' "${written[@]}" | sort -g | tail -1)
reference=$(printf '%s\n' "${references[@]}" | median)
copy=$(printf '%s\n' "${copies[@]}" | median)

printf 'ingest: first load  %d rows in %.2f s = %.0f rows/s (median of %d)\n' \
  "$rows" "$first" "$(echo "$rows / $first" | bc -l)" "$REPEAT"
printf 'ingest: re-sync     %d rows in %.2f s = %.0f rows/s (median of %d), at most %d row versions written\n' \
  "$rows" "$second" "$(echo "$rows / $second" | bc -l)" "$REPEAT" "$most_written"
printf 'ingest: re-sync is %.1fx the first load\n' "$(echo "$first / $second" | bc -l)"
printf 'ingest: reference   %d rows in %.2f s = %.0f rows/s (median of %d): one INSERT ... ON CONFLICT from a staging table; the first load runs at %.0f%% of it\n' \
  "$rows" "$reference" "$(echo "$rows / $reference" | bc -l)" "$REPEAT" "$(echo "100 * $reference / $first" | bc -l)"
printf 'ingest: COPY        %d rows in %.2f s = %.0f rows/s (median of %d): binary COPY into a table LIKE records INCLUDING ALL; the first load runs at %.0f%% of it\n' \
  "$rows" "$copy" "$(echo "$rows / $copy" | bc -l)" "$REPEAT" "$(echo "100 * $copy / $first" | bc -l)"
if [ "$SQL_PATH" = 1 ]; then
  sql_first=$(printf '%s\n' "${sql_firsts[@]}" | median)
  printf 'ingest: first load with orders_sync.bulk_load = off (SQL INSERT) %d rows in %.2f s = %.0f rows/s (median of %d): %.0f%% of COPY; the bulk path is %.2fx it\n' \
    "$rows" "$sql_first" "$(echo "$rows / $sql_first" | bc -l)" "$REPEAT" "$(echo "100 * $copy / $sql_first" | bc -l)" \
    "$(echo "$sql_first / $first" | bc -l)"
fi
if [ "${#nesteds[@]}" -gt 0 ]; then
  nested=$(printf '%s\n' "${nesteds[@]}" | median)
  printf 'ingest: nested profile %d rows in %.2f s = %.0f rows/s (median of %d): next_url paging, nested paths, RFC 3339 timestamps, string amounts; %.0f%% of the built-in contract'"'"'s first load (target: at least 80%%)\n' \
    "$rows" "$nested" "$(echo "$rows / $nested" | bc -l)" "$REPEAT" "$(echo "100 * $first / $nested" | bc -l)"
fi
