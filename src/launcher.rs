//! The launcher (a static background worker) and the job workers it starts.
//!
//! The launcher owns no data: each tick it reads the queue in one short transaction, hands
//! dispatchable jobs to dynamic job workers, and closes runs with nothing left to do. A job
//! worker runs one store's windows of a run in date order (`worker::run_job` per window),
//! taking the next window itself while its slot is still within the caps, so a store's
//! windows run back to back without waiting for a tick.
//!
//! Caps: a run's `max_workers` (its `parameters`), a pipeline's `limits.max_concurrent_stores`
//! and `orders_sync.max_workers` over all running jobs. Every decision that takes a slot holds the same transaction-level advisory
//! lock, so concurrent decisions never both see a free slot.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;
use std::time::{Duration, Instant};

use crate::bgw::{self, in_transaction, in_transaction_or_log, WorkerRequest};
use crate::gucs;
use crate::orchestrate::{self, PIPELINE_NAME};
use crate::outcome::JobStatus;
use crate::queue::{self, Claimant};
use crate::worker::{run_job, JobEnd};

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
        // Also makes it start only once recovery has finished: on a hot standby (which shares
        // shared_preload_libraries with its primary) there is no launcher and nothing is
        // attempted or logged; the postmaster starts it when the standby is promoted.
        .enable_spi_access()
        // Comes back when it exits, e.g. because orders_sync.database does not exist yet.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// What the launcher hands a job worker: the job it claimed, and its store (the worker's name
/// in pg_stat_activity shows both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    pub job_id: i64,
    pub store_code: String,
}

impl WorkerRequest for JobRequest {
    const KIND: &'static str = "job";
    const FUNCTION: &'static str = "orders_sync_job_worker";

    fn fields(&self) -> Vec<String> {
        vec![self.job_id.to_string(), self.store_code.clone()]
    }

    fn from_fields(fields: &[&str]) -> Option<Self> {
        let [job_id, store_code] = fields else { return None };
        Some(JobRequest { job_id: job_id.parse().ok()?, store_code: store_code.to_string() })
    }

    fn worker_name(&self) -> String {
        format!("orders_sync job {} store {}", self.job_id, self.store_code)
    }
}

/// How often a busy launcher looks for jobs whose worker is gone. Every tick would read the
/// running jobs' index ten times a second, and while a run is waited on with `wait => true`
/// that index keeps an entry for every window the run has started (docs/design.md#caps).
const DEAD_JOB_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Housekeeping of one tick: orphaned jobs failed (when `check_dead`), skips after failures,
/// finished runs closed. Returns whether any profiler run is still running (the tick rate
/// depends on it).
fn housekeeping(check_dead: bool) -> pgrx::spi::SpiResult<bool> {
    if check_dead {
        orchestrate::reset_dead_jobs(None)?;
    }
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
    let database_name = gucs::database();
    bgw::start_static(&database_name);
    // SAFETY: a plain read of this backend's own global, set by the connection above.
    let database = unsafe { pg_sys::MyDatabaseId };
    log!("orders_sync launcher started on database {database_name}");

    let mut last_error: Option<String> = None;
    let mut slot_warning_logged = false;
    let mut busy = true;
    let mut last_dead_check: Option<Instant> = None;
    loop {
        let nap = if busy { Duration::from_millis(100) } else { Duration::from_millis(500) };
        if !BackgroundWorker::wait_latch(Some(nap)) {
            break; // SIGTERM or postmaster death
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let check_dead = last_dead_check.is_none_or(|at| !busy || at.elapsed() >= DEAD_JOB_CHECK_EVERY);
        let tick = in_transaction(|| -> SpiResult<_> {
            // On a Citus worker node the extension is there by propagation only: the
            // coordinator's launcher does all syncing (docs/design.md#citus).
            if !extension_installed()? || crate::distributed::is_citus_worker_node()? {
                return Ok((false, Vec::new()));
            }
            let busy = housekeeping(check_dead)?;
            let picked = if busy { queue::claim(&Claimant::Launcher, PIPELINE_NAME)? } else { Vec::new() };
            Ok((busy, picked))
        });
        let picked = match tick {
            Ok((now_busy, picked)) => {
                busy = now_busy;
                if check_dead {
                    last_dead_check = Some(Instant::now());
                }
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
        for claimed in picked {
            let request = JobRequest { job_id: claimed.job_id, store_code: claimed.store_code };
            if bgw::start_worker(&request, database) {
                slot_warning_logged = false;
                continue;
            }
            if !slot_warning_logged {
                log!(
                    "orders_sync launcher: no free background worker slot for job {} (store {}); it stays queued. Consider raising max_worker_processes.",
                    request.job_id,
                    request.store_code
                );
                slot_warning_logged = true;
            }
            in_transaction_or_log("give job back to the queue", || queue::unclaim(request.job_id));
        }
    }
    // Exit code 1 asks the postmaster to start the launcher again after its restart time: a
    // pg_terminate_backend (a DBA clearing a database's sessions) must not stop syncing for
    // good. At shutdown or after the postmaster's death nothing is restarted anyway.
    log!("orders_sync launcher stopping; it starts again in 5 s unless the server is shutting down");
    unsafe { pg_sys::proc_exit(1) }
}

// ---------------------------------------------------------------------------------------
// Job workers.
// ---------------------------------------------------------------------------------------

/// The job's run, pipeline and final status.
fn job_outcome(job_id: i64) -> pgrx::spi::SpiResult<Option<(String, i64, Option<JobStatus>)>> {
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
            row.get::<String>(3)?.as_deref().and_then(JobStatus::parse),
        )))
    })
}

