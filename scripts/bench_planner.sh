#!/usr/bin/env bash
# Planner speed: one call of orders_sync.plan_sync_windows over STORES stores (default 10,000,
# half TD, half UC), each with three years of sync history in orders_sync_log: two years of
# 90-day backfill windows, then a year of daily one-day windows of which ~1.5% failed, most
# failures retried successfully and the rest left as holes the planner must repair.
#
# Builds the release package outside the lock, then, holding $INSTALL_LOCK
# (the system PostgreSQL directories are shared with other builds), installs it, starts a
# private cluster, loads the data set-based with generate_series, and times the call: one
# warm-up, then RUNS timed calls. Prints
#   planner: 10000 stores, N log rows, plan in X ms (median of 5, best Y ms)
# and stops the cluster.
#
# The cluster runs with shared_buffers = 512MB (the log and its indexes are ~1 GB) and every
# other setting at its default.
#
# Env: STORES (10000), RUNS (5), CARGO_TARGET_DIR (default ./target), KEEP_DATA=1 to keep the
# loaded cluster for the next run (which then skips the load when the store count matches).
set -euo pipefail

STORES="${STORES:-10000}"
RUNS="${RUNS:-5}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=pg_env.sh
source "$repo/scripts/pg_env.sh"
PSQL="${PG_BIN:?$PG_CONFIG not found: run scripts/setup.sh first}/psql"
work=/var/tmp/orders_sync
dir="$work/bench-planner"
port=55433
db=bench_planner

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

# Build without holding the lock: the package is a private copy of what install would write.
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$pkg" >"$pkg.log" 2>&1 ||
  { cat "$pkg.log" >&2; rm -f "$pkg.log"; exit 1; }
rm -f "$pkg.log"

# From here on the installed .so is ours: hold the lock until the cluster is stopped.
exec 9>>"$INSTALL_LOCK"
flock 9
# Each file goes in under a temporary name and is renamed over the old one, so a server that
# still maps the old .so keeps its (unlinked) copy instead of seeing it rewritten under it.
(cd "$pkg" && find . -type f) | while read -r file; do
  target="/${file#./}"
  mkdir -p "$(dirname "$target")"
  cp "$pkg/$file" "$target.bench-tmp" && mv -f "$target.bench-tmp" "$target"
done
# 9>&-: the server must not inherit (and outlive us holding) the lock.
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
INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date)
SELECT 'S' || lpad(i::text, 5, '0'), 'CC' || (i % 100), CASE WHEN i % 2 = 0 THEN 'UC' ELSE 'TD' END,
       current_date - 1095 + (i % 30)
FROM generate_series(1, :stores) AS i;

INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, started_at, finished_at, overall_status)
SELECT 'bench-backfill', 'orders_sync_run_profiler', 'bench', now(), now(), 'success'
UNION ALL
SELECT 'bench-' || kind || to_char(d, 'YYYYMMDD'), 'orders_sync_run_profiler', 'bench', d, d, 'success'
FROM generate_series(current_date - 365, current_date - 1, '1 day') AS d
CROSS JOIN (VALUES (''), ('retry-')) AS k(kind);

-- Two years of 90-day backfill windows...
INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date, status)
SELECT p.id, 'bench-backfill', 'bench', s.cost_center, s.store_code,
       s.start_date + 90 * k, least(s.start_date + 90 * k + 89, current_date - 366), 'success'
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
CROSS JOIN LATERAL generate_series(0, (current_date - 366 - s.start_date) / 90) AS k;

-- ...then a year of daily one-day windows, ~1.5% of them failed...
INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
                                         status, error_message)
SELECT p.id, 'bench-' || to_char(d, 'YYYYMMDD'), 'bench', s.cost_center, s.store_code, d, d,
       CASE WHEN (hashtext(s.store_code || d::text) & 63) = 0 THEN 'failed' ELSE 'success' END,
       CASE WHEN (hashtext(s.store_code || d::text) & 63) = 0 THEN 'orders: HTTP 503' END
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group
CROSS JOIN generate_series(current_date - 365, current_date - 1, '1 day') AS g(d);

-- ...most of them retried successfully; the rest are holes for the planner to repair.
INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date,
                                         status, attempt_no)
SELECT pipeline_id, 'bench-retry-' || to_char(from_date, 'YYYYMMDD'), run_env, cost_center, store_code,
       from_date, to_date, 'success', 2
FROM orders_sync.orders_sync_log
WHERE status = 'failed' AND (hashtext(store_code) & 7) <> 0;
SQL
fi
psql_bench -c "VACUUM ANALYZE" >/dev/null

log_rows="$(psql_bench -Atc "SELECT count(*) FROM orders_sync.orders_sync_log")"
summary="$(psql_bench -AtF ' ' -c "SELECT count(*), count(*) FILTER (WHERE will_run),
                                         count(*) FILTER (WHERE reason = 'missing')
                                  FROM orders_sync.plan_sync_windows('bench')")"
read -r windows runs missing <<<"$summary"
echo "bench: plan has $windows windows, $runs to run, $missing missing (holes)" >&2

timings="$(
  {
    printf '%s\n' '\timing on'
    for _ in $(seq 1 "$RUNS"); do echo "SELECT count(*) FROM orders_sync.plan_sync_windows('bench');"; done
  } | psql_bench -At | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
)"
[ "$(wc -l <<<"$timings")" = "$RUNS" ] || { echo "bench: could not read timings" >&2; exit 1; }
sorted="$(sort -n <<<"$timings")"
best="$(head -n 1 <<<"$sorted")"
median="$(sed -n "$(( (RUNS + 1) / 2 ))p" <<<"$sorted")"
printf 'planner: %s stores, %s log rows, plan in %.0f ms (median of %s, best %.0f ms)\n' \
  "$STORES" "$log_rows" "$median" "$RUNS" "$best"
