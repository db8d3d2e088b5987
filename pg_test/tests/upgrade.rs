//! Upgrade while syncing (README "Upgrading"): `ALTER EXTENSION orders_sync UPDATE` from the
//! released 0.1.0 while a run is active does not fail, the run's windows finish or fail
//! cleanly (nothing stays `running`, no `success` whose data differs from the source), and the
//! next run completes the data.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, exclusive, scalar, Simulator};
use std::time::{Duration, Instant};

const STORES: [&str; 3] = ["UPG1", "UPG2", "UPG3"];

fn wait_until(db: &mut Client, what: &str, query: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !scalar::<bool>(db, query) {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Windows logged `success` whose records differ from the source: must be none, ever.
fn false_successes(db: &mut Client, sim: &Simulator) -> Vec<String> {
    let windows: Vec<(String, String, String)> = db
        .query(
            "SELECT DISTINCT store_code, from_date::text, to_date::text FROM orders_sync.orders_sync_log
             WHERE status = 'success' AND store_code LIKE 'UPG%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let mut wrong = Vec::new();
    for (store, from, to) in windows {
        let (count, sum) = sim.truth(&store, "gst", &from, &to);
        let matches: bool = db
            .query_one(
                "SELECT count(*) = $4 AND coalesce(sum(amount), 0) = $5::text::numeric FROM orders_sync.uc_gst
                 WHERE store_code = $1 AND record_date BETWEEN $2::text::date AND $3::text::date",
                &[&store, &from, &to, &count, &sum],
            )
            .unwrap()
            .get(0);
        if !matches {
            wrong.push(format!("{store} {from}..{to}"));
        }
    }
    wrong
}

#[test]
fn alter_extension_update_during_an_active_run_succeeds_and_the_next_run_completes_the_data() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "10"]);
    let mut db = connect();
    db.batch_execute(
        "DROP EXTENSION IF EXISTS orders_sync CASCADE; CREATE EXTENSION orders_sync VERSION '0.1.0' CASCADE",
    )
    .unwrap();
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
    sim.control("/_control/faults", serde_json::json!({"kind": "slow", "delay_ms": 300}));
    let run_id: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('upgrade', sync_group => 'UC', window_days => 5, max_workers => 2, as_of => '2026-01-10')",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let before: (String, i64) = {
        let row = db
            .query_one(
                "SELECT (SELECT overall_status::text FROM orders_sync.pipeline_run_summaries WHERE run_id = $1),
                        (SELECT count(*) FROM orders_sync.records WHERE store_code LIKE 'UPG%')",
                &[&run_id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(before.0, "running", "the update runs while the run is active");
    let jobs_before: String = scalar(
        &mut db,
        &format!(
            "SELECT coalesce(string_agg(status || ' ' || n, ', ' ORDER BY status), 'none')
             FROM (SELECT status, count(*) AS n FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' GROUP BY status) s"
        ),
    );

    let started = Instant::now();
    db.batch_execute("ALTER EXTENSION orders_sync UPDATE").expect("the update must not fail while a run is active");
    let took = started.elapsed();
    let version: String = scalar(&mut db, "SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));

    wait_until(
        &mut db,
        "the run to end after the update",
        &format!("SELECT finished_at IS NOT NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}'"),
        Duration::from_secs(120),
    );
    let (status, pages_after): (String, i64) = {
        let row = db
            .query_one(
                "SELECT (SELECT overall_status::text FROM orders_sync.pipeline_run_summaries WHERE run_id = $1),
                        (SELECT count(*) FROM orders_sync.records WHERE store_code LIKE 'UPG%')",
                &[&run_id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    eprintln!(
        "upgrade: jobs {jobs_before} and {} records before ALTER EXTENSION UPDATE, which took {took:?}; the run ended {status} with {pages_after} records",
        before.1
    );
    let running: i64 = scalar(
        &mut db,
        "SELECT (SELECT count(*) FROM orders_sync.sync_jobs WHERE status IN ('queued', 'running'))
              + (SELECT count(*) FROM orders_sync.orders_sync_log WHERE status = 'running')",
    );
    assert_eq!(running, 0, "nothing is left queued or running");
    assert_eq!(false_successes(&mut db, &sim), Vec::<String>::new(), "no success whose data differs from the source");

    sim.control("/_control/reset", serde_json::json!({}));
    let next: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('upgrade', sync_group => 'UC', window_days => 5, max_workers => 2, as_of => '2026-01-10', wait => true)",
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
        assert!(matches, "store {store} equals the source after the upgrade, without duplicates");
    }
    db.batch_execute("UPDATE orders_sync.store_master SET is_active = false WHERE store_code LIKE 'UPG%'").unwrap();
}
