//! `orders_sync.plan_sync_windows`: the planner over the database.
//!
//! Two queries whatever the number of stores: the selected pipelines (to compute each one's
//! "today" in its own time zone), then every selected store with its success windows as two
//! date arrays, each store's read by one index-only range scan of `ix_orders_sync_log_success`.
//! Rust merges each store's windows and hands them to the pure `plan::plan_store`.
//! `run_profiler` enqueues exactly the `will_run` rows of `plan_selection`, so the dry run and
//! the real run cannot disagree.

use chrono::{DateTime, NaiveDate, Utc};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use pgrx::PgSqlErrorCode;

use super::{merge_day_ranges, plan_store, PlannedWindow, Policy};
use crate::clock;
use crate::errors::{OrRaise, SqlError};
use crate::names;

/// Upper bound for `window_days` and `overlap_days`: ten years is already absurd.
const MAX_DAYS: i32 = 3660;

/// `sync_group` argument: which pipelines' stores to plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncGroup {
    Td,
    Uc,
    All,
}

impl SyncGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncGroup::Td => "TD",
            SyncGroup::Uc => "UC",
            SyncGroup::All => "ALL",
        }
    }
}

/// The validated arguments of `plan_sync_windows` (and of `run_profiler`, which plans alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanParams {
    pub env: String,
    pub sync_group: SyncGroup,
    pub policy: Policy,
    /// Exact `store_master.store_code`; `None` plans every selected store.
    pub store_code: Option<String>,
    /// Plan as of this date instead of today in each pipeline's time zone.
    pub as_of: Option<NaiveDate>,
}

impl PlanParams {
    /// Validates the SQL arguments; each error names the argument and says what to pass.
    pub fn from_sql_args(
        env: Option<&str>,
        sync_group: Option<&str>,
        window_days: Option<i32>,
        overlap_days: Option<i32>,
        force: Option<bool>,
        store_code: Option<&str>,
        as_of: Option<Date>,
    ) -> Result<Self, SqlError> {
        let env = names::env_argument("env", env)?;
        let sync_group = match sync_group {
            Some("TD") => SyncGroup::Td,
            Some("UC") => SyncGroup::Uc,
            Some("ALL") => SyncGroup::All,
            Some(other) => {
                return Err(SqlError::invalid_argument(
                    "sync_group",
                    format!("unknown sync group \"{}\"", shorten(other)),
                )
                .with_hint("Use 'TD', 'UC' or 'ALL' (upper case)."))
            }
            None => {
                return Err(SqlError::invalid_argument("sync_group", "must not be NULL")
                    .with_hint("Use 'TD', 'UC' or 'ALL' (upper case)."))
            }
        };
        let window_days = days_argument("window_days", window_days, 1)?;
        let overlap_days = days_argument("overlap_days", overlap_days, 0)?;
        let force = force.ok_or_else(|| {
            SqlError::invalid_argument("force", "must not be NULL").with_hint("Pass true or false (the default).")
        })?;
        let store_code = match store_code {
            Some(code) if !names::is_store_code(code) => {
                return Err(SqlError::invalid_argument("store_code", "not a valid store code")
                    .with_hint("Store codes are 1 to 8 letters, digits, '_', '.' or '-'; NULL plans every store."))
            }
            code => code.map(str::to_string),
        };
        let as_of = clock::date_argument("as_of", as_of).map_err(|error| {
            error.with_hint("Pass a calendar date, or NULL for today in each pipeline's time zone.")
        })?;
        Ok(PlanParams { env, sync_group, policy: Policy { window_days, overlap_days, force }, store_code, as_of })
    }
}

fn days_argument(name: &str, value: Option<i32>, min: i32) -> Result<u32, SqlError> {
    let hint = format!("Pass a number of days between {min} and {MAX_DAYS}.");
    match value {
        None => Err(SqlError::invalid_argument(name, "must not be NULL").with_hint(hint)),
        Some(days) if (min..=MAX_DAYS).contains(&days) => Ok(days as u32),
        Some(days) => {
            Err(SqlError::invalid_argument(name, format!("must be between {min} and {MAX_DAYS}, got {days}"))
                .with_hint(hint))
        }
    }
}

