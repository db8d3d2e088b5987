//! The "queue" stage: runs, jobs and the per-store lock, in SQL.
//!
//! Each function runs inside a transaction owned by its caller. Duplicate windows are kept
//! out by the partial unique index on `sync_jobs`, not by checks in here.

use chrono::NaiveDate;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;
use std::time::Duration;

use crate::clock;
use crate::fetch::{Credentials, PageBounds, SourceSettings};
use crate::gucs;
use crate::outcome::{run_summary, RunCounts, WindowStatus};
use crate::write::Window;

mod dispatch;
pub use dispatch::Candidate;

/// One attempt at a job's window, as started by `start_attempt`.
pub struct Attempt {
    pub job_id: i64,
    pub log_id: i64,
    pub window: Window,
    pub pipeline_code: String,
    /// All streams of the pipeline, in pull order (a stream's position decides its stamp).
    pub pipeline_streams: Vec<String>,
    /// The streams this job pulls.
    pub streams: Vec<String>,
    pub source: SourceSettings,
    pub bounds: PageBounds,
}

/// Where a stream of a window stands after earlier, interrupted attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePoint {
    pub next_page_no: i32,
    pub page_token: Option<String>,
    pub complete: bool,
}

pub fn create_run(
    run_id: &str,
    pipeline_name: &str,
    run_env: &str,
    report_date: NaiveDate,
    parameters: &str,
) -> SpiResult<()> {
    Spi::run_with_args(
        "INSERT INTO orders_sync.pipeline_run_summaries
             (run_id, pipeline_name, run_env, report_date, parameters)
         VALUES ($1, $2, $3, $4, $5::jsonb)",
        &[run_id.into(), pipeline_name.into(), run_env.into(), clock::to_pg(report_date).into(), parameters.into()],
    )
}

/// Queues a window; `None` when the same window is already queued or running.
pub fn enqueue(run_id: &str, window: &Window, streams: &[String], reason: &str) -> SpiResult<Option<i64>> {
    // Not get_one: on a conflict nothing is returned, which get_one reports as an error.
    first_i64(
        "INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (pipeline_id, store_code, from_date, to_date) WHERE status IN ('queued', 'running')
         DO NOTHING
         RETURNING id",
        &[
            run_id.into(),
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            clock::to_pg(window.from).into(),
            clock::to_pg(window.to).into(),
            streams.to_vec().into(),
            reason.into(),
        ],
    )
}

/// Queues a run's planned windows, each with the reason it was planned, in one statement and
/// in the order given (job ids follow it: dispatch hands windows out in id order). A window
/// already queued or running in another run (another selection's run, a manual
/// `sync_window`) is recorded in this run as `skipped`, naming that run, rather than lost
/// silently. Each window pulls its pipeline's streams. Returns how many windows were given.
pub fn enqueue_planned(run_id: &str, windows: &[(Window, &str)]) -> SpiResult<usize> {
    let pipeline_ids: Vec<i64> = windows.iter().map(|(w, _)| w.pipeline_id).collect();
    let store_codes: Vec<&str> = windows.iter().map(|(w, _)| w.store_code.as_str()).collect();
    let froms: Vec<pgrx::datum::Date> = windows.iter().map(|(w, _)| clock::to_pg(w.from)).collect();
    let tos: Vec<pgrx::datum::Date> = windows.iter().map(|(w, _)| clock::to_pg(w.to)).collect();
    let reasons: Vec<&str> = windows.iter().map(|(_, reason)| *reason).collect();
    Spi::run_with_args(
        "WITH planned AS (
             SELECT w.pipeline_id, w.store_code COLLATE \"C\" AS store_code, w.from_date, w.to_date, w.reason,
                    w.position, coalesce(p.streams, '{}') AS streams
             FROM unnest($2::bigint[], $3::text[], $4::date[], $5::date[], $6::text[])
                  WITH ORDINALITY AS w(pipeline_id, store_code, from_date, to_date, reason, position)
             LEFT JOIN orders_sync.pipelines p ON p.id = w.pipeline_id
         ),
         queued AS (
             INSERT INTO orders_sync.sync_jobs (run_id, pipeline_id, store_code, from_date, to_date, streams, reason)
             SELECT $1, pipeline_id, store_code, from_date, to_date, streams, reason
             FROM planned ORDER BY position
             ON CONFLICT (pipeline_id, store_code, from_date, to_date) WHERE status IN ('queued', 'running')
             DO NOTHING
             RETURNING pipeline_id, store_code, from_date, to_date
         )
         INSERT INTO orders_sync.sync_jobs
             (pipeline_id, store_code, from_date, to_date, run_id, streams, reason, status, error_message, finished_at)
         SELECT w.pipeline_id, w.store_code, w.from_date, w.to_date, $1, w.streams, w.reason, 'skipped',
                -- The statement's snapshot sees the other run's job, not this run's new ones.
                format('skipped: window already queued or running in run %s',
                       coalesce((SELECT a.run_id FROM orders_sync.sync_jobs a
                                 WHERE a.pipeline_id = w.pipeline_id AND a.store_code = w.store_code
                                   AND a.from_date = w.from_date AND a.to_date = w.to_date
                                   AND a.status IN ('queued', 'running')
                                 LIMIT 1), '')),
                now()
         FROM planned w
         WHERE NOT EXISTS (SELECT 1 FROM queued q
                           WHERE q.pipeline_id = w.pipeline_id AND q.store_code = w.store_code
                             AND q.from_date = w.from_date AND q.to_date = w.to_date)
         ORDER BY w.position",
        &[run_id.into(), pipeline_ids.into(), store_codes.into(), froms.into(), tos.into(), reasons.into()],
    )?;
    Ok(windows.len())
}

