//! Background workers: the window executor (fetch → write, page by page) and the dynamic
//! worker that `sync_window` starts for one manual window.
//!
//! A SQL function cannot commit, so everything that must commit page by page runs here, in
//! a worker that owns its transactions: each page's records and cursor commit together, and
//! no transaction is open while a page is being fetched.

use chrono::{NaiveDate, Utc};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::bgw::{self, in_transaction, in_transaction_or_log, WorkerRequest};
use crate::clock;
use crate::errors::{OrRaise, SqlError, SqlResult};
use crate::fetch::{with_signals_blocked, FetchError, PageGuard, PageRequest, SourceClient};
use crate::names;
use crate::outcome::{continue_after, select_streams, window_status, JobStatus, PulledStamp, WindowStatus};
use crate::queue::{self, Attempt};
use crate::write::{self, Completion, Window};

/// How a job ended, as seen by the code that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Completed(WindowStatus),
    /// Stopped from outside; pages committed so far are kept for the next attempt.
    Interrupted,
    /// Never started: the store was busy or the job could not be read.
    NotStarted(String),
}

/// Runs one queued job to its end: the store's lock, the log row, each selected stream page
/// by page from its saved cursor, then the completion. Never panics on a source's or the
/// database's error: every failure ends up as a status and an `error_message`.
pub fn run_job(job_id: i64, store_code: &str) -> JobEnd {
    // Page commits need not wait for the WAL flush: a page lost in a crash was committed
    // together with its cursor, so the next attempt simply fetches it again, and commit order
    // is kept, so the log can never say `success` for pages that were lost.
    in_transaction_or_log("turn off synchronous_commit", || Spi::run("SET synchronous_commit = off"));
    match in_transaction(|| queue::try_lock_store(store_code)) {
        Ok(true) => {}
        Ok(false) => {
            let message = format!("store {store_code} is busy: another orders_sync worker holds its lock");
            in_transaction_or_log("fail the job", || queue::fail_unstarted_job(job_id, &message));
            return JobEnd::NotStarted(message);
        }
        Err(message) => return JobEnd::NotStarted(message),
    }
    let end = run_locked_job(job_id);
    in_transaction_or_log("release the store lock", || queue::unlock_store(store_code));
    end
}

/// How one stream of a window ended.
struct StreamOutcome {
    stream: String,
    /// Pulled to its last page (in this attempt or an interrupted earlier one).
    pulled: bool,
    /// The window held no records of the stream when this attempt began pulling it.
    fresh: bool,
    /// What failed, for the window's `error_message`.
    error: Option<String>,
}

fn run_locked_job(job_id: i64) -> JobEnd {
    let attempt = match in_transaction(|| queue::start_attempt(job_id)) {
        Ok(attempt) => attempt,
        Err(message) => {
            let message = format!("could not start job {job_id}: {message}");
            in_transaction_or_log("fail the job", || queue::fail_unstarted_job(job_id, &message));
            return JobEnd::NotStarted(message);
        }
    };
    let failed_before_any_stream = |message: String| {
        let stream = attempt.streams.first().cloned().unwrap_or_default();
        vec![StreamOutcome { stream, pulled: false, fresh: false, error: Some(message) }]
    };
    let client = match source_client(&attempt.source) {
        Ok(client) => client,
        Err(error) => return finish(&attempt, &failed_before_any_stream(format!("source settings: {error}"))),
    };
    let resume = match in_transaction(|| queue::resume_points(&attempt.window, &attempt.streams)) {
        Ok(points) => points,
        Err(message) => return finish(&attempt, &failed_before_any_stream(message)),
    };

    let mut outcomes: Vec<StreamOutcome> = Vec::new();
    for (position, (stream, point)) in attempt.streams.iter().zip(resume).enumerate() {
        let stamp =
            PulledStamp::for_position(attempt.pipeline_streams.iter().position(|s| s == stream).unwrap_or(position));
        let result = if point.complete {
            // Pulled completely by an interrupted earlier attempt: only the stamp is new.
            in_transaction(|| write::stamp_pulled(attempt.log_id, stamp)).map(|()| false).map_err(StreamError::Write)
        } else {
            pull_stream(&client, &attempt, stream, stamp, point.next_page_no.max(1), point.page_token)
        };
        let outcome = match result {
            Ok(fresh) => StreamOutcome { stream: stream.clone(), pulled: true, fresh, error: None },
            Err(StreamError::Stopped { page_no }) => {
                let message = format!(
                    "{}: {stream} page {page_no} not fetched; the next attempt resumes from the saved cursor",
                    bgw::stop_reason()
                );
                in_transaction_or_log("record the interruption", || {
                    queue::interrupt_attempt(attempt.job_id, attempt.log_id, &message)
                });
                return JobEnd::Interrupted;
            }
            Err(error) => StreamOutcome {
                stream: stream.clone(),
                pulled: false,
                fresh: false,
                error: Some(error.describe(stream)),
            },
        };
        let pulled = outcome.pulled;
        outcomes.push(outcome);
        if !continue_after(position, pulled) {
            break;
        }
    }
    finish(&attempt, &outcomes)
}