/// Entry point of a job worker: argument = database OID, `bgw_extra` = its `JobRequest`.
/// After its window it takes the next one itself (the same store's next window of the run
/// when there is one, else any dispatchable window of the run, under the same rules as the
/// launcher): that saves a launcher tick and a worker start per window.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn orders_sync_job_worker(argument: pg_sys::Datum) {
    let Some(JobRequest { mut job_id, mut store_code }) = bgw::start_dynamic::<JobRequest>(argument) else {
        return;
    };
    if in_transaction_or_log("report in", || queue::report_in(job_id)) != Some(true) {
        log!("orders_sync: job {job_id} was no longer handed to this worker when it started; leaving it");
        return;
    }
    // The store's previous worker may still be releasing the store lock after committing
    // its window; wait for it briefly instead of failing the job as "busy". Session advisory
    // locks nest, so run_job's own try-lock then succeeds; the lock is held across the
    // store's consecutive windows.
    let mut locked = lock_store_patiently(&store_code);
    loop {
        // Read before the window ends: a slot taken by counting after this saw this worker's
        // slot free, and then the worker counts too instead of handing its slot on.
        let epoch = queue::dispatch_epoch();
        let end = run_job(job_id, &store_code);
        let after = in_transaction_or_log("read the job's outcome", || -> SpiResult<_> {
            let Some((run_id, pipeline_id, status)) = job_outcome(job_id)? else {
                return Ok(None);
            };
            if status != Some(JobStatus::Ended(crate::outcome::WindowStatus::Success)) {
                orchestrate::skip_after_failures(Some(&run_id))?;
            }
            Ok(Some((run_id, pipeline_id)))
        });
        let Some(Some((run_id, pipeline_id))) = after else {
            break;
        };
        // Cancelled or terminated: this worker stops; the launcher decides what runs next.
        let stopping = end == JobEnd::Interrupted || bgw::shutdown_requested();
        let next = if stopping {
            None
        } else {
            let claimant =
                Claimant::Worker { run_id: &run_id, pipeline_id, store_code: &store_code, after_job: job_id, epoch };
            in_transaction_or_log("claim the next window", || queue::claim(&claimant, PIPELINE_NAME))
                .and_then(|claimed| claimed.into_iter().next())
        };
        let Some(next) = next else {
            in_transaction_or_log(&format!("close run {run_id}"), || orchestrate::close_run_if_done(&run_id));
            break;
        };
        if next.store_code != store_code {
            if locked {
                in_transaction_or_log("release the store lock", || queue::unlock_store(&store_code));
            }
            store_code = next.store_code;
            locked = lock_store_patiently(&store_code);
        }
        job_id = next.job_id;
    }
    if locked {
        in_transaction_or_log("release the store lock", || queue::unlock_store(&store_code));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_request_round_trips_through_bgw_extra_and_fits() {
        let request = JobRequest { job_id: i64::MAX, store_code: "ABCDEFGH".into() };
        let encoded = request.encode();
        assert!(encoded.len() <= bgw::MAX_ENCODED);
        assert_eq!(JobRequest::decode(&encoded), Some(request));
        assert_eq!(JobRequest::decode("12"), None);
        assert_eq!(JobRequest::decode("x\tS1"), None);
    }
}