/// Echoes user input in a message without letting it run on.
fn shorten(text: &str) -> String {
    let short: String = text.chars().take(32).collect();
    if short.len() < text.len() {
        format!("{short}...")
    } else {
        short
    }
}

/// One row of the plan: a window of one store for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub pipeline_id: i64,
    pub pipeline_code: String,
    pub store_code: String,
    pub window: PlannedWindow,
}

/// A selected pipeline and the date that is "today" for it.
#[derive(Debug, Clone)]
struct PipelineDay {
    id: i64,
    code: String,
    today: NaiveDate,
}

/// A selected store of one pipeline, with its success windows already merged.
#[derive(Debug)]
struct StoreHistory {
    pipeline: usize,
    store_code: String,
    start_date: NaiveDate,
    successes: Vec<(NaiveDate, NaiveDate)>,
}

/// The whole plan for `params`, ordered by pipeline code, store code and `from` date.
/// Runs inside the caller's SPI connection and reads only; `now` decides each pipeline's today
/// unless `params.as_of` is set.
#[allow(dead_code)] // the entry point for run_profiler, which enqueues exactly the will_run rows
pub fn plan_selection(
    client: &SpiClient<'_>,
    params: &PlanParams,
    now: DateTime<Utc>,
) -> Result<Vec<PlanRow>, SqlError> {
    let (pipelines, stores) = load_selection(client, params, now)?;
    Ok(plan_rows(pipelines, stores, params.policy).collect())
}

/// Plans store by store, lazily: streamed into the SQL function's result, a forced plan of
/// many small windows is never all held in Rust memory (PostgreSQL's tuplestore can spill).
fn plan_rows(pipelines: Vec<PipelineDay>, stores: Vec<StoreHistory>, policy: Policy) -> impl Iterator<Item = PlanRow> {
    stores.into_iter().flat_map(move |store| {
        let pipeline = pipelines[store.pipeline].clone();
        plan_store(store.start_date, &store.successes, pipeline.today, policy).into_iter().map(move |window| PlanRow {
            pipeline_id: pipeline.id,
            pipeline_code: pipeline.code.clone(),
            store_code: store.store_code.clone(),
            window,
        })
    })
}

