//! The launcher (a static background worker) and the job workers it starts.
//!
//! The launcher owns no data: each tick it reads the queue in one short transaction, hands
//! dispatchable jobs to dynamic job workers, and closes runs with nothing left to do. A job
//! worker runs one store's windows of a run in date order (`worker::run_job` per window),
//! taking the next window itself while its slot is still within the caps, so a store's
//! windows run back to back without waiting for a tick.
//!
//! Caps: a run's `max_workers` (its `parameters`) and `orders_sync.max_workers` over all
//! running jobs. Every decision that takes a slot holds the same transaction-level advisory
//! lock, so concurrent decisions never both see a free slot.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::gucs;
use crate::orchestrate::{self, PIPELINE_NAME};
use crate::queue;
use crate::worker::{in_transaction, run_job, JobEnd};

/// Serialises every decision that takes a worker slot (launcher ticks, job chaining).
const DISPATCH_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('orders_sync.dispatch'), 0)";

/// Registers the launcher; only when loaded through shared_preload_libraries.
pub fn register() {
    // SAFETY: a plain read of a flag PostgreSQL sets while preloading libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("orders_sync launcher")
        .set_type("orders_sync launcher")
        .set_library("orders_sync")
        .set_function("orders_sync_launcher_main")
        .enable_spi_access()
        // Comes back when it exits, e.g. because orders_sync.database does not exist yet.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// One job handed to a job worker.
struct Dispatch {
    job_id: i64,
    store_code: String,
}

/// Picks and claims the jobs that may start now (marked `running` without a worker_pid
/// until their worker reports in).
fn pick_jobs() -> pgrx::spi::SpiResult<Vec<Dispatch>> {
    Spi::run(DISPATCH_LOCK)?;
    // The running jobs, read once: their count per run and in all (the caps) and their
    // stores (a store runs one window at a time).
    let (running_by_run, running_total, busy_stores) = Spi::connect(|client| {
        let table = client.select(
            "SELECT run_id::text, store_code::text FROM orders_sync.sync_jobs WHERE status = 'running'",
            None,
            &[],
        )?;
        let mut by_run = HashMap::new();
        let mut stores = HashSet::new();
        let mut total = 0i64;
        for row in table {
            total += 1;
            *by_run.entry(row.get::<String>(1)?.unwrap_or_default()).or_insert(0) += 1;
            stores.insert(row.get::<String>(2)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::Error>((by_run, total, stores))
    })?;
    let cluster_cap = i64::from(gucs::max_workers());
    if running_total >= cluster_cap {
        return Ok(Vec::new());
    }
    // Per store: its earliest queued window of each run + pipeline (busy stores are passed
    // over below).
    let candidates = Spi::connect(|client| {
        let table = client.select(
            // Set-based on purpose: a run may queue thousands of windows, and a correlated
            // "no earlier queued window of this store" check would be quadratic in them.
            "WITH firsts AS (
                 SELECT DISTINCT ON (j.run_id, j.pipeline_id, j.store_code)
                        j.id, j.run_id, j.store_code, r.started_at,
                        coalesce((r.parameters->>'max_workers')::int, 1) AS run_cap
                 FROM orders_sync.pipeline_run_summaries r
                 JOIN orders_sync.sync_jobs j ON j.run_id = r.run_id AND j.status = 'queued'
                 WHERE r.overall_status = 'running' AND r.pipeline_name = $1
                 ORDER BY j.run_id, j.pipeline_id, j.store_code, j.from_date, j.id
             )
             SELECT f.id, f.run_id::text, f.store_code::text, f.run_cap
             FROM firsts f
             ORDER BY f.started_at, f.id",
            None,
            &[PIPELINE_NAME.into()],
        )?;
        let mut out = Vec::new();
        for row in table {
            out.push((
                row.get::<i64>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?.unwrap_or_default(),
                i64::from(row.get::<i32>(4)?.unwrap_or(1)),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })?;
    let mut picked = Vec::new();
    // Stores already running a window, then those picked now: one window per store.
    let mut stores = busy_stores;
    let mut by_run = running_by_run;
    let mut total = running_total;
    for (job_id, run_id, store_code, run_cap) in candidates {
        if total >= cluster_cap {
            break;
        }
        let running = by_run.entry(run_id).or_insert(0);
        if *running >= run_cap || !stores.insert(store_code.clone()) {
            continue;
        }
        *running += 1;
        total += 1;
        picked.push(Dispatch { job_id, store_code });
    }
    if picked.is_empty() {
        return Ok(picked);
    }
    let ids: Vec<i64> = picked.iter().map(|d| d.job_id).collect();
    Spi::run_with_args(
        "UPDATE orders_sync.sync_jobs
         SET status = 'running', worker_pid = NULL, started_at = now(), heartbeat_at = now()
         WHERE id = ANY ($1) AND status = 'queued'",
        &[ids.into()],
    )?;
    Ok(picked)
}

/// Gives a claimed job back to the queue when no worker could be started for it.
fn unclaim(job_id: i64) -> pgrx::spi::SpiResult<()> {
    Spi::run_with_args(
        "UPDATE orders_sync.sync_jobs SET status = 'queued', started_at = NULL, heartbeat_at = NULL
         WHERE id = $1 AND status = 'running' AND worker_pid IS NULL",
        &[job_id.into()],
    )
}

fn start_job_worker(database: pg_sys::Oid, dispatch: &Dispatch) -> bool {
    BackgroundWorkerBuilder::new(&format!("orders_sync job {} store {}", dispatch.job_id, dispatch.store_code))
        .set_type("orders_sync job")
        .set_library("orders_sync")
        .set_function("orders_sync_job_worker")
        .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
        .set_extra(&format!("{}\t{}", dispatch.job_id, dispatch.store_code))
        .enable_spi_access()
        .load_dynamic()
        .is_ok()
}

/// Housekeeping of one tick: orphaned jobs failed, skips after failures, finished runs
/// closed. Returns whether any profiler run is still running (the tick rate depends on it).
fn housekeeping() -> pgrx::spi::SpiResult<bool> {
    orchestrate::reset_dead_jobs(None)?;
    orchestrate::skip_after_failures(None)?;
    for run_id in orchestrate::runs_without_work()? {
        orchestrate::close_run_if_done(&run_id)?;
    }
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM orders_sync.pipeline_run_summaries
                        WHERE overall_status = 'running' AND pipeline_name = $1)",
        &[PIPELINE_NAME.into()],
    )
    .map(|busy| busy.unwrap_or(false))
}

fn extension_installed() -> pgrx::spi::SpiResult<bool> {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'orders_sync')
            AND to_regclass('orders_sync.sync_jobs') IS NOT NULL",
    )
    .map(|found| found.unwrap_or(false))
}

/// Entry point of the launcher (static worker).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn orders_sync_launcher_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database_name = gucs::database();
    // ERRORs (FATAL) when the database does not exist yet; the restart time brings us back.
    BackgroundWorker::connect_worker_to_spi(Some(&database_name), None);
    let database = unsafe { pg_sys::MyDatabaseId };
    log!("orders_sync launcher started on database {database_name}");

    let mut last_error: Option<String> = None;
    let mut slot_warning_logged = false;
    let mut busy = true;
    loop {
        let nap = if busy { Duration::from_millis(100) } else { Duration::from_millis(500) };
        if !BackgroundWorker::wait_latch(Some(nap)) {
            break; // SIGTERM or postmaster death
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let tick = in_transaction(|| {
            if !extension_installed()? {
                return Ok((false, Vec::new()));
            }
            let busy = housekeeping()?;
            let picked = if busy { pick_jobs()? } else { Vec::new() };
            Ok((busy, picked))
        });
        let picked = match tick {
            Ok((now_busy, picked)) => {
                busy = now_busy;
                last_error = None;
                picked
            }
            Err(message) => {
                // Log each distinct problem once, not every tick.
                if last_error.as_deref() != Some(message.as_str()) {
                    log!("orders_sync launcher: {message}");
                    last_error = Some(message);
                }
                busy = false;
                continue;
            }
        };
        for dispatch in &picked {
            if start_job_worker(database, dispatch) {
                slot_warning_logged = false;
                continue;
            }
            if !slot_warning_logged {
                log!(
                    "orders_sync launcher: no free background worker slot for job {} (store {}); it stays queued. Consider raising max_worker_processes.",
                    dispatch.job_id,
                    dispatch.store_code
                );
                slot_warning_logged = true;
            }
            let _ = in_transaction(|| unclaim(dispatch.job_id));
        }
    }
    log!("orders_sync launcher stopping");
}

// ---------------------------------------------------------------------------------------
// Job workers.
// ---------------------------------------------------------------------------------------

/// The job's run, pipeline and final status.
fn job_outcome(job_id: i64) -> pgrx::spi::SpiResult<Option<(String, i64, String)>> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT run_id::text, pipeline_id, status FROM orders_sync.sync_jobs WHERE id = $1",
            None,
            &[job_id.into()],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<i64>(2)?.unwrap_or_default(),
            row.get::<String>(3)?.unwrap_or_default(),
        )))
    })
}

