//! The orchestrator end to end: `run_profiler` plans and enqueues a run through its planner
//! worker, the launcher hands windows to job workers, and the run closes with its summary
//! (docs/design.md#statuses, #store-lock, #caps, #no-pile-up). Real cluster, real workers,
//! the reference simulator over loopback.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{describe, dsn, error_of, exclusive, fresh_estate, scalar, Estate, Simulator};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const AS_OF: &str = "2026-02-04";
/// 400 days up to AS_OF, both ends included.
const START: &str = "2025-01-01";

/// The tests' stores are the only active ones: an 'ALL' run sees nothing else.
const ESTATE: Estate = Estate {
    page_size: 1000,
    max_attempts: 3,
    read_timeout_ms: Some(5000),
    start_date: START,
    only_these_active: true,
    clear_data: false,
};

fn stores(prefix: &str, td: usize, uc: usize) -> Vec<(String, &'static str)> {
    (0..td)
        .map(|i| (format!("{prefix}T{i:02}"), "TD"))
        .chain((0..uc).map(|i| (format!("{prefix}U{i:02}"), "UC")))
        .collect()
}

fn run_profiler(db: &mut Client, env: &str, extra: &str) -> String {
    scalar(db, &format!("SELECT orders_sync.run_profiler('{env}', as_of => '{AS_OF}'{extra})"))
}

/// What concurrency was observed while waiting for the run to end: the most running jobs at
/// once in the run, and whether a store ever had two running jobs.
#[derive(Default, Debug)]
struct Observed {
    max_running: i64,
    store_twice: bool,
    samples: usize,
}

fn wait_for_run(db: &mut Client, run_id: &str, timeout: Duration) -> Observed {
    let deadline = Instant::now() + timeout;
    let mut observed = Observed::default();
    loop {
        let row = db
            .query_one(
                "SELECT (SELECT finished_at IS NOT NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = $1),
                        count(*), count(DISTINCT store_code)
                 FROM orders_sync.sync_jobs WHERE run_id = $1 AND status = 'running'",
                &[&run_id],
            )
            .unwrap();
        let finished: Option<bool> = row.get(0);
        let running: i64 = row.get(1);
        let distinct: i64 = row.get(2);
        observed.max_running = observed.max_running.max(running);
        observed.store_twice |= distinct < running;
        observed.samples += 1;
        if finished == Some(true) {
            return observed;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} did not end within {timeout:?}: {:?}",
            jobs_by_status(db, run_id)
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

fn jobs_by_status(db: &mut Client, run_id: &str) -> Vec<(String, i64)> {
    db.query("SELECT status, count(*) FROM orders_sync.sync_jobs WHERE run_id = $1 GROUP BY 1 ORDER BY 1", &[&run_id])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn run_row(db: &mut Client, run_id: &str) -> (String, String, serde_json::Value) {
    let row = db
        .query_one(
            "SELECT overall_status::text, coalesce(summary_text, ''), counts::text
             FROM orders_sync.pipeline_run_summaries WHERE run_id = $1",
            &[&run_id],
        )
        .unwrap();
    let counts: String = row.get(2);
    (row.get(0), row.get(1), serde_json::from_str(&counts).unwrap())
}

/// Concurrency reconstructed from the jobs' recorded intervals. A job's recorded
/// [started_at, finished_at] lies inside the time it held its slot, so the overlap counted
/// here can only under-count, never invent, concurrency.
fn recorded_max_overlap(db: &mut Client, run_id: &str) -> i64 {
    scalar(
        db,
        &format!(
            "SELECT coalesce(max(n), 0) FROM (
                 SELECT (SELECT count(*) FROM orders_sync.sync_jobs o
                         WHERE o.run_id = j.run_id AND o.started_at <= j.started_at AND o.finished_at > j.started_at) AS n
                 FROM orders_sync.sync_jobs j WHERE j.run_id = '{run_id}' AND j.started_at IS NOT NULL) s"
        ),
    )
}

/// True when every store's windows ran one at a time and in date order.
fn stores_ran_in_order_one_at_a_time(db: &mut Client, run_id: &str) -> bool {
    scalar(
        db,
        &format!(
            "SELECT coalesce(bool_and(prev_finished IS NULL OR started_at >= prev_finished), true)
             FROM (SELECT started_at,
                          lag(finished_at) OVER (PARTITION BY store_code, pipeline_id ORDER BY from_date) AS prev_finished
                   FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' AND started_at IS NOT NULL) s"
        ),
    )
}

/// Whether the store's view rows over the whole span equal the simulator's truth.
fn matches_truth(db: &mut Client, sim: &Simulator, view: &str, store: &str, stream: &str) -> bool {
    let (count, sum) = sim.truth(store, stream, START, AS_OF);
    let row = db
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(amount), 0)::text FROM orders_sync.{view}
                 WHERE store_code = $1 AND record_date BETWEEN '{START}' AND '{AS_OF}'"
            ),
            &[&store],
        )
        .unwrap();
    let (got_count, got_sum): (i64, String) = (row.get(0), row.get(1));
    let equal = got_count == count && got_sum.parse::<f64>().ok() == sum.parse::<f64>().ok();
    if !equal {
        eprintln!("{store} {stream}: db {got_count} / {got_sum}, source {count} / {sum}");
    }
    equal
}