/// The first column of the first row of a data-changing statement, `None` when it returns
/// no row (a fresh snapshot per call, unlike a read-only `select`).
pub fn first_i64(statement: &str, args: &[pgrx::datum::DatumWithOid]) -> SpiResult<Option<i64>> {
    Spi::connect_mut(|client| {
        let table = client.update(statement, None, args)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get::<i64>(1)
    })
}

/// The run a queued or running job of `window` belongs to (for the "already queued" message).
pub fn active_run_of(window: &Window) -> SpiResult<Option<String>> {
    Spi::get_one_with_args::<String>(
        "SELECT run_id::text FROM orders_sync.sync_jobs
         WHERE pipeline_id = $1 AND store_code = $2 AND from_date = $3 AND to_date = $4
           AND status IN ('queued', 'running')
         LIMIT 1",
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            clock::to_pg(window.from).into(),
            clock::to_pg(window.to).into(),
        ],
    )
}

/// Takes the store's session-level advisory lock without waiting. Held until released or
/// until the worker's session ends, so a free lock next to a `running` row means its worker
/// is gone.
pub fn try_lock_store(store_code: &str) -> SpiResult<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_try_advisory_lock(hashtext('orders_sync.store'), hashtext($1))",
        &[store_code.into()],
    )
    .map(|locked| locked.unwrap_or(false))
}

pub fn unlock_store(store_code: &str) -> SpiResult<()> {
    Spi::run_with_args("SELECT pg_advisory_unlock(hashtext('orders_sync.store'), hashtext($1))", &[store_code.into()])
}

/// Fails a job that never started (no log row): its store was busy, say.
pub fn fail_unstarted_job(job_id: i64, message: &str) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE orders_sync.sync_jobs
         SET status = 'failed', error_message = $2, finished_at = now()
         WHERE id = $1 AND status IN ('queued', 'running')",
        &[job_id.into(), message.into()],
    )
}

