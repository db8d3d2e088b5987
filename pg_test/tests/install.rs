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
    let admin_in_monitor: bool =
        scalar(&mut db, "SELECT pg_has_role('orders_sync_admin', 'orders_sync_monitor', 'MEMBER')");
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
    let mut dashboard =
        orders_sync_pg_test::postgres::Client::connect(&dashboard_dsn, orders_sync_pg_test::postgres::NoTls)
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
    let dumped: i64 =
        scalar(&mut db, "SELECT cardinality(extconfig)::bigint FROM pg_extension WHERE extname = 'orders_sync'");
    // pipelines, its sequence, credentials, stores, runs, log, its sequence, records, kpi facts,
    // jobs, their sequence, window pages, the schedule registry
    assert_eq!(dumped, 13);
}

/// Everything about the extension's objects that an upgrade script must get right, one line
/// per fact, sorted: members, columns, indexes, constraints, triggers, function and view
/// definitions, privileges, comments, pg_dump configuration and the built-in pipelines.
const CATALOG: &str = r#"
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'orders_sync'),
     rels AS (SELECT c.oid, c.relname, c.relkind, c.relacl, c.reloptions, c.relrowsecurity, c.relforcerowsecurity
              FROM pg_class c
              WHERE c.relnamespace = 'orders_sync'::regnamespace),
     procs AS (SELECT p.oid, p.proacl FROM pg_proc p WHERE p.pronamespace = 'orders_sync'::regnamespace)
SELECT line FROM (
    SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid) AS line
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT format('column %s.%s #%s %s not null=%s default=%s collation=%s identity=%s storage=%s',
                  r.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(ad.adbin, ad.adrelid), a.attcollation::regcollation, a.attidentity, a.attstorage)
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
    WHERE r.relkind IN ('r', 'v', 'p')
    UNION ALL
    SELECT format('relation %s kind=%s acl=%s options=%s row security=%s forced=%s',
                  r.relname, r.relkind, r.relacl, r.reloptions, r.relrowsecurity, r.relforcerowsecurity)
    FROM rels r
    UNION ALL
    SELECT format('policy %s on %s: %s %s using %s check %s', pol.polname, pol.polrelid::regclass, pol.polcmd,
                  pol.polroles::regrole[], pg_get_expr(pol.polqual, pol.polrelid), pg_get_expr(pol.polwithcheck, pol.polrelid))
    FROM pg_policy pol JOIN rels r ON r.oid = pol.polrelid
    UNION ALL
    SELECT format('index %s options=%s', pg_get_indexdef(i.indexrelid), c.reloptions)
    FROM pg_index i JOIN rels r ON r.oid = i.indrelid JOIN pg_class c ON c.oid = i.indexrelid
    UNION ALL
    SELECT format('constraint %s on %s: %s', con.conname, con.conrelid::regclass, pg_get_constraintdef(con.oid))
    FROM pg_constraint con WHERE con.connamespace = 'orders_sync'::regnamespace
    UNION ALL
    SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('function %s acl=%s: %s', p.oid::regprocedure, p.proacl, pg_get_functiondef(p.oid))
    FROM procs p
    UNION ALL
    SELECT format('view %s: %s', r.oid::regclass, pg_get_viewdef(r.oid)) FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('comment %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
    FROM pg_description d
    WHERE (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM rels))
       OR (d.classoid = 'pg_proc'::regclass AND d.objoid IN (SELECT oid FROM procs))
    UNION ALL
    SELECT format('dump config %s where %s', ext.extconfig::regclass[], ext.extcondition) FROM ext
    UNION ALL
    SELECT format('schema acl %s', nspacl) FROM pg_namespace WHERE nspname = 'orders_sync'
    UNION ALL
    SELECT format('pipeline %s %s %s %s', code, sync_group, streams, timezone) FROM orders_sync.pipelines
) facts
ORDER BY line
"#;