thread_local! {
    /// The last client this worker built, reused while the settings stay the same: a job
    /// worker runs window after window of the same pipeline, and building a client (TLS
    /// roots, a runtime thread) costs tens of milliseconds a time, besides the kept-alive
    /// connection to the source.
    static SOURCE_CLIENT: std::cell::RefCell<Option<(crate::fetch::SourceSettings, std::rc::Rc<SourceClient>)>> =
        const { std::cell::RefCell::new(None) };
}

fn source_client(settings: &crate::fetch::SourceSettings) -> Result<std::rc::Rc<SourceClient>, FetchError> {
    SOURCE_CLIENT.with(|cached| {
        let mut cached = cached.borrow_mut();
        if let Some((cached_settings, client)) = cached.as_ref() {
            if cached_settings == settings {
                return Ok(client.clone());
            }
        }
        // reqwest starts a runtime thread; it must never run PostgreSQL's signal handlers.
        let client = std::rc::Rc::new(with_signals_blocked(|| SourceClient::new(settings.clone()))?);
        *cached = Some((settings.clone(), client.clone()));
        Ok(client)
    })
}

enum StreamError {
    Fetch { page_no: i32, error: FetchError },
    Write(String),
    Stopped { page_no: i32 },
}

impl StreamError {
    /// The error_message part for this stream: what failed, where. Fetch errors are already
    /// scrubbed of the token by the fetch stage.
    fn describe(&self, stream: &str) -> String {
        match self {
            StreamError::Fetch { page_no, error } => format!("{stream} page {page_no}: {error}"),
            StreamError::Write(message) => format!("{stream}: could not write: {message}"),
            StreamError::Stopped { page_no } => format!("{stream} page {page_no}: stopped"),
        }
    }
}

/// Pulls one stream from `page_no` / `page_token` to its last page, committing each page
/// with its cursor; the stream's pulled-at stamp commits with its last page. Returns whether
/// the window held no records of the stream when it started.
///
/// Pages are fetched one ahead on a helper thread, so HTTP and parsing overlap the previous
/// page's write. Only this (main) thread touches PostgreSQL; the cursor saved with a page is
/// always that page's own `next_page_token`, so a page fetched ahead and never written is
/// simply fetched again by the next attempt.
fn pull_stream(
    client: &SourceClient,
    attempt: &Attempt,
    stream: &str,
    stamp: PulledStamp,
    first_page_no: i32,
    first_token: Option<String>,
) -> Result<bool, StreamError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    // A window with no records of this stream yet (the usual backfill) can hold no stale
    // records when it completes: its completion skips looking for them.
    let fresh = in_transaction(|| write::window_is_empty(&attempt.window, stream)).map_err(StreamError::Write)?;
    let stop = AtomicBool::new(false);
    let (pages, received) = mpsc::sync_channel::<(i32, Result<crate::fetch::Page, FetchError>)>(1);
    std::thread::scope(|scope| {
        let stop = &stop;
        // Spawned with every signal blocked: PostgreSQL's handlers must run on this thread only.
        with_signals_blocked(|| {
            scope.spawn(move || {
                let mut guard =
                    PageGuard::new(attempt.bounds, std::time::Instant::now(), first_page_no, first_token.as_deref());
                if let Err(hit) = guard.may_start(first_page_no) {
                    let _ = pages.send((first_page_no, Err(FetchError::Bound(hit))));
                    return;
                }
                let mut page_no = first_page_no;
                let mut token = first_token;
                loop {
                    let request = PageRequest {
                        store_code: &attempt.window.store_code,
                        stream,
                        from: attempt.window.from,
                        to: attempt.window.to,
                        page_token: token.as_deref(),
                    };
                    let result = client.fetch_page(&request, &|| stop.load(Ordering::Relaxed));
                    let next = result.as_ref().ok().and_then(|page| page.next_page_token.clone());
                    // A page past a bound is not fetched: the window fails there, its pages
                    // so far committed (this one too: it is sent first).
                    let bound =
                        next.as_deref().and_then(|next| guard.follow(page_no, next, std::time::Instant::now()).err());
                    let done = next.is_none();
                    if pages.send((page_no, result)).is_err() || done {
                        return;
                    }
                    page_no += 1;
                    if let Some(hit) = bound {
                        let _ = pages.send((page_no, Err(FetchError::Bound(hit))));
                        return;
                    }
                    token = next;
                }
            })
        });
        let outcome = write_pages(attempt, stream, stamp, first_page_no, &received, stop);
        // Whatever happened, let the fetcher finish: it stops at its next check or send.
        stop.store(true, Ordering::Relaxed);
        drop(received);
        outcome.map(|()| fresh)
    })
}

