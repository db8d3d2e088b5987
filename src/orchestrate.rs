//! `orders_sync.run_profiler`: plans a run, hands its windows to the launcher, and (on
//! request) waits for the run to end.
//!
//! The caller's transaction cannot commit, yet the run and its jobs must be visible to the
//! workers at once: a dynamic "planner" worker creates and commits them, and the caller
//! waits only for that worker. The planner also decides, under a transaction-level advisory
//! lock per (env, selection), whether a run of the same selection is still active, in which
//! case nothing is created (docs/design.md#no-pile-up).

use chrono::{NaiveDate, Utc};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::bgw::{self, in_transaction, WorkerRequest};
use crate::clock;
use crate::errors::{OrRaise, SqlError, SqlResult};
use crate::outcome::{RunStatus, PLANNING_FAILED_KEY, STUCK_MESSAGE};
use crate::plan::sql::{plan_selection, PlanParams, SyncGroup};
use crate::queue;
use crate::write::Window;

pub const PIPELINE_NAME: &str = "orders_sync_run_profiler";

/// What `run_profiler` hands its planner worker (`bgw::WorkerRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilerRequest {
    pub run_id: String,
    pub env: String,
    pub sync_group: String,
    pub window_days: u32,
    pub overlap_days: u32,
    pub max_workers: u32,
    pub force: bool,
    pub store_code: Option<String>,
    pub as_of: Option<NaiveDate>,
}

impl WorkerRequest for ProfilerRequest {
    const KIND: &'static str = "run_profiler planner";
    const FUNCTION: &'static str = "orders_sync_planner_worker";

    fn fields(&self) -> Vec<String> {
        vec![
            self.run_id.clone(),
            self.env.clone(),
            self.sync_group.clone(),
            self.window_days.to_string(),
            self.overlap_days.to_string(),
            self.max_workers.to_string(),
            u8::from(self.force).to_string(),
            self.store_code.clone().unwrap_or_default(),
            self.as_of.map(bgw::encode_date).unwrap_or_default(),
        ]
    }

    fn from_fields(fields: &[&str]) -> Option<Self> {
        let [run_id, env, group, window_days, overlap_days, max_workers, force, store, as_of] = fields else {
            return None;
        };
        Some(ProfilerRequest {
            run_id: run_id.to_string(),
            env: env.to_string(),
            sync_group: group.to_string(),
            window_days: window_days.parse().ok()?,
            overlap_days: overlap_days.parse().ok()?,
            max_workers: max_workers.parse().ok()?,
            force: *force == "1",
            store_code: (!store.is_empty()).then(|| store.to_string()),
            as_of: if as_of.is_empty() { None } else { Some(bgw::decode_date(as_of)?) },
        })
    }
}

impl ProfilerRequest {
    /// The run's row, `running`, in the caller's transaction.
    fn create_run(&self) -> pgrx::spi::SpiResult<()> {
        queue::create_run(&self.run_id, PIPELINE_NAME, &self.env, Utc::now().date_naive(), &self.parameters_json())
    }

    /// The run's `parameters` jsonb; `sync_group` and `store_code` identify its selection.
    pub fn parameters_json(&self) -> String {
        serde_json::json!({
            "sync_group": self.sync_group,
            "store_code": self.store_code,
            "window_days": self.window_days,
            "overlap_days": self.overlap_days,
            "max_workers": self.max_workers,
            "force": self.force,
            "as_of": self.as_of.map(|d| d.to_string()),
        })
        .to_string()
    }

