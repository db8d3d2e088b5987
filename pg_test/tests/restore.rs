//! Dump and restore (README runbook "Moving or restoring a database"): `pg_dump` of a database
//! with orders_sync, its data and its schedules, restored with `pg_restore` into a fresh
//! cluster, brings back records, log, runs and registry; the planner plans the same windows,
//! scheduler_health shows every schedule (pg_cron's own jobs are dumped too, so they come
//! back `ok`), repair_schedules() leaves them `ok`, and after the built-in pipelines' settings
//! are applied again (pg_dump leaves out rows an extension script creates) the copy syncs.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{run_as_postgres, scalar, spare_port, Simulator, SpareCluster};

const DB: &str = "orders_sync_it";
const STORES: [&str; 3] = ["REST1", "REST2", "REST3"];

/// Everything a restore must bring back, one line per fact.
fn contents(db: &mut Client) -> Vec<String> {
    let query = "
        SELECT 'records ' || count(*) || ' ' || coalesce(sum(amount), 0) FROM orders_sync.records
        UNION ALL SELECT 'log ' || count(*) || ' ' || count(*) FILTER (WHERE status = 'success') FROM orders_sync.orders_sync_log
        UNION ALL SELECT 'runs ' || string_agg(run_id || ' ' || overall_status, ', ' ORDER BY run_id) FROM orders_sync.pipeline_run_summaries
        UNION ALL SELECT 'jobs ' || count(*) FROM orders_sync.sync_jobs
        UNION ALL SELECT 'pages ' || count(*) FROM orders_sync.window_pages
        UNION ALL SELECT 'kpi ' || count(*) FROM orders_sync.kpi_facts_daily
        UNION ALL SELECT 'stores ' || string_agg(store_code || ' ' || start_date, ', ' ORDER BY store_code) FROM orders_sync.store_master
        UNION ALL SELECT 'registry ' || string_agg(job_name || ' ' || schedule || ' ' || command, ', ' ORDER BY job_name) FROM orders_sync.schedules
        UNION ALL SELECT 'plan ' || string_agg(p::text, ', ' ORDER BY p::text)
                  FROM orders_sync.plan_sync_windows('restore', as_of => '2026-01-20') p";
    db.query(query, &[]).unwrap().iter().map(|row| row.get::<_, Option<String>>(0).unwrap_or_default()).collect()
}

fn health(db: &mut Client) -> Vec<(String, String)> {
    db.query("SELECT job_name, state FROM orders_sync.scheduler_health ORDER BY job_name", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn pg_dump_and_pg_restore_into_a_fresh_cluster_keep_data_plan_and_schedules() {
    let sim = Simulator::start(&["--rows-per-day", "4"]);
    let source = SpareCluster::start_new("restore-source", spare_port(2), DB, &["fsync = off"]);
    let mut db = source.connect(DB);
    db.batch_execute("CREATE EXTENSION orders_sync CASCADE").unwrap();
    db.execute("UPDATE orders_sync.pipelines SET base_url = $1, page_size = 20", &[&sim.base_url]).unwrap();
    for store in STORES {
        db.execute(
            "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date, is_active)
             VALUES ($1, 'CC01', 'UC', '2026-01-01', true)",
            &[&store],
        )
        .unwrap();
    }
    let run: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('restore', sync_group => 'UC', window_days => 5, as_of => '2026-01-10', wait => true)",
    );
    let status: String = scalar(
        &mut db,
        &format!("SELECT overall_status::text FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run}'"),
    );
    assert_eq!(status, "success");
    db.batch_execute(
        "SELECT orders_sync.schedule_profiler('17 3 * * *', env => 'restore', sync_group => 'UC', job_name => 'it_restore_profiler');
         SELECT * FROM orders_sync.schedule_maintenance();",
    )
    .unwrap();
    let before = contents(&mut db);
    let health_before = health(&mut db);
    assert_eq!(health_before.len(), 3, "{health_before:?}");
    drop(db);

    let dump = format!("{}/{DB}.dump", source.dir);
    let port = source.port.to_string();
    run_as_postgres("pg_dump", &["-Fc", "-f", &dump, "-h", &source.dir, "-p", &port, DB]);
    source.stop();

    let target = SpareCluster::start_new("restore-target", spare_port(3), DB, &["fsync = off"]);
    let port = target.port.to_string();
    run_as_postgres("pg_restore", &["--exit-on-error", "-d", DB, "-h", &target.dir, "-p", &port, &dump]);
    let mut db = target.connect(DB);
    // The launcher started before the database existed; it is back within its 5 s restart time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while scalar::<String>(&mut db, "SELECT state FROM orders_sync.health") != "ok" {
        assert!(std::time::Instant::now() < deadline, "the restored database has no launcher");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let after = contents(&mut db);
    assert_eq!(after, before, "the restore brings back data, registry and the same plan");

    let health_after = health(&mut db);
    let names = |health: &[(String, String)]| health.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&health_after), names(&health_before), "scheduler_health shows every schedule");
    let repaired = db.query("SELECT job_name, action FROM orders_sync.repair_schedules()", &[]).unwrap().len();
    let repaired_health = health(&mut db);
    eprintln!("restore: schedules after pg_restore {health_after:?}; repair_schedules() acted on {repaired}; then {repaired_health:?}");
    assert!(repaired_health.iter().all(|(_, state)| state == "ok"), "{repaired_health:?}");

    // pg_dump leaves out the rows an extension script creates, so the built-in pipelines come
    // back with their defaults; the runbook says to apply their settings again.
    let base_url: String = scalar(&mut db, "SELECT base_url FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'");
    assert_ne!(base_url, sim.base_url, "built-in pipelines are restored with their defaults (README runbook)");
    db.execute("UPDATE orders_sync.pipelines SET base_url = $1, page_size = 20", &[&sim.base_url]).unwrap();

    // And it syncs: the next run on the restored copy plans and completes what is left.
    let next: String = scalar(
        &mut db,
        "SELECT orders_sync.run_profiler('restore', sync_group => 'UC', window_days => 5, as_of => '2026-01-20', wait => true)",
    );
    let status: String = scalar(
        &mut db,
        &format!("SELECT overall_status::text FROM orders_sync.pipeline_run_summaries WHERE run_id = '{next}'"),
    );
    assert_eq!(status, "success");
}