/// The main-thread half of `pull_stream`: waits for each fetched page (watching for
/// SIGTERM/cancel meanwhile) and commits it.
fn write_pages(
    attempt: &Attempt,
    stream: &str,
    stamp: PulledStamp,
    first_page_no: i32,
    received: &std::sync::mpsc::Receiver<(i32, Result<crate::fetch::Page, FetchError>)>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), StreamError> {
    use std::sync::mpsc::RecvTimeoutError;
    let mut next_page_no = first_page_no;
    // Where a stream's time goes: waiting for the source vs writing (DEBUG1 in the server log).
    let (mut waited, mut written) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let report = |waited: std::time::Duration, written: std::time::Duration, pages: i32| {
        debug1!(
            "orders_sync: store {} {stream}: {pages} pages, {} ms waiting for the source, {} ms writing",
            attempt.window.store_code,
            waited.as_millis(),
            written.as_millis()
        );
    };
    loop {
        if bgw::stop_requested() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(StreamError::Stopped { page_no: next_page_no });
        }
        let wait_started = std::time::Instant::now();
        let received_page = received.recv_timeout(std::time::Duration::from_millis(100));
        waited += wait_started.elapsed();
        let (page_no, result) = match received_page {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Err(StreamError::Stopped { page_no: next_page_no }),
        };
        let page = match result {
            Ok(page) => page,
            Err(FetchError::Cancelled { .. }) => return Err(StreamError::Stopped { page_no }),
            Err(error) => return Err(StreamError::Fetch { page_no, error }),
        };
        let next_token = page.next_page_token.clone();
        let last = next_token.is_none();
        let write_started = std::time::Instant::now();
        in_transaction(|| -> pgrx::spi::SpiResult<()> {
            write::write_page(&attempt.window, attempt.job_id, stream, page_no, page.records, next_token.as_deref())?;
            if last {
                write::stamp_pulled(attempt.log_id, stamp)?;
            }
            Ok(())
        })
        .map_err(|message| StreamError::Write(format!("page {page_no}: {message}")))?;
        written += write_started.elapsed();
        if last {
            report(waited, written, page_no - first_page_no + 1);
            return Ok(());
        }
        next_page_no = page_no + 1;
    }
}

