//! Schedules through pg_cron and their health (docs/design.md#schedules).
//!
//! The pure part answers one question: how often does a cron expression fire, at worst? The
//! `scheduler_health` view (sql/schedules.sql) calls a job `stale` when it has not succeeded
//! within about twice that interval. Parsing is croner's (a maintained crate, Vixie-cron
//! semantics: day-of-month and day-of-week are OR-ed, Sunday is 0 or 7), never hand-rolled.
//! The registry and health of jobs are plain SQL in sql/schedules.sql. Two things need Rust:
//! run_profiler's warning when the schedules cannot run, and starting pg_cron's scheduler
//! again after it was terminated (pg_cron 1.4 does not, and only a restart would).

use crate::bgw;
use crate::errors::{OrRaise, SqlError};
use chrono::{DateTime, Duration, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// pg_cron fires on UTC and needs no more than this: the expression must fire at least once
/// in this many days after a reference instant (a yearly job fires within 366 days; the
/// 29th of February within 8 years, across a skipped leap year in 2100 at worst).
const SEARCH_LIMIT_DAYS: i64 = 8 * 366 + 1;

/// The gaps between firings are measured over at least this span, and over at least
/// `MIN_FIRINGS` firings (so that weekly patterns show their longest gap) ...
const MIN_SPAN_DAYS: i64 = 14;
const MIN_FIRINGS: usize = 1_000;
/// ... and never over more than this span (monthly and yearly patterns show theirs).
const MAX_SPAN_DAYS: i64 = 400;

/// A fixed starting point keeps the answer a pure function of the expression. The eve of a
/// leap year, so that a yearly job's longest gap (366 days) falls inside the horizon.
fn reference_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 12, 31, 0, 0, 0).single().expect("a valid fixed instant")
}

/// Parses a pg_cron schedule: five fields (minute hour day-of-month month day-of-week) or a
/// nickname such as `@daily`. Seconds, years and `@reboot` are refused: pg_cron 1.4 has none.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err("the cron expression is empty".to_string());
    }
    if trimmed.eq_ignore_ascii_case("@reboot") {
        return Err("@reboot has no interval to watch".to_string());
    }
    if !trimmed.starts_with('@') {
        let fields = trimmed.split_whitespace().count();
        if fields != 5 {
            return Err(format!("expected 5 fields (minute hour day-of-month month day-of-week), got {fields}"));
        }
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|error| error.to_string())
}