fn catalog(db: &mut orders_sync_pg_test::postgres::Client) -> Vec<String> {
    db.query(CATALOG, &[]).unwrap().iter().map(|row| row.get(0)).collect()
}

#[test]
fn upgrading_from_0_1_0_matches_a_fresh_install_and_keeps_the_data() {
    let _guard = exclusive();
    let mut db = connect();
    assert_released_script_installed(&mut db, "0.1.0");

    db.batch_execute(
        "DROP EXTENSION IF EXISTS orders_sync CASCADE;
         CREATE EXTENSION orders_sync VERSION '0.1.0' CASCADE;
         INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('UPGRADE', 'TD', '2026-01-01');
         INSERT INTO orders_sync.records (pipeline_id, store_code, stream, record_id, record_date, amount, payload)
         SELECT id, 'UPGRADE', 'orders', 'kept-1', '2026-01-02', 12.5, '{\"id\": \"kept-1\"}'
         FROM orders_sync.pipelines WHERE code = 'td_orders_sync';
         DO $$ BEGIN
             IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_upgrader') THEN
                 DROP OWNED BY it_upgrader; DROP ROLE it_upgrader;
             END IF;
         END $$;
         CREATE ROLE it_upgrader LOGIN IN ROLE orders_sync_admin;
         GRANT USAGE ON SCHEMA cron TO it_upgrader;",
    )
    .unwrap();
    // 0.1.0 registry rows: one scheduled by an admin, one whose pg_cron job is gone, one whose
    // command an admin rewrote in the registry after a superuser scheduled it.
    let admin_dsn = format!("{} user=it_upgrader", orders_sync_pg_test::dsn());
    let mut admin = orders_sync_pg_test::postgres::Client::connect(&admin_dsn, orders_sync_pg_test::postgres::NoTls)
        .expect("connect as it_upgrader");
    admin
        .batch_execute("SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_upgrade_admin')")
        .unwrap();
    db.batch_execute(
        "SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_upgrade_gone');
         SELECT cron.unschedule('it_upgrade_gone');
         SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_upgrade_tampered');",
    )
    .unwrap();
    admin
        .batch_execute("UPDATE orders_sync.schedules SET command = 'SELECT 42' WHERE job_name = 'it_upgrade_tampered'")
        .unwrap();
    drop(admin);
    update_to_this_version(&mut db);
    let kept: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM orders_sync.records r JOIN orders_sync.store_master s USING (store_code)
         WHERE r.record_id = 'kept-1' AND r.amount = 12.5",
    );
    assert_eq!(kept, 1, "an upgrade keeps the data");
    let registrants: Vec<(String, Option<String>)> = db
        .query("SELECT job_name, registered_by::text FROM orders_sync.schedules ORDER BY job_name", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        registrants,
        [
            ("it_upgrade_admin".to_string(), Some("it_upgrader".to_string())),
            ("it_upgrade_gone".to_string(), None),
            ("it_upgrade_tampered".to_string(), None),
        ],
        "the role comes from the pg_cron job running the same command, else it is unknown"
    );
    let admin_job: bool = scalar(
        &mut db,
        "SELECT job_id = (SELECT jobid FROM cron.job WHERE jobname = 'it_upgrade_admin')
         FROM orders_sync.schedules WHERE job_name = 'it_upgrade_admin'",
    );
    assert!(admin_job, "the id of the job is recorded where its name, command and owner match");
    let repaired = text_pairs(&mut db, "SELECT job_name, action FROM orders_sync.repair_schedules()");
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert_eq!(repaired[0].0, "it_upgrade_gone");
    assert!(repaired[0].1.starts_with("not recreated: the role it runs as is unknown"), "{repaired:?}");
    // The superuser's job runs another command than the registry's: not the registry's job.
    assert_eq!(repaired[1].0, "it_upgrade_tampered");
    assert!(repaired[1].1.starts_with("not recreated: the name is taken"), "{repaired:?}");
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    let left: Vec<String> = db
        .query("SELECT jobname FROM cron.job WHERE jobname LIKE 'it_upgrade%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["it_upgrade_tampered"], "unschedule_all removes only the jobs orders_sync created");
    db.batch_execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname LIKE 'it_upgrade%'").unwrap();
    db.batch_execute("DROP OWNED BY it_upgrader; DROP ROLE it_upgrader").unwrap();
    assert_matches_a_fresh_install(&mut db);
}