/// Completes the window from its streams' outcomes: status, stale-record removal, KPI
/// refresh and the log row, in one transaction (`write::complete_window`).
fn finish(attempt: &Attempt, outcomes: &[StreamOutcome]) -> JobEnd {
    let pulled: Vec<bool> = outcomes.iter().map(|o| o.pulled).collect();
    let completed_streams: Vec<String> = outcomes.iter().filter(|o| o.pulled).map(|o| o.stream.clone()).collect();
    let fresh_streams: Vec<String> =
        outcomes.iter().filter(|o| o.pulled && o.fresh).map(|o| o.stream.clone()).collect();
    let errors: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    let error_message = (!errors.is_empty()).then(|| errors.join("; "));
    let status = window_status(&pulled);
    let completion = Completion {
        window: &attempt.window,
        pipeline_code: &attempt.pipeline_code,
        job_id: attempt.job_id,
        log_id: attempt.log_id,
        streams: &attempt.streams,
        completed_streams: &completed_streams,
        fresh_streams: &fresh_streams,
        status,
        error_message: error_message.as_deref(),
    };
    match in_transaction(|| write::complete_window(&completion)) {
        Ok(_) => JobEnd::Completed(status),
        Err(message) => {
            // The completion itself failed: record that, truthfully, without the data steps.
            let message = format!("could not complete the window: {message}");
            in_transaction_or_log("record the failed completion", || {
                queue::interrupt_attempt(attempt.job_id, attempt.log_id, &message)
            });
            JobEnd::Completed(WindowStatus::Failed)
        }
    }
}

// ---------------------------------------------------------------------------------------
// sync_window: one manual window, run by a dynamic worker the caller waits for.
// ---------------------------------------------------------------------------------------

/// What the caller of `sync_window` hands its worker (`bgw::WorkerRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualWindow {
    pub run_id: String,
    pub run_env: String,
    pub pipeline_id: i64,
    pub store_code: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub orders_only: bool,
    pub sales_only: bool,
}

impl WorkerRequest for ManualWindow {
    const KIND: &'static str = "sync_window";
    const FUNCTION: &'static str = "orders_sync_window_worker";

    fn fields(&self) -> Vec<String> {
        vec![
            self.run_id.clone(),
            self.run_env.clone(),
            self.pipeline_id.to_string(),
            self.store_code.clone(),
            bgw::encode_date(self.from),
            bgw::encode_date(self.to),
            format!("{}{}", u8::from(self.orders_only), u8::from(self.sales_only)),
        ]
    }

    fn from_fields(fields: &[&str]) -> Option<Self> {
        let [run_id, run_env, pipeline_id, store_code, from, to, flags] = fields else {
            return None;
        };
        let flags = flags.as_bytes();
        Some(ManualWindow {
            run_id: run_id.to_string(),
            run_env: run_env.to_string(),
            pipeline_id: pipeline_id.parse().ok()?,
            store_code: store_code.to_string(),
            from: bgw::decode_date(from)?,
            to: bgw::decode_date(to)?,
            orders_only: *flags.first()? == b'1',
            sales_only: *flags.get(1)? == b'1',
        })
    }
}

/// Entry point of the dynamic worker started by `sync_window`: argument = the caller's
/// database OID, `bgw_extra` = its `ManualWindow`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn orders_sync_window_worker(argument: pg_sys::Datum) {
    let Some(request) = bgw::start_dynamic::<ManualWindow>(argument) else {
        return;
    };
    match in_transaction(|| queue_manual_window(&request)) {
        Ok(Ok(job_id)) => {
            // The window takes a cluster slot without counting (docs/design.md#caps): job
            // workers count again rather than hand their slots on, so they give way to it.
            queue::slot_taken_by_count();
            run_job(job_id, &request.store_code);
            in_transaction_or_log(&format!("close run {}", request.run_id), || queue::finish_run(&request.run_id));
        }
        Ok(Err(active_run)) => {
            // The run ends with nothing done; the note (written after the close, which sets
            // `counts`) tells the waiting caller why.
            let note = format!("window already queued or running in run {active_run}");
            in_transaction_or_log(&format!("close run {}", request.run_id), || {
                queue::finish_run(&request.run_id)?;
                Spi::run_with_args(
                    "UPDATE orders_sync.pipeline_run_summaries SET counts = counts || jsonb_build_object('note', $2::text)
                     WHERE run_id = $1",
                    &[request.run_id.as_str().into(), note.as_str().into()],
                )
            });
        }
        Err(message) => log!("orders_sync: sync_window could not queue its window: {message}"),
    }
}

