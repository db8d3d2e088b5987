//! Source profiles at the SQL boundary: the check behind `pipelines.source`'s constraint, the
//! built-in profile to start from, and `test_source`, the dry run a DBA writes a profile with
//! (docs/design.md#source-profiles). The profile itself is `fetch::profile`.

use std::time::Instant;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::clock;
use crate::errors::{OrRaise, SqlError, SqlResult};
use crate::fetch::profile::{Profile, DEFAULT_PROFILE};
use crate::fetch::{with_signals_blocked, PageBounds, PageGuard, PageRequest, SourceClient};
use crate::queue;

/// Most pages one `test_source` call fetches.
const MAX_TEST_PAGES: i32 = 100;
/// Records shown as mapped by `test_source`.
const SHOWN_RECORDS: usize = 10;

const PROFILE_HINT: &str =
    "The README's \"Source profiles\" section lists every key; orders_sync.default_source_profile() is the built-in contract.";

/// `pipelines.source`'s CHECK constraint: raises, naming the JSON path, instead of returning
/// false, so the DBA sees what is wrong and what is expected.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_source_profile(source: JsonB, streams: Vec<Option<String>>) -> bool {
    let streams: Vec<String> = streams.into_iter().flatten().collect();
    if let Err(error) = Profile::parse(&source.0, &streams) {
        SqlError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid source profile at {error}"))
            .with_hint(PROFILE_HINT)
            .raise();
    }
    true
}

/// The built-in contract as a profile, every section spelled out.
#[pg_extern(immutable, parallel_safe)]
fn default_source_profile() -> JsonB {
    JsonB(serde_json::from_str(DEFAULT_PROFILE).unwrap_or(Value::Null))
}

/// Fetches up to `pages` pages of one stream of one store as a pipeline's profile says, and
/// writes nothing: what was asked, what came back, the first records as mapped, and what
/// looks wrong.
#[pg_extern(volatile, parallel_unsafe)]
fn test_source(
    pipeline: &str,
    store_code: &str,
    stream: &str,
    from_date: pgrx::datum::Date,
    to_date: pgrx::datum::Date,
    pages: default!(i32, 1),
) -> JsonB {
    JsonB(dry_run(pipeline, store_code, stream, from_date, to_date, pages).or_raise())
}

fn dry_run(
    pipeline: &str,
    store_code: &str,
    stream: &str,
    from_date: pgrx::datum::Date,
    to_date: pgrx::datum::Date,
    pages: i32,
) -> SqlResult<Value> {
    let from = clock::date_argument("from_date", Some(from_date))?.unwrap_or_default();
    let to = clock::date_argument("to_date", Some(to_date))?.unwrap_or_default();
    if from > to {
        return Err(SqlError::invalid_argument("to_date", format!("{to} is before from_date {from}"))
            .with_hint("Pass from_date <= to_date."));
    }
    if !(1..=MAX_TEST_PAGES).contains(&pages) {
        return Err(SqlError::invalid_argument("pages", format!("{pages} is outside 1..{MAX_TEST_PAGES}"))
            .with_hint("Ask for a few pages: test_source is a dry run."));
    }
    if !crate::names::is_store_code(store_code) {
        return Err(SqlError::invalid_argument("store_code", format!("\"{store_code}\" is not a store code"))
            .with_hint("Store codes are 1 to 8 of A-Z a-z 0-9 _ . - and start with a letter or digit."));
    }
    let settings = Spi::connect(|client| {
        let query = format!(
            "SELECT {} FROM orders_sync.pipelines p
             LEFT JOIN orders_sync.pipeline_credentials c ON c.pipeline_id = p.id WHERE p.code = $1",
            queue::SOURCE_COLUMNS
        );
        let table = client.select(&query, Some(1), &[pipeline.into()])?;
        if table.is_empty() {
            return Ok(None);
        }
        queue::source_settings(&table.first()).map(Some)
    })?
    .ok_or_else(|| {
        SqlError::invalid_argument("pipeline", format!("no pipeline \"{pipeline}\""))
            .with_hint("SELECT code FROM orders_sync.pipelines lists them.")
    })?;
    if !settings.streams.iter().any(|s| s == stream) {
        return Err(SqlError::invalid_argument(
            "stream",
            format!("\"{stream}\" is not a stream of {pipeline} ({})", settings.streams.join(", ")),
        )
        .with_hint("Pass one of the pipeline's streams."));
    }
    let client = with_signals_blocked(|| SourceClient::new(settings))
        .map_err(|e| SqlError::invalid_argument("pipeline", e.to_string()).with_hint(PROFILE_HINT))?;

    let should_stop = || crate::bgw::interrupt_pending();
    let mut guard = PageGuard::new(
        PageBounds { max_pages: pages as u32 + 1, max_duration: std::time::Duration::from_secs(3600) },
        Instant::now(),
        1,
        None,
    );
    let (mut requests, mut records, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    let mut more_pages = false;
    for page_no in 1..=pages {
        let request = PageRequest { store_code, stream, from, to, page_token: cursor.as_deref() };
        let url = client.shown_url(&request).unwrap_or_default();
        let started = Instant::now();
        let result = client.fetch_page(&request, &should_stop);
        pgrx::check_for_interrupts!();
        let millis = started.elapsed().as_millis() as u64;
        let page = match result {
            Ok(page) => page,
            Err(error) => {
                requests.push(json!({"page": page_no, "url": url, "status": error.http_status(), "ms": millis,
                                     "records": Value::Null, "error": error.to_string()}));
                warnings.push(format!("page {page_no}: {error}"));
                break;
            }
        };
        requests.push(json!({"page": page_no, "url": url, "status": 200, "ms": millis,
                             "records": page.records.len(), "error": Value::Null}));
        if page.duplicate_ids > 0 {
            warnings.push(format!(
                "page {page_no}: {} records repeat an id of the same page; the last of each is kept",
                page.duplicate_ids
            ));
        }
        for record in page.records.iter().take(SHOWN_RECORDS.saturating_sub(records.len())) {
            records.push(json!({"id": record.id, "business_date": record.date.to_string(), "amount": record.amount}));
        }
        match page.next_page_token {
            None => break,
            Some(next) => {
                if let Err(hit) = guard.follow(page_no, &next, Instant::now()) {
                    warnings.push(format!("pagination did not advance: {hit}"));
                    break;
                }
                if page.records.is_empty() {
                    warnings.push(format!("page {page_no} had no records but named a next page"));
                }
                more_pages = page_no == pages;
                cursor = Some(next);
            }
        }
    }
    Ok(json!({
        "pipeline": pipeline, "store_code": store_code, "stream": stream,
        "from_date": from.to_string(), "to_date": to.to_string(),
        "requests": requests, "records": records, "warnings": warnings, "more_pages": more_pages,
    }))
}