fn load_selection(
    client: &SpiClient<'_>,
    params: &PlanParams,
    now: DateTime<Utc>,
) -> Result<(Vec<PipelineDay>, Vec<StoreHistory>), SqlError> {
    let pipelines = load_pipelines(client, params, now)?;
    let mut stores = Vec::new();
    let mut any_selected = false;
    if !pipelines.is_empty() {
        let ids: Vec<i64> = pipelines.iter().map(|p| p.id).collect();
        // For each selected store, its success windows as two date arrays: one range scan of
        // the partial index ix_orders_sync_log_success per store (index-only, in from_date
        // order), so no per-row grouping work. COLLATE "default": the log's store_code is not
        // "C" like store_master's, and the comparison must be in the index's collation to be
        // an index condition. No ORDER BY: with hundreds of dates per row the sort would spill
        // at the default work_mem; Rust sorts the stores instead.
        let mut table = client
            .select(
                "SELECT p.id, s.store_code::text, s.start_date, cov.from_dates, cov.to_dates
                 FROM orders_sync.pipelines p
                 JOIN orders_sync.store_master s ON s.sync_group = p.sync_group
                 CROSS JOIN LATERAL (
                     SELECT array_agg(l.from_date) AS from_dates, array_agg(l.to_date) AS to_dates
                     FROM orders_sync.orders_sync_log l
                     WHERE l.pipeline_id = p.id AND l.store_code = s.store_code COLLATE \"default\"
                       AND l.status = 'success'
                 ) cov
                 WHERE p.id = ANY ($1)
                   AND s.is_active AND s.start_date IS NOT NULL AND s.store_code IS NOT NULL
                   AND ($2::text IS NULL OR s.store_code = $2)",
                None,
                &[ids.into(), params.store_code.clone().into()],
            )
            .map_err(spi_failed)?;
        any_selected = !table.is_empty();
        stores.reserve(table.len());
        while table.next().is_some() {
            let pipeline_id: i64 = table.get(1).map_err(spi_failed)?.ok_or_else(|| unexpected_null("id"))?;
            let store_code: String = table.get(2).map_err(spi_failed)?.ok_or_else(|| unexpected_null("store_code"))?;
            let start: Date = table.get(3).map_err(spi_failed)?.ok_or_else(|| unexpected_null("start_date"))?;
            let Some(pipeline) = pipelines.iter().position(|p| p.id == pipeline_id) else {
                continue;
            };
            let Some(start_date) = clock::from_pg(start) else {
                pgrx::warning!(
                    "orders_sync: store {store_code} skipped: its start_date {start} is not a plannable date"
                );
                continue;
            };
            let today = pipelines[pipeline].today;
            // Merge here, in PostgreSQL's day numbers, so that the planner gets a handful of
            // covered ranges instead of a few hundred log rows per store.
            let from = table.get_datum_by_ordinal(4).map_err(spi_failed)?;
            let to = table.get_datum_by_ordinal(5).map_err(spi_failed)?;
            let covered = match (from, to) {
                (Some(from), Some(to)) => {
                    // SAFETY: columns 4 and 5 are date[] aggregates of NOT NULL columns, read
                    // while the SPI tuple table that holds them is alive.
                    let (from, to) = unsafe { (day_numbers(from), day_numbers(to)) };
                    let (from, to) = (from.as_slice(), to.as_slice());
                    let (Ok(from), Ok(to)) = (from, to) else {
                        return Err(unexpected_null("from_date or to_date"));
                    };
                    let pairs = from.iter().zip(to).map(|(&f, &t)| (i64::from(f), i64::from(t)));
                    let today_days = clock::pg_epoch_days(today);
                    let mut covered = merge_day_ranges(pairs.clone(), clock::pg_epoch_days(start_date), today_days);
                    // Merging forgets window boundaries, but the today refresh depends on an
                    // exact (today, today) success (seed 003 §6): hand that one over as well.
                    if pairs.clone().any(|pair| pair == (today_days, today_days)) {
                        covered.push((today_days, today_days));
                    }
                    covered
                }
                _ => Vec::new(),
            };
            // Merged ranges are clipped to start..today: both ends are valid dates.
            let day = |d| clock::from_pg_epoch_days(d).expect("a clipped window lies between two valid dates");
            let successes = covered.into_iter().map(|(f, t)| (day(f), day(t))).collect();
            stores.push(StoreHistory { pipeline, store_code, start_date, successes });
        }
        // Pipelines are already ordered by code; store_master.store_code is COLLATE "C", so
        // byte order is the order a DBA's ORDER BY store_code shows.
        stores.sort_unstable_by(|a, b| (a.pipeline, &a.store_code).cmp(&(b.pipeline, &b.store_code)));
    }
    if let (false, Some(code)) = (any_selected, &params.store_code) {
        return Err(unselectable_store(client, code, params.sync_group));
    }
    Ok((pipelines, stores))
}

/// Enabled pipelines of the sync group, by code, each with its own today.
fn load_pipelines(
    client: &SpiClient<'_>,
    params: &PlanParams,
    now: DateTime<Utc>,
) -> Result<Vec<PipelineDay>, SqlError> {
    let table = client
        .select(
            "SELECT id, code, timezone FROM orders_sync.pipelines
             WHERE enabled AND ($1 = 'ALL' OR sync_group = $1)
             ORDER BY code COLLATE \"C\"",
            None,
            &[params.sync_group.as_str().into()],
        )
        .map_err(spi_failed)?;
    let mut pipelines = Vec::with_capacity(table.len());
    for row in table {
        let id: i64 = row.get(1).map_err(spi_failed)?.ok_or_else(|| unexpected_null("id"))?;
        let code: String = row.get(2).map_err(spi_failed)?.ok_or_else(|| unexpected_null("code"))?;
        let zone_name: String = row.get(3).map_err(spi_failed)?.ok_or_else(|| unexpected_null("timezone"))?;
        let today = match params.as_of {
            Some(date) => date,
            None => {
                let zone = clock::parse_timezone(&zone_name).ok_or_else(|| {
                    SqlError::new(
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("pipeline {code} has an unknown time zone \"{}\"", shorten(&zone_name)),
                    )
                    .with_hint("Set orders_sync.pipelines.timezone to an IANA name such as 'Asia/Ho_Chi_Minh'.")
                })?;
                clock::today_in(zone, now)
            }
        };
        pipelines.push(PipelineDay { id, code, today });
    }
    Ok(pipelines)
}

