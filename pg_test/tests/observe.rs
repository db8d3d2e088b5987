//! The monitoring views and history pruning (docs/design.md#monitoring, #healing).

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, ensure_extension, error_of, fresh_estate, scalar, Estate, Simulator};

const ESTATE: Estate = Estate {
    page_size: 50,
    max_attempts: 2,
    read_timeout_ms: None,
    start_date: "2026-01-01",
    only_these_active: false,
    clear_data: false,
};

#[test]
fn freshness_progress_and_history_follow_a_synced_window() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("OBSV1", "UC")]);
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
    let status: String =
        scalar(&mut db, "SELECT orders_sync.sync_window('uc_orders_sync', 'OBSV1', '2026-01-01', '2026-01-02')");
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
    let held: bool =
        scalar(&mut db, "SELECT store_lock_held FROM orders_sync.stuck_candidates WHERE run_id = 'obsv-stuck'");
    assert!(!held, "nobody holds the lock: the row's worker is gone");

    // Another session takes the store's lock the way a worker does.
    let mut worker = connect();
    let locked: bool =
        scalar(&mut worker, "SELECT pg_try_advisory_lock(hashtext('orders_sync.store'), hashtext('OBSV2'))");
    assert!(locked);
    let held: bool =
        scalar(&mut db, "SELECT store_lock_held FROM orders_sync.stuck_candidates WHERE run_id = 'obsv-stuck'");
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