/// Starts an attempt: the log row (`running`, attempt_no = earlier attempts at the same
/// window + 1, docs/design.md#sync-log) and the job's running state, in the caller's transaction.
pub fn start_attempt(job_id: i64) -> SpiResult<Attempt> {
    Spi::connect_mut(|client| {
        let row = client
            .update(
                &format!(
                    r#"
                WITH job AS (
                    SELECT j.id, j.run_id, j.pipeline_id, j.store_code, j.from_date, j.to_date, r.run_env,
                           s.cost_center
                    FROM orders_sync.sync_jobs j
                    JOIN orders_sync.pipeline_run_summaries r ON r.run_id = j.run_id
                    LEFT JOIN orders_sync.store_master s ON s.store_code = j.store_code
                    -- Only a job still handed to this worker (queued for sync_window, claimed
                    -- by the launcher or by this worker): one that was failed as dead while its
                    -- worker was starting is not brought back to life.
                    WHERE j.id = $1 AND j.status IN ('queued', 'running')
                      AND (j.worker_pid IS NULL OR j.worker_pid = pg_backend_pid())
                ),
                logged AS (
                    INSERT INTO orders_sync.orders_sync_log
                        (pipeline_id, run_id, run_env, cost_center, store_code, from_date, to_date, status, attempt_no)
                    SELECT job.pipeline_id, job.run_id, job.run_env, job.cost_center, job.store_code,
                           job.from_date, job.to_date, 'running',
                           -- COLLATE "default": the log's store_code is not "C" like the job's,
                           -- and only in the index's collation is it an index condition (else
                           -- every store's rows of the same dates are read: docs/design.md#caps).
                           1 + (SELECT count(*) FROM orders_sync.orders_sync_log l
                                WHERE l.pipeline_id = job.pipeline_id
                                  AND l.store_code = job.store_code COLLATE "default"
                                  AND l.from_date = job.from_date AND l.to_date = job.to_date)
                    FROM job
                    RETURNING id
                ),
                started AS (
                    UPDATE orders_sync.sync_jobs j
                    SET status = 'running', log_id = logged.id, worker_pid = pg_backend_pid(),
                        started_at = now(), heartbeat_at = now(), error_message = NULL
                    FROM logged
                    WHERE j.id = $1
                    RETURNING j.id
                )
                SELECT logged.id AS log_id, j.pipeline_id, j.store_code::text AS store_code,
                       j.from_date, j.to_date, j.streams,
                       p.code AS pipeline_code, p.streams AS pipeline_streams,
                       p.max_pages_per_window, p.max_window_seconds, {SOURCE_COLUMNS}
                FROM logged
                CROSS JOIN orders_sync.sync_jobs j
                JOIN orders_sync.pipelines p ON p.id = j.pipeline_id
                LEFT JOIN orders_sync.pipeline_credentials c ON c.pipeline_id = p.id
                WHERE j.id = $1
                "#
                ),
                None,
                &[job_id.into()],
            )?
            .first();
        let store_code: String = row.get_by_name("store_code")?.unwrap_or_default();
        Ok(Attempt {
            job_id,
            log_id: row.get_by_name("log_id")?.unwrap_or_default(),
            window: Window {
                pipeline_id: row.get_by_name("pipeline_id")?.unwrap_or_default(),
                store_code,
                from: window_date(row.get_by_name("from_date")?)?,
                to: window_date(row.get_by_name("to_date")?)?,
            },
            pipeline_code: row.get_by_name("pipeline_code")?.unwrap_or_default(),
            pipeline_streams: row.get_by_name("pipeline_streams")?.unwrap_or_default(),
            streams: row.get_by_name("streams")?.unwrap_or_default(),
            source: source_settings(&row)?,
            bounds: PageBounds {
                max_pages: row
                    .get_by_name::<i32, _>("max_pages_per_window")?
                    .map_or(gucs::max_pages_per_window(), |v| v as u32),
                max_duration: Duration::from_secs(
                    row.get_by_name::<i32, _>("max_window_seconds")?.map_or(gucs::max_window_seconds(), |v| v as u64),
                ),
            },
        })
    })
}

/// What a source client needs of a pipeline `p` and its credentials `c`: the one list of
/// columns that [`source_settings`] reads.
pub const SOURCE_COLUMNS: &str = "p.id AS source_pipeline_id, p.base_url, p.source::text AS source_profile, \
     p.streams AS source_streams, p.timezone AS source_timezone, p.page_size, p.connect_timeout_ms, \
     p.read_timeout_ms, p.max_attempts, c.api_token, c.username, c.password, c.client_id, c.client_secret";

