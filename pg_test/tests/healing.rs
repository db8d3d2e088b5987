//! A window the launcher handed out but whose worker never started (docs/design.md#healing):
//! while the launcher that claimed it lives, a slow worker start gets a minute; once the
//! server has crash-restarted, or that launcher is gone, the claim is dead at once and the
//! next launcher's first tick fails it.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, ensure_extension, scalar};
use std::time::{Duration, Instant};

/// A running profiler run with one window claimed by the launcher (no `worker_pid` yet).
fn claimed_but_unstarted(db: &mut Client, run_id: &str) {
    ensure_extension(db);
    db.batch_execute(&format!(
        "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, parameters)
         VALUES ('{run_id}', 'orders_sync_run_profiler', 'itheal', '{{\"sync_group\": \"UC\", \"store_code\": null, \"max_workers\": 1}}');
         INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, status, worker_pid, heartbeat_at, started_at)
         SELECT '{run_id}', id, 'HEAL1', '2020-01-01', '2020-01-02', streams, 'running', NULL, now(), now()
         FROM orders_sync.pipelines WHERE code = 'uc_orders_sync';"
    ))
    .unwrap();
}

fn job_status(db: &mut Client, run_id: &str) -> String {
    scalar(db, &format!("SELECT status FROM orders_sync.sync_jobs WHERE run_id = '{run_id}'"))
}

fn launcher_pid(db: &mut Client) -> Option<i32> {
    db.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'orders_sync launcher'", &[])
        .unwrap()
        .first()
        .map(|row| row.get(0))
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect_when_up() -> Client {
    wait_for("the server to accept connections again", Duration::from_secs(60), || {
        orders_sync_pg_test::postgres::Client::connect(
            &orders_sync_pg_test::dsn(),
            orders_sync_pg_test::postgres::NoTls,
        )
        .ok()
    })
}

/// The claim was failed as stuck, and long before the minute a slow start is given: by the
/// rule for dead claims, not by the grace running out.
fn assert_failed_as_dead_claim(db: &mut Client, run_id: &str) {
    let (message, within_grace): (String, bool) = {
        let row = db
            .query_one(
                &format!(
                    "SELECT error_message, finished_at - heartbeat_at < interval '60 seconds'
                     FROM orders_sync.sync_jobs WHERE run_id = '{run_id}'"
                ),
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(message, "Auto-reset: stuck in running state");
    assert!(within_grace, "the dead claim must be failed at once, not after the 60 s grace");
    let run_closed: bool = scalar(
        db,
        &format!("SELECT finished_at IS NOT NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}'"),
    );
    assert!(run_closed, "the run with nothing left to do is closed");
}

#[test]
fn a_claim_made_before_a_crash_restart_is_failed_on_the_first_tick() {
    let mut db = connect();
    let run_id = "rp-heal-crash";
    wait_for("the launcher", Duration::from_secs(30), || launcher_pid(&mut db));
    claimed_but_unstarted(&mut db, run_id);
    // While the launcher that claimed it lives, the claim is a worker still starting.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(job_status(&mut db, run_id), "running");
    let stuck_alive: bool =
        scalar(&mut db, "SELECT NOT orders_sync.job_worker_gone(NULL, now() - interval '1 second')");
    assert!(stuck_alive, "a fresh claim of a live launcher is not dead");

    // SIGKILL of one backend: the postmaster resets the whole cluster.
    let mut victim = connect();
    let pid: i32 = scalar(&mut victim, "SELECT pg_backend_pid()");
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    drop(victim);
    drop(db);

    let mut db = connect_when_up();
    wait_for("the claim to be failed", Duration::from_secs(30), || {
        (job_status(&mut db, run_id) == "failed").then_some(())
    });
    assert_failed_as_dead_claim(&mut db, run_id);
}

#[test]
fn a_claim_of_a_terminated_launcher_is_failed_by_the_next_launcher() {
    let mut db = connect();
    let run_id = "rp-heal-launcher";
    let first = wait_for("the launcher", Duration::from_secs(30), || launcher_pid(&mut db));
    claimed_but_unstarted(&mut db, run_id);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(job_status(&mut db, run_id), "running");

    // A DBA clearing the database's sessions terminates the launcher too.
    let terminated: bool = scalar(&mut db, &format!("SELECT pg_terminate_backend({first})"));
    assert!(terminated);
    let second = wait_for("the launcher to come back by itself", Duration::from_secs(30), || {
        launcher_pid(&mut db).filter(|pid| *pid != first)
    });
    assert_ne!(second, first);
    wait_for("the claim to be failed", Duration::from_secs(30), || {
        (job_status(&mut db, run_id) == "failed").then_some(())
    });
    assert_failed_as_dead_claim(&mut db, run_id);
}
