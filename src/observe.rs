//! The "observe" stage's one writer: `reset_stuck_runs` (docs/design.md#healing). The views are
//! plain SQL in `sql/observe.sql`.

use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::errors::{OrRaise, SqlError, SqlResult};
use crate::outcome::STUCK_MESSAGE;
use crate::queue;

/// kind ('window' | 'job' | 'run'), run_id, store_code, from_date, to_date, detail.
type ResetRow = (String, String, Option<String>, Option<pgrx::datum::Date>, Option<pgrx::datum::Date>, String);

/// `orders_sync.reset_stuck_runs(older_than)`: fails `running` log rows and jobs whose worker
/// is gone — the store's advisory lock is free, the worker is gone by the one definition the
/// launcher also heals by (`orders_sync.job_worker_gone`), and nothing was heard from it for
/// `older_than` — then closes the runs left with nothing to do.
/// A window whose worker is alive holds its store's lock, so it is never touched, however
/// long it runs. Returns one row per log row, job and run it reset.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)] // the SQL function's result columns, spelled out for pgrx
fn reset_stuck_runs(
    older_than: default!(Option<pgrx::datum::Interval>, "'1 hour'"),
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(run_id, String),
        name!(store_code, Option<String>),
        name!(from_date, Option<pgrx::datum::Date>),
        name!(to_date, Option<pgrx::datum::Date>),
        name!(detail, String),
    ),
> {
    TableIterator::new(reset(older_than).or_raise())
}

fn reset(older_than: Option<pgrx::datum::Interval>) -> SqlResult<Vec<ResetRow>> {
    let hint = "Pass an interval such as '1 hour'; '0' resets every row whose worker is gone.";
    let older_than =
        older_than.ok_or_else(|| SqlError::invalid_argument("older_than", "must not be NULL").with_hint(hint))?;
    let negative = Spi::get_one_with_args::<bool>("SELECT $1::interval < interval '0'", &[older_than.into()])?;
    if negative.unwrap_or(false) {
        return Err(SqlError::invalid_argument("older_than", "must not be negative").with_hint(hint));
    }
    Ok(reset_gone(older_than)?)
}

/// Adds the rows a reset statement returned (run_id, store_code, from_date, to_date, detail)
/// as `kind`.
fn push_reset_rows(rows: &mut Vec<ResetRow>, kind: &str, table: pgrx::spi::SpiTupleTable<'_>) -> SpiResult<()> {
    for row in table {
        rows.push((
            kind.to_string(),
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?,
            row.get::<pgrx::datum::Date>(3)?,
            row.get::<pgrx::datum::Date>(4)?,
            row.get::<String>(5)?.unwrap_or_default(),
        ));
    }
    Ok(())
}

fn reset_gone(older_than: pgrx::datum::Interval) -> SpiResult<Vec<ResetRow>> {
    let mut rows = Vec::new();
    Spi::connect_mut(|client| {
        // Log rows (and their jobs) whose worker is gone.
        let reset_logs = client.update(
            r#"
            WITH gone AS (
                SELECT l.id AS log_id, j.id AS job_id
                FROM orders_sync.orders_sync_log l
                LEFT JOIN orders_sync.sync_jobs j ON j.log_id = l.id
                WHERE l.status = 'running'
                  AND coalesce(j.heartbeat_at, l.updated_at) < now() - $1::interval
                  AND NOT orders_sync.store_lock_held(l.store_code)
                  AND orders_sync.job_worker_gone(j.worker_pid, j.heartbeat_at)
                FOR UPDATE OF l SKIP LOCKED
            ),
            jobs AS (
                UPDATE orders_sync.sync_jobs j
                SET status = 'failed', error_message = $2, finished_at = now()
                FROM gone WHERE j.id = gone.job_id AND j.status = 'running'
            )
            UPDATE orders_sync.orders_sync_log l
            SET status = 'failed', error_message = $2
            FROM gone WHERE l.id = gone.log_id
            RETURNING l.run_id::text, l.store_code::text, l.from_date, l.to_date,
                      format('log row %s (attempt %s) failed', l.id, l.attempt_no)
            "#,
            None,
            &[older_than.into(), STUCK_MESSAGE.into()],
        )?;
        push_reset_rows(&mut rows, "window", reset_logs)?;
        // Jobs marked running that never got as far as a log row, with their worker gone.
        let reset_jobs = client.update(
            r#"
            UPDATE orders_sync.sync_jobs j
            SET status = 'failed', error_message = $2, finished_at = now()
            WHERE j.status = 'running' AND j.log_id IS NULL
              AND coalesce(j.heartbeat_at, j.updated_at) < now() - $1::interval
              AND NOT orders_sync.store_lock_held(j.store_code)
              AND orders_sync.job_worker_gone(j.worker_pid, j.heartbeat_at)
            RETURNING j.run_id::text, j.store_code::text, j.from_date, j.to_date, format('job %s failed', j.id)
            "#,
            None,
            &[older_than.into(), STUCK_MESSAGE.into()],
        )?;
        push_reset_rows(&mut rows, "job", reset_jobs)?;
        // Runs left running with nothing queued or running and no running log row.
        let idle_runs = client.update(
            r#"
            SELECT r.run_id::text, EXISTS (SELECT 1 FROM orders_sync.sync_jobs j WHERE j.run_id = r.run_id)
            FROM orders_sync.pipeline_run_summaries r
            WHERE r.overall_status = 'running'
              AND r.started_at < now() - $1::interval
              AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs j
                              WHERE j.run_id = r.run_id AND j.status IN ('queued', 'running'))
              AND NOT EXISTS (SELECT 1 FROM orders_sync.orders_sync_log l
                              WHERE l.run_id = r.run_id AND l.status = 'running')
            FOR UPDATE OF r SKIP LOCKED
            "#,
            None,
            &[older_than.into()],
        )?;
        let mut runs = Vec::new();
        for row in idle_runs {
            runs.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<bool>(2)?.unwrap_or(false)));
        }
        Ok::<_, pgrx::spi::Error>(runs)
    })
    .and_then(|runs| {
        for (run_id, has_jobs) in runs {
            let detail = if has_jobs {
                format!("run closed as {}", queue::finish_run(&run_id)?)
            } else {
                // No jobs to count (a run that died before queueing, or one made by hand).
                Spi::run_with_args(
                    "UPDATE orders_sync.pipeline_run_summaries
                     SET overall_status = 'failed', finished_at = now(), summary_text = $2
                     WHERE run_id = $1",
                    &[run_id.as_str().into(), STUCK_MESSAGE.into()],
                )?;
                "run closed as failed".to_string()
            };
            rows.push(("run".to_string(), run_id, None, None, None, detail));
        }
        Ok(rows)
    })
}
