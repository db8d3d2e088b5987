//! Background workers: the window executor (fetch → write, page by page) and the dynamic
//! worker that `sync_window` starts for one manual window.
//!
//! A SQL function cannot commit, so everything that must commit page by page runs here, in
//! a worker that owns its transactions: each page's records and cursor commit together, and
//! no transaction is open while a page is being fetched.

use chrono::{NaiveDate, Utc};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

use crate::clock;
use crate::errors::SqlError;
use crate::fetch::{with_signals_blocked, FetchError, PageRequest, SourceClient};
use crate::outcome::{continue_after, select_streams, window_status, PulledStamp, WindowStatus};
use crate::queue::{self, Attempt};
use crate::write::{self, Completion, Window};

/// Runs `body` in its own transaction and commits it. An ERROR raised inside (a constraint,
/// a bad numeric from the source) aborts just that transaction and comes back as `Err` with
/// the server's message, so the worker can record `failed` and live on.
pub fn in_transaction<R>(body: impl FnOnce() -> Result<R, pgrx::spi::Error>) -> Result<R, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| body().map_err(|error| error.to_string())))
        .catch_others(|caught| Err(caught_message(&caught)))
        .execute();
    unsafe {
        match outcome {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Err(_) => pg_sys::AbortCurrentTransaction(),
        }
    }
    outcome
}

fn caught_message(caught: &CaughtError) -> String {
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// True once the worker was asked to stop: SIGTERM (pg_terminate_backend, shutdown) or
/// SIGINT (pg_cancel_backend). Checked between pages and during retry back-off.
fn stop_requested() -> bool {
    static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if BackgroundWorker::sigint_received() {
        CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // SAFETY: a plain read of a flag set by the SIGTERM handler.
    let terminating = unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) } != 0;
    terminating || CANCELLED.load(std::sync::atomic::Ordering::SeqCst)
}

fn stop_reason() -> &'static str {
    // SAFETY: as in stop_requested.
    if unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) } != 0 {
        "terminated (SIGTERM)"
    } else {
        "cancelled (pg_cancel_backend)"
    }
}

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
    let _ = in_transaction(|| Spi::run("SET synchronous_commit = off"));
    match in_transaction(|| queue::try_lock_store(store_code)) {
        Ok(true) => {}
        Ok(false) => {
            let message = format!("store {store_code} is busy: another orders_sync worker holds its lock");
            let _ = in_transaction(|| queue::fail_unstarted_job(job_id, &message));
            return JobEnd::NotStarted(message);
        }
        Err(message) => return JobEnd::NotStarted(message),
    }
    let end = run_locked_job(job_id);
    let _ = in_transaction(|| queue::unlock_store(store_code));
    end
}