/// The manual run and its one job; `Err(run)` when the window is already queued or running in
/// another run.
fn queue_manual_window(request: &ManualWindow) -> pgrx::spi::SpiResult<Result<i64, String>> {
    let streams: Vec<String> = Spi::get_one_with_args::<Vec<String>>(
        "SELECT streams FROM orders_sync.pipelines WHERE id = $1",
        &[request.pipeline_id.into()],
    )?
    .unwrap_or_default();
    let streams = select_streams(&streams, request.orders_only, request.sales_only).unwrap_or_default();
    let parameters = serde_json::json!({
        "pipeline_id": request.pipeline_id,
        "store_code": request.store_code,
        "from_date": request.from.to_string(),
        "to_date": request.to.to_string(),
        "orders_only": request.orders_only,
        "sales_only": request.sales_only,
    })
    .to_string();
    queue::create_run(&request.run_id, "sync_window", &request.run_env, Utc::now().date_naive(), &parameters)?;
    let window = Window {
        pipeline_id: request.pipeline_id,
        store_code: request.store_code.clone(),
        from: request.from,
        to: request.to,
    };
    match queue::enqueue(&request.run_id, &window, &streams, "manual")? {
        Some(job_id) => Ok(Ok(job_id)),
        None => Ok(Err(queue::active_run_of(&window)?.unwrap_or_default())),
    }
}

/// `orders_sync.sync_window(...)`: one manual window for one pipeline and store
/// (docs/design.md#manual-windows), fetched by a background worker; returns the window's
/// final status.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_window(
    pipeline: Option<&str>,
    store_code: Option<&str>,
    from_date: default!(Option<pgrx::datum::Date>, "NULL"),
    to_date: default!(Option<pgrx::datum::Date>, "NULL"),
    orders_only: default!(Option<bool>, false),
    sales_only: default!(Option<bool>, false),
    run_env: default!(Option<&str>, "'manual'"),
) -> String {
    bgw::refuse_on_standby("sync_window").or_raise();
    crate::distributed::refuse_on_worker_node("sync_window").or_raise();
    let request =
        manual_window_request(pipeline, store_code, from_date, to_date, orders_only, sales_only, run_env).or_raise();
    bgw::run_worker_and_wait(&request).or_raise();
    window_result(&request).or_raise()
}

/// After the worker is gone: the job's status, with a NOTICE saying why when it did not succeed.
fn window_result(request: &ManualWindow) -> SqlResult<String> {
    // A non-read-only SPI call takes a fresh snapshot, so it sees what the worker committed
    // after this statement began; a read-only one would not.
    let row = Spi::connect_mut(|client| {
        let table = client.update(
            "SELECT r.overall_status::text, j.status, j.error_message, r.counts->>'note'
             FROM orders_sync.pipeline_run_summaries r
             LEFT JOIN orders_sync.sync_jobs j ON j.run_id = r.run_id
             WHERE r.run_id = $1",
            None,
            &[request.run_id.as_str().into()],
        )?;
        if table.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = table.first();
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?,
            row.get::<String>(3)?,
            row.get::<String>(4)?,
        )))
    })?;
    let Some((run_status, job_status, error_message, note)) = row else {
        return Err(SqlError::internal(format!("sync_window worker exited before recording run {}", request.run_id))
            .with_hint("See the server log for the worker's error."));
    };
    if let Some(note) = note {
        return Err(SqlError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("store {} window {}..{} was not synced: {note}", request.store_code, request.from, request.to),
        )
        .with_hint("Wait for that run to finish; a window is never queued twice."));
    }
    let status_text = job_status.unwrap_or(run_status);
    let status = match JobStatus::parse(&status_text) {
        Some(status) if status.is_final() => status,
        _ => {
            return Err(SqlError::internal(format!(
                "sync_window worker exited with run {} still {status_text}",
                request.run_id
            ))
            .with_hint("See the server log; orders_sync.reset_stuck_runs() cleans such rows up."))
        }
    };
    if let Some(message) = error_message.filter(|_| status != JobStatus::Ended(WindowStatus::Success)) {
        notice!("store {} window {}..{} {}: {message}", request.store_code, request.from, request.to, status.as_str());
    }
    Ok(status.as_str().to_string())
}