/// The error for a `store_code` that selected nothing, with a hint saying why.
fn unselectable_store(client: &SpiClient<'_>, code: &str, group: SyncGroup) -> SqlError {
    let found = client
        .select(
            "SELECT s.is_active, s.start_date IS NOT NULL, s.sync_group,
                    EXISTS (SELECT 1 FROM orders_sync.pipelines p WHERE p.enabled AND p.sync_group = s.sync_group)
             FROM orders_sync.store_master s WHERE s.store_code = $1",
            None,
            &[code.into()],
        )
        .and_then(|table| {
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            Ok(Some((
                row.get::<bool>(1)?.unwrap_or(false),
                row.get::<bool>(2)?.unwrap_or(false),
                row.get::<String>(3)?.unwrap_or_default(),
                row.get::<bool>(4)?.unwrap_or(false),
            )))
        });
    let hint = match found {
        Err(e) => return spi_failed(e),
        Ok(None) => "There is no such store in orders_sync.store_master (store codes are case-sensitive).".to_string(),
        Ok(Some((false, _, _, _))) => "The store is inactive (orders_sync.store_master.is_active = false).".to_string(),
        Ok(Some((_, false, _, _))) => {
            "The store has no start_date in orders_sync.store_master; set one to sync it.".to_string()
        }
        Ok(Some((_, _, store_group, _))) if group != SyncGroup::All && store_group != group.as_str() => {
            format!("The store is in sync group {store_group}; pass sync_group => '{store_group}' or 'ALL'.")
        }
        Ok(Some((_, _, store_group, _))) => {
            format!("No enabled pipeline serves sync group {store_group} (orders_sync.pipelines.enabled).")
        }
    };
    SqlError::invalid_argument("store_code", format!("no selectable store \"{code}\"")).with_hint(hint)
}

/// A date[] datum viewed in place as the int4[] it is laid out as: a date is an int32 day number
/// (DateADT), and an array's layout depends only on its elements' size and alignment. Typed,
/// element-by-element access cost more than all the rest of the planning together.
///
/// # Safety
/// `datum` must be a non-NULL date[] that outlives the returned array.
unsafe fn day_numbers<'a>(datum: pg_sys::Datum) -> Array<'a, i32> {
    // SAFETY: forwarded to the caller; a non-NULL datum always yields Some.
    unsafe { Array::<i32>::from_polymorphic_datum(datum, false, pg_sys::DATEARRAYOID) }.expect("a non-NULL array datum")
}

fn spi_failed(error: SpiError) -> SqlError {
    SqlError::internal(format!("orders_sync planner: reading the sync log failed: {error}"))
}

fn unexpected_null(column: &str) -> SqlError {
    SqlError::internal(format!("orders_sync planner: unexpected NULL in column {column}"))
}

/// The plan as a table: one row per window of each selected store and pipeline, ordered by
/// pipeline, store and date. Read-only: this is the dry run of `run_profiler`.
#[pg_extern(stable)]
#[allow(clippy::type_complexity)]
fn plan_sync_windows(
    env: Option<&str>,
    sync_group: default!(Option<&str>, "'ALL'"),
    window_days: default!(Option<i32>, 90),
    overlap_days: default!(Option<i32>, 1),
    force: default!(Option<bool>, false),
    store_code: default!(Option<&str>, "NULL"),
    as_of: default!(Option<Date>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(pipeline_code, String),
        name!(store_code, String),
        name!(from_date, Date),
        name!(to_date, Date),
        name!(reason, &'static str),
        name!(will_run, bool),
    ),
> {
    let params =
        PlanParams::from_sql_args(env, sync_group, window_days, overlap_days, force, store_code, as_of).or_raise();
    let (pipelines, stores) = Spi::connect(|client| load_selection(client, &params, Utc::now())).or_raise();
    TableIterator::new(plan_rows(pipelines, stores, params.policy).map(|row| {
        (
            row.pipeline_code,
            row.store_code,
            clock::to_pg(row.window.from),
            clock::to_pg(row.window.to),
            row.window.reason.as_str(),
            row.window.will_run,
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_shortened_in_messages() {
        assert_eq!(shorten("TD"), "TD");
        assert_eq!(shorten(&"y".repeat(40)), format!("{}...", "y".repeat(32)));
    }
}
