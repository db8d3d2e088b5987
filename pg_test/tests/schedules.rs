//! Schedules through pg_cron and their health (docs/design.md#schedules: a paused scheduler
//! once went unnoticed for a month). Real pg_cron: jobs are created, paused and removed for real; run
//! history is written into cron.job_run_details by hand to play out failures and silence.
//!
//! Health tests use a yearly schedule so that pg_cron never actually fires a job mid-test.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, ensure_extension, error_of, exclusive, scalar};
use std::time::{Duration, Instant};

const YEARLY: &str = "0 0 1 1 *";

fn setup() -> Client {
    let mut db = connect();
    ensure_extension(&mut db);
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    // pg_cron's scheduler comes up a second or two after the server (it retries until the
    // database exists); until then every job is rightly scheduler_down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar::<Option<String>>(&mut db, "SELECT orders_sync.cron_scheduler_problem()").is_some() {
        assert!(Instant::now() < deadline, "pg_cron's scheduler did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    db
}

fn schedule(db: &mut Client, name: &str, cron: &str) -> i64 {
    db.query_one("SELECT orders_sync.schedule_profiler(schedule => $1, env => 'it', job_name => $2)", &[&cron, &name])
        .unwrap()
        .get(0)
}

/// (state, detail) of one registered job.
fn health(db: &mut Client, name: &str) -> (String, String) {
    let row =
        db.query_one("SELECT state, detail FROM orders_sync.scheduler_health WHERE job_name = $1", &[&name]).unwrap();
    (row.get(0), row.get(1))
}

fn cron_job(db: &mut Client, name: &str) -> Option<(i64, String, String, bool)> {
    db.query_opt("SELECT jobid, schedule, command, active FROM cron.job WHERE jobname = $1", &[&name])
        .unwrap()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
}

fn add_run(db: &mut Client, job_id: i64, status: &str, ago: &str, message: &str) {
    db.execute(
        "INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status, return_message, start_time, end_time)
         VALUES ($1, 0, current_database(), current_user, 'SELECT 1', $2, $3, now() - $4::text::interval, now() - $4::text::interval)",
        &[&job_id, &status, &message, &ago],
    )
    .unwrap();
}

fn repair(db: &mut Client) -> Vec<(String, String)> {
    db.query("SELECT job_name, action FROM orders_sync.repair_schedules()", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn schedule_profiler_creates_a_cron_job_with_a_quoted_command_and_registers_it() {
    let _guard = exclusive();
    let mut db = setup();

    let job_id: i64 = scalar(&mut db, "SELECT orders_sync.schedule_profiler(env => 'staging-2', sync_group => 'TD')");
    let (id, cron, command, active) = cron_job(&mut db, "orders_sync_profiler_staging-2_td").expect("cron job");
    assert_eq!(id, job_id);
    assert_eq!(cron, "*/30 * * * *");
    assert!(active);
    assert_eq!(
        command,
        "SELECT orders_sync.run_profiler(env => 'staging-2', sync_group => 'TD', window_days => '90', overlap_days => '1', max_workers => '3')"
    );
    let (kind, registered): (String, String) = {
        let row = db
            .query_one(
                "SELECT kind, command FROM orders_sync.schedules WHERE job_name = 'orders_sync_profiler_staging-2_td'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((kind.as_str(), registered.as_str()), ("profiler", command.as_str()));

    // Scheduling again under the same name updates the job instead of adding one.
    let again: i64 = scalar(
        &mut db,
        "SELECT orders_sync.schedule_profiler('0 2 * * *', env => 'staging-2', sync_group => 'TD', window_days => 30)",
    );
    assert_eq!(again, job_id);
    let (_, cron, command, _) = cron_job(&mut db, "orders_sync_profiler_staging-2_td").unwrap();
    assert_eq!(cron, "0 2 * * *");
    assert!(command.contains("window_days => '30'"), "{command}");
    let registered: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.schedules");
    assert_eq!(registered, 1);
}

#[test]
fn hostile_or_invalid_arguments_are_refused_by_name_and_schedule_nothing() {
    let _guard = exclusive();
    let mut db = setup();
    let jobs_before: i64 = scalar(&mut db, "SELECT count(*) FROM cron.job");

    let message =
        error_of(&mut db, "SELECT orders_sync.schedule_profiler(env => $$x'); DROP TABLE orders_sync.records; --$$)");
    assert!(message.starts_with("invalid argument env:"), "{message}");
    let message = error_of(&mut db, "SELECT orders_sync.schedule_profiler(job_name => $$a'b$$)");
    assert!(message.starts_with("invalid argument job_name:"), "{message}");
    let message = error_of(&mut db, "SELECT orders_sync.schedule_profiler(sync_group => 'td')");
    assert!(message.starts_with("invalid argument sync_group:"), "{message}");
    let message = error_of(&mut db, "SELECT orders_sync.schedule_profiler(max_workers => 0)");
    assert!(message.starts_with("invalid argument max_workers:"), "{message}");

    match db.batch_execute("SELECT orders_sync.schedule_profiler('*/30 * * *')") {
        Ok(()) => panic!("a four-field schedule must be refused"),
        Err(error) => {
            let db_error = error.as_db_error().expect("a SQL error");
            assert!(db_error.message().starts_with("invalid argument schedule:"), "{}", db_error.message());
            assert!(db_error.message().contains("expected 5 fields"), "{}", db_error.message());
            assert!(db_error.hint().unwrap_or_default().contains("five fields"), "{:?}", db_error.hint());
        }
    }
    let message = error_of(&mut db, "SELECT orders_sync.schedule_profiler('0 0 30 2 *')");
    assert!(message.contains("never fires"), "{message}");

    let jobs_after: i64 = scalar(&mut db, "SELECT count(*) FROM cron.job");
    assert_eq!(jobs_after, jobs_before);
    let records_exist: bool = scalar(&mut db, "SELECT to_regclass('orders_sync.records') IS NOT NULL");
    assert!(records_exist);
    let registered: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.schedules");
    assert_eq!(registered, 0);
}

#[test]
fn cron_interval_is_the_longest_gap_of_the_schedule() {
    let _guard = exclusive();
    let mut db = setup();
    let ok: bool = scalar(
        &mut db,
        "SELECT orders_sync.cron_interval('*/30 * * * *') = interval '30 minutes'
            AND orders_sync.cron_interval('0 2 * * *') = interval '1 day'
            AND orders_sync.cron_interval('0 6 * * 1') = interval '7 days'
            AND orders_sync.cron_interval('0,30 * * * *') = interval '30 minutes'",
    );
    assert!(ok);
    let message = error_of(&mut db, "SELECT orders_sync.cron_interval('every day')");
    assert!(message.starts_with("invalid argument expr:"), "{message}");
}

#[test]
fn schedule_maintenance_registers_reset_and_prune_jobs() {
    let _guard = exclusive();
    let mut db = setup();
    let rows = db.query("SELECT job_name, job_id FROM orders_sync.schedule_maintenance() ORDER BY 1", &[]).unwrap();
    let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(names, ["orders_sync_prune_history", "orders_sync_reset_stuck"]);

    let (_, cron, command, _) = cron_job(&mut db, "orders_sync_reset_stuck").expect("reset job");
    assert_eq!((cron.as_str(), command.as_str()), ("*/10 * * * *", "SELECT orders_sync.reset_stuck_runs()"));
    let (_, cron, command, _) = cron_job(&mut db, "orders_sync_prune_history").expect("prune job");
    let interval: String = scalar(&mut db, &format!("SELECT orders_sync.cron_interval('{cron}')::text"));
    assert_eq!(interval, "1 day");
    assert_eq!(command, "SELECT orders_sync.prune_history()");
    let kinds: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.schedules WHERE kind = 'maintenance'");
    assert_eq!(kinds, 2);

    let removed: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    assert_eq!(removed, 2);
    assert!(cron_job(&mut db, "orders_sync_reset_stuck").is_none());
    assert!(cron_job(&mut db, "orders_sync_prune_history").is_none());
}

#[test]
fn paused_job_is_reported_and_repair_resumes_it() {
    let _guard = exclusive();
    let mut db = setup();
    let job_id = schedule(&mut db, "it_paused", YEARLY);
    assert_eq!(health(&mut db, "it_paused").0, "ok", "a fresh job is healthy");
    assert!(repair(&mut db).is_empty(), "nothing to repair on healthy jobs");

    db.execute("SELECT cron.alter_job($1, active => false)", &[&job_id]).unwrap();
    let (state, detail) = health(&mut db, "it_paused");
    assert_eq!(state, "paused");
    assert!(detail.contains("repair_schedules"), "{detail}");

    assert_eq!(repair(&mut db), [("it_paused".to_string(), "resumed".to_string())]);
    assert_eq!(health(&mut db, "it_paused").0, "ok");
    assert!(cron_job(&mut db, "it_paused").unwrap().3, "active again");
}

#[test]
fn missing_job_is_reported_and_repair_recreates_it() {
    let _guard = exclusive();
    let mut db = setup();
    schedule(&mut db, "it_missing", YEARLY);
    schedule(&mut db, "it_kept", YEARLY);
    let command = cron_job(&mut db, "it_missing").unwrap().2;

    db.execute("SELECT cron.unschedule('it_missing')", &[]).unwrap();
    let (state, detail) = health(&mut db, "it_missing");
    assert_eq!(state, "missing");
    assert!(detail.contains("no pg_cron job named it_missing"), "{detail}");
    assert_eq!(health(&mut db, "it_kept").0, "ok");

    assert_eq!(repair(&mut db), [("it_missing".to_string(), "recreated".to_string())]);
    let (_, cron, recreated, active) = cron_job(&mut db, "it_missing").expect("recreated");
    assert_eq!((cron.as_str(), recreated.as_str(), active), (YEARLY, command.as_str(), true));
    assert_eq!(health(&mut db, "it_missing").0, "ok");
}

#[test]
fn job_without_success_for_two_intervals_is_stale() {
    let _guard = exclusive();
    let mut db = setup();
    let job_id = schedule(&mut db, "it_daily", "7 4 * * *");
    assert_eq!(health(&mut db, "it_daily").0, "ok", "created a moment ago: not stale yet");

    // Scheduled three days ago and never succeeded since.
    db.execute(
        "UPDATE orders_sync.schedules SET created_at = now() - interval '3 days', updated_at = now() - interval '3 days'
         WHERE job_name = 'it_daily'",
        &[],
    )
    .unwrap();
    let (state, detail) = health(&mut db, "it_daily");
    assert_eq!(state, "stale");
    assert!(detail.contains("no successful run"), "{detail}");

    // Its last success was three days ago: still stale.
    add_run(&mut db, job_id, "succeeded", "3 days", "SELECT 1");
    let (state, detail) = health(&mut db, "it_daily");
    assert_eq!(state, "stale");
    assert!(detail.contains("last successful run at"), "{detail}");
    let expected: String =
        scalar(&mut db, "SELECT expected_interval::text FROM orders_sync.scheduler_health WHERE job_name = 'it_daily'");
    assert_eq!(expected, "1 day");

    // A success a day ago is within twice the interval.
    add_run(&mut db, job_id, "succeeded", "1 day", "SELECT 1");
    assert_eq!(health(&mut db, "it_daily").0, "ok");
    db.execute("DELETE FROM cron.job_run_details WHERE jobid = $1", &[&job_id]).unwrap();
}

#[test]
fn job_whose_last_runs_failed_is_failing_until_it_succeeds() {
    let _guard = exclusive();
    let mut db = setup();
    let job_id = schedule(&mut db, "it_failing", YEARLY);
    add_run(&mut db, job_id, "succeeded", "3 hours", "SELECT 1");
    add_run(&mut db, job_id, "failed", "2 hours", "ERROR:  boom one");
    add_run(&mut db, job_id, "failed", "1 hour", "ERROR:  boom two");

    let row = db
        .query_one(
            "SELECT state, detail, last_status, last_run_at > now() - interval '61 minutes'
             FROM orders_sync.scheduler_health WHERE job_name = 'it_failing'",
            &[],
        )
        .unwrap();
    let (state, detail, last_status, recent): (String, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(state, "failing");
    assert_eq!(last_status, "failed");
    assert!(recent);
    assert!(detail.contains("2 failed run(s)") && detail.contains("boom two"), "{detail}");
    assert!(repair(&mut db).is_empty(), "repair does not hide failures");

    add_run(&mut db, job_id, "succeeded", "1 minute", "SELECT 1");
    assert_eq!(health(&mut db, "it_failing").0, "ok");
    db.execute("DELETE FROM cron.job_run_details WHERE jobid = $1", &[&job_id]).unwrap();
}

#[test]
fn unschedule_all_removes_every_registered_job_and_only_those() {
    let _guard = exclusive();
    let mut db = setup();
    schedule(&mut db, "it_one", YEARLY);
    schedule(&mut db, "it_two", YEARLY);
    db.execute("SELECT cron.unschedule('it_two')", &[]).unwrap();
    let foreign: i64 = scalar(&mut db, "SELECT cron.schedule('it_not_ours', '0 0 1 1 *', 'SELECT 1')");

    let removed: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    assert_eq!(removed, 2, "the missing one leaves the registry too");
    assert!(cron_job(&mut db, "it_one").is_none());
    let registered: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.schedules");
    assert_eq!(registered, 0);
    assert!(cron_job(&mut db, "it_not_ours").is_some(), "jobs orders_sync did not register stay");
    db.execute("SELECT cron.unschedule($1::bigint)", &[&foreign]).unwrap();
}

fn monitor_again() -> Client {
    let dsn = format!("{} user=it_sched_dashboard", orders_sync_pg_test::dsn());
    Client::connect(&dsn, orders_sync_pg_test::postgres::NoTls).expect("connect as monitor")
}

#[test]
fn monitor_reads_health_but_cannot_schedule_or_see_other_commands() {
    let _guard = exclusive();
    let mut db = setup();
    let job_id = schedule(&mut db, "it_watched", YEARLY);
    db.execute("SELECT cron.alter_job($1, active => false)", &[&job_id]).unwrap();
    db.batch_execute(
        "DROP ROLE IF EXISTS it_sched_dashboard; CREATE ROLE it_sched_dashboard LOGIN IN ROLE orders_sync_monitor",
    )
    .unwrap();

    let dsn = format!("{} user=it_sched_dashboard", orders_sync_pg_test::dsn());
    let mut monitor = Client::connect(&dsn, orders_sync_pg_test::postgres::NoTls).expect("connect as monitor");
    // pg_cron's own tables are closed to the monitor (no USAGE on schema cron; row-level
    // security besides) ...
    let message = error_of(&mut monitor, "SELECT count(*) FROM cron.job");
    assert_eq!(message, "permission denied for schema cron");
    // ... yet the health view sees the job's state through its definer-rights reader.
    let (state, _) = health(&mut monitor, "it_watched");
    assert_eq!(state, "paused");

    let message = error_of(&mut monitor, "SELECT orders_sync.schedule_profiler()");
    assert_eq!(message, "permission denied for function schedule_profiler");
    let message = error_of(&mut monitor, "SELECT * FROM orders_sync.repair_schedules()");
    assert_eq!(message, "permission denied for function repair_schedules");
    let message = error_of(&mut monitor, "SELECT orders_sync.unschedule_all()");
    assert_eq!(message, "permission denied for function unschedule_all");
    let message = error_of(&mut monitor, "DELETE FROM orders_sync.schedules");
    assert_eq!(message, "permission denied for table schedules");
    drop(monitor);

    let public_can_read: bool =
        scalar(&mut db, "SELECT has_function_privilege('public', 'orders_sync.scheduled_job_runs()', 'EXECUTE')");
    assert!(!public_can_read);
    let definer_pins_path: bool = scalar(
        &mut db,
        "SELECT prosecdef AND proconfig @> ARRAY['search_path=orders_sync, pg_catalog, pg_temp']
         FROM pg_proc WHERE oid = 'orders_sync.scheduled_job_runs()'::regprocedure",
    );
    assert!(definer_pins_path);
    // Every definer-rights function: the same pinned path, and closed to PUBLIC.
    let definers: Vec<(String, bool, bool)> = db
        .query(
            "SELECT p.oid::regprocedure::text,
                    coalesce(p.proconfig @> ARRAY['search_path=orders_sync, pg_catalog, pg_temp'], false),
                    has_function_privilege('public', p.oid, 'EXECUTE')
             FROM pg_proc p WHERE p.pronamespace = 'orders_sync'::regnamespace AND p.prosecdef ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        definers,
        [
            ("orders_sync.cron_scheduler_problem()".to_string(), true, false),
            ("orders_sync.job_worker_gone(integer,timestamp with time zone)".to_string(), true, false),
            ("orders_sync.launcher_health()".to_string(), true, false),
            ("orders_sync.scheduled_job_runs()".to_string(), true, false),
        ]
    );
    // The monitor reads the scheduler check, and learns nothing but its text.
    let problem: Option<String> = scalar(&mut monitor_again(), "SELECT orders_sync.cron_scheduler_problem()");
    assert_eq!(problem, None);
    db.batch_execute("DROP ROLE it_sched_dashboard").unwrap();
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
}

#[test]
fn repair_recreates_a_job_as_the_role_that_registered_it_never_as_the_caller() {
    let _guard = exclusive();
    let mut db = setup();
    db.batch_execute(
        "DO $$ BEGIN
             IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_scheduler') THEN
                 DROP OWNED BY it_scheduler; DROP ROLE it_scheduler;
             END IF;
             IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_other_admin') THEN
                 DROP OWNED BY it_other_admin; DROP ROLE it_other_admin;
             END IF;
         END $$;",
    )
    .unwrap();
    db.batch_execute(
        "CREATE ROLE it_scheduler LOGIN IN ROLE orders_sync_admin;
         CREATE ROLE it_other_admin LOGIN IN ROLE orders_sync_admin;
         GRANT USAGE ON SCHEMA cron TO it_scheduler, it_other_admin;",
    )
    .unwrap();
    let connect_as = |role: &str| {
        let dsn = format!("{} user={role}", orders_sync_pg_test::dsn());
        Client::connect(&dsn, orders_sync_pg_test::postgres::NoTls).expect("connect as an admin role")
    };

    let registrant = |db: &mut Client, job: &str| -> Option<String> {
        db.query_one("SELECT registered_by::text FROM orders_sync.schedules WHERE job_name = $1", &[&job])
            .unwrap()
            .get(0)
    };
    // An admin registers a job, then rewrites the registry by hand, claiming a superuser.
    let mut admin = connect_as("it_scheduler");
    schedule(&mut admin, "it_owned", YEARLY);
    admin
        .execute("UPDATE orders_sync.schedules SET registered_by = 'postgres' WHERE job_name = 'it_owned'", &[])
        .unwrap();
    assert_eq!(
        registrant(&mut db, "it_owned").as_deref(),
        Some("it_scheduler"),
        "only a superuser may name another role"
    );
    admin
        .execute(
            "INSERT INTO orders_sync.schedules (job_name, schedule, command, kind, registered_by)
                  VALUES ('it_forged', '0 0 1 1 *', 'SELECT 1', 'maintenance', 'postgres')",
            &[],
        )
        .unwrap();
    assert_eq!(registrant(&mut db, "it_forged").as_deref(), Some("it_scheduler"));
    admin.execute("UPDATE orders_sync.schedules SET command = 'SELECT 42' WHERE job_name = 'it_owned'", &[]).unwrap();
    // A superuser changing only the schedule does not take over the admin's command; a
    // superuser naming a role (as a restore from pg_dump does) is kept.
    db.execute("UPDATE orders_sync.schedules SET schedule = '0 0 2 1 *' WHERE job_name = 'it_owned'", &[]).unwrap();
    db.execute("UPDATE orders_sync.schedules SET schedule = $1 WHERE job_name = 'it_owned'", &[&YEARLY]).unwrap();
    assert_eq!(registrant(&mut db, "it_owned").as_deref(), Some("it_scheduler"));
    db.execute("DELETE FROM orders_sync.schedules WHERE job_name = 'it_forged'", &[]).unwrap();
    db.execute(
        "INSERT INTO orders_sync.schedules (job_name, schedule, command, kind, registered_by)
         VALUES ('it_restored', '0 0 1 1 *', 'SELECT 1', 'maintenance', 'it_other_admin')",
        &[],
    )
    .unwrap();
    assert_eq!(registrant(&mut db, "it_restored").as_deref(), Some("it_other_admin"));
    db.execute("DELETE FROM orders_sync.schedules WHERE job_name = 'it_restored'", &[]).unwrap();

    // The job disappears; a superuser repairs: it comes back as the admin's job.
    db.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'it_owned'", &[]).unwrap();
    assert_eq!(repair(&mut db), [("it_owned".to_string(), "recreated".to_string())]);
    let owner: String = scalar(&mut db, "SELECT username FROM cron.job WHERE jobname = 'it_owned'");
    assert_eq!(owner, "it_scheduler", "a superuser's repair must not run an admin's command as superuser");
    assert_eq!(health(&mut db, "it_owned").0, "ok");

    // Another admin may not recreate it: the job is reported and skipped, nothing scheduled.
    db.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'it_owned'", &[]).unwrap();
    let mut other = connect_as("it_other_admin");
    assert_eq!(
        repair(&mut other),
        [(
            "it_owned".to_string(),
            "not recreated: it runs as role it_scheduler; only that role or a superuser may recreate it".to_string()
        )]
    );
    assert!(cron_job(&mut db, "it_owned").is_none());
    // The registrant itself may.
    assert_eq!(repair(&mut admin), [("it_owned".to_string(), "recreated".to_string())]);

    drop((admin, other));
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    db.batch_execute(
        "DROP OWNED BY it_scheduler; DROP ROLE it_scheduler; DROP OWNED BY it_other_admin; DROP ROLE it_other_admin;",
    )
    .unwrap();
}

// ---- Jobs are owned by id and owner, never matched by name (issue 14, item 3) ----

fn reset_role(db: &mut Client, role: &str) {
    db.batch_execute(&format!(
        "DO $$ BEGIN
             IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 PERFORM cron.unschedule(jobid) FROM cron.job WHERE username = '{role}';
                 DROP OWNED BY {role}; DROP ROLE {role};
             END IF;
         END $$;"
    ))
    .unwrap();
}

/// (jobid, active) of `role`'s job named `name`.
fn job_of(db: &mut Client, name: &str, role: &str) -> Option<(i64, bool)> {
    db.query_opt("SELECT jobid, active FROM cron.job WHERE jobname = $1 AND username = $2", &[&name, &role])
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

#[test]
fn another_roles_job_of_a_registered_name_is_not_resumed_deleted_or_shown() {
    let _guard = exclusive();
    let mut db = setup();
    reset_role(&mut db, "it_foreign");
    db.batch_execute("CREATE ROLE it_foreign LOGIN").unwrap();
    // Another role's paused job, with a failed run; an admin writes its name into the registry.
    let foreign: i64 = scalar(
        &mut db,
        "SELECT cron.schedule_in_database('it_theirs', '0 0 1 1 *', 'SELECT 1', current_database(), 'it_foreign')",
    );
    db.execute("SELECT cron.alter_job($1, active => false)", &[&foreign]).unwrap();
    add_run(&mut db, foreign, "failed", "1 hour", "ERROR:  their secret failure");
    db.batch_execute(
        "INSERT INTO orders_sync.schedules (job_name, schedule, command, kind)
         VALUES ('it_theirs', '0 0 1 1 *', 'SELECT 1', 'maintenance')",
    )
    .unwrap();

    // Not shown: only that the name is taken, nothing of the job's state.
    let row = db
        .query_one(
            "SELECT state, detail, last_run_at IS NULL AND last_status IS NULL
             FROM orders_sync.scheduler_health WHERE job_name = 'it_theirs'",
            &[],
        )
        .unwrap();
    let (state, detail, nothing_shown): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "name_taken", "{detail}");
    assert!(nothing_shown);
    assert!(!detail.contains("secret") && !detail.contains(&foreign.to_string()), "{detail}");
    assert!(detail.contains("did not create"), "{detail}");

    // Not resumed, not recreated over: reported and skipped.
    let repaired = repair(&mut db);
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert!(repaired[0].1.starts_with("not recreated: the name is taken"), "{repaired:?}");
    assert_eq!(job_of(&mut db, "it_theirs", "it_foreign"), Some((foreign, false)), "still paused");
    assert_eq!(job_of(&mut db, "it_theirs", "postgres"), None, "no second job of that name");

    // Not deleted: the registry row goes, their job stays.
    let removed: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    assert_eq!(removed, 1);
    assert_eq!(job_of(&mut db, "it_theirs", "it_foreign"), Some((foreign, false)));
    db.execute("DELETE FROM cron.job_run_details WHERE jobid = $1", &[&foreign]).unwrap();
    reset_role(&mut db, "it_foreign");
}

#[test]
fn a_same_named_job_created_later_by_another_role_does_not_replace_ours() {
    let _guard = exclusive();
    let mut db = setup();
    reset_role(&mut db, "it_foreign");
    db.batch_execute("CREATE ROLE it_foreign LOGIN").unwrap();
    let ours = schedule(&mut db, "it_shared", YEARLY);
    let recorded: i64 = scalar(&mut db, "SELECT job_id FROM orders_sync.schedules WHERE job_name = 'it_shared'");
    assert_eq!(recorded, ours, "the id of the job orders_sync created is recorded");
    // Their job has a higher id: matching by name took it for ours.
    let theirs: i64 = scalar(
        &mut db,
        "SELECT cron.schedule_in_database('it_shared', '0 0 1 1 *', 'SELECT 1', current_database(), 'it_foreign')",
    );
    assert!(theirs > ours);
    db.execute("SELECT cron.alter_job($1, active => false)", &[&theirs]).unwrap();
    add_run(&mut db, theirs, "failed", "1 hour", "ERROR:  their failure");

    let (state, detail) = health(&mut db, "it_shared");
    assert_eq!(state, "ok", "{detail}");
    assert!(repair(&mut db).is_empty(), "nothing of ours to repair");
    assert_eq!(job_of(&mut db, "it_shared", "it_foreign"), Some((theirs, false)), "theirs stays paused");

    // Ours paused: repair resumes ours, by its id, and only ours.
    db.execute("SELECT cron.alter_job($1, active => false)", &[&ours]).unwrap();
    assert_eq!(health(&mut db, "it_shared").0, "paused");
    assert_eq!(repair(&mut db), [("it_shared".to_string(), "resumed".to_string())]);
    assert_eq!(job_of(&mut db, "it_shared", "postgres"), Some((ours, true)));
    assert_eq!(job_of(&mut db, "it_shared", "it_foreign"), Some((theirs, false)));

    // unschedule_all removes ours and leaves theirs.
    let removed: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    assert_eq!(removed, 1);
    assert_eq!(job_of(&mut db, "it_shared", "postgres"), None);
    assert_eq!(job_of(&mut db, "it_shared", "it_foreign"), Some((theirs, false)));
    db.execute("DELETE FROM cron.job_run_details WHERE jobid = $1", &[&theirs]).unwrap();
    reset_role(&mut db, "it_foreign");
}

#[test]
fn repair_records_the_id_of_the_job_it_recreates() {
    let _guard = exclusive();
    let mut db = setup();
    let first = schedule(&mut db, "it_recorded", YEARLY);
    db.execute("SELECT cron.unschedule($1::bigint)", &[&first]).unwrap();
    assert_eq!(repair(&mut db), [("it_recorded".to_string(), "recreated".to_string())]);
    let (second, _) = job_of(&mut db, "it_recorded", "postgres").expect("recreated");
    let recorded: i64 = scalar(&mut db, "SELECT job_id FROM orders_sync.schedules WHERE job_name = 'it_recorded'");
    assert_eq!(recorded, second);
    assert_ne!(second, first);
    assert_eq!(health(&mut db, "it_recorded").0, "ok");
}

// ---- pg_cron's scheduler itself (issue 19) ----

/// A session that keeps the WARNINGs and NOTICEs it receives.
fn connect_collecting() -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut config: orders_sync_pg_test::postgres::Config = orders_sync_pg_test::dsn().parse().unwrap();
    config.notice_callback(move |notice| {
        sink.lock().unwrap().push(format!("{}: {}", notice.severity(), notice.message()))
    });
    (config.connect(orders_sync_pg_test::postgres::NoTls).expect("connect"), notices)
}

fn cron_launchers(db: &mut Client) -> i64 {
    scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'")
}

fn test_dir() -> String {
    std::env::var("ORDERS_SYNC_TEST_DIR").unwrap_or_else(|_| {
        panic!("ORDERS_SYNC_TEST_DIR is not set: run the integration tests through scripts/test.sh")
    })
}

/// `pg_ctl restart -m fast`, then a new session once the server answers.
fn restart_cluster() -> Client {
    let dir = test_dir();
    let status = std::process::Command::new("sudo")
        .args(["-u", "postgres"])
        .arg(format!("{}/pg_ctl", orders_sync_pg_test::pg_bin()))
        .arg("-D")
        .arg(format!("{dir}/data"))
        .args(["-m", "fast", "-w", "-t", "120", "-l"])
        .arg(format!("{dir}/server.log"))
        .arg("restart")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("pg_ctl");
    assert!(status.success(), "pg_ctl restart failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(&orders_sync_pg_test::dsn(), orders_sync_pg_test::postgres::NoTls) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(error) => panic!("server did not come back: {error}"),
        }
    }
}

fn wait_for(db: &mut Client, query: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if scalar::<bool>(db, query) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts the cluster back as the next test expects it: the cluster-level settings as
/// scripts/pg_cluster.sh wrote them, and pg_cron's scheduler running (a restart if need be).
fn restore_scheduler(settings_changed: bool) -> Result<(), String> {
    let mut db = Client::connect(&orders_sync_pg_test::dsn(), orders_sync_pg_test::postgres::NoTls)
        .map_err(|error| error.to_string())?;
    if settings_changed {
        // One statement per call: ALTER SYSTEM cannot run in a (multi-statement) transaction.
        for statement in ["ALTER SYSTEM RESET cron.database_name", "ALTER SYSTEM RESET shared_preload_libraries"] {
            db.batch_execute(statement).map_err(|error| format!("{statement}: {error}"))?;
        }
        db = restart_cluster();
    }
    let scheduler_runs = "SELECT orders_sync.cron_scheduler_problem() IS NULL";
    if !wait_for(&mut db, scheduler_runs, Duration::from_secs(5)) {
        db = restart_cluster();
        if !wait_for(&mut db, scheduler_runs, Duration::from_secs(30)) {
            return Err("pg_cron's scheduler did not come back after a restart".to_string());
        }
    }
    Ok(())
}

/// Restores the cluster when a test that breaks it fails half-way; a passing test restores
/// it itself and checks that it did.
struct RestoreOnFailure {
    settings_changed: bool,
}

impl Drop for RestoreOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Err(error) = restore_scheduler(self.settings_changed) {
                eprintln!("could not restore the cluster after a failed test: {error}");
            }
        }
    }
}

#[test]
fn terminated_pg_cron_scheduler_is_reported_within_a_second_and_started_again_without_a_restart() {
    let _guard = exclusive();
    let mut db = setup();
    let _restore = RestoreOnFailure { settings_changed: false };
    assert!(
        wait_for(&mut db, "SELECT orders_sync.cron_scheduler_problem() IS NULL", Duration::from_secs(30)),
        "pg_cron's scheduler runs at the start"
    );
    schedule(&mut db, "it_watch_a", YEARLY);
    schedule(&mut db, "it_watch_b", YEARLY);
    assert_eq!(health(&mut db, "it_watch_a").0, "ok");

    // A DBA clears the database's sessions, pg_cron's scheduler among them.
    let terminated: bool = scalar(
        &mut db,
        "SELECT bool_and(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'",
    );
    assert!(terminated);
    let since = Instant::now();
    assert!(
        wait_for(
            &mut db,
            "SELECT count(*) = 2 AND bool_and(state = 'scheduler_down') FROM orders_sync.scheduler_health",
            Duration::from_secs(1)
        ),
        "every job is scheduler_down within a second"
    );
    eprintln!("scheduler_down reported {} ms after pg_terminate_backend", since.elapsed().as_millis());
    let (_, detail) = health(&mut db, "it_watch_a");
    assert!(detail.starts_with("pg_cron's scheduler is not running"), "{detail}");
    assert!(detail.contains("start_cron_scheduler()") && detail.contains("restart the server"), "{detail}");
    assert!(detail.ends_with("(the job itself: ok)"), "{detail}");

    // It does not come back by itself (pg_cron 1.4 exits cleanly on SIGTERM) ...
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cron_launchers(&mut db), 0, "pg_cron 1.4's scheduler stays gone after pg_terminate_backend");

    // ... and whoever schedules or runs the profiler is told.
    let (mut watcher, notices) = connect_collecting();
    schedule(&mut watcher, "it_watch_b", YEARLY);
    let _: String = scalar(
        &mut watcher,
        "SELECT orders_sync.run_profiler('it-sched-down', sync_group => 'TD', as_of => '2001-01-01')",
    );
    let seen = notices.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|n| n
                .starts_with("WARNING: orders_sync: pg_cron job it_watch_b is scheduled, but pg_cron cannot run it")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|n| n.starts_with("WARNING: pg_cron cannot run the 2 scheduled orders_sync job(s)")),
        "{seen:#?}"
    );
    drop(watcher);

    // Only superusers may start it.
    db.batch_execute(
        "DROP ROLE IF EXISTS it_sched_starter; CREATE ROLE it_sched_starter LOGIN IN ROLE orders_sync_admin",
    )
    .unwrap();
    let dsn = format!("{} user=it_sched_starter", orders_sync_pg_test::dsn());
    let mut admin = Client::connect(&dsn, orders_sync_pg_test::postgres::NoTls).expect("connect as admin");
    let message = error_of(&mut admin, "SELECT orders_sync.start_cron_scheduler()");
    assert_eq!(message, "permission denied for function start_cron_scheduler");
    drop(admin);
    db.batch_execute("DROP ROLE it_sched_starter").unwrap();

    // A superuser brings it back without a restart: one scheduler, and it runs jobs.
    let pid: i32 = scalar(&mut db, "SELECT orders_sync.start_cron_scheduler()");
    assert!(pid > 0);
    assert_eq!(cron_launchers(&mut db), 1);
    assert_eq!(health(&mut db, "it_watch_a").0, "ok");
    let again: i32 = scalar(&mut db, "SELECT orders_sync.start_cron_scheduler()");
    assert_eq!(again, pid, "a second call finds the running scheduler and starts none");
    assert_eq!(cron_launchers(&mut db), 1);

    let probe: i64 = scalar(&mut db, "SELECT cron.schedule('it_revived_probe', '* * * * *', 'SELECT 1')");
    let ran = wait_for(
        &mut db,
        &format!("SELECT EXISTS (SELECT FROM cron.job_run_details WHERE jobid = {probe} AND status = 'succeeded')"),
        Duration::from_secs(75),
    );
    std::thread::sleep(Duration::from_secs(2)); // a second scheduler's run would start as well
    db.execute("SELECT cron.unschedule($1::bigint)", &[&probe]).unwrap();
    let runs: i64 = scalar(&mut db, &format!("SELECT count(*) FROM cron.job_run_details WHERE jobid = {probe}"));
    db.execute("DELETE FROM cron.job_run_details WHERE jobid = $1", &[&probe]).unwrap();
    assert!(ran, "the restarted scheduler runs jobs");
    assert_eq!(runs, 1, "one scheduler: the job ran once, not twice");
    assert_eq!(cron_launchers(&mut db), 1);
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    restore_scheduler(false).unwrap();
}

