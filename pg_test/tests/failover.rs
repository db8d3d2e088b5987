//! Primary only, and failover (docs/design.md#failover), with a real streaming replica on this
//! machine: a hot standby that shares shared_preload_libraries has no launcher, attempts no
//! writes and logs no orders_sync errors; `run_profiler` there says to run it on the primary.
//! When the primary dies mid-run and the standby is promoted, the launcher starts there, fails
//! the windows the failover interrupted, runs the run's queued windows, and the next run
//! completes the data from the replicated cursors.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{run_as_postgres, scalar, spare_port, Simulator, SpareCluster};
use std::time::{Duration, Instant};

const DB: &str = "orders_sync_it";
const STORES: [&str; 4] = ["FAIL1", "FAIL2", "FAIL3", "FAIL4"];

fn wait_until(db: &mut Client, what: &str, query: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if scalar::<bool>(db, query) {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn launcher_state(db: &mut Client) -> String {
    scalar(db, "SELECT state FROM orders_sync.health WHERE component = 'launcher'")
}

/// Lines of a server log that are errors raised by or about orders_sync (its workers' backend
/// type is in every line's prefix); the standby's "could not connect to the primary server"
/// after the primary died is replication's, and may name a directory called orders_sync.
fn orders_sync_errors(log: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| ["ERROR", "FATAL", "PANIC"].iter().any(|level| line.contains(level)))
        .filter(|line| line.contains("orders_sync") && !line.contains("primary server"))
        .map(str::to_string)
        .collect()
}

#[test]
fn standby_idles_and_the_promoted_standby_continues_the_run_and_the_next_run_completes_it() {
    let sim = Simulator::start(&["--rows-per-day", "10"]);
    let primary = SpareCluster::start_new(
        "failover-primary",
        spare_port(0),
        DB,
        &["fsync = off", "orders_sync.http_retry_base_delay = 20ms"],
    );
    let mut db = primary.connect(DB);
    db.batch_execute("CREATE EXTENSION orders_sync CASCADE").unwrap();
    db.execute(
        "UPDATE orders_sync.pipelines SET base_url = $1, page_size = 20, max_attempts = 2, read_timeout_ms = 5000",
        &[&sim.base_url],
    )
    .unwrap();
    for store in STORES {
        db.execute(
            "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date, is_active)
             VALUES ($1, 'CC01', 'UC', '2026-01-01', true)",
            &[&store],
        )
        .unwrap();
    }

    // The replica: a base backup with streaming replication configured (-R), on its own port.
    let standby = SpareCluster::prepare("failover-standby", spare_port(1));
    let port = primary.port.to_string();
    run_as_postgres(
        "pg_basebackup",
        &["-D", &standby.data(), "-R", "-X", "stream", "-c", "fast", "-h", &primary.dir, "-p", &port, "-U", "postgres"],
    );
    standby.start();
    let mut replica = standby.connect(DB);
    let in_recovery: bool = scalar(&mut replica, "SELECT pg_is_in_recovery()");
    assert!(in_recovery);
    // Idle, visibly: no launcher, the health view says why, and a run is refused with a hint.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(launcher_state(&mut replica), "standby");
    let launchers: i64 =
        scalar(&mut replica, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'orders_sync%'");
    assert_eq!(launchers, 0, "no orders_sync worker runs on a hot standby");
    let refused = replica
        .batch_execute("SELECT orders_sync.run_profiler('failover', sync_group => 'UC')")
        .expect_err("run_profiler on a standby must fail, not wait");
    let refused = orders_sync_pg_test::describe(&refused);
    assert!(refused.contains("cannot start run_profiler on a hot standby"), "{refused}");

    // A run on the primary: 4 stores x 2 windows of 5 days x 10 rows, pages of 20, each page
    // 300 ms late, two at a time: windows are running and queued when the primary dies.
    sim.control("/_control/faults", serde_json::json!({"kind": "slow", "delay_ms": 300}));
    let run_id: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('failover', sync_group => 'UC', window_days => 5, max_workers => 2, as_of => '2026-01-10')",
    );
    let run_is =
        |column: &str| format!("SELECT {column} FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}'");
    wait_until(
        &mut replica,
        "pages of the run to reach the standby",
        "SELECT count(*) >= 2 FROM orders_sync.window_pages WHERE store_code LIKE 'FAIL%'",
        Duration::from_secs(30),
    );
    let standby_errors = orders_sync_errors(&standby.log());
    assert!(standby_errors.is_empty(), "the standby logged orders_sync errors: {standby_errors:#?}");
    drop(db);

    // The primary dies mid-run; the standby is promoted.
    primary.crash();
    let queued_at_failover: i64 = scalar(
        &mut replica,
        &format!("SELECT count(*) FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' AND status = 'queued'"),
    );
    let pages_at_failover: i64 =
        scalar(&mut replica, "SELECT count(*) FROM orders_sync.window_pages WHERE store_code LIKE 'FAIL%'");
    assert!(queued_at_failover >= 1, "the run still had queued windows when the primary died");
    sim.control("/_control/reset", serde_json::json!({}));
    let promoted_at = Instant::now();
    run_as_postgres("pg_ctl", &["-D", &standby.data(), "-w", "-t", "60", "promote"]);
    drop(replica);
    let mut db = standby.connect(DB);
    wait_until(
        &mut db,
        "the launcher on the promoted standby",
        "SELECT state = 'ok' FROM orders_sync.health WHERE component = 'launcher'",
        Duration::from_secs(30),
    );
    let launcher_after = promoted_at.elapsed();
    wait_until(
        &mut db,
        "the run to end on the new primary",
        &run_is("finished_at IS NOT NULL"),
        Duration::from_secs(120),
    );
    let closed_after = promoted_at.elapsed();
    let jobs: String = scalar(
        &mut db,
        &format!(
            "SELECT string_agg(format('%s %s %s (started %s, ended %s)', store_code, from_date, status,
                                      started_at::time(2), finished_at::time(2)), '; ' ORDER BY id)
             FROM orders_sync.sync_jobs WHERE run_id = '{run_id}'"
        ),
    );
    let launcher_start: String = scalar(
        &mut db,
        "SELECT max(backend_start)::time(2)::text FROM pg_stat_activity WHERE backend_type = 'orders_sync launcher'",
    );
    eprintln!(
        "failover: {pages_at_failover} pages replicated and {queued_at_failover} windows queued at the failover; \
         launcher up {launcher_after:?} (at {launcher_start}) and the run closed {closed_after:?} after the promote; jobs: {jobs}"
    );
    let interrupted: i64 = scalar(
        &mut db,
        &format!(
            "SELECT count(*) FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' AND status = 'failed'
               AND error_message = 'Auto-reset: stuck in running state'"
        ),
    );
    assert!(interrupted >= 1, "windows interrupted by the failover are failed as stuck");
    let continued: i64 = scalar(
        &mut db,
        &format!(
            "SELECT count(*) FROM orders_sync.sync_jobs j WHERE run_id = '{run_id}' AND status = 'success'
               AND started_at > (SELECT max(backend_start) FROM pg_stat_activity WHERE backend_type = 'orders_sync launcher')"
        ),
    );
    assert!(continued >= 1, "the run's queued windows ran on the new primary");
    let running: i64 = scalar(
        &mut db,
        "SELECT (SELECT count(*) FROM orders_sync.sync_jobs WHERE status IN ('queued', 'running'))
              + (SELECT count(*) FROM orders_sync.orders_sync_log WHERE status = 'running')",
    );
    assert_eq!(running, 0, "nothing is left queued or running");

    // The next run completes the data: every store equals the source, without duplicates.
    let next: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('failover', sync_group => 'UC', window_days => 5, max_workers => 2, as_of => '2026-01-10', wait => true)",
    );
    let status: String = scalar(
        &mut db,
        &format!("SELECT overall_status::text FROM orders_sync.pipeline_run_summaries WHERE run_id = '{next}'"),
    );
    assert_eq!(status, "success");
    for store in STORES {
        let (count, sum) = sim.truth(store, "gst", "2026-01-01", "2026-01-10");
        let matches: bool = db
            .query_one(
                "SELECT count(*) = $2 AND count(DISTINCT record_id) = $2 AND coalesce(sum(amount), 0) = $3::text::numeric
                 FROM orders_sync.uc_gst WHERE store_code = $1",
                &[&store, &count, &sum],
            )
            .unwrap()
            .get(0);
        assert!(matches, "store {store} equals the source after the failover, without duplicates");
    }
    let errors = orders_sync_errors(&standby.log());
    assert!(errors.is_empty(), "the promoted standby logged orders_sync errors: {errors:#?}");
}