/// The released install script of `version` is where `CREATE EXTENSION ... VERSION` finds it.
fn assert_released_script_installed(db: &mut orders_sync_pg_test::postgres::Client, version: &str) {
    let shipped: i64 = scalar(
        db,
        &format!(
            "SELECT count(*) FROM pg_available_extension_versions WHERE name = 'orders_sync' AND version = '{version}'"
        ),
    );
    assert_eq!(
        shipped, 1,
        "the {version} install script must be installed: scripts/test.sh copies pg_test/fixtures/orders_sync--{version}.sql"
    );
}

/// `ALTER EXTENSION orders_sync UPDATE` reaches the version under test.
fn update_to_this_version(db: &mut orders_sync_pg_test::postgres::Client) {
    db.batch_execute("ALTER EXTENSION orders_sync UPDATE").unwrap();
    let version: String = scalar(db, "SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

/// The rows of a two-text-column query.
fn text_pairs(db: &mut orders_sync_pg_test::postgres::Client, query: &str) -> Vec<(String, String)> {
    db.query(query, &[]).unwrap().iter().map(|row| (row.get(0), row.get(1))).collect()
}

/// The catalog of the extension as it is now equals that of a fresh install of this version.
fn assert_matches_a_fresh_install(db: &mut orders_sync_pg_test::postgres::Client) {
    let upgraded = catalog(db);
    db.batch_execute("DROP EXTENSION orders_sync CASCADE; CREATE EXTENSION orders_sync CASCADE").unwrap();
    let fresh = catalog(db);
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|line| !fresh.contains(line)).collect();
    let only_fresh: Vec<&String> = fresh.iter().filter(|line| !upgraded.contains(line)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty() && upgraded == fresh,
        "upgrade scripts and the install script disagree\nonly after the upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}"
    );
    assert!(fresh.len() > 100, "the catalog description must cover the schema ({} lines)", fresh.len());
}

#[test]
fn upgrading_from_0_1_1_matches_a_fresh_install_and_owns_only_the_jobs_it_created() {
    let _guard = exclusive();
    let mut db = connect();
    assert_released_script_installed(&mut db, "0.1.1");
    db.batch_execute(
        "DROP EXTENSION IF EXISTS orders_sync CASCADE;
         SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname LIKE 'it_up11%';
         CREATE EXTENSION orders_sync VERSION '0.1.1' CASCADE;
         INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('UPGRD11', 'UC', '2026-01-01');
         DO $$ BEGIN
             IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_upgrader11') THEN
                 DROP OWNED BY it_upgrader11; DROP ROLE it_upgrader11;
             END IF;
             IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_foreign11') THEN
                 DROP OWNED BY it_foreign11; DROP ROLE it_foreign11;
             END IF;
         END $$;
         CREATE ROLE it_upgrader11 LOGIN IN ROLE orders_sync_admin;
         CREATE ROLE it_foreign11 LOGIN;
         GRANT USAGE ON SCHEMA cron TO it_upgrader11;",
    )
    .unwrap();
    let version: String = scalar(&mut db, "SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'");
    assert_eq!(version, "0.1.1");
    // 0.1.1 registry rows: an admin's job; one whose command the admin rewrote in the registry;
    // one whose job now belongs to another role; one whose job now runs in another database.
    let admin_dsn = format!("{} user=it_upgrader11", orders_sync_pg_test::dsn());
    let mut admin = orders_sync_pg_test::postgres::Client::connect(&admin_dsn, orders_sync_pg_test::postgres::NoTls)
        .expect("connect as it_upgrader11");
    admin
        .batch_execute(
            "SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_up11_admin');
             SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_up11_rewritten');
             UPDATE orders_sync.schedules SET command = 'SELECT 42' WHERE job_name = 'it_up11_rewritten';",
        )
        .unwrap();
    drop(admin);
    db.batch_execute(
        "SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_up11_foreign');
         SELECT cron.alter_job(jobid, username => 'it_foreign11') FROM cron.job WHERE jobname = 'it_up11_foreign';
         SELECT orders_sync.schedule_profiler(schedule => '0 0 1 1 *', env => 'upgrade', job_name => 'it_up11_otherdb');
         SELECT cron.alter_job(jobid, database => 'postgres') FROM cron.job WHERE jobname = 'it_up11_otherdb';",
    )
    .unwrap();

    update_to_this_version(&mut db);
    let kept: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.store_master WHERE store_code = 'UPGRD11'");
    assert_eq!(kept, 1, "an upgrade keeps the data");
    let recorded: Vec<(String, bool)> = db
        .query(
            "SELECT s.job_name, s.job_id IS NOT DISTINCT FROM
                    (SELECT j.jobid FROM cron.job j WHERE j.jobname = 'it_up11_admin' AND j.username = 'it_upgrader11')
             FROM orders_sync.schedules s ORDER BY s.job_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let nulls: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.schedules WHERE job_id IS NULL");
    assert_eq!(
        recorded,
        [
            ("it_up11_admin".to_string(), true),
            ("it_up11_foreign".to_string(), false),
            ("it_up11_otherdb".to_string(), false),
            ("it_up11_rewritten".to_string(), false),
        ]
    );
    assert_eq!(nulls, 3, "only a job with the same name, command, owner and database is taken as ours");

    // pg_cron's scheduler comes up a second or two after the server (it retries until the
    // database exists); until then every job is rightly scheduler_down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while scalar::<Option<String>>(&mut db, "SELECT orders_sync.cron_scheduler_problem()").is_some() {
        assert!(std::time::Instant::now() < deadline, "pg_cron's scheduler did not come up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let states = text_pairs(&mut db, "SELECT job_name, state FROM orders_sync.scheduler_health ORDER BY job_name");
    assert_eq!(
        states,
        [
            ("it_up11_admin".to_string(), "ok".to_string()),
            ("it_up11_foreign".to_string(), "name_taken".to_string()),
            ("it_up11_otherdb".to_string(), "name_taken".to_string()),
            ("it_up11_rewritten".to_string(), "name_taken".to_string()),
        ]
    );
    let jobs_before: Vec<(i64, String, String, String, bool)> = cron_jobs(&mut db);
    let repaired = text_pairs(&mut db, "SELECT job_name, action FROM orders_sync.repair_schedules()");
    assert_eq!(repaired.len(), 3, "{repaired:?}");
    assert!(repaired.iter().all(|(_, action)| action.starts_with("not recreated: the name is taken")), "{repaired:?}");
    assert_eq!(cron_jobs(&mut db), jobs_before, "repair touched no job it did not create");
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    let left: Vec<String> = cron_jobs(&mut db).into_iter().map(|job| job.1).collect();
    assert_eq!(left, ["it_up11_foreign", "it_up11_otherdb", "it_up11_rewritten"]);
    db.batch_execute(
        "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname LIKE 'it_up11%';
         DROP OWNED BY it_upgrader11; DROP ROLE it_upgrader11; DROP OWNED BY it_foreign11; DROP ROLE it_foreign11;",
    )
    .unwrap();
    assert_matches_a_fresh_install(&mut db);
}

/// (id, name, owner, database, active) of the test's pg_cron jobs.
fn cron_jobs(db: &mut orders_sync_pg_test::postgres::Client) -> Vec<(i64, String, String, String, bool)> {
    db.query(
        "SELECT jobid, jobname, username, database, active FROM cron.job WHERE jobname LIKE 'it_up11%' ORDER BY jobname",
        &[],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
    .collect()
}
