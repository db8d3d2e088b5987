//! A pipeline's `limits` (docs/design.md#limits), end to end: the launcher and job workers of
//! a real cluster keep to `max_concurrent_stores` and `requests_per_second` against the
//! reference simulator.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{exclusive, fresh_estate, scalar, Estate, Simulator};
use serde_json::json;
use std::time::{Duration, Instant};

/// Ten days of 2026, so a store has two windows of five days.
const START: &str = "2026-01-01";
const AS_OF: &str = "2026-01-10";

fn estate(page_size: i32) -> Estate {
    Estate {
        page_size,
        max_attempts: 3,
        read_timeout_ms: Some(5000),
        start_date: START,
        only_these_active: true,
        clear_data: true,
    }
}

fn uc_stores(prefix: &str, n: usize) -> Vec<(String, &'static str)> {
    (0..n).map(|i| (format!("{prefix}{i:02}"), "UC")).collect()
}

/// Sets the UC pipeline's profile; every other pipeline keeps the built-in contract.
fn set_uc_source(db: &mut Client, source: Option<serde_json::Value>) {
    let source = source.map(|s| s.to_string());
    db.execute("UPDATE orders_sync.pipelines SET source = NULL WHERE sync_group <> 'UC'", &[]).unwrap();
    db.execute("UPDATE orders_sync.pipelines SET source = $1::text::jsonb WHERE sync_group = 'UC'", &[&source])
        .unwrap();
}

fn run_status(db: &mut Client, run_id: &str) -> (Option<String>, i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT overall_status::text FROM orders_sync.pipeline_run_summaries
                     WHERE run_id = $1 AND finished_at IS NOT NULL),
                    count(*) FILTER (WHERE status = 'success'), count(*)
             FROM orders_sync.sync_jobs WHERE run_id = $1",
            &[&run_id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn max_concurrent_stores_keeps_a_pipeline_to_two_stores_at_once_and_every_window_succeeds() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    let mut db = fresh_estate(&sim, &estate(1000), &uc_stores("LMC", 6));
    set_uc_source(&mut db, Some(json!({"limits": {"max_concurrent_stores": 2}})));
    // Every page answers 300 ms late, so windows overlap long enough to be seen.
    sim.control("/_control/config", json!({"response_delay_ms": 300}));

    let run_id: String = scalar(
        &mut db,
        &format!(
            "SELECT orders_sync.run_profiler('itlimit', sync_group => 'UC', window_days => 5, max_workers => 4,
                                             as_of => '{AS_OF}')"
        ),
    );
    let uc: i64 = scalar(&mut db, "SELECT id FROM orders_sync.pipelines WHERE sync_group = 'UC'");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut most, mut samples) = (0i64, 0);
    let status = loop {
        // Every running job of the pipeline, whatever its run.
        let running: i64 = db
            .query_one(
                "SELECT count(*) FROM orders_sync.sync_jobs WHERE pipeline_id = $1 AND status = 'running'",
                &[&uc],
            )
            .unwrap()
            .get(0);
        most = most.max(running);
        samples += 1;
        assert!(running <= 2, "{running} stores of the pipeline running at once (max_concurrent_stores = 2)");
        let (status, _, _) = run_status(&mut db, &run_id);
        if let Some(status) = status {
            break status;
        }
        assert!(Instant::now() < deadline, "run {run_id} did not end within 90 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    set_uc_source(&mut db, None);

    // What the source saw: never more than two stores' requests at once.
    let seen = sim.get("/_control/concurrency");
    eprintln!("most running {most} in {samples} samples; the source saw {seen}");
    assert_eq!(seen["max_stores_in_flight"], json!(2), "stores in flight at the source: {seen}");
    assert_eq!(most, 2, "the cap is used, not just kept: two stores ran side by side");
    let (_, success, windows) = run_status(&mut db, &run_id);
    assert_eq!((status.as_str(), success, windows), ("success", 12, 12), "6 stores x 2 windows, all synced");
    // The jobs' own recorded intervals agree: never three at once.
    let overlap: i64 = scalar(
        &mut db,
        &format!(
            "SELECT coalesce(max(n), 0) FROM (
                 SELECT (SELECT count(*) FROM orders_sync.sync_jobs o
                         WHERE o.run_id = j.run_id AND o.started_at <= j.started_at AND o.finished_at > j.started_at) AS n
                 FROM orders_sync.sync_jobs j WHERE j.run_id = '{run_id}') s"
        ),
    );
    assert!(overlap <= 2, "recorded overlap {overlap}");
}

#[test]
fn requests_per_second_holds_across_every_worker_of_the_cluster() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    // Ten days of 2 rows in pages of 5: 4 pages a window, one window a store.
    let stores = uc_stores("LMR", 4);
    let mut db = fresh_estate(&sim, &estate(5), &stores);
    set_uc_source(&mut db, Some(json!({"limits": {"requests_per_second": 5}})));

    let started = Instant::now();
    let run_id: String = scalar(
        &mut db,
        &format!(
            "SELECT orders_sync.run_profiler('itrate', sync_group => 'UC', window_days => 10, max_workers => 4,
                                             as_of => '{AS_OF}', wait => true)"
        ),
    );
    let took = started.elapsed();
    set_uc_source(&mut db, None);

    let (status, success, windows) = run_status(&mut db, &run_id);
    assert_eq!((status.as_deref(), success, windows), (Some("success"), 4, 4));
    let most_at_once: i64 = scalar(
        &mut db,
        &format!(
            "SELECT coalesce(max(n), 0) FROM (
                 SELECT (SELECT count(*) FROM orders_sync.sync_jobs o
                         WHERE o.run_id = j.run_id AND o.started_at <= j.started_at AND o.finished_at > j.started_at) AS n
                 FROM orders_sync.sync_jobs j WHERE j.run_id = '{run_id}') s"
        ),
    );
    let log = sim.get("/_control/requests");
    let requests = log["total"].as_u64().unwrap();
    let mut arrivals: Vec<u64> =
        log["recent"].as_array().unwrap().iter().map(|r| r["at_ms"].as_u64().unwrap()).collect();
    arrivals.sort_unstable();
    let gaps: Vec<u64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("{requests} requests in {took:?}, {most_at_once} workers at once, gaps (ms) {gaps:?}");
    assert_eq!(arrivals.len() as u64, requests, "every request is in the log");
    // Sent at least 200 ms apart; arrival adds a few ms of jitter either way.
    assert!(gaps.iter().all(|&gap| gap >= 170), "requests closer than 1/5 s at the source: {gaps:?}");
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(span + 30 >= (requests - 1) * 200, "{requests} requests within {span} ms");
    assert!(requests >= 16, "4 stores x 4 pages: {requests}");
    assert!(most_at_once >= 2, "several workers fetched side by side");
    // N requests at 5 a second, the first at once: at least (N - 1) / 5 s, whatever the
    // number of workers (unpaced, four workers send them in well under a second).
    let least = Duration::from_millis((requests - 1) * 200);
    assert!(took >= least, "{requests} requests in {took:?}: faster than 5 a second (at least {least:?})");
    assert!(took < least + Duration::from_secs(10), "{requests} requests in {took:?}: paced far too slowly");
}