fn windows_of_run(db: &mut Client, run_id: &str) -> BTreeSet<(String, String, String, String, String)> {
    db.query(
        "SELECT p.code, j.store_code::text, j.from_date::text, j.to_date::text, j.reason
         FROM orders_sync.sync_jobs j JOIN orders_sync.pipelines p ON p.id = j.pipeline_id WHERE j.run_id = $1",
        &[&run_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn planned_windows(db: &mut Client, env: &str) -> BTreeSet<(String, String, String, String, String)> {
    db.query(
        &format!(
            "SELECT pipeline_code, store_code, from_date::text, to_date::text, reason
             FROM orders_sync.plan_sync_windows('{env}', as_of => '{AS_OF}') WHERE will_run"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[test]
fn fresh_run_backfills_every_store_within_caps_and_second_run_only_refreshes() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    let all = stores("PA", 10, 10);
    let mut db = fresh_estate(&sim, &ESTATE, &all);

    let plan = planned_windows(&mut db, "itfresh");
    assert_eq!(plan.len(), 20 * 5, "400 days in windows of 90: 5 a store");
    let run_id = run_profiler(&mut db, "itfresh", ", max_workers => 3");
    // The run and its jobs are committed before run_profiler returns.
    let (status, _, _) = run_row(&mut db, &run_id);
    assert!(status == "running" || status == "success", "{status}");
    assert_eq!(
        windows_of_run(&mut db, &run_id),
        plan,
        "run_profiler enqueues exactly plan_sync_windows' will_run rows"
    );
    let parameters: String = scalar(
        &mut db,
        &format!("SELECT parameters->>'max_workers' || '/' || run_env || '/' || pipeline_name FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}'"),
    );
    assert_eq!(parameters, "3/itfresh/orders_sync_run_profiler");

    let observed = wait_for_run(&mut db, &run_id, Duration::from_secs(120));
    eprintln!("observed {observed:?}, recorded overlap {}", recorded_max_overlap(&mut db, &run_id));
    assert!(observed.samples > 5, "the run was observed while it ran");
    assert!(observed.max_running <= 3, "max_workers exceeded: {observed:?}");
    assert!(observed.max_running >= 2, "windows of different stores ran in parallel: {observed:?}");
    assert!(!observed.store_twice, "a store had two running jobs");
    assert!(recorded_max_overlap(&mut db, &run_id) <= 3);
    assert!(stores_ran_in_order_one_at_a_time(&mut db, &run_id));

    let (status, summary, counts) = run_row(&mut db, &run_id);
    assert_eq!(status, "success", "{summary}");
    assert_eq!(
        summary,
        "td_orders_sync: 50 success, 0 partial, 0 failed; uc_orders_sync: 50 success, 0 partial, 0 failed"
    );
    assert_eq!(counts["td_orders_sync"]["success"], 50);
    for (store, group) in &all {
        if *group == "TD" {
            assert!(matches_truth(&mut db, &sim, "td_orders", store, "orders"));
            assert!(matches_truth(&mut db, &sim, "td_sales", store, "sales"));
        } else {
            assert!(matches_truth(&mut db, &sim, "uc_gst", store, "gst"));
        }
    }

    // Second run: only the overlap / today windows, exactly as the dry run says.
    let plan = planned_windows(&mut db, "itfresh");
    assert!(!plan.is_empty() && plan.iter().all(|w| w.4 == "overlap" || w.4 == "today"), "{plan:?}");
    assert_eq!(plan.len(), 20);
    let second = run_profiler(&mut db, "itfresh", ", max_workers => 4, wait => true");
    assert_ne!(second, run_id);
    assert_eq!(windows_of_run(&mut db, &second), plan);
    let (status, summary, _) = run_row(&mut db, &second);
    assert_eq!(status, "success", "{summary}");
}

#[test]
fn failing_store_stops_at_its_first_failed_window_while_others_finish() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    let all = stores("PF", 3, 1);
    let mut db = fresh_estate(&sim, &ESTATE, &all);
    sim.control("/_control/faults", json!({"store": "PFT01", "stream": "orders", "kind": "status", "status": 404}));

    let run_id = run_profiler(&mut db, "itfail", ", max_workers => 2, wait => true");

    let (status, summary, counts) = run_row(&mut db, &run_id);
    assert_eq!(status, "failed");
    assert_eq!(
        summary,
        "td_orders_sync: 10 success, 0 partial, 1 failed, 4 skipped; uc_orders_sync: 5 success, 0 partial, 0 failed"
    );
    assert_eq!(counts["td_orders_sync"]["skipped"], 4);
    let failing: Vec<(String, String, Option<String>)> = db
        .query(
            "SELECT from_date::text, status, error_message FROM orders_sync.sync_jobs
             WHERE run_id = $1 AND store_code = 'PFT01' ORDER BY from_date",
            &[&run_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(failing[0].1, "failed", "{failing:?}");
    assert!(failing[1..].iter().all(|w| w.1 == "skipped"), "{failing:?}");
    let why = failing[1].2.clone().unwrap_or_default();
    assert!(why.contains("2025-01-01..2025-03-31") && why.contains("failed"), "{why}");
    // Skipped windows were never attempted: no log rows for them.
    let attempts: i64 = scalar(
        &mut db,
        &format!("SELECT count(*) FROM orders_sync.orders_sync_log WHERE run_id = '{run_id}' AND store_code = 'PFT01'"),
    );
    assert_eq!(attempts, 1);
    for store in ["PFT00", "PFT02"] {
        assert!(matches_truth(&mut db, &sim, "td_orders", store, "orders"));
    }
}

#[test]
fn partial_windows_make_a_partial_run_with_counts() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    let all = stores("PP", 2, 1);
    let mut db = fresh_estate(&sim, &ESTATE, &all);
    sim.control("/_control/faults", json!({"store": "PPT00", "stream": "sales", "kind": "status", "status": 503}));

    let run_id = run_profiler(&mut db, "itpart", ", max_workers => 3, wait => true");

    let (status, summary, counts) = run_row(&mut db, &run_id);
    assert_eq!(status, "partial", "{summary}");
    assert_eq!(
        summary,
        "td_orders_sync: 5 success, 1 partial, 0 failed, 4 skipped; uc_orders_sync: 5 success, 0 partial, 0 failed"
    );
    assert_eq!(counts["td_orders_sync"]["partial"], 1);
}

#[test]
fn empty_run_finishes_at_once_and_arguments_are_validated() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "0"]);
    let mut db = fresh_estate::<&str>(&sim, &ESTATE, &[]);
    // No active store at all: nothing to do.
    let run_id = run_profiler(&mut db, "itempty", "");
    let (status, summary, _) = run_row(&mut db, &run_id);
    assert_eq!((status.as_str(), summary.as_str()), ("success", "no windows to run"));

    let error = error_of(&mut db, "SELECT orders_sync.run_profiler('x', max_workers => 0)");
    assert!(error.contains("max_workers"), "{error}");
    let error = error_of(&mut db, "SELECT orders_sync.run_profiler('x', sync_group => 'XX')");
    assert!(error.contains("sync_group"), "{error}");
    let error = error_of(&mut db, "SELECT orders_sync.run_profiler('x', window_days => 0)");
    assert!(error.contains("window_days"), "{error}");
    let error = error_of(&mut db, "SELECT orders_sync.run_profiler('x', store_code => 'NOPE')");
    assert!(error.contains("store_code"), "{error}");
    let error = error_of(&mut db, "SELECT orders_sync.run_profiler(NULL)");
    assert!(error.contains("env"), "{error}");
    let granted: bool = scalar(
        &mut db,
        "SELECT has_function_privilege('orders_sync_admin', 'orders_sync.run_profiler(text, text, integer, integer, integer, boolean, text, boolean, date)', 'EXECUTE')
            AND NOT has_function_privilege('orders_sync_monitor', 'orders_sync.run_profiler(text, text, integer, integer, integer, boolean, text, boolean, date)', 'EXECUTE')",
    );
    assert!(granted);
}

#[test]
fn profiler_skips_while_previous_run_active_and_resets_runs_whose_workers_died() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    let all = stores("PD", 4, 0);
    let mut db = fresh_estate(&sim, &ESTATE, &all);
    // Slow source: the first run stays active for a few seconds.
    sim.control("/_control/faults", json!({"kind": "slow", "delay_ms": 150}));

    // Two concurrent calls: one run, both get its id, the loser says so.
    let callers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
                let sink = notices.clone();
                let mut config: orders_sync_pg_test::postgres::Config = dsn().parse().unwrap();
                config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()));
                let mut client = config.connect(orders_sync_pg_test::postgres::NoTls).unwrap();
                let run_id: String = client
                    .query_one(
                        &format!("SELECT orders_sync.run_profiler('itpile', as_of => '{AS_OF}', max_workers => 2)"),
                        &[],
                    )
                    .map_err(|e| describe(&e))
                    .unwrap()
                    .get(0);
                let notices = notices.lock().unwrap().clone();
                (run_id, notices)
            })
        })
        .collect();
    let results: Vec<(String, Vec<String>)> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(results[0].0, results[1].0, "both callers get the same run");
    let noticed = results.iter().filter(|(_, n)| n.iter().any(|m| m.contains("still active"))).count();
    assert_eq!(noticed, 1, "{results:?}");
    let run_id = results[0].0.clone();
    let runs: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.pipeline_run_summaries WHERE run_env = 'itpile'");
    assert_eq!(runs, 1, "the second call created nothing");
    // A later call, still during the run: same answer.
    assert_eq!(run_profiler(&mut db, "itpile", ", max_workers => 2"), run_id);
    // A different selection is not blocked by it.
    let other = run_profiler(&mut db, "itpile", ", store_code => 'PDT03', max_workers => 1");
    assert_ne!(other, run_id);
    // ... but its windows still queued or running in the first run are recorded in it as
    // skipped, naming that run, not queued twice.
    let skipped: Vec<String> = db
        .query("SELECT error_message FROM orders_sync.sync_jobs WHERE run_id = $1 AND status = 'skipped'", &[&other])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!skipped.is_empty(), "the slow first run still holds PDT03's windows");
    let expected = format!("skipped: window already queued or running in run {run_id}");
    assert!(skipped.iter().all(|message| *message == expected), "{skipped:?}");
    clear_faults(&sim);
    wait_for_run(&mut db, &run_id, Duration::from_secs(120));
    wait_for_run(&mut db, &other, Duration::from_secs(120));

    // A run left 'running' by workers that are gone is not active: it is closed as failed
    // and a new run starts.
    db.batch_execute(
        "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, parameters)
         VALUES ('rp-stuck-itpile', 'orders_sync_run_profiler', 'itpile', '{\"sync_group\": \"ALL\", \"store_code\": null, \"max_workers\": 1}');
         INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, status, worker_pid, heartbeat_at, started_at)
         SELECT 'rp-stuck-itpile', id, 'PDT00', '2020-01-01', '2020-01-02', streams, 'running', 2147483600, now(), now()
         FROM orders_sync.pipelines WHERE code = 'td_orders_sync';",
    )
    .unwrap();
    let fresh = run_profiler(&mut db, "itpile", ", max_workers => 2");
    assert_ne!(fresh, "rp-stuck-itpile");
    let (status, _, _) = run_row(&mut db, "rp-stuck-itpile");
    assert_eq!(status, "failed");
    let error: String =
        scalar(&mut db, "SELECT error_message FROM orders_sync.sync_jobs WHERE run_id = 'rp-stuck-itpile'");
    assert_eq!(error, "Auto-reset: stuck in running state");
    wait_for_run(&mut db, &fresh, Duration::from_secs(120));
}