    fn plan_params(&self) -> SqlResult<PlanParams> {
        PlanParams::from_sql_args(
            Some(&self.env),
            Some(&self.sync_group),
            Some(self.window_days as i32),
            Some(self.overlap_days as i32),
            Some(self.force),
            self.store_code.as_deref(),
            self.as_of.map(clock::to_pg),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Run lifecycle helpers, shared by the planner, the launcher and the job workers. Each runs
// inside a transaction owned by its caller.
// ---------------------------------------------------------------------------------------

/// Fails `running` jobs (and their log rows) whose worker is gone, by the one definition of
/// gone (`orders_sync.job_worker_gone`, docs/design.md#healing). `run_id = None` looks at
/// every run. Returns how many were reset.
pub fn reset_dead_jobs(run_id: Option<&str>) -> pgrx::spi::SpiResult<i64> {
    Spi::get_one_with_args::<i64>(
        "WITH dead AS (
             SELECT j.id, j.log_id FROM orders_sync.sync_jobs j
             WHERE j.status = 'running' AND ($1::text IS NULL OR j.run_id = $1)
               AND orders_sync.job_worker_gone(j.worker_pid, j.heartbeat_at)
             FOR UPDATE OF j SKIP LOCKED
         ),
         logs AS (
             UPDATE orders_sync.orders_sync_log l SET status = 'failed', error_message = $2
             FROM dead WHERE l.id = dead.log_id AND l.status = 'running'
         ),
         jobs AS (
             UPDATE orders_sync.sync_jobs j
             SET status = 'failed', error_message = $2, finished_at = now()
             FROM dead WHERE j.id = dead.id
             RETURNING j.id
         )
         SELECT count(*) FROM jobs",
        &[run_id.into(), STUCK_MESSAGE.into()],
    )
    .map(|n| n.unwrap_or(0))
}

/// A `failed` or `partial` window stops its store + pipeline for the rest of the run: the
/// store's windows still queued in that run become `skipped`, saying which window stopped them.
pub fn skip_after_failures(run_id: Option<&str>) -> pgrx::spi::SpiResult<()> {
    Spi::run_with_args(
        "UPDATE orders_sync.sync_jobs q
         SET status = 'skipped', finished_at = now(),
             error_message = format('skipped: window %s..%s of store %s ended %s in this run',
                                    f.from_date, f.to_date, f.store_code, f.status)
         FROM (SELECT DISTINCT ON (run_id, pipeline_id, store_code)
                      run_id, pipeline_id, store_code, from_date, to_date, status
               FROM orders_sync.sync_jobs
               WHERE status IN ('failed', 'partial') AND ($1::text IS NULL OR run_id = $1)
                 AND run_id IN (SELECT run_id FROM orders_sync.pipeline_run_summaries
                                WHERE overall_status = 'running' AND pipeline_name = $2)
               ORDER BY run_id, pipeline_id, store_code, from_date) f
         WHERE q.status = 'queued' AND q.run_id = f.run_id AND q.pipeline_id = f.pipeline_id
           AND q.store_code = f.store_code",
        &[run_id.into(), PIPELINE_NAME.into()],
    )
}

/// Closes the run when it has no queued or running job left; true if this call closed it.
/// The run row is locked first, so concurrent closers finish it exactly once.
pub fn close_run_if_done(run_id: &str) -> pgrx::spi::SpiResult<bool> {
    let done = Spi::connect_mut(|client| {
        let table = client.update(
            "SELECT 1 FROM orders_sync.pipeline_run_summaries r
             WHERE r.run_id = $1 AND r.overall_status = 'running'
               AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs j
                               WHERE j.run_id = r.run_id AND j.status IN ('queued', 'running'))
             FOR UPDATE OF r",
            None,
            &[run_id.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(!table.is_empty())
    })?;
    if done {
        queue::finish_run(run_id)?;
    }
    Ok(done)
}

/// Profiler runs still `running` with nothing queued or running: their last worker ended
/// (or died) before closing them.
pub fn runs_without_work() -> pgrx::spi::SpiResult<Vec<String>> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT r.run_id::text FROM orders_sync.pipeline_run_summaries r
             WHERE r.overall_status = 'running' AND r.pipeline_name = $1
               AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs j
                               WHERE j.run_id = r.run_id AND j.status IN ('queued', 'running'))",
            None,
            &[PIPELINE_NAME.into()],
        )?;
        let mut runs = Vec::new();
        for row in table {
            runs.push(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok(runs)
    })
}