fn run_locked_job(job_id: i64) -> JobEnd {
    let attempt = match in_transaction(|| queue::start_attempt(job_id)) {
        Ok(attempt) => attempt,
        Err(message) => {
            let message = format!("could not start job {job_id}: {message}");
            let _ = in_transaction(|| queue::fail_unstarted_job(job_id, &message));
            return JobEnd::NotStarted(message);
        }
    };
    let client = match source_client(&attempt.source) {
        Ok(client) => client,
        Err(error) => return finish(&attempt, &[], &[], &[false], Some(format!("source settings: {error}"))),
    };
    let resume = match in_transaction(|| queue::resume_points(&attempt.window, &attempt.streams)) {
        Ok(points) => points,
        Err(message) => return finish(&attempt, &[], &[], &[false], Some(message)),
    };

    let mut pulled = Vec::new();
    let mut completed_streams = Vec::new();
    let mut fresh_streams = Vec::new();
    let mut errors = Vec::new();
    for (position, (stream, point)) in attempt.streams.iter().zip(resume).enumerate() {
        let stamp =
            PulledStamp::for_position(attempt.pipeline_streams.iter().position(|s| s == stream).unwrap_or(position));
        let result = if point.complete {
            // Pulled completely by an interrupted earlier attempt: only the stamp is new.
            in_transaction(|| write::stamp_pulled(attempt.log_id, stamp)).map_err(StreamError::Write)
        } else {
            pull_stream(&client, &attempt, stream, stamp, point.next_page_no.max(1), point.page_token).map(|fresh| {
                if fresh {
                    fresh_streams.push(stream.clone());
                }
            })
        };
        match result {
            Ok(()) => {
                pulled.push(true);
                completed_streams.push(stream.clone());
            }
            Err(StreamError::Stopped { page_no }) => {
                let message = format!(
                    "{}: {stream} page {page_no} not fetched; the next attempt resumes from the saved cursor",
                    stop_reason()
                );
                let _ = in_transaction(|| queue::interrupt_attempt(attempt.job_id, attempt.log_id, &message));
                return JobEnd::Interrupted;
            }
            Err(error) => {
                pulled.push(false);
                errors.push(error.describe(stream));
            }
        }
        if !continue_after(position, *pulled.last().unwrap_or(&false)) {
            break;
        }
    }
    let message = (!errors.is_empty()).then(|| errors.join("; "));
    finish(&attempt, &completed_streams, &fresh_streams, &pulled, message)
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
                    let done = next.is_none();
                    if pages.send((page_no, result)).is_err() || done {
                        return;
                    }
                    token = next;
                    page_no += 1;
                }
            })
        });
        let outcome = write_pages(attempt, stream, stamp, first_page_no, &received, &stop);
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
        if stop_requested() {
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
        in_transaction(|| {
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

fn finish(
    attempt: &Attempt,
    completed_streams: &[String],
    fresh_streams: &[String],
    pulled: &[bool],
    error_message: Option<String>,
) -> JobEnd {
    let status = window_status(pulled);
    let completion = Completion {
        window: &attempt.window,
        pipeline_code: &attempt.pipeline_code,
        job_id: attempt.job_id,
        log_id: attempt.log_id,
        streams: &attempt.streams,
        completed_streams,
        fresh_streams,
        status,
        error_message: error_message.as_deref(),
    };
    match in_transaction(|| write::complete_window(&completion)) {
        Ok(_) => JobEnd::Completed(status),
        Err(message) => {
            // The completion itself failed: record that, truthfully, without the data steps.
            let message = format!("could not complete the window: {message}");
            let _ = in_transaction(|| queue::interrupt_attempt(attempt.job_id, attempt.log_id, &message));
            JobEnd::Completed(WindowStatus::Failed)
        }
    }
}

// ---------------------------------------------------------------------------------------
// sync_window: one manual window, run by a dynamic worker the caller waits for.
// ---------------------------------------------------------------------------------------

/// What the caller of `sync_window` hands its worker through `bgw_extra` (≤ 127 bytes):
/// the caller's transaction is not committed, so nothing can be passed through tables.
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

impl ManualWindow {
    pub const MAX_ENCODED: usize = 127;

    pub fn encode(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}{}",
            self.run_id,
            self.run_env,
            self.pipeline_id,
            self.store_code,
            self.from.format("%Y-%m-%d"),
            self.to.format("%Y-%m-%d"),
            u8::from(self.orders_only),
            u8::from(self.sales_only),
        )
    }

    pub fn decode(text: &str) -> Option<ManualWindow> {
        let fields: Vec<&str> = text.split('\t').collect();
        let [run_id, run_env, pipeline_id, store_code, from, to, flags] = fields.as_slice() else {
            return None;
        };
        let flags = flags.as_bytes();
        Some(ManualWindow {
            run_id: run_id.to_string(),
            run_env: run_env.to_string(),
            pipeline_id: pipeline_id.parse().ok()?,
            store_code: store_code.to_string(),
            from: NaiveDate::parse_from_str(from, "%Y-%m-%d").ok()?,
            to: NaiveDate::parse_from_str(to, "%Y-%m-%d").ok()?,
            orders_only: *flags.first()? == b'1',
            sales_only: *flags.get(1)? == b'1',
        })
    }
}

/// Entry point of the dynamic worker started by `sync_window`. Its argument is the caller's
/// database OID; the window comes in `bgw_extra`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn orders_sync_window_worker(argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(
        SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM | SignalWakeFlags::SIGINT,
    );
    let database = pg_sys::Oid::from(argument.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let Some(request) = ManualWindow::decode(BackgroundWorker::get_extra()) else {
        log!("orders_sync: sync_window worker got an unreadable request");
        return;
    };
    let queued = in_transaction(|| {
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
    });
    match queued {
        Ok(Ok(job_id)) => {
            run_job(job_id, &request.store_code);
        }
        Ok(Err(active_run)) => {
            let note = format!("window already queued or running in run {active_run}");
            let _ = in_transaction(|| {
                Spi::run_with_args(
                    "UPDATE orders_sync.pipeline_run_summaries SET counts = jsonb_build_object('note', $2::text)
                     WHERE run_id = $1",
                    &[request.run_id.as_str().into(), note.as_str().into()],
                )
            });
        }
        Err(message) => {
            log!("orders_sync: sync_window could not queue its window: {message}");
            return;
        }
    }
    if let Err(message) = in_transaction(|| queue::finish_run(&request.run_id)) {
        log!("orders_sync: could not close run {}: {message}", request.run_id);
    }
}

fn pg_date(date: pgrx::datum::Date) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(date.year(), date.month() as u32, date.day() as u32)
}