/// A source client's settings from a row holding [`SOURCE_COLUMNS`]; the pipeline's own
/// values, else the `orders_sync.http_*` settings.
pub fn source_settings(row: &pgrx::spi::SpiTupleTable<'_>) -> SpiResult<SourceSettings> {
    let millis = |value: Option<i32>, fallback: u64| Duration::from_millis(value.map_or(fallback, |v| v as u64));
    Ok(SourceSettings {
        pipeline_id: row.get_by_name("source_pipeline_id")?.unwrap_or_default(),
        base_url: row.get_by_name("base_url")?.unwrap_or_default(),
        profile: row.get_by_name("source_profile")?,
        streams: row.get_by_name("source_streams")?.unwrap_or_default(),
        timezone: row.get_by_name("source_timezone")?.unwrap_or_else(|| "UTC".to_owned()),
        credentials: Credentials {
            api_token: row.get_by_name("api_token")?,
            username: row.get_by_name("username")?,
            password: row.get_by_name("password")?,
            client_id: row.get_by_name("client_id")?,
            client_secret: row.get_by_name("client_secret")?,
        },
        page_size: row.get_by_name::<i32, _>("page_size")?.unwrap_or(1000) as u32,
        connect_timeout: millis(row.get_by_name("connect_timeout_ms")?, gucs::http_connect_timeout_ms()),
        read_timeout: millis(row.get_by_name("read_timeout_ms")?, gucs::http_read_timeout_ms()),
        max_attempts: row.get_by_name::<i32, _>("max_attempts")?.map_or(gucs::http_max_attempts(), |v| v as u32),
        retry_base_delay: Duration::from_millis(gucs::http_retry_base_delay_ms()),
        max_response_bytes: gucs::http_max_response_bytes(),
        allowed_hosts: gucs::allowed_source_hosts(),
    })
}

/// A window bound read back from `sync_jobs` (finite by its CHECK constraint).
fn window_date(date: Option<pgrx::datum::Date>) -> SpiResult<NaiveDate> {
    date.and_then(clock::from_pg).ok_or(pgrx::spi::Error::InvalidPosition)
}

/// For each of `streams`, where an earlier interrupted attempt at the same window stopped.
pub fn resume_points(window: &Window, streams: &[String]) -> SpiResult<Vec<ResumePoint>> {
    let mut points = Vec::with_capacity(streams.len());
    for stream in streams {
        let point = Spi::connect(|client| {
            let table = client.select(
                "SELECT page_no, next_page_token FROM orders_sync.window_pages
                 WHERE pipeline_id = $1 AND store_code = $2 AND from_date = $3 AND to_date = $4
                   AND stream = $5
                 ORDER BY page_no DESC LIMIT 1",
                None,
                &[
                    window.pipeline_id.into(),
                    window.store_code.as_str().into(),
                    clock::to_pg(window.from).into(),
                    clock::to_pg(window.to).into(),
                    stream.as_str().into(),
                ],
            )?;
            if table.is_empty() {
                return Ok::<_, pgrx::spi::Error>(ResumePoint::default());
            }
            let row = table.first();
            let last_page: i32 = row.get(1)?.unwrap_or(0);
            let token: Option<String> = row.get(2)?;
            Ok(ResumePoint { next_page_no: last_page + 1, complete: token.is_none(), page_token: token })
        })?;
        points.push(point);
    }
    Ok(points)
}

/// Marks an attempt that was stopped from outside (SIGTERM, cancel) as failed, keeping its
/// committed pages so that the next attempt at the window resumes from the cursor.
pub fn interrupt_attempt(job_id: i64, log_id: i64, message: &str) -> SpiResult<()> {
    Spi::run_with_args(
        "WITH logged AS (
             UPDATE orders_sync.orders_sync_log SET status = 'failed', error_message = $3 WHERE id = $2
         )
         UPDATE orders_sync.sync_jobs
         SET status = 'failed', error_message = $3, finished_at = now(), heartbeat_at = now()
         WHERE id = $1",
        &[job_id.into(), log_id.into(), message.into()],
    )
}

/// Closes a run: `finished_at`, overall status and per-pipeline counts from its jobs.
/// Returns the overall status.
pub fn finish_run(run_id: &str) -> SpiResult<WindowStatus> {
    let counts = Spi::connect(|client| {
        let table = client.select(
            "SELECT p.code,
                    count(*) FILTER (WHERE j.status = 'success'),
                    count(*) FILTER (WHERE j.status = 'partial'),
                    count(*) FILTER (WHERE j.status = 'failed'),
                    count(*) FILTER (WHERE j.status = 'skipped')
             FROM orders_sync.sync_jobs j
             JOIN orders_sync.pipelines p ON p.id = j.pipeline_id
             WHERE j.run_id = $1
             GROUP BY p.code
             ORDER BY p.code",
            None,
            &[run_id.into()],
        )?;
        let mut counts = Vec::new();
        for row in table {
            counts.push(RunCounts {
                pipeline: row.get::<String>(1)?.unwrap_or_default(),
                success: row.get::<i64>(2)?.unwrap_or(0),
                partial: row.get::<i64>(3)?.unwrap_or(0),
                failed: row.get::<i64>(4)?.unwrap_or(0),
                skipped: row.get::<i64>(5)?.unwrap_or(0),
            });
        }
        Ok::<_, pgrx::spi::Error>(counts)
    })?;
    let summary = run_summary(&counts);
    Spi::run_with_args(
        "UPDATE orders_sync.pipeline_run_summaries
         SET finished_at = now(), overall_status = $2, summary_text = $3, counts = $4::jsonb
         WHERE run_id = $1",
        &[
            run_id.into(),
            summary.status.as_str().into(),
            summary.text.as_str().into(),
            summary.counts_json.as_str().into(),
        ],
    )?;
    Ok(summary.status)
}

