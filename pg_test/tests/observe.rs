//! The monitoring views and history pruning (SPEC §7, seeds 000 and 002).

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, ensure_extension, error_of, scalar, Simulator};

fn setup(sim: &Simulator, store: &str) -> Client {
    let mut db = connect();
    ensure_extension(&mut db);
    db.execute(
        "UPDATE orders_sync.pipelines SET base_url = $1, page_size = 50, max_attempts = 2",
        &[&sim.base_url],
    )
    .unwrap();
    db.execute(
        "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date)
         VALUES ($1, 'CC01', 'UC', '2026-01-01') ON CONFLICT (store_code) DO NOTHING",
        &[&store],
    )
    .unwrap();
    db
}

#[test]
fn freshness_progress_and_history_follow_a_synced_window() {
    let sim = Simulator::start(&[]);
    let mut db = setup(&sim, "OBSV1");
    let state: String = scalar(
        &mut db,
        "SELECT state FROM orders_sync.store_freshness WHERE store_code = 'OBSV1' AND pipeline = 'uc_orders_sync'",
    );
    assert_eq!(state, "never_synced");

    let status: String = scalar(
        &mut db,
        "SELECT orders_sync.sync_window('uc_orders_sync', 'OBSV1', '2026-01-01', (now() AT TIME ZONE 'Asia/Ho_Chi_Minh')::date)",
    );
    assert_eq!(status, "success");

    let (state, lag): (String, i32) = {
        let row = db
            .query_one(
                "SELECT state, lag_days FROM orders_sync.store_freshness WHERE store_code = 'OBSV1' AND pipeline = 'uc_orders_sync'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((state.as_str(), lag), ("fresh", 0));

    let (job_status, pages, rows, percent): (String, i32, i64, String) = {
        let row = db
            .query_one(
                "SELECT status, pages_done, rows_written, percent_streams_done::text FROM orders_sync.job_progress
                 WHERE store_code = 'OBSV1' ORDER BY job_id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    let source_rows: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.uc_gst WHERE store_code = 'OBSV1'");
    assert_eq!((job_status.as_str(), percent.as_str()), ("success", "100.0"));
    assert_eq!(rows, source_rows);
    assert_eq!(i64::from(pages), (source_rows + 49) / 50, "pages of 50 rows");

    let history: String = scalar(
        &mut db,
        "SELECT overall_status FROM orders_sync.run_history h
         JOIN orders_sync.orders_sync_log l ON l.run_id = h.run_id WHERE l.store_code = 'OBSV1'",
    );
    assert_eq!(history, "success");

    // A failing latest attempt turns the store to `failing`, whatever succeeded before.
    sim.control("/_control/faults", serde_json::json!({"store": "OBSV1", "kind": "status", "status": 500}));
    let status: String = scalar(&mut db, "SELECT orders_sync.sync_window('uc_orders_sync', 'OBSV1', '2026-01-01', '2026-01-02')");
    assert_eq!(status, "failed");
    let state: String = scalar(
        &mut db,
        "SELECT state FROM orders_sync.store_freshness WHERE store_code = 'OBSV1' AND pipeline = 'uc_orders_sync'",
    );
    assert_eq!(state, "failing");
}

#[test]
fn stuck_candidates_tell_a_dead_worker_from_a_live_lock() {
    let mut db = connect();
    ensure_extension(&mut db);
    db.batch_execute(
        "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('OBSV2', 'TD', '2026-01-01')
         ON CONFLICT DO NOTHING;
         INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env) VALUES ('obsv-stuck', 'x', 'test');
         INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
         SELECT id, 'obsv-stuck', 'test', 'OBSV2', '2026-01-01', '2026-01-05', 'running'
         FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
    )
    .unwrap();
    let held: bool = scalar(&mut db, "SELECT store_lock_held FROM orders_sync.stuck_candidates WHERE run_id = 'obsv-stuck'");
    assert!(!held, "nobody holds the lock: the row's worker is gone");

    // Another session takes the store's lock the way a worker does.
    let mut worker = connect();
    let locked: bool = scalar(
        &mut worker,
        "SELECT pg_try_advisory_lock(hashtext('orders_sync.store'), hashtext('OBSV2'))",
    );
    assert!(locked);
    let held: bool = scalar(&mut db, "SELECT store_lock_held FROM orders_sync.stuck_candidates WHERE run_id = 'obsv-stuck'");
    assert!(held, "the view must see the live worker's lock");
    drop(worker);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let held: bool = scalar(&mut db, "SELECT orders_sync.store_lock_held('OBSV2')");
    assert!(!held, "a session's advisory locks go with it");

    db.batch_execute(
        "DELETE FROM orders_sync.orders_sync_log WHERE run_id = 'obsv-stuck';
         DELETE FROM orders_sync.pipeline_run_summaries WHERE run_id = 'obsv-stuck'",
    )
    .unwrap();
}

#[test]
fn prune_history_keeps_the_latest_success_of_every_window() {
    let mut db = connect();
    ensure_extension(&mut db);
    db.batch_execute(
        "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('PRUNE', 'UC', '2025-01-01')
         ON CONFLICT DO NOTHING;
         INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, started_at, finished_at, overall_status)
         SELECT 'prune-' || n, 'x', 'test', now() - interval '200 days' + n * interval '1 day',
                now() - interval '200 days' + n * interval '1 day', 'success'
         FROM generate_series(1, 3) n;
         INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status, created_at)
         SELECT p.id, 'prune-' || n, 'test', 'PRUNE', '2025-01-01', '2025-03-31', s, now() - interval '200 days' + n * interval '1 day'
         FROM orders_sync.pipelines p,
              (VALUES (1, 'success'), (2, 'failed'), (3, 'success')) v(n, s)
         WHERE p.code = 'uc_orders_sync'",
    )
    .unwrap();
    let before: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM orders_sync.plan_sync_windows('test', store_code => 'PRUNE', as_of => '2025-04-10')",
    );

    let row = db.query_one("SELECT log_rows, runs FROM orders_sync.prune_history('90 days')", &[]).unwrap();
    let (log_rows, runs): (i64, i64) = (row.get(0), row.get(1));
    assert!(log_rows >= 2, "the failed attempt and the superseded success go: {log_rows}");
    assert!(runs >= 2, "their runs go with them: {runs}");

    let left: Vec<String> = db
        .query("SELECT run_id::text FROM orders_sync.orders_sync_log WHERE store_code = 'PRUNE'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["prune-3"], "the latest success of the window stays");
    let after: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM orders_sync.plan_sync_windows('test', store_code => 'PRUNE', as_of => '2025-04-10')",
    );
    assert_eq!(before, after, "pruning never changes the plan");

    assert_eq!(
        error_of(&mut db, "SELECT * FROM orders_sync.prune_history('1 hour')"),
        "invalid argument keep: 01:00:00 is shorter than 1 day"
    );
}