#[test]
fn cron_database_name_elsewhere_or_pg_cron_not_preloaded_is_scheduler_down() {
    let _guard = exclusive();
    let mut db = setup();
    schedule(&mut db, "it_elsewhere", YEARLY);
    let _restore = RestoreOnFailure { settings_changed: true };

    // cron.database_name is read at server start only (postmaster context): restart.
    let context: String = scalar(&mut db, "SELECT context FROM pg_settings WHERE name = 'cron.database_name'");
    assert_eq!(context, "postmaster");
    db.batch_execute("ALTER SYSTEM SET cron.database_name = 'postgres'").unwrap();
    let mut db = restart_cluster();
    let (state, detail) = health(&mut db, "it_elsewhere");
    assert_eq!(state, "scheduler_down", "{detail}");
    assert!(detail.starts_with("cron.database_name is 'postgres', not this database"), "{detail}");
    assert!(detail.contains("restart the server"), "{detail}");
    let message = error_of(&mut db, "SELECT orders_sync.start_cron_scheduler()");
    assert!(message.starts_with("pg_cron's scheduler cannot be started from here: cron.database_name"), "{message}");

    db.batch_execute("ALTER SYSTEM RESET cron.database_name").unwrap();
    db.batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'orders_sync'").unwrap();
    let mut db = restart_cluster();
    let (state, detail) = health(&mut db, "it_elsewhere");
    assert_eq!(state, "scheduler_down", "{detail}");
    assert!(detail.starts_with("pg_cron is not in shared_preload_libraries"), "{detail}");
    drop(db);
    restore_scheduler(true).unwrap();
    let mut db = connect();
    assert_eq!(health(&mut db, "it_elsewhere").0, "ok", "back to normal once the settings are restored");
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
}
