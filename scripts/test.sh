#!/usr/bin/env bash
# THE test command of orders_sync (also what CI runs through .ci/run).
#
#   1. scripts/setup.sh --with-citus  machine setup, fast when already done (the first time it
#                                  builds Citus from ../shared/vendor: 2-3 minutes on 2 cores)
#   2. lints                       cargo fmt --check, clippy -D warnings (every crate, every
#                                  target), shellcheck of scripts/*.sh and .ci/run
#   3. unit tests                  pure Rust: planner, fetch rules, simulator (cargo test)
#   4. pgrx tests                  SQL-level tests inside a throw-away cluster (cargo pgrx test)
#   5. integration tests           pg_test/ against a real cluster with pg_cron and orders_sync
#                                  preloaded and the reference simulator over loopback (metrics.rs:
#                                  the real prometheus-postgres-exporter scraped over loopback;
#                                  citus.rs: a Citus coordinator and three workers of its own)
#   6. chaos (short)               scripts/chaos.sh with about ten faults
#   7. alert rules                 promtool check rules metrics/alerts.yaml
#   8. Debian package              scripts/test_package.sh: build the .deb, apt-get install it in
#                                  place of the dev install, CREATE / UPDATE from 0.1.0, apt-get
#                                  remove leaves nothing, dev install restored (under the lock)
#   9. demo (short)                scripts/demo.sh, small, with its checks
#
# Every step runs even when an earlier one failed; the exit status is non-zero if any failed.
# Env: ORDERS_SYNC_WORK (scratch dir, default /var/tmp/orders_sync), ORDERS_SYNC_IT_PORT
#      (the test cluster's port; tests that need clusters of their own, a replica or a restore
#      target, use the next few ports),
#      ORDERS_SYNC_ONLY (run only the steps whose name contains one of its comma-separated
#      parts, e.g. "build simulator,integration"),
#      ORDERS_SYNC_IT_ARGS (extra cargo test arguments for the integration step, e.g.
#      "--test schedules").
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1

work="${ORDERS_SYNC_WORK:-/var/tmp/orders_sync}"
it_port="${ORDERS_SYNC_IT_PORT:-54329}"
it_db=orders_sync_it
target="${CARGO_TARGET_DIR:-$repo/target}"
log="$work/test-output.log"

bash scripts/setup.sh --with-citus || { echo "test.sh: setup failed" >&2; exit 1; }
# shellcheck source=pg_env.sh
source scripts/pg_env.sh
mkdir -p "$work"
chown postgres: "$work" 2>/dev/null || true
: > "$log"

steps=()
failed=0
only="${ORDERS_SYNC_ONLY:-}"
step() {
  local name="$1"
  shift
  # ORDERS_SYNC_ONLY: comma-separated parts of step names, e.g. "build simulator,integration".
  if [ -n "$only" ]; then
    local wanted=0 part parts
    IFS=',' read -ra parts <<< "$only"
    for part in "${parts[@]}"; do
      [[ "$name" == *"$part"* ]] && wanted=1
    done
    [ "$wanted" = 1 ] || return 0
  fi
  printf '\n==> %s\n' "$name"
  if "$@" 2>&1 | tee -a "$log"; then
    steps+=("ok      $name")
  else
    steps+=("FAILED  $name")
    failed=1
  fi
}

# The extension .so is installed into the system PostgreSQL; concurrent installs (another
# checkout's test run, whatever its scratch dir) would swap it under a running cluster, so
# installs and the clusters that load them hold this machine-wide lock.
# shellcheck disable=SC2317 # called through step
locked() { (flock 9 && "$@") 9>"$INSTALL_LOCK"; }

# shellcheck disable=SC2317 # called through step
integration() {
  # shellcheck disable=SC2016 # the script expands its own arguments
  locked bash -c '
    set -euo pipefail
    cargo pgrx install --pg-config "$0" >/dev/null
    # The released 0.1.0 and 0.1.1 scripts, so the upgrade paths to this version are tested too.
    install -m 644 pg_test/fixtures/orders_sync--0.1.0.sql pg_test/fixtures/orders_sync--0.1.1.sql "$("$0" --sharedir)/extension/"
    trap "scripts/pg_cluster.sh stop \"$1/it\"" EXIT
    scripts/pg_cluster.sh stop "$1/it"
    rm -rf "$1/it"  # a fresh cluster: the extension under test is created anew
    dsn=$(scripts/pg_cluster.sh start "$1/it" "$2" "$3" "fsync = off" "synchronous_commit = off" \
      "orders_sync.http_retry_base_delay = 20ms")
    ORDERS_SYNC_TEST_DSN="$dsn" \
    ORDERS_SYNC_TEST_DIR="$1/it" \
    ORDERS_SYNC_SIMULATOR="$4/release/orders_sync_simulator" \
    ORDERS_SYNC_PG_BIN="$6" \
    ORDERS_SYNC_SPARE_PORT="$(($2 + 1))" \
      cargo test -p orders_sync_pg_test --no-fail-fast $5 -- --test-threads=1
  ' "$PG_CONFIG" "$work" "$it_port" "$it_db" "$target" "${ORDERS_SYNC_IT_ARGS:-}" "$PG_BIN"
}

