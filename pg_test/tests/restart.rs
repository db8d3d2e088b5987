//! A server crash-restart in the middle of a run (docs/design.md#healing): the launcher heals the leftovers,
//! nothing stays `running`, and the next run completes the data from the saved cursors.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{fresh_estate, pg_bin, scalar, Estate, Simulator};
use std::time::{Duration, Instant};

const STORES: [&str; 3] = ["CRASH1", "CRASH2", "CRASH3"];

const ESTATE: Estate = Estate {
    page_size: 20,
    max_attempts: 2,
    read_timeout_ms: Some(5000),
    start_date: "2026-01-01",
    only_these_active: true,
    clear_data: false,
};

/// `pg_ctl restart -m immediate`: every backend and worker dies at once, as in a crash.
fn crash_restart() {
    let dir = std::env::var("ORDERS_SYNC_TEST_DIR").unwrap_or_else(|_| {
        panic!("ORDERS_SYNC_TEST_DIR is not set: run the integration tests through scripts/test.sh")
    });
    let status = std::process::Command::new("sudo")
        .args(["-u", "postgres"])
        .arg(format!("{}/pg_ctl", pg_bin()))
        .arg("-D")
        .arg(format!("{dir}/data"))
        .args(["-m", "immediate", "-w", "-t", "120", "-l"])
        .arg(format!("{dir}/server.log"))
        .arg("restart")
        .status()
        .expect("pg_ctl");
    assert!(status.success(), "pg_ctl restart failed");
}

fn connect_when_up() -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match orders_sync_pg_test::postgres::Client::connect(
            &orders_sync_pg_test::dsn(),
            orders_sync_pg_test::postgres::NoTls,
        ) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(error) => panic!("server did not come back: {error}"),
        }
    }
}

fn wait_until(db: &mut Client, query: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if scalar::<bool>(db, query) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn launcher_heals_a_crash_restart_mid_run_and_the_next_run_completes_the_data() {
    let sim = Simulator::start(&["--rows-per-day", "10"]);
    let mut db = fresh_estate(&sim, &ESTATE, &STORES.map(|store| (store, "UC")));
    // 10 days x 10 rows in pages of 20: 5 pages a window, each page 300 ms late.
    sim.control("/_control/faults", serde_json::json!({"kind": "slow", "delay_ms": 300}));
    let run_id: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('crash', sync_group => 'UC', max_workers => 3, as_of => '2026-01-10')",
    );
    assert!(
        wait_until(
            &mut db,
            "SELECT count(*) >= 2 FROM orders_sync.window_pages WHERE store_code LIKE 'CRASH%'",
            Duration::from_secs(30)
        ),
        "pages should be committed before the crash"
    );
    drop(db);

    crash_restart();

    let mut db = connect_when_up();
    sim.control("/_control/reset", serde_json::json!({}));
    // The launcher comes back and fails what the crash left running; nothing stays running.
    let healed = wait_until(
        &mut db,
        &format!(
            "SELECT NOT EXISTS (SELECT 1 FROM orders_sync.orders_sync_log WHERE run_id = '{run_id}' AND status = 'running')
                AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' AND status IN ('queued', 'running'))
                AND (SELECT finished_at IS NOT NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}')"
        ),
        Duration::from_secs(90),
    );
    assert!(healed, "the launcher must heal the run left behind by the crash");
    let reset: i64 = scalar(
        &mut db,
        &format!(
            "SELECT count(*) FROM orders_sync.orders_sync_log
             WHERE run_id = '{run_id}' AND error_message = 'Auto-reset: stuck in running state'"
        ),
    );
    assert!(reset >= 1, "the windows the crash interrupted are failed as stuck");

    // The next run resumes those windows and completes every store's data.
    let next: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('crash', sync_group => 'UC', max_workers => 3, as_of => '2026-01-10', wait => true)",
    );
    assert_ne!(next, run_id);
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
        assert!(matches, "store {store} equals the source after the crash, without duplicates");
    }
}