/// (state, last_run_at, last_status) of every registered schedule, as scheduler_health says.
fn schedule_health(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT job_name || ' ' || state || ' ' || coalesce(last_run_at::text, '-') || ' ' || coalesce(last_status, '-')
         FROM orders_sync.scheduler_health ORDER BY job_name",
        &[],
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[test]
fn prune_history_prunes_its_own_cron_run_details_keeping_what_scheduler_health_reads() {
    let mut db = connect();
    ensure_extension(&mut db);
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    let yearly = "0 0 1 1 *";
    let mut job = |name: &str| -> i64 {
        db.query_one(
            "SELECT orders_sync.schedule_profiler(schedule => $1, env => 'it', job_name => $2)",
            &[&yearly, &name],
        )
        .unwrap()
        .get(0)
    };
    let (ok_job, failing_job) = (job("orders_sync_prune_ok"), job("orders_sync_prune_failing"));
    let other_job: i64 = scalar(&mut db, "SELECT cron.schedule('not_orders_sync_prune', '0 0 1 1 *', 'SELECT 1')");
    // pg_cron keeps one row per run forever: a year-old history for each job.
    let runs = [
        (ok_job, "succeeded", 200),
        (ok_job, "failed", 180),
        (ok_job, "succeeded", 150),
        (ok_job, "succeeded", 100),
        (failing_job, "succeeded", 200),
        (failing_job, "succeeded", 150),
        (failing_job, "failed", 140),
        (failing_job, "failed", 120),
        (other_job, "succeeded", 200),
    ];
    for (job_id, status, days_ago) in runs {
        db.execute(
            "INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status, return_message, start_time, end_time)
             VALUES ($1, 0, current_database(), current_user, 'SELECT 1', $2, $2, now() - $3::int * interval '1 day',
                     now() - $3::int * interval '1 day')",
            &[&job_id, &status, &days_ago],
        )
        .unwrap();
    }
    let health_before = schedule_health(&mut db);
    assert!(health_before.iter().any(|h| h.starts_with("orders_sync_prune_failing failing")), "{health_before:?}");
    let failures = |db: &mut Client| -> Vec<i32> {
        db.query("SELECT failures_in_a_row FROM orders_sync.scheduled_job_runs() ORDER BY job_name", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let failures_before = failures(&mut db);

    let cron_runs: i64 = scalar(&mut db, "SELECT cron_runs FROM orders_sync.prune_history('90 days')");
    let left = |db: &mut Client, job_id: i64| -> Vec<String> {
        db.query(
            "SELECT status || ' ' || round(extract(epoch FROM now() - start_time) / 86400)
             FROM cron.job_run_details WHERE jobid = $1 ORDER BY start_time",
            &[&job_id],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
    };
    assert_eq!(left(&mut db, ok_job), ["succeeded 100"], "only the latest run, which is the latest success");
    assert_eq!(
        left(&mut db, failing_job),
        ["succeeded 150", "failed 140", "failed 120"],
        "the latest success and every failure since"
    );
    assert_eq!(left(&mut db, other_job), ["succeeded 200"], "another tool's job is not orders_sync's to prune");
    assert_eq!(cron_runs, 4);
    assert_eq!(schedule_health(&mut db), health_before, "scheduler_health reads the same after pruning");
    assert_eq!(failures(&mut db), failures_before);

    db.execute("SELECT cron.unschedule($1::bigint)", &[&other_job]).unwrap();
    db.execute("DELETE FROM cron.job_run_details WHERE jobid = $1", &[&other_job]).unwrap();
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
}

#[test]
fn prune_history_drops_pages_of_windows_that_will_never_be_retried() {
    let mut db = connect();
    ensure_extension(&mut db);
    // PRUNEP started two days ago and never synced: today's plan runs its one window.
    db.batch_execute(
        "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date, is_active)
         VALUES ('PRUNEP', 'TD', current_date - 2, true)
         ON CONFLICT (store_code) DO UPDATE SET start_date = current_date - 2, is_active = true;
         DELETE FROM orders_sync.orders_sync_log WHERE store_code = 'PRUNEP';
         DELETE FROM orders_sync.window_pages WHERE store_code = 'PRUNEP';
         DELETE FROM orders_sync.sync_jobs WHERE store_code = 'PRUNEP'",
    )
    .unwrap();
    let planned: (String, String) = {
        let row = db
            .query_one(
                "SELECT from_date::text, to_date::text FROM orders_sync.plan_sync_windows('it', store_code => 'PRUNEP')
                 WHERE pipeline_code = 'td_orders_sync' AND will_run",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    // Pages two days old of: the planned window (kept), a window a running job is fetching
    // (this session plays its live worker; kept), a window of an older plan nothing will retry (dropped); and a page written just
    // now of another abandoned window (kept for a day).
    let windows = [
        (planned.0.as_str(), planned.1.as_str(), "2 days", true),
        ("2025-02-01", "2025-02-10", "2 days", true),
        ("2025-01-01", "2025-01-10", "2 days", false),
        ("2025-03-01", "2025-03-10", "0 days", true),
    ];
    db.batch_execute(
        "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env) VALUES ('prune-pages', 'x', 'test')
         ON CONFLICT DO NOTHING;
         INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, status,
                                            worker_pid, heartbeat_at)
         SELECT 'prune-pages', id, 'PRUNEP', '2025-02-01', '2025-02-10', streams, 'running', pg_backend_pid(), now()
         FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
    )
    .unwrap();
    for (from, to, age, _) in windows {
        db.execute(
            "INSERT INTO orders_sync.window_pages (pipeline_id, store_code, from_date, to_date, stream, page_no,
                                                   next_page_token, row_count, record_ids, written_at)
             SELECT p.id, 'PRUNEP', $1::text::date, $2::text::date, s, n, 'cursor', 1, ARRAY['r' || n],
                    now() - $3::text::interval
             FROM orders_sync.pipelines p, unnest(ARRAY['orders', 'sales']) s, generate_series(1, 2) n
             WHERE p.code = 'td_orders_sync'",
            &[&from, &to, &age],
        )
        .unwrap();
    }

    let dropped: i64 = scalar(&mut db, "SELECT window_pages FROM orders_sync.prune_history('90 days')");
    assert_eq!(dropped, 4, "the abandoned window's 2 streams x 2 pages");
    for (from, to, _, kept) in windows {
        let pages: i64 = db
            .query_one(
                "SELECT count(*) FROM orders_sync.window_pages
                 WHERE store_code = 'PRUNEP' AND from_date = $1::text::date AND to_date = $2::text::date",
                &[&from, &to],
            )
            .unwrap()
            .get(0);
        assert_eq!(pages, if kept { 4 } else { 0 }, "{from}..{to}");
    }
    db.batch_execute(
        "DELETE FROM orders_sync.sync_jobs WHERE run_id = 'prune-pages';
         DELETE FROM orders_sync.window_pages WHERE store_code = 'PRUNEP';
         UPDATE orders_sync.store_master SET is_active = false WHERE store_code = 'PRUNEP'",
    )
    .unwrap();
}

/// A run, a job and its `running` log row for `store`, as a worker with process id
/// `worker_pid` would leave them after two hours without a heartbeat. (The launcher also
/// fails jobs whose worker process is gone, so tests assert end states, not who reset them.)
fn dead_worker_window(db: &mut Client, run_id: &str, store: &str, worker_pid: i32) {
    db.execute(
        "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ($1, 'TD', '2026-01-01')
         ON CONFLICT DO NOTHING",
        &[&store],
    )
    .unwrap();
    db.execute(
        "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, started_at)
         VALUES ($1, 'reset_test', 'test', now() - interval '2 hours')",
        &[&run_id],
    )
    .unwrap();
    db.execute(
        "WITH logged AS (
             INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
             SELECT id, $1, 'test', $2, '2026-01-01', '2026-01-05', 'running'
             FROM orders_sync.pipelines WHERE code = 'td_orders_sync'
             RETURNING id, pipeline_id)
         INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, status,
                                            log_id, worker_pid, heartbeat_at, started_at)
         SELECT $1, pipeline_id, $2, '2026-01-01', '2026-01-05', '{orders,sales}', 'running',
                id, $3, now() - interval '2 hours', now() - interval '2 hours'
         FROM logged",
        &[&run_id, &store, &worker_pid],
    )
    .unwrap();
}

fn window_state(db: &mut Client, run_id: &str) -> (String, Option<String>, String, String, bool) {
    let row = db
        .query_one(
            "SELECT l.status::text, l.error_message, j.status, r.overall_status::text, r.finished_at IS NOT NULL
             FROM orders_sync.orders_sync_log l
             JOIN orders_sync.sync_jobs j ON j.log_id = l.id
             JOIN orders_sync.pipeline_run_summaries r ON r.run_id = l.run_id
             WHERE l.run_id = $1",
            &[&run_id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

#[test]
fn reset_frees_runs_whose_worker_died() {
    let mut db = connect();
    ensure_extension(&mut db);
    // A process id that is certainly not alive.
    dead_worker_window(&mut db, "reset-dead", "RSTDEAD", 2_147_483_000);

    let kinds: Vec<String> = db
        .query("SELECT kind FROM orders_sync.reset_stuck_runs() WHERE run_id = 'reset-dead' ORDER BY kind", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(kinds.contains(&"run".to_string()), "{kinds:?}");

    let stuck = Some("Auto-reset: stuck in running state".to_string());
    assert_eq!(window_state(&mut db, "reset-dead"), ("failed".into(), stuck, "failed".into(), "failed".into(), true));
    let again: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.reset_stuck_runs() WHERE run_id = 'reset-dead'");
    assert_eq!(again, 0, "a second reset finds nothing left");
}

#[test]
fn reset_leaves_a_window_alone_while_its_worker_lives() {
    let mut db = connect();
    ensure_extension(&mut db);
    // A session that holds the store lock the way a worker does, and is the job's worker.
    let mut worker = connect();
    let worker_pid: i32 = scalar(&mut worker, "SELECT pg_backend_pid()");
    let locked: bool =
        scalar(&mut worker, "SELECT pg_try_advisory_lock(hashtext('orders_sync.store'), hashtext('RSTLIVE'))");
    assert!(locked);
    dead_worker_window(&mut db, "reset-live", "RSTLIVE", worker_pid);

    let touched: i64 =
        scalar(&mut db, "SELECT count(*) FROM orders_sync.reset_stuck_runs('0') WHERE run_id = 'reset-live'");
    assert_eq!(touched, 0, "a live worker is never reset, however old its heartbeat");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (status, _, job_status, run_status, _) = window_state(&mut db, "reset-live");
    assert_eq!((status.as_str(), job_status.as_str(), run_status.as_str()), ("running", "running", "running"));

    drop(worker);
    std::thread::sleep(std::time::Duration::from_millis(300));
    db.batch_execute("SELECT * FROM orders_sync.reset_stuck_runs('0')").unwrap();
    let stuck = Some("Auto-reset: stuck in running state".to_string());
    assert_eq!(
        window_state(&mut db, "reset-live"),
        ("failed".into(), stuck, "failed".into(), "failed".into(), true),
        "once the worker is gone the window and its run are reset"
    );
    assert_eq!(
        error_of(&mut db, "SELECT * FROM orders_sync.reset_stuck_runs('-1 hour')"),
        "invalid argument older_than: must not be negative"
    );
}

#[test]
fn a_terminated_worker_resumes_from_its_cursor_without_loss_or_duplicates() {
    let sim = Simulator::start(&["--rows-per-day", "50"]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("RESUME", "UC")]);
    // 10 days x 50 rows = 500 rows = 10 pages of 50; each page takes 300 ms to arrive.
    sim.control("/_control/faults", serde_json::json!({"store": "RESUME", "kind": "slow", "delay_ms": 300}));
    let dsn = orders_sync_pg_test::dsn();
    let caller = std::thread::spawn(move || {
        let mut client =
            orders_sync_pg_test::postgres::Client::connect(&dsn, orders_sync_pg_test::postgres::NoTls).unwrap();
        client
            .query_one("SELECT orders_sync.sync_window('uc_orders_sync', 'RESUME', '2026-01-01', '2026-01-10')", &[])
            .map(|row| row.get::<_, String>(0))
    });
    // Wait until a few pages are committed, then terminate the worker.
    let mut pages = 0;
    for _ in 0..100 {
        pages = scalar::<i64>(&mut db, "SELECT count(*) FROM orders_sync.window_pages WHERE store_code = 'RESUME'");
        if pages >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(pages >= 3, "the worker should have committed pages by now");
    let terminated: bool = scalar(
        &mut db,
        "SELECT pg_terminate_backend(worker_pid) FROM orders_sync.sync_jobs WHERE store_code = 'RESUME' AND status = 'running'",
    );
    assert!(terminated);
    let first = caller.join().unwrap().expect("sync_window returns once its worker is gone");
    assert_eq!(first, "failed");
    let message: String = scalar(
        &mut db,
        "SELECT error_message FROM orders_sync.orders_sync_log WHERE store_code = 'RESUME' ORDER BY id DESC LIMIT 1",
    );
    assert!(message.contains("terminated") && message.contains("resumes from the saved cursor"), "{message}");
    let kept: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.window_pages WHERE store_code = 'RESUME'");
    assert!(kept >= 3, "committed pages are kept for the next attempt");

    // The next attempt asks the source only for the pages not yet committed.
    sim.clear_faults();
    let before = sim.get("/_control/requests")["total"].as_i64().unwrap();
    let second: String =
        scalar(&mut db, "SELECT orders_sync.sync_window('uc_orders_sync', 'RESUME', '2026-01-01', '2026-01-10')");
    assert_eq!(second, "success");
    let requested = sim.get("/_control/requests")["total"].as_i64().unwrap() - before;
    assert_eq!(requested, 10 - kept, "resumed after page {kept}");

    let (count, sum) = sim.truth("RESUME", "gst", "2026-01-01", "2026-01-10");
    let matches: bool = db
        .query_one(
            "SELECT count(*) = $1 AND count(DISTINCT record_id) = $1 AND sum(amount) = $2::text::numeric
             FROM orders_sync.uc_gst WHERE store_code = 'RESUME'",
            &[&count, &sum],
        )
        .unwrap()
        .get(0);
    assert!(matches, "final data equals the source, no duplicates");
    let attempt: i32 = scalar(
        &mut db,
        "SELECT attempt_no FROM orders_sync.orders_sync_log WHERE store_code = 'RESUME' ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(attempt, 2);
}

/// store_freshness reads store_sync_state, which the log's triggers keep: whatever a statement
/// does to the log (a new attempt, a status change, rows deleted by hand or by pruning), the
/// state equals what the log says.
#[test]
fn store_freshness_follows_every_change_to_the_log() {
    let mut db = connect();
    ensure_extension(&mut db);
    db.batch_execute(
        "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date)
         VALUES ('FRESH1', 'CC01', 'UC', '2026-01-01') ON CONFLICT (store_code) DO NOTHING;
         INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env)
         VALUES ('fresh-a', 'it', 'it'), ('fresh-b', 'it', 'it');
         INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status, created_at)
         SELECT id, 'fresh-a', 'it', 'FRESH1', '2026-01-01', '2026-01-05', 'success', now() - interval '1 hour'
         FROM orders_sync.pipelines WHERE code = 'uc_orders_sync';",
    )
    .unwrap();
    let freshness = |db: &mut Client| -> (String, Option<String>, Option<String>) {
        let row = db
            .query_one(
                "SELECT state, last_success_day::text, last_status::text FROM orders_sync.store_freshness
                 WHERE store_code = 'FRESH1' AND pipeline = 'uc_orders_sync'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let day = |d: &str| Some(d.to_string());
    assert_eq!(freshness(&mut db), ("lagging".into(), day("2026-01-05"), day("success")));
    // A newer attempt starts, then fails: the store is failing, its last success unchanged.
    db.batch_execute(
        "INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
         SELECT id, 'fresh-b', 'it', 'FRESH1', '2026-01-06', '2026-01-08', 'running'
         FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'",
    )
    .unwrap();
    assert_eq!(freshness(&mut db), ("lagging".into(), day("2026-01-05"), day("running")));
    db.batch_execute("UPDATE orders_sync.orders_sync_log SET status = 'failed' WHERE run_id = 'fresh-b'").unwrap();
    assert_eq!(freshness(&mut db), ("failing".into(), day("2026-01-05"), day("failed")));
    // ... then succeeds on a second look: a later last day.
    db.batch_execute("UPDATE orders_sync.orders_sync_log SET status = 'success' WHERE run_id = 'fresh-b'").unwrap();
    assert_eq!(freshness(&mut db), ("lagging".into(), day("2026-01-08"), day("success")));
    // Rows deleted by hand: the state follows what is left, down to nothing.
    db.batch_execute("DELETE FROM orders_sync.orders_sync_log WHERE run_id = 'fresh-b'").unwrap();
    assert_eq!(freshness(&mut db), ("lagging".into(), day("2026-01-05"), day("success")));
    db.batch_execute("DELETE FROM orders_sync.orders_sync_log WHERE run_id = 'fresh-a'").unwrap();
    assert_eq!(freshness(&mut db), ("never_synced".into(), None, None));
    db.batch_execute("DELETE FROM orders_sync.pipeline_run_summaries WHERE run_id IN ('fresh-a', 'fresh-b')").unwrap();
}

/// A statement over more (pipeline, store) pairs than the shared lock table holds (an estate's
/// history inserted at once, a purge): the state still follows it, where a lock per pair ran
/// out of shared memory and refused the statement.
#[test]
fn store_freshness_follows_statements_over_a_whole_estate() {
    let mut db = connect();
    ensure_extension(&mut db);
    let lock_slots: i64 = scalar(
        &mut db,
        "SELECT current_setting('max_locks_per_transaction')::bigint
                * (current_setting('max_connections')::bigint + current_setting('max_worker_processes')::bigint)",
    );
    // Stores of two pipelines, well over what the lock table could hold as one lock each.
    let stores = lock_slots * 3;
    db.batch_execute(&format!(
        "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env) VALUES ('estate-wide', 'it', 'it');
         INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
         SELECT p.id, 'estate-wide', 'it', format('W%s', lpad(i::text, 6, '0')), '2026-02-01', '2026-02-03', 'success'
         FROM generate_series(1, {stores}) i
         CROSS JOIN (SELECT id FROM orders_sync.pipelines WHERE code IN ('td_orders_sync', 'uc_orders_sync')) p"
    ))
    .unwrap();
    let state = |db: &mut Client| -> (i64, i64) {
        let row = db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.last_status = l.status AND s.last_success_day
                                                           IS NOT DISTINCT FROM CASE WHEN l.status = 'success' THEN l.to_date END)
                 FROM orders_sync.store_sync_state s
                 JOIN orders_sync.orders_sync_log l ON l.pipeline_id = s.pipeline_id AND l.store_code = s.store_code
                 WHERE l.run_id = 'estate-wide'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(state(&mut db), (2 * stores, 2 * stores), "every pair's state after the insert");
    db.batch_execute("UPDATE orders_sync.orders_sync_log SET status = 'failed' WHERE run_id = 'estate-wide'").unwrap();
    assert_eq!(state(&mut db), (2 * stores, 2 * stores), "every pair's state after the update");
    db.batch_execute(
        "DELETE FROM orders_sync.orders_sync_log WHERE run_id = 'estate-wide';
         DELETE FROM orders_sync.pipeline_run_summaries WHERE run_id = 'estate-wide'",
    )
    .unwrap();
    let left: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.store_sync_state WHERE store_code LIKE 'W%'");
    assert_eq!(left, 0, "the state of deleted pairs is gone");
}