/// The `running` profiler runs of this env and selection, oldest first.
fn running_runs_of(request: &ProfilerRequest) -> pgrx::spi::SpiResult<Vec<String>> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT run_id::text FROM orders_sync.pipeline_run_summaries
             WHERE pipeline_name = $1 AND overall_status = 'running' AND run_env = $2
               AND parameters->>'sync_group' = $3
               AND parameters->>'store_code' IS NOT DISTINCT FROM $4
             ORDER BY started_at",
            None,
            &[
                PIPELINE_NAME.into(),
                request.env.as_str().into(),
                request.sync_group.as_str().into(),
                request.store_code.clone().into(),
            ],
        )?;
        let mut runs = Vec::new();
        for row in table {
            runs.push(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok(runs)
    })
}

// ---------------------------------------------------------------------------------------
// The planner worker.
// ---------------------------------------------------------------------------------------

enum Planned {
    Created { jobs: usize },
    AlreadyActive(String),
}

/// In one transaction: the (env, selection) lock, the pile-up check, the run row and its jobs.
fn plan_run(request: &ProfilerRequest) -> SqlResult<Planned> {
    // Held until commit: a second planner of the same selection waits here and then sees
    // this run (and its jobs) committed.
    Spi::run_with_args(
        "SELECT pg_advisory_xact_lock(hashtext('orders_sync.profiler'), hashtext($1 || '/' || $2 || '/' || coalesce($3, '*')))",
        &[request.env.as_str().into(), request.sync_group.as_str().into(), request.store_code.clone().into()],
    )?;
    for run_id in running_runs_of(request)? {
        // A run whose workers are all gone is not active: fail its orphaned jobs, close it.
        reset_dead_jobs(Some(&run_id))?;
        skip_after_failures(Some(&run_id))?;
        if !close_run_if_done(&run_id)? {
            return Ok(Planned::AlreadyActive(run_id));
        }
    }
    // An error rolls the transaction back and is recorded as the run's failure.
    let params = request
        .plan_params()
        .map_err(|error| SqlError::internal(format!("orders_sync planner: invalid request: {}", error.message)))?;
    let rows = Spi::connect(|client| plan_selection(client, &params, Utc::now()))
        .map_err(|error| SqlError::internal(format!("orders_sync planner: {}", error.message)))?;
    request.create_run()?;
    let planned: Vec<(Window, &str)> = rows
        .iter()
        .filter(|row| row.window.will_run)
        .map(|row| {
            let window = Window {
                pipeline_id: row.pipeline_id,
                store_code: row.store_code.clone(),
                from: row.window.from,
                to: row.window.to,
            };
            (window, row.window.reason.as_str())
        })
        .collect();
    let jobs = queue::enqueue_planned(&request.run_id, &planned)?;
    // Nothing to fetch (or everything skipped): the run ends right here.
    close_run_if_done(&request.run_id)?;
    Ok(Planned::Created { jobs })
}