/// Claims the next window for this worker, whose own job has just ended (so its slot is
/// free): the same store's next window of the run when there is one, else any dispatchable
/// window of the same run, under the same caps and rules as the launcher. Saves a launcher
/// tick and a worker start per window.
fn claim_next(run_id: &str, pipeline_id: i64, store_code: &str) -> pgrx::spi::SpiResult<Option<(i64, String)>> {
    Spi::run(DISPATCH_LOCK)?;
    Spi::connect_mut(|client| {
        let table = client.update(
            // Set-based like the launcher's pick: the running jobs and the run's open windows
            // are each read once, never per candidate. (While a run is waited on with
            // `wait => true`, the waiting call holds back the xmin horizon, so every finished
            // job leaves dead index entries that each probe would visit again.)
            "WITH running AS MATERIALIZED (
                 SELECT run_id, store_code FROM orders_sync.sync_jobs WHERE status = 'running'
             ),
             run AS (
                 SELECT r.run_id FROM orders_sync.pipeline_run_summaries r
                 WHERE r.run_id = $1 AND r.overall_status = 'running'
                   AND (SELECT count(*) FROM running WHERE run_id = $1)
                       < coalesce((r.parameters->>'max_workers')::int, 1)
                   AND (SELECT count(*) FROM running) < $4
             ),
             open AS MATERIALIZED (
                 SELECT j.id, j.pipeline_id, j.store_code, j.from_date, j.status
                 FROM run JOIN orders_sync.sync_jobs j ON j.run_id = run.run_id
                 WHERE j.status IN ('queued', 'failed', 'partial')
             ),
             firsts AS (
                 -- Each store's earliest queued window. A store with a failed or partial
                 -- window sorts that first and so drops out: its later windows are skipped.
                 SELECT DISTINCT ON (pipeline_id, store_code) id, pipeline_id, store_code, status
                 FROM open
                 ORDER BY pipeline_id, store_code, status = 'queued', from_date, id
             ),
             next AS (
                 SELECT f.id FROM firsts f
                 WHERE f.status = 'queued'
                   AND NOT EXISTS (SELECT 1 FROM running o WHERE o.store_code = f.store_code)
                 ORDER BY (f.pipeline_id = $2 AND f.store_code = $3) DESC, f.id
                 LIMIT 1
             )
             UPDATE orders_sync.sync_jobs j
             SET status = 'running', worker_pid = pg_backend_pid(), started_at = now(), heartbeat_at = now()
             FROM next WHERE j.id = next.id AND j.status = 'queued'
             RETURNING j.id, j.store_code::text",
            None,
            &[run_id.into(), pipeline_id.into(), store_code.into(), i64::from(gucs::max_workers()).into()],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(Some((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
    })
}

/// Entry point of a job worker: argument = database OID, `bgw_extra` = "job_id\tstore_code".
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn orders_sync_job_worker(argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(
        SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM | SignalWakeFlags::SIGINT,
    );
    let database = pg_sys::Oid::from(argument.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let extra = BackgroundWorker::get_extra().to_string();
    let Some((mut job_id, mut store_code)) =
        extra.split_once('\t').and_then(|(id, store)| Some((id.parse::<i64>().ok()?, store.to_string())))
    else {
        log!("orders_sync: job worker got an unreadable request {extra:?}");
        return;
    };
    // The store's previous worker may still be releasing the store lock after committing
    // its window; wait for it briefly instead of failing the job as "busy". Session advisory
    // locks nest, so run_job's own try-lock then succeeds; the lock is held across the
    // store's consecutive windows.
    let mut locked = lock_store_patiently(&store_code);
    loop {
        let end = run_job(job_id, &store_code);
        let after = in_transaction(|| {
            let Some((run_id, pipeline_id, status)) = job_outcome(job_id)? else {
                return Ok(None);
            };
            if status != "success" {
                orchestrate::skip_after_failures(Some(&run_id))?;
            }
            Ok(Some((run_id, pipeline_id)))
        });
        let Ok(Some((run_id, pipeline_id))) = after else {
            break;
        };
        // Cancelled or terminated: this worker stops; the launcher decides what runs next.
        let stopping = end == JobEnd::Interrupted
            || unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) } != 0;
        let next = if stopping {
            None
        } else {
            in_transaction(|| claim_next(&run_id, pipeline_id, &store_code)).ok().flatten()
        };
        let Some((next_job, next_store)) = next else {
            if let Err(message) = in_transaction(|| orchestrate::close_run_if_done(&run_id)) {
                log!("orders_sync: could not close run {run_id}: {message}");
            }
            break;
        };
        if next_store != store_code {
            if locked {
                let _ = in_transaction(|| queue::unlock_store(&store_code));
            }
            store_code = next_store;
            locked = lock_store_patiently(&store_code);
        }
        job_id = next_job;
    }
    if locked {
        let _ = in_transaction(|| queue::unlock_store(&store_code));
    }
}

fn lock_store_patiently(store_code: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(true) = in_transaction(|| queue::try_lock_store(store_code)) {
            return true;
        }
        if std::time::Instant::now() >= deadline || !BackgroundWorker::wait_latch(Some(Duration::from_millis(20))) {
            return false;
        }
    }
}
