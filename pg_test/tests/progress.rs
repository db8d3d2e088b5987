//! A waiting run_profiler reports its progress: a DBA in psql sees the run advance.

use orders_sync_pg_test::postgres::{Config, NoTls};
use orders_sync_pg_test::{connect, ensure_extension, Simulator};
use std::sync::{Arc, Mutex};

#[test]
fn waiting_run_profiler_reports_progress_every_few_seconds() {
    let sim = Simulator::start(&["--rows-per-day", "10"]);
    let mut db = connect();
    ensure_extension(&mut db);
    db.execute("UPDATE orders_sync.pipelines SET base_url = $1, page_size = 20, max_attempts = 2", &[&sim.base_url])
        .unwrap();
    db.batch_execute(
        "UPDATE orders_sync.store_master SET is_active = false;
         INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES
             ('PROG1', 'UC', '2026-01-01'), ('PROG2', 'UC', '2026-01-01')
         ON CONFLICT (store_code) DO UPDATE SET is_active = true, start_date = '2026-01-01', sync_group = 'UC'",
    )
    .unwrap();
    // 30 days x 10 rows in pages of 20: 15 pages a store, each 500 ms late: ~8 s in all.
    sim.control("/_control/faults", serde_json::json!({"kind": "slow", "delay_ms": 500}));

    let notices = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut config: Config = orders_sync_pg_test::dsn().parse().unwrap();
    config.notice_callback(move |notice| seen.lock().unwrap().push(notice.message().to_string()));
    let mut client = config.connect(NoTls).unwrap();
    let run_id: String = client
        .query_one(
            "SELECT orders_sync.run_profiler('progress', sync_group => 'UC', as_of => '2026-01-30', wait => true)",
            &[],
        )
        .unwrap()
        .get(0);

    let notices = notices.lock().unwrap().clone();
    let progress: Vec<&String> = notices.iter().filter(|n| n.contains("windows done")).collect();
    assert!(!progress.is_empty(), "no progress NOTICE in {notices:?}");
    assert!(progress[0].starts_with(&format!("run {run_id}: ")), "{}", progress[0]);
    assert!(notices.last().unwrap().starts_with(&format!("run {run_id} ended success")), "{notices:?}");
}
