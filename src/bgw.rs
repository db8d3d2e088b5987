//! Background-worker plumbing, in one place: how a worker starts (signals, database, its
//! typed request), how it runs a unit of work in a transaction of its own, how it learns that
//! it must stop, and how a SQL function starts a worker and waits for it.
//!
//! Every worker of orders_sync (the launcher, job workers, the `sync_window` worker and the
//! `run_profiler` planner) goes through here; the modules that own them keep only their logic.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::errors::SqlError;

/// What a worker is started with, besides its database: a request passed in `bgw_extra`.
/// The caller's transaction is not committed yet when the worker starts, so nothing can be
/// passed through tables; `bgw_extra` holds at most `MAX_ENCODED` bytes.
pub trait WorkerRequest: Sized {
    /// The worker's kind: its `backend_type` is "orders_sync {KIND}".
    const KIND: &'static str;
    /// The worker's `extern "C-unwind"` entry point in this library.
    const FUNCTION: &'static str;

    /// The request's fields in order; none may contain a tab (all are validated identifiers,
    /// numbers or dates).
    fn fields(&self) -> Vec<String>;
    /// The inverse of `fields`; `None` for anything else.
    fn from_fields(fields: &[&str]) -> Option<Self>;

    /// The worker's name in pg_stat_activity; the kind unless a request says more.
    fn worker_name(&self) -> String {
        format!("orders_sync {}", Self::KIND)
    }

    fn encode(&self) -> String {
        self.fields().join("\t")
    }

    fn decode(text: &str) -> Option<Self> {
        Self::from_fields(&text.split('\t').collect::<Vec<_>>())
    }
}

/// Room in `bgw_extra` (128 bytes with its terminating NUL).
pub const MAX_ENCODED: usize = 127;

/// The date format of requests: ISO, as PostgreSQL prints dates.
pub fn encode_date(date: chrono::NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

pub fn decode_date(text: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// The signals every orders_sync worker takes: SIGHUP (reload), SIGTERM (stop: shutdown or
/// pg_terminate_backend) and SIGINT (pg_cancel_backend: a job worker gives up its window).
fn attach_signals() {
    BackgroundWorker::attach_signal_handlers(
        SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM | SignalWakeFlags::SIGINT,
    );
}

/// Start-up of a static worker that serves the database named `database`.
pub fn start_static(database: &str) {
    attach_signals();
    // ERRORs (FATAL) when the database does not exist yet; the restart time brings us back.
    BackgroundWorker::connect_worker_to_spi(Some(database), None);
}

/// Start-up of a dynamic worker: its argument is the database OID, its request `bgw_extra`.
/// `None` (logged) when the request cannot be read: the worker then simply exits.
pub fn start_dynamic<R: WorkerRequest>(argument: pg_sys::Datum) -> Option<R> {
    attach_signals();
    let database = pg_sys::Oid::from(argument.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let extra = BackgroundWorker::get_extra();
    let request = R::decode(extra);
    if request.is_none() {
        log!("orders_sync: {} worker got an unreadable request {extra:?}", R::KIND);
    }
    request
}

fn builder<R: WorkerRequest>(request: &R, database: pg_sys::Oid) -> BackgroundWorkerBuilder {
    let extra = request.encode();
    debug_assert!(extra.len() <= MAX_ENCODED, "{} request of {} bytes", R::KIND, extra.len());
    BackgroundWorkerBuilder::new(&request.worker_name())
        .set_type(&format!("orders_sync {}", R::KIND))
        .set_library("orders_sync")
        .set_function(R::FUNCTION)
        .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
        .set_extra(&extra)
        .enable_spi_access()
}

/// Starts a dynamic worker in `database` without waiting for it; false when no worker slot
/// is free.
pub fn start_worker<R: WorkerRequest>(request: &R, database: pg_sys::Oid) -> bool {
    builder(request, database).load_dynamic().is_ok()
}

/// An error when this server is a hot standby. Workers that connect to a database start only
/// once recovery has finished, so on a standby a worker would never start and its caller would
/// wait forever; `what` names what was asked for.
pub fn refuse_on_standby(what: &str) -> Result<(), SqlError> {
    // SAFETY: reads the shared-memory flag PostgreSQL keeps for exactly this question.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(SqlError::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("cannot start {what} on a hot standby"),
        )
        .with_hint("Syncing runs on the primary: run this there, or here once this server is promoted."));
    }
    Ok(())
}