fn clear_faults(sim: &Simulator) {
    let response = reqwest::blocking::Client::new().delete(format!("{}/_control/faults", sim.base_url)).send().unwrap();
    assert!(response.status().is_success());
}

#[test]
fn run_profiler_from_a_pg_cron_job_starts_a_run() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "1"]);
    let all = stores("PC", 1, 1);
    let mut db = fresh_estate(&sim, &ESTATE, &all);
    db.batch_execute(&format!(
        "SELECT cron.schedule('orders_sync_it_profiler', '* * * * *',
                $$SELECT orders_sync.run_profiler('itcron', as_of => '{AS_OF}')$$)"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(75);
    let run_id = loop {
        let found = db
            .query("SELECT run_id::text FROM orders_sync.pipeline_run_summaries WHERE run_env = 'itcron' LIMIT 1", &[])
            .unwrap();
        if let Some(row) = found.first() {
            break row.get::<_, String>(0);
        }
        if Instant::now() > deadline {
            let details: Vec<String> = db
                .query("SELECT status || ': ' || coalesce(return_message, '') FROM cron.job_run_details ORDER BY runid DESC LIMIT 3", &[])
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            let _ = db.batch_execute("SELECT cron.unschedule('orders_sync_it_profiler')");
            panic!("pg_cron did not start a run within 75 s: {details:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    db.batch_execute("SELECT cron.unschedule('orders_sync_it_profiler')").unwrap();
    wait_for_run(&mut db, &run_id, Duration::from_secs(60));
    let (status, summary, _) = run_row(&mut db, &run_id);
    assert_eq!(status, "success", "{summary}");
}

#[test]
fn shell_wrapper_maps_flags_onto_run_profiler_and_tells_partial_from_success_by_exit_code() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "1"]);
    let all = stores("PW", 1, 1);
    let mut db = fresh_estate(&sim, &ESTATE, &all);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/orders_sync_run_profiler.sh");
    let run = |args: &[&str]| {
        let output = std::process::Command::new("bash").arg(script).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };

    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--sync-group") && out.contains("--max-workers"), "{out}");
    assert!(out.contains("2  with --wait: the run ended partial"), "--help documents the exit codes: {out}");
    let (code, _, err) = run(&["--env", "x", "--bogus"]);
    assert_eq!(code, Some(3), "bad command line");
    assert!(err.contains("--bogus"), "{err}");
    let (code, _, err) = run(&["--env"]);
    assert_eq!(code, Some(3), "bad command line");
    assert!(err.contains("--env"), "{err}");
    // Nothing listens on port 1: a connection error, not a failed run.
    let (code, _, err) = run(&["--dsn", "host=127.0.0.1 port=1 connect_timeout=5", "--env", "x", "--wait"]);
    assert_eq!(code, Some(4), "{err}");

    let (code, out, err) = run(&[
        "--dsn",
        &dsn(),
        "--env",
        "itwrap",
        "--sync-group",
        "ALL",
        "--window-days",
        "120",
        "--overlap-days",
        "2",
        "--max-workers",
        "2",
        "--as-of",
        AS_OF,
        "--wait",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let run_id = out.lines().find_map(|l| l.strip_prefix("run_id: ")).unwrap_or_else(|| panic!("{out}")).to_string();
    let (status, _, _) = run_row(&mut db, &run_id);
    assert_eq!(status, "success");
    let parameters: String = scalar(
        &mut db,
        &format!("SELECT parameters->>'window_days' || '/' || (parameters->>'overlap_days') FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}'"),
    );
    assert_eq!(parameters, "120/2");
    // Quotes in a value are data, not SQL.
    let (code, _, err) = run(&["--dsn", &dsn(), "--env", "x'; DROP TABLE orders_sync.records; --"]);
    assert_eq!(code, Some(5), "the database refused the call");
    assert!(err.contains("env"), "{err}");

    // A partial run (TD's sales stream fails after its orders) exits 2, not 0...
    sim.control("/_control/faults", json!({"store": "PWT00", "stream": "sales", "kind": "status", "status": 503}));
    let (code, out, err) = run(&["--dsn", &dsn(), "--env", "itwrap", "--force", "--as-of", AS_OF, "--wait"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("status: partial"), "{out}");
    sim.clear_faults();

    // ...and a failed run exits 1.
    sim.control("/_control/faults", json!({"store": "PWU00", "kind": "status", "status": 404}));
    let (code, out, err) = run(&["--dsn", &dsn(), "--env", "itwrap", "--force", "--as-of", AS_OF, "--wait"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("status: failed"), "{out}");
}

#[test]
fn terminated_job_worker_fails_its_window_within_seconds_and_stops_only_its_store() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--rows-per-day", "2"]);
    let all = stores("PK", 3, 0);
    let mut db = fresh_estate(&sim, &ESTATE, &all);
    sim.control("/_control/faults", json!({"kind": "slow", "delay_ms": 200}));

    let run_id = run_profiler(&mut db, "itkill", ", max_workers => 3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (job_id, pid) = loop {
        let rows = db
            .query(
                "SELECT id, worker_pid FROM orders_sync.sync_jobs
                 WHERE run_id = $1 AND store_code = 'PKT01' AND status = 'running' AND worker_pid IS NOT NULL",
                &[&run_id],
            )
            .unwrap();
        if let Some(row) = rows.first() {
            break (row.get::<_, i64>(0), row.get::<_, i32>(1));
        }
        assert!(Instant::now() < deadline, "PKT01 never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let terminated: bool = scalar(&mut db, &format!("SELECT pg_terminate_backend({pid})"));
    assert!(terminated);
    let stopped_at = Instant::now();
    loop {
        let status: String = scalar(&mut db, &format!("SELECT status FROM orders_sync.sync_jobs WHERE id = {job_id}"));
        if status != "running" {
            assert_eq!(status, "failed");
            break;
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(5), "the worker did not stop within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let error: String =
        scalar(&mut db, &format!("SELECT error_message FROM orders_sync.sync_jobs WHERE id = {job_id}"));
    assert!(error.contains("terminated"), "{error}");
    clear_faults(&sim);
    wait_for_run(&mut db, &run_id, Duration::from_secs(60));
    let (status, summary, _) = run_row(&mut db, &run_id);
    assert_eq!(status, "failed");
    let later: i64 = scalar(
        &mut db,
        &format!("SELECT count(*) FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' AND store_code = 'PKT01' AND status = 'skipped'"),
    );
    let expected: i64 = scalar(
        &mut db,
        &format!("SELECT count(*) FROM orders_sync.sync_jobs WHERE run_id = '{run_id}' AND store_code = 'PKT01' AND from_date > (SELECT from_date FROM orders_sync.sync_jobs WHERE id = {job_id})"),
    );
    assert_eq!(later, expected);
    // Whichever PKT01 window was running when it was terminated, every other window of the
    // run succeeded: the terminated one failed and PKT01's later ones were skipped.
    let total: i64 = scalar(&mut db, &format!("SELECT count(*) FROM orders_sync.sync_jobs WHERE run_id = '{run_id}'"));
    let expected_summary = format!("td_orders_sync: {} success, 0 partial, 1 failed", total - 1 - later);
    assert!(summary.starts_with(&expected_summary), "{summary} (expected {expected_summary})");
}