/// A run's cap: its `max_workers`, kept in its `parameters` (`$run` names the run's row).
macro_rules! run_cap {
    ($run:literal) => {
        concat!("coalesce((", $run, ".parameters ->> 'max_workers')::int, 1)")
    };
}

/// A pipeline's cap over all runs (docs/design.md#limits): its profile's
/// `limits.max_concurrent_stores`, NULL for none (`$pipeline` names the pipeline's row).
macro_rules! pipeline_cap {
    ($pipeline:literal) => {
        concat!("(", $pipeline, ".source -> 'limits' ->> 'max_concurrent_stores')::int")
    };
}

/// Serialises every decision that takes a worker slot (launcher ticks, job chaining), so
/// concurrent decisions never both see a free slot. Held until the caller's commit.
const DISPATCH_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('orders_sync.dispatch'), 0)";

/// Who claims windows, and which.
pub enum Claimant<'a> {
    /// The launcher's tick: any profiler run; the jobs wait for workers it starts.
    Launcher,
    /// A job worker whose window (job `after_job`) has just ended (its slot is free): one
    /// window of its own run, the same store's next one first; it runs the window itself.
    /// `epoch`: the dispatch epoch it read before that window ended ([`dispatch_epoch`]).
    Worker { run_id: &'a str, pipeline_id: i64, store_code: &'a str, after_job: i64, epoch: Option<u64> },
}