/// Entry point of the planner worker: argument = the caller's database OID, `bgw_extra` =
/// its `ProfilerRequest`. The caller learns the outcome from committed rows.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn orders_sync_planner_worker(argument: pg_sys::Datum) {
    let Some(request) = bgw::start_dynamic::<ProfilerRequest>(argument) else {
        return;
    };
    match in_transaction(|| plan_run(&request)) {
        Ok(Planned::Created { jobs }) => {
            log!("orders_sync: run {} planned with {jobs} window(s)", request.run_id);
        }
        Ok(Planned::AlreadyActive(run_id)) => {
            log!("orders_sync: run_profiler for {} left to active run {run_id}", request.env);
        }
        Err(message) => {
            // Keep the failure where the DBA (and the waiting caller) will look: a failed run,
            // marked as a planning failure in its counts.
            let summary = format!("planning failed: {message}");
            let recorded = in_transaction(|| {
                request.create_run()?;
                Spi::run_with_args(
                    "UPDATE orders_sync.pipeline_run_summaries
                     SET overall_status = 'failed', finished_at = now(), summary_text = $2,
                         counts = jsonb_build_object($3::text, true)
                     WHERE run_id = $1",
                    &[request.run_id.as_str().into(), summary.as_str().into(), PLANNING_FAILED_KEY.into()],
                )
            });
            if let Err(again) = recorded {
                log!("orders_sync: run {} could not be planned ({message}) nor recorded ({again})", request.run_id);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// run_profiler, in the caller's session.
// ---------------------------------------------------------------------------------------

/// A run's state as committed right now.
struct RunState {
    status: Option<RunStatus>,
    finished: bool,
    summary: Option<String>,
    planning_failed: bool,
}

fn run_state(run_id: &str) -> SqlResult<Option<RunState>> {
    // Non-read-only SPI: a fresh snapshot per call, so the workers' commits are seen.
    let state = Spi::connect_mut(|client| {
        let table = client.update(
            "SELECT overall_status::text, finished_at IS NOT NULL, summary_text, counts ? $2
             FROM orders_sync.pipeline_run_summaries WHERE run_id = $1",
            None,
            &[run_id.into(), PLANNING_FAILED_KEY.into()],
        )?;
        if table.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = table.first();
        Ok(Some(RunState {
            status: row.get::<String>(1)?.as_deref().and_then(RunStatus::parse),
            finished: row.get::<bool>(2)?.unwrap_or(false),
            summary: row.get::<String>(3)?,
            planning_failed: row.get::<bool>(4)?.unwrap_or(false),
        }))
    })?;
    Ok(state)
}

/// The run the planner deferred to: the same selection's run that was active when it looked
/// (still running, or finished since this call began).
fn deferred_run(request: &ProfilerRequest, called_at: &str) -> SqlResult<Option<String>> {
    let run = Spi::connect_mut(|client| {
        let table = client.update(
            "SELECT run_id::text FROM orders_sync.pipeline_run_summaries
             WHERE pipeline_name = $1 AND run_env = $2 AND parameters->>'sync_group' = $3
               AND parameters->>'store_code' IS NOT DISTINCT FROM $4
               AND (overall_status = 'running' OR finished_at >= $5::timestamptz)
             ORDER BY overall_status = 'running' DESC, started_at DESC
             LIMIT 1",
            None,
            &[
                PIPELINE_NAME.into(),
                request.env.as_str().into(),
                request.sync_group.as_str().into(),
                request.store_code.clone().into(),
                called_at.into(),
            ],
        )?;
        if table.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        table.first().get::<String>(1)
    })?;
    Ok(run)
}

/// The windows only run when a launcher serves this database: say so when none does
/// (orders_sync not in shared_preload_libraries, or orders_sync.database names another one).
fn warn_without_launcher(run_id: &str) {
    // launcher_health() is the one definition of "is a launcher serving this database"; it
    // reads pg_stat_activity with its owner's rights, so the answer is the same for every role.
    // A new library may run on a schema not updated yet (ALTER EXTENSION UPDATE pending),
    // where the function does not exist: no warning then, rather than an error.
    let updated = Spi::get_one::<bool>("SELECT to_regprocedure('orders_sync.launcher_health()') IS NOT NULL");
    if !matches!(updated, Ok(Some(true))) {
        return;
    }
    let health = Spi::connect(|client| {
        let row = client.select("SELECT state, detail FROM orders_sync.launcher_health()", Some(1), &[])?.first();
        Ok::<_, pgrx::spi::Error>((row.get::<String>(1)?, row.get::<String>(2)?))
    });
    let Ok((Some(state), detail)) = health else { return };
    if state == "ok" || state == "standby" {
        return;
    }
    let message = format!(
        "the windows of run {run_id} stay queued: {}",
        detail.unwrap_or_else(|| format!("the launcher's state is {state}"))
    );
    ereport!(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        message,
        "SELECT * FROM orders_sync.health shows the launcher's state."
    );
}

/// `orders_sync.run_profiler(...)`: plans and enqueues a run, returns its run_id at once
/// (or, with `wait => true`, when it has ended). Background workers do the fetching.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)] // one per SQL argument
fn run_profiler(
    env: Option<&str>,
    sync_group: default!(Option<&str>, "'ALL'"),
    window_days: default!(Option<i32>, 90),
    overlap_days: default!(Option<i32>, 1),
    max_workers: default!(Option<i32>, 3),
    force: default!(Option<bool>, false),
    store_code: default!(Option<&str>, "NULL"),
    wait: default!(Option<bool>, false),
    as_of: default!(Option<pgrx::datum::Date>, "NULL"),
) -> String {
    bgw::refuse_on_standby("run_profiler").or_raise();
    crate::distributed::refuse_on_worker_node("run_profiler").or_raise();
    let (request, wait) =
        profiler_request(env, sync_group, window_days, overlap_days, max_workers, force, store_code, wait, as_of)
            .or_raise();
    let called_at: String = Spi::get_one::<String>("SELECT clock_timestamp()::text")
        .ok()
        .flatten()
        .unwrap_or_else(|| Utc::now().to_rfc3339());
    bgw::run_worker_and_wait(&request).or_raise();
    let run_id = resolve_run(&request, &called_at).or_raise();
    warn_without_launcher(&run_id);
    crate::schedule::warn_if_schedules_cannot_run();
    if wait {
        wait_for_run(&run_id).or_raise();
    }
    run_id
}

/// Validates `run_profiler`'s arguments (the same checks and errors as `plan_sync_windows`,
/// whose planner also refuses a store that cannot be selected) into the planner's request.
#[allow(clippy::too_many_arguments)] // one per SQL argument
fn profiler_request(
    env: Option<&str>,
    sync_group: Option<&str>,
    window_days: Option<i32>,
    overlap_days: Option<i32>,
    max_workers: Option<i32>,
    force: Option<bool>,
    store_code: Option<&str>,
    wait: Option<bool>,
    as_of: Option<pgrx::datum::Date>,
) -> SqlResult<(ProfilerRequest, bool)> {
    let params = PlanParams::from_sql_args(env, sync_group, window_days, overlap_days, force, store_code, as_of)?;
    let max_workers = match max_workers {
        Some(n) if (1..=64).contains(&n) => n as u32,
        other => {
            return Err(SqlError::invalid_argument(
                "max_workers",
                match other {
                    None => "must not be NULL".to_string(),
                    Some(n) => format!("must be between 1 and 64, got {n}"),
                },
            )
            .with_hint(
                "Pass how many windows of this run may be fetched at once (orders_sync.max_workers caps all runs).",
            ))
        }
    };
    let wait = wait.unwrap_or(false);
    // SAFETY: a plain read of this backend's isolation level.
    if wait && unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(SqlError::invalid_argument("wait", "cannot wait in a REPEATABLE READ or SERIALIZABLE transaction")
            .with_hint(
                "Its snapshot would never show the run ending; call it in READ COMMITTED or with wait => false.",
            ));
    }
    // A store that cannot be selected fails here, with the planner's own error and hint.
    Spi::connect(|client| plan_selection(client, &params, Utc::now()).map(|_| ()))?;
    let request = ProfilerRequest {
        run_id: format!("rp-{}-{}", Utc::now().format("%Y%m%d%H%M%S%6f"), unsafe { pg_sys::MyProcPid }),
        env: params.env.clone(),
        sync_group: match params.sync_group {
            SyncGroup::Td => "TD",
            SyncGroup::Uc => "UC",
            SyncGroup::All => "ALL",
        }
        .to_string(),
        window_days: params.policy.window_days,
        overlap_days: params.policy.overlap_days,
        max_workers,
        force: params.policy.force,
        store_code: params.store_code.clone(),
        as_of: params.as_of,
    };
    Ok((request, wait))
}

/// After the planner is gone: the run it created, or the active run of the same selection it
/// deferred to (with a NOTICE), or the planning failure as an error.
fn resolve_run(request: &ProfilerRequest, called_at: &str) -> SqlResult<String> {
    match run_state(&request.run_id)? {
        Some(state) if state.planning_failed => Err(SqlError::internal(format!(
            "run {} could not be planned: {}",
            request.run_id,
            state.summary.unwrap_or_default()
        ))
        .with_hint("See the run in orders_sync.pipeline_run_summaries and the server log.")),
        Some(_) => Ok(request.run_id.clone()),
        None => match deferred_run(request, called_at)? {
            Some(active) => {
                notice!(
                    "run {active} for env {} and sync_group {}{} is still active: not starting another",
                    request.env,
                    request.sync_group,
                    request.store_code.as_deref().map(|s| format!(", store {s}")).unwrap_or_default()
                );
                Ok(active)
            }
            None => {
                Err(SqlError::internal(format!("run_profiler planner exited before recording run {}", request.run_id))
                    .with_hint("See the server log for the planner worker's error."))
            }
        },
    }
}

/// Waits for the run to end, reporting progress every `PROGRESS_EVERY` and the end as NOTICEs.
fn wait_for_run(run_id: &str) -> SqlResult<()> {
    let mut last_report = std::time::Instant::now();
    loop {
        let Some(state) = run_state(run_id)? else {
            return Err(SqlError::internal(format!("run {run_id} disappeared while waiting for it")));
        };
        if state.finished {
            let status = match state.status {
                Some(RunStatus::Ended(status)) => status.as_str(),
                _ => "failed",
            };
            notice!("run {run_id} ended {status}: {}", state.summary.unwrap_or_default());
            return Ok(());
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            if let Ok(progress) = run_progress(run_id) {
                notice!("{}", progress.describe(run_id));
            }
            last_report = std::time::Instant::now();
        }
        bgw::nap(200)
    }
}

/// How often a waiting `run_profiler` reports progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The run's windows by state, read with a fresh snapshot (non-read-only SPI).
fn run_progress(run_id: &str) -> pgrx::spi::SpiResult<crate::outcome::RunProgress> {
    Spi::connect_mut(|client| {
        let row = client
            .update(
                "SELECT count(*),
                        count(*) FILTER (WHERE status IN ('success', 'partial', 'failed', 'skipped')),
                        count(*) FILTER (WHERE status = 'running'),
                        count(*) FILTER (WHERE status = 'queued'),
                        count(*) FILTER (WHERE status = 'failed'),
                        coalesce(sum(rows_written), 0)::bigint
                 FROM orders_sync.sync_jobs WHERE run_id = $1",
                None,
                &[run_id.into()],
            )?
            .first();
        Ok(crate::outcome::RunProgress {
            total: row.get::<i64>(1)?.unwrap_or(0),
            done: row.get::<i64>(2)?.unwrap_or(0),
            running: row.get::<i64>(3)?.unwrap_or(0),
            queued: row.get::<i64>(4)?.unwrap_or(0),
            failed: row.get::<i64>(5)?.unwrap_or(0),
            rows_written: row.get::<i64>(6)?.unwrap_or(0),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiler_request_round_trips_through_bgw_extra_and_fits() {
        let request = ProfilerRequest {
            run_id: "rp-20261123180102123456-4194304".into(),
            env: "e".repeat(32),
            sync_group: "ALL".into(),
            window_days: 3660,
            overlap_days: 3660,
            max_workers: 64,
            force: true,
            store_code: Some("ABCDEFGH".into()),
            as_of: NaiveDate::from_ymd_opt(2026, 12, 31),
        };
        let encoded = request.encode();
        assert!(encoded.len() <= bgw::MAX_ENCODED, "{} bytes", encoded.len());
        assert_eq!(ProfilerRequest::decode(&encoded), Some(request.clone()));
        let plain = ProfilerRequest { store_code: None, as_of: None, force: false, ..request };
        assert_eq!(ProfilerRequest::decode(&plain.encode()), Some(plain));
        assert_eq!(ProfilerRequest::decode("garbage"), None);
    }
}