/// Starts a dynamic worker in the caller's database (its OID is the worker's argument, the
/// request its `bgw_extra`) and waits until it exits. The caller's transaction stays open:
/// the worker commits on its own, and the caller then reads the result with a fresh snapshot.
pub fn run_dynamic_worker(what: &str, function: &str, extra: &str) {
    let worker = BackgroundWorkerBuilder::new(&format!("orders_sync {what}"))
        .set_type(&format!("orders_sync {what}"))
        .set_library("orders_sync")
        .set_function(function)
        .set_argument(Some(pg_sys::Datum::from(unsafe { pg_sys::MyDatabaseId }.to_u32())))
        .set_extra(extra)
        .enable_spi_access()
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .unwrap_or_else(|_| {
            SqlError {
                code: PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                message: format!("could not start the {what} worker: no free worker slot"),
                hint: Some("Raise max_worker_processes, or retry when running syncs have finished.".into()),
            }
            .raise()
        });
    match worker.wait_for_shutdown() {
        Ok(()) | Err(BackgroundWorkerStatus::Stopped) => {}
        Err(status) => SqlError::internal(format!("{what} worker did not finish normally ({status:?})"))
            .with_hint("See the server log.")
            .raise(),
    }
}

/// `orders_sync.sync_window(...)`: one manual window for one pipeline and store
/// (docs/design.md#manual-windows),
/// fetched by a background worker; returns the window's final status.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_window(
    pipeline: &str,
    store_code: &str,
    from_date: default!(Option<pgrx::datum::Date>, "NULL"),
    to_date: default!(Option<pgrx::datum::Date>, "NULL"),
    orders_only: default!(bool, false),
    sales_only: default!(bool, false),
    run_env: default!(&str, "'manual'"),
) -> String {
    let request = manual_window_request(pipeline, store_code, from_date, to_date, orders_only, sales_only, run_env)
        .unwrap_or_else(|error| error.raise());
    run_dynamic_worker("sync_window", "orders_sync_window_worker", &request.encode());
    window_result(&request)
}

/// After the worker is gone: the job's status, with a NOTICE saying why when it did not succeed.
fn window_result(request: &ManualWindow) -> String {
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
    })
    .unwrap_or_else(|error| SqlError::internal(error.to_string()).raise());
    let Some((run_status, job_status, error_message, note)) = row else {
        SqlError::internal(format!("sync_window worker exited before recording run {}", request.run_id))
            .with_hint("See the server log for the worker's error.")
            .raise()
    };
    if let Some(note) = note {
        SqlError {
            code: PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            message: format!(
                "store {} window {}..{} was not synced: {note}",
                request.store_code, request.from, request.to
            ),
            hint: Some("Wait for that run to finish; a window is never queued twice.".into()),
        }
        .raise()
    }
    let status = job_status.unwrap_or(run_status);
    if status == "running" || status == "queued" {
        SqlError::internal(format!("sync_window worker exited with run {} still {status}", request.run_id))
            .with_hint("See the server log; orders_sync.reset_stuck_runs() cleans such rows up.")
            .raise()
    }
    if let Some(message) = error_message.filter(|_| status != "success") {
        notice!("store {} window {}..{} {status}: {message}", request.store_code, request.from, request.to);
    }
    status
}

/// Validates `sync_window`'s arguments and applies the defaults of docs/design.md#manual-windows
/// (`to_date` = today, `from_date` = today − 89, in the pipeline's time zone).
fn manual_window_request(
    pipeline: &str,
    store_code: &str,
    from_date: Option<pgrx::datum::Date>,
    to_date: Option<pgrx::datum::Date>,
    orders_only: bool,
    sales_only: bool,
    run_env: &str,
) -> Result<ManualWindow, SqlError> {
    if run_env.is_empty()
        || run_env.len() > 32
        || !run_env.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(SqlError::invalid_argument(
            "run_env",
            format!("\"{run_env}\" is not 1-32 characters of [A-Za-z0-9_.-]"),
        ));
    }
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
    })
    .map_err(|error| SqlError::internal(error.to_string()))?;
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
    let to = match to_date {
        Some(date) => pg_date(date).ok_or_else(|| SqlError::invalid_argument("to_date", "must be a finite date"))?,
        None => today,
    };
    let from = match from_date {
        Some(date) => pg_date(date).ok_or_else(|| SqlError::invalid_argument("from_date", "must be a finite date"))?,
        None => today - chrono::Days::new(89),
    };
    if from > to {
        return Err(SqlError::invalid_argument("from_date", format!("{from} is after to_date {to}"))
            .with_hint("from_date must be on or before to_date."));
    }
    // Process id and clock make the run id unique without a round trip.
    let run_id = format!("sw-{}-{}", Utc::now().format("%Y%m%d%H%M%S%6f"), unsafe { pg_sys::MyProcPid });
    let request = ManualWindow {
        run_id,
        run_env: run_env.to_string(),
        pipeline_id,
        store_code: store_code.to_string(),
        from,
        to,
        orders_only,
        sales_only,
    };
    debug_assert!(request.encode().len() <= ManualWindow::MAX_ENCODED);
    Ok(request)
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
        assert!(encoded.len() <= ManualWindow::MAX_ENCODED, "{} bytes", encoded.len());
        assert_eq!(ManualWindow::decode(&encoded), Some(request));
        assert_eq!(ManualWindow::decode("garbage"), None);
    }
}