/// Claims the windows that may start now under the dispatch rules (`dispatch::choose`),
/// marking them `running`: with the worker's pid for a worker, without one for the launcher
/// (its worker reports in when it starts).
pub fn claim(claimant: &Claimant<'_>, profiler_pipeline: &str) -> SpiResult<Vec<Candidate>> {
    if matches!(claimant, Claimant::Launcher)
        && workers_hold_every_slot(profiler_pipeline, i64::from(gucs::max_workers()))?
    {
        return Ok(Vec::new());
    }
    Spi::run(DISPATCH_LOCK)?;
    if let Claimant::Worker { run_id, pipeline_id, store_code, after_job, epoch: Some(epoch) } = claimant {
        // Only if no slot was taken by counting since the worker's window ended: such a count
        // saw the worker's slot free (docs/design.md#caps).
        if dispatch_epoch() == Some(*epoch) {
            if let Some(next) = hand_on_slot(run_id, *pipeline_id, store_code, *after_job)? {
                return mark_claimed(vec![next], true);
            }
        }
    }
    let running = Spi::connect(|client| {
        let table = client.select(
            "SELECT run_id::text, store_code::text, pipeline_id FROM orders_sync.sync_jobs WHERE status = 'running'",
            None,
            &[],
        )?;
        let mut running = Vec::with_capacity(table.len());
        for row in table {
            running.push(dispatch::RunningJob {
                run_id: row.get::<String>(1)?.unwrap_or_default(),
                store_code: row.get::<String>(2)?.unwrap_or_default(),
                pipeline_id: row.get::<i64>(3)?.unwrap_or_default(),
            });
        }
        Ok::<_, pgrx::spi::Error>(running)
    })?;
    let cluster_cap = i64::from(gucs::max_workers());
    if running.len() as i64 >= cluster_cap {
        return Ok(Vec::new());
    }
    let (run_id, pipeline_id, store_code, limit) = match claimant {
        Claimant::Launcher => (None, None, None, usize::MAX),
        Claimant::Worker { run_id, pipeline_id, store_code, .. } => {
            (Some(*run_id), Some(*pipeline_id), Some(*store_code), 1)
        }
    };
    let by_worker = matches!(claimant, Claimant::Worker { .. });
    // Per window, what a claim reads must not grow with the run (docs/design.md#caps): while
    // a run is waited on, every claimed job leaves dead index entries behind that a scan from
    // the queue's start would visit again. So a worker first takes its store's next window
    // (the store's own index entries), then looks for a window after the one it just ran
    // (windows are queued in store order and handed out in id order); only when that finds
    // nothing does it read the whole queue, which then also finds any window passed over.
    if let Claimant::Worker { run_id, pipeline_id, store_code, after_job, .. } = claimant {
        for nearby in [next_window_of_store(run_id, *pipeline_id, store_code)?, windows_after(run_id, *after_job)?] {
            let chosen = dispatch::choose(&nearby, &running, cluster_cap, 1);
            if !chosen.is_empty() {
                slot_taken_by_count();
                return mark_claimed(chosen, by_worker);
            }
        }
    } else if every_run_at_cap(profiler_pipeline, &running)? {
        // The launcher's tick while workers chain their windows: nothing to hand out.
        return Ok(Vec::new());
    }
    let candidates = candidates_of(
        // Set-based on purpose: a run may queue thousands of windows, and a correlated
        // "no earlier open window of this store" check would be quadratic in them. (While
        // a run is waited on with `wait => true`, the waiting call holds back the xmin
        // horizon, so every finished job leaves dead index entries a per-window probe
        // would visit again.)
        concat!(
            "WITH open AS MATERIALIZED (
             SELECT j.id, j.run_id, j.pipeline_id, j.store_code, j.from_date, j.status, r.started_at,
                    ",
            run_cap!("r"),
            " AS run_cap
             FROM orders_sync.pipeline_run_summaries r
             JOIN orders_sync.sync_jobs j ON j.run_id = r.run_id AND j.status IN ('queued', 'failed', 'partial')
             WHERE r.overall_status = 'running' AND r.pipeline_name = $1
               AND ($2::text IS NULL OR r.run_id = $2)
         ),
         firsts AS (
             -- Each store's earliest open window of each run. A store with a failed or
             -- partial window sorts that first and so drops out: its later windows wait
             -- to be skipped.
             SELECT DISTINCT ON (run_id, pipeline_id, store_code)
                    id, run_id, pipeline_id, store_code, status, started_at, run_cap
             FROM open
             ORDER BY run_id, pipeline_id, store_code, status = 'queued', from_date, id
         )
         SELECT f.id, f.run_id::text, f.store_code::text, f.run_cap, f.pipeline_id, ",
            pipeline_cap!("p"),
            "
         FROM firsts f
         JOIN orders_sync.pipelines p ON p.id = f.pipeline_id
         WHERE f.status = 'queued'
         ORDER BY coalesce(f.pipeline_id = $3 AND f.store_code = $4, false) DESC, f.started_at, f.id"
        ),
        &[profiler_pipeline.into(), run_id.into(), pipeline_id.into(), store_code.into()],
    )?;
    let chosen = dispatch::choose(&candidates, &running, cluster_cap, limit);
    if !chosen.is_empty() {
        slot_taken_by_count();
    }
    mark_claimed(chosen, by_worker)
}

/// The dispatch epoch (`shared_memory::dispatch_epoch`); `None` without shared memory, and
/// then a worker always counts.
pub fn dispatch_epoch() -> Option<u64> {
    crate::shared_memory::dispatch_epoch().map(|epoch| epoch.load(std::sync::atomic::Ordering::SeqCst))
}