/// Starts a dynamic worker in the caller's database and waits until it exits. The caller's
/// transaction stays open: the worker commits on its own, and the caller then reads the
/// result with a fresh snapshot. Callers have already called [`refuse_on_standby`], first of
/// all their checks, so the error names the SQL function the DBA called.
pub fn run_worker_and_wait<R: WorkerRequest>(request: &R) -> Result<(), SqlError> {
    // SAFETY: plain reads of this backend's own globals.
    let (database, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::MyProcPid) };
    let worker = builder(request, database).set_notify_pid(pid).load_dynamic().map_err(|_| {
        SqlError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("could not start the {} worker: no free worker slot", R::KIND),
        )
        .with_hint("Raise max_worker_processes, or retry when running syncs have finished.")
    })?;
    match worker.wait_for_shutdown() {
        Ok(()) | Err(BackgroundWorkerStatus::Stopped) => Ok(()),
        Err(status) => Err(SqlError::internal(format!("{} worker did not finish normally ({status:?})", R::KIND))
            .with_hint("See the server log.")),
    }
}

/// Sleeps on the latch for up to `millis` in a backend running a SQL function (waiting for a
/// worker's commits), waking early for interrupts (pg_cancel_backend, statement_timeout),
/// which are then serviced.
pub fn nap(millis: i64) {
    // SAFETY: this backend's own latch; the wait exits on postmaster death.
    unsafe {
        let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32;
        pg_sys::WaitLatch(pg_sys::MyLatch, events, millis as _, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Whether a cancel or termination is waiting to be serviced by this backend (a SQL function
/// making HTTP requests stops early, then `check_for_interrupts!` raises it). A plain read of
/// a flag, so any thread may ask.
pub fn interrupt_pending() -> bool {
    // SAFETY: a sig_atomic_t flag set by signal handlers; reading it has no side effect.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0 }
}

/// Runs `body` in its own transaction and commits it. An `Err` from the body, or an ERROR
/// raised inside (a constraint, a bad numeric from the source), aborts just that transaction
/// and comes back as `Err` with the message, so the worker can record `failed` and live on.
pub fn in_transaction<R, E: std::fmt::Display>(body: impl FnOnce() -> Result<R, E>) -> Result<R, String> {
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

/// `in_transaction` for work whose failure the worker cannot act on (releasing a lock,
/// recording an interruption): the failure goes to the server log instead of being lost.
pub fn in_transaction_or_log<R, E: std::fmt::Display>(what: &str, body: impl FnOnce() -> Result<R, E>) -> Option<R> {
    match in_transaction(body) {
        Ok(value) => Some(value),
        Err(message) => {
            log!("orders_sync: could not {what}: {message}");
            None
        }
    }
}

fn caught_message(caught: &CaughtError) -> String {
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// True once the worker was asked to stop by SIGTERM (pg_terminate_backend, shutdown).
/// The raw flag the SIGTERM handler sets is read, not pgrx's `sigterm_received()`: that one
/// clears itself when read, so a second reader (the launcher loop, a job between windows)
/// would miss a request the first one saw.
pub fn shutdown_requested() -> bool {
    // SAFETY: a plain read of a flag set by the SIGTERM handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// True once the worker was asked to stop by SIGTERM or SIGINT (pg_cancel_backend). A
/// cancel, unlike a shutdown, has no flag of PostgreSQL's own; it is remembered here.
pub fn stop_requested() -> bool {
    static CANCELLED: AtomicBool = AtomicBool::new(false);
    if BackgroundWorker::sigint_received() {
        CANCELLED.store(true, Ordering::SeqCst);
    }
    shutdown_requested() || CANCELLED.load(Ordering::SeqCst)
}

/// Why `stop_requested` is true, in words for `error_message`.
pub fn stop_reason() -> &'static str {
    if shutdown_requested() {
        "terminated (SIGTERM)"
    } else {
        "cancelled (pg_cancel_backend)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_dates_round_trip() {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
        assert_eq!(decode_date(&encode_date(date)), Some(date));
        assert_eq!(decode_date("2026-02-30"), None);
    }
}