/// The longest gap between two consecutive firings of `expr` (UTC), over a representative
/// horizon: at least two weeks and a thousand firings, at most 400 days (longer only for
/// patterns that fire less than twice in that time, such as the 29th of February).
pub fn expected_interval(expr: &str) -> Result<Duration, String> {
    let cron = parse_cron(expr)?;
    let start = reference_instant();
    let give_up = start + Duration::days(SEARCH_LIMIT_DAYS);
    let next_after = |time: &DateTime<Utc>| -> Result<Option<DateTime<Utc>>, String> {
        match cron.find_next_occurrence(time, false) {
            Ok(next) if next <= give_up => Ok(Some(next)),
            Ok(_) | Err(croner::errors::CronError::TimeSearchLimitExceeded) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    };

    let mut previous = match next_after(&start)? {
        Some(first) => first,
        None => return Err("the cron expression never fires".to_string()),
    };
    let mut longest: Option<Duration> = None;
    let mut firings = 1usize;
    while let Some(next) = next_after(&previous)? {
        let gap = next - previous;
        longest = Some(longest.map_or(gap, |longest| longest.max(gap)));
        firings += 1;
        previous = next;
        let span = previous - start;
        if span >= Duration::days(MAX_SPAN_DAYS) || (span >= Duration::days(MIN_SPAN_DAYS) && firings >= MIN_FIRINGS) {
            break;
        }
    }
    longest.ok_or_else(|| "the cron expression fires only once".to_string())
}

const CRON_HINT: &str =
    "Use pg_cron's five fields, minute hour day-of-month month day-of-week (UTC), e.g. '*/30 * * * *' or '0 2 * * *'.";

fn to_interval(duration: Duration) -> Result<Interval, SqlError> {
    // Whole days as days, the rest as microseconds: '0 6 * * 1' reads as '7 days'.
    let days = duration.num_days();
    let rest = duration - Duration::days(days);
    let micros = rest.num_microseconds().unwrap_or(0);
    Interval::new(0, days as i32, micros)
        .map_err(|error| SqlError::internal(format!("cron interval out of range: {error:?}")))
}

/// The longest gap between two firings of a pg_cron schedule, e.g. `'*/30 * * * *'` → 30 minutes.
#[pg_extern(immutable, strict, parallel_safe)]
fn cron_interval(expr: &str) -> Interval {
    expected_interval(expr)
        .map_err(|problem| {
            SqlError::invalid_argument("expr", format!("not a cron expression ({problem})")).with_hint(CRON_HINT)
        })
        .and_then(to_interval)
        .or_raise()
}

/// Raises a clear error naming the `schedule` argument when it is not a cron expression that
/// pg_cron runs and that fires repeatedly; used by the schedule_* functions.
#[pg_extern(immutable, parallel_safe)]
fn check_cron_schedule(schedule: Option<&str>) -> bool {
    let problem = match schedule {
        None => "must not be NULL".to_string(),
        Some(expr) if expr.len() > 200 => "is longer than 200 characters".to_string(),
        Some(expr) => match expected_interval(expr) {
            Ok(_) => return true,
            Err(problem) => format!("\"{}\" is not a cron expression ({problem})", expr.escape_debug()),
        },
    };
    SqlError::invalid_argument("schedule", problem).with_hint(CRON_HINT).raise()
}

/// For `run_profiler`: a WARNING when jobs are registered and pg_cron cannot run them
/// (`orders_sync.cron_scheduler_problem()`: scheduler terminated, cron.database_name
/// elsewhere, pg_cron not preloaded). The run itself goes on; this says that the next ones
/// will not come. Never raises: a caller without the rights to look is simply not warned.
pub fn warn_if_schedules_cannot_run() {
    // Existence and privileges first: a function or table the caller may not use (or that a
    // schema not yet updated to this library lacks) fails the whole query at executor start,
    // whatever a WHERE or CASE around it says. to_reg* answer NULL instead of failing.
    let may_look = Spi::get_one::<bool>(
        "SELECT coalesce(pg_catalog.has_function_privilege(
                             pg_catalog.to_regprocedure('orders_sync.cron_scheduler_problem()'), 'EXECUTE')
                         AND pg_catalog.has_table_privilege(pg_catalog.to_regclass('orders_sync.schedules'), 'SELECT'),
                         false)",
    );
    if may_look != Ok(Some(true)) {
        return;
    }
    let Ok(Some((problem, jobs))) = Spi::get_two::<String, i64>(
        "SELECT orders_sync.cron_scheduler_problem(), count(*) FROM orders_sync.schedules HAVING count(*) > 0",
    )
    .map(|(problem, jobs)| problem.zip(jobs)) else {
        return;
    };
    ereport!(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("pg_cron cannot run the {jobs} scheduled orders_sync job(s): {problem}"),
        "This run goes on; the scheduled ones will not start until this is fixed. orders_sync.scheduler_health shows scheduler_down; see the README's runbook."
    );
}

/// pg_cron's scheduler, as pg_cron registers it at server start (src/pg_cron.c, 1.4.2): the
/// same library, entry point, process type, flags and restart time.
const CRON_LAUNCHER: &str = "pg_cron launcher";
const CRON_LIBRARY: &str = "pg_cron";
const CRON_ENTRY_POINT: &str = "PgCronLauncherMain";
const CRON_RESTART_SECS: u64 = 1;
/// How long a missing scheduler is watched before one is started: longer than pg_cron's
/// restart time, so that a scheduler between two attempts comes back on its own first.
/// Two schedulers would each run every job.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(2_500);
/// The start of cron_scheduler_problem()'s answer when the scheduler process is all that is
/// missing (sql/schedules.sql); any other answer is fixed by configuration and a restart.
const NOT_RUNNING: &str = "pg_cron's scheduler is not running";