/// Moves the dispatch epoch: a slot was taken by counting the running jobs, which may have
/// seen the slot of a worker between two windows as free, so that worker must count too.
/// Called after the count, under the dispatch lock (or by `sync_window`, which takes a slot
/// without counting).
pub fn slot_taken_by_count() {
    if let Some(epoch) = crate::shared_memory::dispatch_epoch() {
        epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The window a job worker whose window has just ended takes in its place without counting
/// the running jobs (`dispatch::hand_on`): its store's next window, else one after the window
/// it ran. While a run is waited on, every claimed job leaves dead entries in the running
/// jobs' index that nothing can remove during the run, so counting them would make each claim
/// slower than the last, and the dispatch lock makes every other claim wait for it. None:
/// nothing to hand on to, or a capped pipeline's count decides; `claim` then counts.
fn hand_on_slot(run_id: &str, pipeline_id: i64, store_code: &str, after_job: i64) -> SpiResult<Option<Candidate>> {
    let nearby: [&dyn Fn() -> SpiResult<Vec<Candidate>>; 2] =
        [&|| next_window_of_store(run_id, pipeline_id, store_code), &|| windows_after(run_id, after_job)];
    for candidates in nearby {
        let candidates = candidates()?;
        match dispatch::hand_on(&candidates, &busy_stores(&candidates)?) {
            dispatch::HandOn::To(next) => return Ok(Some(next)),
            dispatch::HandOn::NeedsCount => return Ok(None),
            dispatch::HandOn::NoneFree => {}
        }
    }
    Ok(None)
}

/// Which of the candidates' stores run a window now, whatever the run: read through those
/// stores' own entries of `ix_sync_jobs_running`.
fn busy_stores(candidates: &[Candidate]) -> SpiResult<std::collections::HashSet<String>> {
    if candidates.is_empty() {
        return Ok(Default::default());
    }
    let stores: Vec<&str> = candidates.iter().map(|c| c.store_code.as_str()).collect();
    Spi::connect(|client| {
        let mut busy = std::collections::HashSet::new();
        for row in client.select(
            "SELECT DISTINCT store_code::text FROM orders_sync.sync_jobs
             WHERE status = 'running' AND store_code = ANY ($1::text[])",
            None,
            &[stores.into()],
        )? {
            busy.insert(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok(busy)
    })
}

/// Marks `chosen` running: with the worker's pid for a worker, without one for the launcher.
fn mark_claimed(chosen: Vec<Candidate>, by_worker: bool) -> SpiResult<Vec<Candidate>> {
    if chosen.is_empty() {
        return Ok(chosen);
    }
    let ids: Vec<i64> = chosen.iter().map(|c| c.job_id).collect();
    // Only the jobs this statement claimed: one that left `queued` meanwhile is not handed out.
    let claimed: Vec<i64> = Spi::connect_mut(|client| {
        let table = client.update(
            "UPDATE orders_sync.sync_jobs
             SET status = 'running', worker_pid = CASE WHEN $2 THEN pg_backend_pid() END,
                 started_at = now(), heartbeat_at = now()
             WHERE id = ANY ($1) AND status = 'queued'
             RETURNING id",
            None,
            &[ids.into(), by_worker.into()],
        )?;
        let mut claimed = Vec::with_capacity(table.len());
        for row in table {
            claimed.push(row.get::<i64>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::Error>(claimed)
    })?;
    Ok(chosen.into_iter().filter(|c| claimed.contains(&c.job_id)).collect())
}

/// The store's next queued window of the run, unless one of its windows failed or ended
/// partial in it (its later windows are skipped), as a dispatch candidate.
fn next_window_of_store(run_id: &str, pipeline_id: i64, store_code: &str) -> SpiResult<Vec<Candidate>> {
    candidates_of(
        concat!(
            "SELECT j.id, j.run_id::text, j.store_code::text, ",
            run_cap!("r"),
            ", j.pipeline_id, ",
            pipeline_cap!("p"),
            "
         FROM orders_sync.sync_jobs j
         JOIN orders_sync.pipeline_run_summaries r ON r.run_id = j.run_id AND r.overall_status = 'running'
         JOIN orders_sync.pipelines p ON p.id = j.pipeline_id
         WHERE j.pipeline_id = $2 AND j.store_code = $3 AND j.status = 'queued' AND j.run_id = $1
           AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs f
                           WHERE f.run_id = $1 AND f.status IN ('failed', 'partial')
                             AND f.pipeline_id = $2 AND f.store_code = $3)
         ORDER BY j.from_date, j.id
         LIMIT 1"
        ),
        &[run_id.into(), pipeline_id.into(), store_code.into()],
    )
}

/// The run's queued windows after job `after_job`, in id order, each only if it is its
/// store's first open window and none of the store's windows failed or ended partial in the
/// run: read from `after_job` on (ix_sync_jobs_queued), a few at a time.
fn windows_after(run_id: &str, after_job: i64) -> SpiResult<Vec<Candidate>> {
    candidates_of(
        concat!(
            "SELECT n.id, n.run_id::text, n.store_code::text, ",
            run_cap!("r"),
            ", n.pipeline_id, ",
            pipeline_cap!("p"),
            "
         FROM orders_sync.pipeline_run_summaries r
         CROSS JOIN LATERAL (
             SELECT j.id, j.run_id, j.pipeline_id, j.store_code, j.from_date FROM orders_sync.sync_jobs j
             WHERE j.run_id = r.run_id AND j.status = 'queued' AND j.id > $2
             ORDER BY j.id LIMIT 64
         ) n
         JOIN orders_sync.pipelines p ON p.id = n.pipeline_id
         WHERE r.run_id = $1 AND r.overall_status = 'running'
           AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs e
                           WHERE e.pipeline_id = n.pipeline_id AND e.store_code = n.store_code
                             AND e.status IN ('queued', 'running') AND e.run_id = n.run_id
                             AND (e.from_date, e.id) < (n.from_date, n.id))
           AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs f
                           WHERE f.run_id = n.run_id AND f.status IN ('failed', 'partial')
                             AND f.pipeline_id = n.pipeline_id AND f.store_code = n.store_code)
         ORDER BY n.id"
        ),
        &[run_id.into(), after_job.into()],
    )
}

/// The dispatch candidates a query returns, one a row: job id, run id, store code, the run's
/// cap, pipeline id and the pipeline's cap (NULL: none).
fn candidates_of(query: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> SpiResult<Vec<Candidate>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(query, None, args)? {
            out.push(Candidate {
                job_id: row.get::<i64>(1)?.unwrap_or_default(),
                run_id: row.get::<String>(2)?.unwrap_or_default(),
                store_code: row.get::<String>(3)?.unwrap_or_default(),
                run_cap: i64::from(row.get::<i32>(4)?.unwrap_or(1)),
                pipeline_id: row.get::<i64>(5)?.unwrap_or_default(),
                pipeline_cap: row.get::<i32>(6)?.map(i64::from),
            });
        }
        Ok(out)
    })
}

/// Whether every running profiler run already runs its `max_workers` windows.
fn every_run_at_cap(profiler_pipeline: &str, running: &[dispatch::RunningJob]) -> SpiResult<bool> {
    Spi::connect(|client| {
        for row in client.select(
            concat!(
                "SELECT r.run_id::text, ",
                run_cap!("r"),
                " FROM orders_sync.pipeline_run_summaries r
                 WHERE r.overall_status = 'running' AND r.pipeline_name = $1"
            ),
            None,
            &[profiler_pipeline.into()],
        )? {
            let run_id = row.get::<String>(1)?.unwrap_or_default();
            let cap = i64::from(row.get::<i32>(2)?.unwrap_or(1));
            if (running.iter().filter(|job| job.run_id == run_id).count() as i64) < cap {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Whether the running profiler runs have as many job workers alive as their caps add up to,
/// or as the cluster's cap: a worker between two windows of its run holds its slot (it claims
/// its next window itself), so the launcher neither reads the queue for it nor takes its slot. Asked of the processes
/// (`pg_stat_activity`), not of `sync_jobs`, and before the dispatch lock: this is the
/// launcher's tick while workers chain their windows, and it need not wait for their claims.
fn workers_hold_every_slot(profiler_pipeline: &str, cluster_cap: i64) -> SpiResult<bool> {
    Spi::get_one_with_args::<bool>(
        concat!(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity
                     WHERE backend_type = 'orders_sync job' AND datname = current_database())
                    >= least(sum(",
            run_cap!("r"),
            "), $2)
             FROM orders_sync.pipeline_run_summaries r
             WHERE r.overall_status = 'running' AND r.pipeline_name = $1"
        ),
        &[profiler_pipeline.into(), cluster_cap.into()],
    )
    .map(|held| held.unwrap_or(false))
}

/// A job worker reports in as soon as it starts, before it waits for its store's lock: from
/// then on its claim is judged by its process, not by the launcher that made it. False when
/// the claim was failed as dead meanwhile; the worker then leaves it alone.
pub fn report_in(job_id: i64) -> SpiResult<bool> {
    Ok(first_i64(
        "UPDATE orders_sync.sync_jobs SET worker_pid = pg_backend_pid(), heartbeat_at = now()
         WHERE id = $1 AND status = 'running' AND (worker_pid IS NULL OR worker_pid = pg_backend_pid())
         RETURNING id",
        &[job_id.into()],
    )?
    .is_some())
}

/// Gives a claimed job back to the queue when no worker could be started for it.
pub fn unclaim(job_id: i64) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE orders_sync.sync_jobs SET status = 'queued', started_at = NULL, heartbeat_at = NULL
         WHERE id = $1 AND status = 'running' AND worker_pid IS NULL",
        &[job_id.into()],
    )
}
