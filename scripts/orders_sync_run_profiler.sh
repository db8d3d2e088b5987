#!/usr/bin/env bash
# The profiler's command line, mapped onto orders_sync.run_profiler(...) (docs/design.md#command-line).
# Every value reaches SQL as a psql variable (:'name'), never spliced into the SQL text.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: orders_sync_run_profiler.sh --env ENV [options]

Starts an orders_sync profiler run (SELECT orders_sync.run_profiler(...)) and prints its run_id.

Options (defaults are run_profiler's):
  --env ENV             environment recorded with the run (required), e.g. prod
  --sync-group GROUP    TD, UC or ALL                          (default ALL)
  --window-days N       largest window, in days                (default 90)
  --overlap-days K      successful days fetched again          (default 1)
  --max-workers N       windows of this run fetched at once    (default 3, 1..64)
  --force               re-fetch every window from start_date
  --store-code CODE     only this store
  --as-of DATE          plan as of DATE (YYYY-MM-DD) instead of today
  --wait                return only when the run has ended; the exit status then says how
  --dsn DSN             libpq connection string; otherwise PGHOST, PGPORT, PGDATABASE,
                        PGUSER, ... are used as by psql
  -h, --help            this help

Exit status (cron wrappers and CI can tell partial from success):
  0  the run started; with --wait: it ended success
  1  with --wait: the run ended failed (a window failed)
  2  with --wait: the run ended partial (a later stream of some window failed)
  3  bad command line
  4  cannot connect to the database (psql's message on stderr)
  5  the database refused the call: bad argument, extension missing, ... (message on stderr)
USAGE
}

die_usage() {
  echo "orders_sync_run_profiler.sh: $*" >&2
  echo "Try 'orders_sync_run_profiler.sh --help'." >&2
  exit 3
}

env_name="" sync_group="ALL" window_days="90" overlap_days="1" max_workers="3"
force="false" store_code="" as_of="" wait="false" dsn=""
have_env=0

while [ $# -gt 0 ]; do
  flag="$1"
  value=""
  has_inline=0
  case "$flag" in
    --*=*) value="${flag#*=}"; flag="${flag%%=*}"; has_inline=1 ;;
  esac
  takes_value() {
    if [ "$has_inline" -eq 1 ]; then return 0; fi
    if [ $# -lt 2 ] || [ -z "${2-}" ] || [[ "${2-}" == --* ]]; then
      die_usage "option $flag needs a value"
    fi
    value="$2"
    shift_by=2
  }
  shift_by=1
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --env) takes_value "$@"; env_name="$value"; have_env=1 ;;
    --sync-group) takes_value "$@"; sync_group="$value" ;;
    --window-days) takes_value "$@"; window_days="$value" ;;
    --overlap-days) takes_value "$@"; overlap_days="$value" ;;
    --max-workers) takes_value "$@"; max_workers="$value" ;;
    --store-code) takes_value "$@"; store_code="$value" ;;
    --as-of) takes_value "$@"; as_of="$value" ;;
    --dsn) takes_value "$@"; dsn="$value" ;;
    --force|--wait)
      [ "$has_inline" -eq 0 ] || die_usage "option $flag takes no value"
      if [ "$flag" = --force ]; then force="true"; else wait="true"; fi ;;
    *) die_usage "unknown option '$flag'" ;;
  esac
  shift "$shift_by"
done

[ "$have_env" -eq 1 ] || die_usage "missing required option --env"
for pair in "window-days:$window_days" "overlap-days:$overlap_days" "max-workers:$max_workers"; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || die_usage "--${pair%%:*} must be a whole number, got '${pair#*:}'"
done
if [ -n "$as_of" ] && ! [[ "$as_of" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]]; then
  die_usage "--as-of must be a date YYYY-MM-DD, got '$as_of'"
fi

conn=()
[ -z "$dsn" ] || conn=(-d "$dsn")

set +e
output=$(psql "${conn[@]}" -X -q -At -v ON_ERROR_STOP=1 \
  -v env="$env_name" -v sync_group="$sync_group" -v window_days="$window_days" \
  -v overlap_days="$overlap_days" -v max_workers="$max_workers" -v force="$force" \
  -v store_code="$store_code" -v as_of="$as_of" -v wait="$wait" -f - <<'SQL'
SELECT orders_sync.run_profiler(
         env          => :'env',
         sync_group   => :'sync_group',
         window_days  => :'window_days'::integer,
         overlap_days => :'overlap_days'::integer,
         max_workers  => :'max_workers'::integer,
         force        => :'force'::boolean,
         store_code   => NULLIF(:'store_code', ''),
         wait         => :'wait'::boolean,
         as_of        => NULLIF(:'as_of', '')::date) AS run_id \gset
SELECT 'run_id: ' || run_id, 'status: ' || overall_status, 'summary: ' || coalesce(summary_text, '')
FROM orders_sync.pipeline_run_summaries WHERE run_id = :'run_id' \g (format=unaligned fieldsep='\n')
SQL
)
rc=$?
set -e
[ -z "$output" ] || printf '%s\n' "$output"
# psql: 2 = the connection failed or went bad, 3 = an error in the script (ON_ERROR_STOP).
case "$rc" in
  0) ;;
  2) exit 4 ;;
  *) exit 5 ;;
esac
if [ "$wait" = true ]; then
  case "$(sed -n 's/^status: //p' <<<"$output")" in
    success) exit 0 ;;
    failed) exit 1 ;;
    partial) exit 2 ;;
    *) echo "orders_sync_run_profiler.sh: the run has not ended" >&2; exit 5 ;;
  esac
fi
exit 0