/// Validates `sync_window`'s arguments and applies the defaults of docs/design.md#manual-windows
/// (`to_date` = today, `from_date` = today − 89, in the pipeline's time zone).
fn manual_window_request(
    pipeline: Option<&str>,
    store_code: Option<&str>,
    from_date: Option<pgrx::datum::Date>,
    to_date: Option<pgrx::datum::Date>,
    orders_only: Option<bool>,
    sales_only: Option<bool>,
    run_env: Option<&str>,
) -> SqlResult<ManualWindow> {
    let required =
        |argument: &str, hint: &str| SqlError::invalid_argument(argument, "must not be NULL").with_hint(hint);
    let pipeline = pipeline.ok_or_else(|| required("pipeline", "See SELECT code FROM orders_sync.pipelines."))?;
    let store_code =
        store_code.ok_or_else(|| required("store_code", "Pass a store_code of orders_sync.store_master."))?;
    let orders_only = orders_only.ok_or_else(|| required("orders_only", "Pass true or false (the default)."))?;
    let sales_only = sales_only.ok_or_else(|| required("sales_only", "Pass true or false (the default)."))?;
    let run_env = names::env_argument("run_env", run_env)?;
    let to_date = clock::date_argument("to_date", to_date)?;
    let from_date = clock::date_argument("from_date", from_date)?;
    let found = Spi::connect(|client| {
        let table = client.select(
            "SELECT p.id, p.timezone, p.streams, p.sync_group, s.sync_group
             FROM orders_sync.pipelines p
             LEFT JOIN orders_sync.store_master s ON s.store_code = $2
             WHERE p.code = $1",
            None,
            &[pipeline.into(), store_code.into()],
        )?;
        if table.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = table.first();
        Ok(Some((
            row.get::<i64>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<Vec<String>>(3)?.unwrap_or_default(),
            row.get::<String>(4)?.unwrap_or_default(),
            row.get::<String>(5)?,
        )))
    })?;
    let Some((pipeline_id, timezone, streams, pipeline_group, store_group)) = found else {
        return Err(SqlError::invalid_argument("pipeline", format!("no pipeline with code \"{pipeline}\""))
            .with_hint("See SELECT code FROM orders_sync.pipelines."));
    };
    match store_group {
        None => {
            return Err(SqlError::invalid_argument(
                "store_code",
                format!("no store \"{store_code}\" in orders_sync.store_master"),
            )
            .with_hint("Register the store in orders_sync.store_master first."))
        }
        Some(group) if group != pipeline_group => {
            return Err(SqlError::invalid_argument(
                "store_code",
                format!(
                    "store \"{store_code}\" belongs to sync group {group}, pipeline {pipeline} to {pipeline_group}"
                ),
            ))
        }
        Some(_) => {}
    }
    select_streams(&streams, orders_only, sales_only).map_err(|problem| {
        SqlError::invalid_argument(if orders_only { "orders_only" } else { "sales_only" }, problem)
    })?;
    let zone = clock::parse_timezone(&timezone).ok_or_else(|| {
        SqlError::invalid_argument("pipeline", format!("pipeline {pipeline} has unknown time zone {timezone}"))
    })?;
    let today = clock::today_in(zone, Utc::now());
    let to = to_date.unwrap_or(today);
    let from = from_date.unwrap_or(today - chrono::Days::new(89));
    if from > to {
        return Err(SqlError::invalid_argument("from_date", format!("{from} is after to_date {to}"))
            .with_hint("from_date must be on or before to_date."));
    }
    // Process id and clock make the run id unique without a round trip.
    let run_id = format!("sw-{}-{}", Utc::now().format("%Y%m%d%H%M%S%6f"), unsafe { pg_sys::MyProcPid });
    Ok(ManualWindow {
        run_id,
        run_env,
        pipeline_id,
        store_code: store_code.to_string(),
        from,
        to,
        orders_only,
        sales_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_window_round_trips_through_bgw_extra_and_fits() {
        let request = ManualWindow {
            run_id: "sw-20261123180102123456-4194304".into(),
            run_env: "a".repeat(32),
            pipeline_id: i64::MAX,
            store_code: "ABCDEFGH".into(),
            from: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 3, 31).unwrap(),
            orders_only: false,
            sales_only: true,
        };
        let encoded = request.encode();
        assert!(encoded.len() <= bgw::MAX_ENCODED, "{} bytes", encoded.len());
        assert_eq!(ManualWindow::decode(&encoded), Some(request));
        assert_eq!(ManualWindow::decode("garbage"), None);
    }
}