/// The pid of the running pg_cron scheduler, as of now (not the transaction's cached view).
fn cron_launcher_pid() -> Option<i32> {
    Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()").ok()?;
    Spi::get_one::<i32>(
        "SELECT a.pid FROM pg_catalog.pg_stat_activity a
         WHERE a.backend_type = 'pg_cron launcher' ORDER BY a.backend_start LIMIT 1",
    )
    .ok()
    .flatten()
}

fn cron_scheduler_problem() -> Option<String> {
    Spi::get_one::<String>("SELECT orders_sync.cron_scheduler_problem()").ok().flatten()
}

fn scheduler_error(message: impl Into<String>, hint: &str) -> SqlError {
    SqlError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message).with_hint(hint)
}

/// Brings pg_cron's scheduler back without a server restart after it was terminated
/// (`pg_terminate_backend`: pg_cron before 1.6.1 then exits cleanly, and the postmaster never
/// restarts a worker that exits cleanly). Starts pg_cron's own entry point as a dynamic background worker, exactly as pg_cron
/// registers it at server start; returns its pid, or the pid of the one already running.
/// Superusers only. Refuses when the scheduler is not the problem (cron.database_name,
/// shared_preload_libraries, standby): those need a configuration change and a restart.
#[pg_extern(volatile, parallel_unsafe)]
fn start_cron_scheduler() -> i32 {
    if !unsafe { pg_sys::superuser() } {
        SqlError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, "permission denied to start pg_cron's scheduler")
            .with_hint("It is a cluster-wide process: ask a superuser, or restart the server.")
            .raise()
    }
    // One caller at a time: whoever waited here finds the scheduler the first one started.
    Spi::run("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('orders_sync.start_cron_scheduler'))")
        .unwrap_or_else(|error| SqlError::internal(format!("advisory lock: {error}")).raise());

    if let Some(problem) = cron_scheduler_problem() {
        if !problem.starts_with(NOT_RUNNING) {
            scheduler_error(
                format!("pg_cron's scheduler cannot be started from here: {problem}"),
                "Fix the setting named above and restart the server; starting a scheduler would not help.",
            )
            .raise()
        }
    } else if let Some(pid) = cron_launcher_pid() {
        notice!("pg_cron's scheduler is already running (pid {pid})");
        return pid;
    }

    let settle_until = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < settle_until {
        if let Some(pid) = cron_launcher_pid() {
            notice!("pg_cron's scheduler came back by itself (pid {pid})");
            return pid;
        }
        bgw::nap(100);
    }

    let worker = BackgroundWorkerBuilder::new(CRON_LAUNCHER)
        .set_type(CRON_LAUNCHER)
        .set_library(CRON_LIBRARY)
        .set_function(CRON_ENTRY_POINT)
        .enable_spi_access()
        .set_restart_time(Some(std::time::Duration::from_secs(CRON_RESTART_SECS)))
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .unwrap_or_else(|_| {
            scheduler_error(
                "no background worker slot is free for pg_cron's scheduler",
                "Raise max_worker_processes (needs a restart) or wait for running workers to end, then try again.",
            )
            .raise()
        });
    let started = worker.wait_for_startup().unwrap_or_else(|status| {
        scheduler_error(
            format!("pg_cron's scheduler did not start ({status:?})"),
            "See the server log for the pg_cron launcher's error; a restart brings it back.",
        )
        .raise()
    });
    // It is running once it has connected and shows in pg_stat_activity.
    for _ in 0..100 {
        if cron_launcher_pid().is_some() && cron_scheduler_problem().is_none() {
            notice!("pg_cron's scheduler started (pid {started})");
            return started;
        }
        bgw::nap(100);
    }
    scheduler_error(
        format!("pg_cron's scheduler (pid {started}) started but is not running jobs here after 10 s"),
        "See the server log for the pg_cron launcher's error and orders_sync.cron_scheduler_problem(); a restart brings it back.",
    )
    .raise()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn minutes(n: i64) -> Duration {
        Duration::minutes(n)
    }

    #[test]
    fn every_thirty_minutes_is_thirty_minutes() {
        assert_eq!(expected_interval("*/30 * * * *"), Ok(minutes(30)));
        assert_eq!(expected_interval("0,30 * * * *"), Ok(minutes(30)));
    }

    #[test]
    fn daily_weekly_monthly_yearly() {
        assert_eq!(expected_interval("0 2 * * *"), Ok(Duration::hours(24)));
        assert_eq!(expected_interval("@daily"), Ok(Duration::hours(24)));
        assert_eq!(expected_interval("0 6 * * 1"), Ok(Duration::days(7)));
        assert_eq!(expected_interval("0 6 * * MON"), Ok(Duration::days(7)));
        assert_eq!(expected_interval("0 0 1 * *"), Ok(Duration::days(31)));
        assert_eq!(expected_interval("0 0 1 1 *"), Ok(Duration::days(366)), "2024 is a leap year");
    }

    #[test]
    fn the_longest_gap_wins_not_the_usual_one() {
        // Weekdays only: Friday 09:00 to Monday 09:00.
        assert_eq!(expected_interval("0 9 * * 1-5"), Ok(Duration::days(3)));
        // Sunday is 0 or 7, as in pg_cron.
        assert_eq!(expected_interval("0 9 * * 0"), Ok(Duration::days(7)));
        assert_eq!(expected_interval("0 9 * * 7"), Ok(Duration::days(7)));
        // Business hours: 17:00 to 09:00 the next day.
        assert_eq!(expected_interval("0 9-17 * * *"), Ok(Duration::hours(16)));
        // Uneven steps: :00, :50, then :00 again.
        assert_eq!(expected_interval("*/50 * * * *"), Ok(minutes(50)));
    }

    #[test]
    fn leap_day_only_fires_every_four_years() {
        assert_eq!(expected_interval("0 0 29 2 *"), Ok(Duration::days(1461)));
    }

    #[test]
    fn invalid_expressions_are_errors() {
        for expr in ["", "   ", "* * * *", "0 0 * * * *", "61 * * * *", "* 24 * * *", "hello", "@reboot", "0 0 30 2 *"]
        {
            assert!(expected_interval(expr).is_err(), "{expr:?} must be refused");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let error = expected_interval("* * * *").unwrap_err();
        assert!(error.contains("expected 5 fields"), "{error}");
        let error = expected_interval("0 0 30 2 *").unwrap_err();
        assert!(error.contains("never fires"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// `*/n` minutes fires at 0, n, 2n, ... and again at the next hour's 0.
        #[test]
        fn minute_steps(step in 1i64..=59) {
            let expected = step.max(60 - (59 / step) * step);
            prop_assert_eq!(expected_interval(&format!("*/{step} * * * *")), Ok(minutes(expected)));
        }

        /// Any single time of day is a daily job, any single weekday a weekly one.
        #[test]
        fn daily_and_weekly(minute in 0u32..60, hour in 0u32..24, weekday in 0u32..=7) {
            prop_assert_eq!(expected_interval(&format!("{minute} {hour} * * *")), Ok(Duration::days(1)));
            prop_assert_eq!(expected_interval(&format!("{minute} {hour} * * {weekday}")), Ok(Duration::days(7)));
        }

        /// Adding firings never makes the longest gap longer; the gap is positive and at most a
        /// day for any pattern that fires every day.
        #[test]
        fn more_firings_never_lengthen_the_gap(a in 0u32..60, b in 0u32..60, hour in 0u32..24) {
            let one = expected_interval(&format!("{a} {hour} * * *")).unwrap();
            let two = expected_interval(&format!("{a},{b} {hour} * * *")).unwrap();
            prop_assert!(two <= one);
            prop_assert!(two > Duration::zero());
        }

        /// Arbitrary text never panics: it parses to a positive interval or is an error.
        #[test]
        fn arbitrary_text_never_panics(expr in "[0-9*/,@A-Za-z -]{0,24}") {
            if let Ok(gap) = expected_interval(&expr) {
                prop_assert!(gap > Duration::zero());
            }
        }
    }
}