# The README's first command, small: it must set everything up and end with a successful
# run, every active store fresh, every schedule healthy and KPI facts written.
# shellcheck disable=SC2317 # called through step
demo_smoke() {
  local demo_dir="$work/demo-test" port=55490 sim_port=55491
  local dsn="host=127.0.0.1 port=$port user=postgres dbname=orders_sync_demo"
  # A fresh start: a demo left by an interrupted earlier run would add its runs to the checks.
  DEMO_DIR="$demo_dir" bash scripts/demo.sh stop >/dev/null 2>&1 || true
  rm -rf "$demo_dir"
  # Run under `locked`: the demo's install and its cluster hold the install lock throughout.
  ORDERS_SYNC_INSTALL_LOCK_HELD=1 DEMO_DIR="$demo_dir" DEMO_PORT=$port DEMO_SIM_PORT=$sim_port DEMO_STORES=6 \
    DEMO_DAYS=40 DEMO_ROWS_PER_DAY=3 DEMO_BUILD=debug bash scripts/demo.sh || { DEMO_DIR="$demo_dir" bash scripts/demo.sh stop; return 1; }
  local checks
  checks=$(psql "$dsn" -XAt -F ' ' -c "
    SELECT (SELECT count(*) = 1 AND bool_and(overall_status = 'success') FROM orders_sync.run_history),
           (SELECT count(*) > 0 AND bool_and(state = 'fresh') FROM orders_sync.store_freshness),
           (SELECT count(*) = 3 AND bool_and(state = 'ok') FROM orders_sync.scheduler_health),
           (SELECT count(*) > 0 FROM orders_sync.kpi_facts_daily)")
  DEMO_DIR="$demo_dir" bash scripts/demo.sh stop
  rm -rf "$demo_dir"
  echo "demo checks (run success, stores fresh, schedules ok, KPI facts): $checks"
  [ "$checks" = "t t t t" ]
}

# Lints first: they take a minute and say at once what a reviewer would reject.
step "rustfmt" cargo fmt --all --check
step "clippy" cargo clippy --workspace --all-targets -- -D warnings
step "shellcheck" shellcheck scripts/*.sh .ci/run
# The fetch stage's unit tests speak HTTP to the real simulator, so it is built first.
step "build simulator" cargo build --release -p orders_sync_simulator --bin orders_sync_simulator
export ORDERS_SYNC_SIMULATOR="$target/release/orders_sync_simulator"
step "unit tests (extension, pure)" cargo test -p orders_sync --lib -- --skip pg_tests::
step "unit tests (simulator)" cargo test -p orders_sync_simulator
step "pgrx tests" locked cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$work/pgrx-data"
step "integration tests" integration
# About ten faults; scripts/chaos.sh with its defaults is the full run. It takes the install
# lock itself, for as long as its cluster runs.
step "chaos (short)" env CHAOS_TERMINATES=8 CHAOS_CRASHES=1 CHAOS_RESTARTS=1 CHAOS_STORES=6 CHAOS_DAYS=30 \
  CHAOS_PORT="$((it_port + 5))" ORDERS_SYNC_WORK="$work" bash scripts/chaos.sh
step "alert rules (promtool)" promtool check rules metrics/alerts.yaml
# test_package.sh takes $INSTALL_LOCK itself (it must release it while building the package).
step "Debian package" env ORDERS_SYNC_WORK="$work" ORDERS_SYNC_PKG_PORT="$((it_port + 2))" bash scripts/test_package.sh
step "demo (short)" locked demo_smoke

passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failures=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')
printf '\n==> summary\n'
printf '  %s\n' "${steps[@]}"
if [ "$failed" -ne 0 ] && [ "$failures" -eq 0 ]; then failures=1; fi
echo "total: $passed passed, $failures failed"
exit "$failed"
