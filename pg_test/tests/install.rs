//! The extension's life cycle in a real cluster with pg_cron and orders_sync preloaded.

use orders_sync_pg_test::{connect, ensure_extension, error_of, exclusive, scalar};

#[test]
fn create_extension_cascade_installs_schema_and_pg_cron() {
    let _guard = exclusive();
    let mut db = connect();
    db.batch_execute("DROP EXTENSION IF EXISTS orders_sync CASCADE").unwrap();
    db.batch_execute("CREATE EXTENSION orders_sync CASCADE").unwrap();

    let preload: String = scalar(&mut db, "SHOW shared_preload_libraries");
    assert!(preload.contains("orders_sync") && preload.contains("pg_cron"), "{preload}");
    let cron: i64 = scalar(&mut db, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'");
    assert_eq!(cron, 1, "CASCADE must bring pg_cron along");
    let tables: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'orders_sync' AND tablename IN
         ('pipelines', 'pipeline_credentials', 'store_master', 'pipeline_run_summaries',
          'orders_sync_log', 'records', 'kpi_facts_daily')",
    );
    assert_eq!(tables, 7);
    let views: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM pg_views WHERE schemaname = 'orders_sync' AND viewname IN ('td_orders', 'td_sales', 'uc_gst')",
    );
    assert_eq!(views, 3);
    let version: String = scalar(&mut db, "SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn drop_and_recreate_restores_builtin_pipelines_and_keeps_roles_usable() {
    let _guard = exclusive();
    let mut db = connect();
    ensure_extension(&mut db);
    db.batch_execute(
        "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('DROPME', 'TD', '2026-01-01')",
    )
    .unwrap();

    db.batch_execute("DROP EXTENSION orders_sync").unwrap();
    // The schema named by the control file is not a member of the extension, so PostgreSQL
    // leaves it behind, empty; everything the extension created must be gone.
    let left: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'orders_sync'",
    );
    assert_eq!(left, 0, "DROP EXTENSION must remove every relation of orders_sync");

    // Roles are cluster-wide and survive; a second CREATE must reuse them, not fail.
    db.batch_execute("CREATE EXTENSION orders_sync").unwrap();
    let pipelines: Vec<String> = db
        .query("SELECT code FROM orders_sync.pipelines ORDER BY code", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(pipelines, ["td_orders_sync", "uc_orders_sync"]);
    let stores: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.store_master");
    assert_eq!(stores, 0, "a recreated extension starts empty");
    let admin_in_monitor: bool = scalar(&mut db, "SELECT pg_has_role('orders_sync_admin', 'orders_sync_monitor', 'MEMBER')");
    assert!(admin_in_monitor);
}

#[test]
fn a_login_role_with_monitor_rights_reads_views_but_not_credentials() {
    let _guard = exclusive();
    let mut db = connect();
    ensure_extension(&mut db);
    db.batch_execute(
        "DROP ROLE IF EXISTS it_dashboard;
         CREATE ROLE it_dashboard LOGIN IN ROLE orders_sync_monitor;
         INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
         SELECT id, 'tok-abc' FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'
         ON CONFLICT (pipeline_id) DO UPDATE SET api_token = EXCLUDED.api_token",
    )
    .unwrap();

    let dashboard_dsn = format!("{} user=it_dashboard", orders_sync_pg_test::dsn());
    let mut dashboard = orders_sync_pg_test::postgres::Client::connect(&dashboard_dsn, orders_sync_pg_test::postgres::NoTls)
        .expect("connect as it_dashboard");
    let rows: i64 = scalar(&mut dashboard, "SELECT count(*) FROM orders_sync.uc_gst");
    assert!(rows >= 0);
    let message = error_of(&mut dashboard, "SELECT api_token FROM orders_sync.pipeline_credentials");
    assert_eq!(message, "permission denied for table pipeline_credentials");
    let message = error_of(&mut dashboard, "UPDATE orders_sync.store_master SET is_active = false");
    assert_eq!(message, "permission denied for table store_master");
    // The planner's dry run is a read; running a sync is not the monitor's business.
    let planned: i64 = scalar(&mut dashboard, "SELECT count(*) FROM orders_sync.plan_sync_windows('dashboard')");
    assert!(planned >= 0);
    let message = error_of(&mut dashboard, "SELECT orders_sync.sync_window('uc_orders_sync', 'S1')");
    assert_eq!(message, "permission denied for function sync_window");
    drop(dashboard);
    db.batch_execute("DELETE FROM orders_sync.pipeline_credentials; DROP ROLE it_dashboard").unwrap();
}

#[test]
fn pg_dump_keeps_user_rows_of_extension_tables() {
    let _guard = exclusive();
    let mut db = connect();
    ensure_extension(&mut db);
    let dumped: i64 = scalar(
        &mut db,
        "SELECT cardinality(extconfig)::bigint FROM pg_extension WHERE extname = 'orders_sync'",
    );
    // pipelines, its sequence, credentials, stores, runs, log, its sequence, records, kpi facts,
    // jobs, their sequence, window pages, the schedule registry
    assert_eq!(dumped, 13);
}
