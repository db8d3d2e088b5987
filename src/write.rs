//! The "write" stage: a page's records and the window's progress in one transaction, and a
//! window's completion (status, stale-record removal, KPI refresh) in another.
//!
//! Every function here runs inside a transaction the caller owns (a background worker's
//! `in_transaction`), so what it writes commits or vanishes as one unit of truth.

use chrono::NaiveDate;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::fetch::Record;
use crate::outcome::{PulledStamp, WindowStatus};

/// A store's date window of one pipeline: the unit the planner plans and the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub pipeline_id: i64,
    pub store_code: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

fn date_text(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// Upserts one page of `stream` and records the page (cursor and ids) and the job's progress,
/// all in the caller's transaction. Records are sorted by id first: the upsert is bound by the
/// primary-key index, and key-ordered batches touch it far more cheaply. Unchanged records
/// (same date, amount and payload) are not rewritten, so a re-sync writes no row versions.
/// `fresh` says the window held no records of this stream when the stream started: then
/// every record is new and the unchanged-record filter is skipped. Otherwise records whose
/// text is unchanged (same md5 as stored: the text carries date and amount too) are filtered
/// out with a plain index probe first, before any JSON is parsed: an ON CONFLICT ... DO
/// UPDATE ... WHERE that declines would still lock, and so dirty, every conflicting row.
/// Returns how many records were inserted or changed.
pub fn write_page(
    window: &Window,
    job_id: i64,
    stream: &str,
    page_no: i32,
    mut records: Vec<Record>,
    next_page_token: Option<&str>,
    fresh: bool,
) -> SpiResult<i64> {
    records.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let row_count = records.len() as i32;
    let mut ids = Vec::with_capacity(records.len());
    let mut dates = Vec::with_capacity(records.len());
    let mut amounts = Vec::with_capacity(records.len());
    let mut payloads = Vec::with_capacity(records.len());
    for record in records {
        ids.push(record.id);
        dates.push(date_text(record.date));
        amounts.push(record.amount);
        payloads.push(record.payload);
    }

    Spi::get_one_with_args::<i64>(
        r#"
        WITH page AS (
            INSERT INTO orders_sync.window_pages
                (pipeline_id, store_code, from_date, to_date, stream, page_no, next_page_token,
                 row_count, record_ids, job_id)
            VALUES ($1, $2, $3::date, $4::date, $5, $6, $7, $8, $9, $10)
        ),
        progress AS (
            UPDATE orders_sync.sync_jobs
            SET pages_done = pages_done + 1, rows_written = rows_written + $8, heartbeat_at = now()
            WHERE id = $10
        ),
        incoming AS (
            SELECT u.record_id, u.record_date, u.amount, u.payload, md5(u.payload)::uuid AS payload_md5
            FROM unnest($9::text[], $11::text[], $12::text[], $13::text[])
                 AS u(record_id, record_date, amount, payload)
        ),
        changed AS (
            SELECT i.* FROM incoming i
            WHERE $14
               OR NOT EXISTS (
                   SELECT 1 FROM orders_sync.records r
                   WHERE r.pipeline_id = $1 AND r.store_code = $2 AND r.stream = $5
                     AND r.record_id = i.record_id AND r.payload_md5 = i.payload_md5)
        ),
        upserted AS (
            INSERT INTO orders_sync.records AS r
                (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
            SELECT $1, $2, $5, c.record_id, c.record_date::date, c.amount::numeric, c.payload::jsonb, c.payload_md5
            FROM changed c
            ON CONFLICT (pipeline_id, store_code, stream, record_id) DO UPDATE
            SET record_date = EXCLUDED.record_date,
                amount = EXCLUDED.amount,
                payload = EXCLUDED.payload,
                payload_md5 = EXCLUDED.payload_md5,
                synced_at = now()
            WHERE r.payload_md5 IS DISTINCT FROM EXCLUDED.payload_md5
            RETURNING 1
        )
        SELECT count(*) FROM upserted
        "#,
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            date_text(window.from).into(),
            date_text(window.to).into(),
            stream.into(),
            page_no.into(),
            next_page_token.into(),
            row_count.into(),
            ids.into(),
            job_id.into(),
            dates.into(),
            amounts.into(),
            payloads.into(),
            fresh.into(),
        ],
    )
    .map(|changed| changed.unwrap_or(0))
}

/// Whether the window holds no records of `stream` yet.
pub fn window_is_empty(window: &Window, stream: &str) -> SpiResult<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT NOT EXISTS (
             SELECT 1 FROM orders_sync.records
             WHERE pipeline_id = $1 AND store_code = $2 AND stream = $3
               AND record_date BETWEEN $4::date AND $5::date)",
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            stream.into(),
            date_text(window.from).into(),
            date_text(window.to).into(),
        ],
    )
    .map(|empty| empty.unwrap_or(false))
}

/// Stamps the log row once a stream has been pulled completely (seed 003 §C).
pub fn stamp_pulled(log_id: i64, stamp: PulledStamp) -> SpiResult<()> {
    let query = match stamp {
        PulledStamp::Orders => "UPDATE orders_sync.orders_sync_log SET orders_pulled_at = now() WHERE id = $1",
        PulledStamp::Sales => "UPDATE orders_sync.orders_sync_log SET sales_pulled_at = now() WHERE id = $1",
    };
    Spi::run_with_args(query, &[log_id.into()])
}

/// What a window's attempt ended with, to be committed in one transaction.
pub struct Completion<'a> {
    pub window: &'a Window,
    pub pipeline_code: &'a str,
    pub job_id: i64,
    pub log_id: i64,
    /// Every stream the job selected: their KPI facts are recomputed.
    pub streams: &'a [String],
    /// Streams pulled completely: records the source no longer returns are removed for them.
    pub completed_streams: &'a [String],
    /// Streams that had no records in the window when this attempt began.
    pub fresh_streams: &'a [String],
    pub status: WindowStatus,
    pub error_message: Option<&'a str>,
}

/// Commits a window's end: stale records removed (completed streams only: a stream that
/// failed half-way says nothing about what the source still holds), KPI facts recomputed
/// for the range, final status on the log row and the job, progress rows dropped.
/// Returns the number of stale records removed.
pub fn complete_window(completion: &Completion) -> SpiResult<i64> {
    let window = completion.window;
    let from = date_text(window.from);
    let to = date_text(window.to);
    // Stale records: those in the range the source did not return. Found first with EXCEPT
    // (a hashed set difference, linear whatever the statistics say), then deleted by primary
    // key. One statement joining the two gets planned from the freshly loaded table's empty
    // statistics and can re-run the set difference for every record: O(rows²).
    Spi::run("SET LOCAL work_mem = '256MB'")?;
    let mut removed = 0;
    for stream in completion.completed_streams {
        if completion.fresh_streams.contains(stream) {
            // Empty when the stream started, and written only by this attempt since
            // (the store lock keeps other writers out): nothing in it can be stale.
            continue;
        }
        // Every id the source returned is now stored in the range; if the range holds
        // exactly as many records as distinct ids were seen, none is stale.
        let nothing_stale = Spi::get_one_with_args::<bool>(
            "SELECT (SELECT count(*) FROM orders_sync.records
                     WHERE pipeline_id = $1 AND store_code = $2 AND stream = $5
                       AND record_date BETWEEN $3::date AND $4::date)
                  = (SELECT count(DISTINCT seen.record_id)
                     FROM orders_sync.window_pages p CROSS JOIN LATERAL unnest(p.record_ids) AS seen(record_id)
                     WHERE p.pipeline_id = $1 AND p.store_code = $2 AND p.from_date = $3::date
                       AND p.to_date = $4::date AND p.stream = $5)",
            &[
                window.pipeline_id.into(),
                window.store_code.as_str().into(),
                from.clone().into(),
                to.clone().into(),
                stream.as_str().into(),
            ],
        )?
        .unwrap_or(false);
        if nothing_stale {
            continue;
        }
        let stale: Vec<String> = Spi::get_one_with_args::<Vec<String>>(
            r#"
            SELECT coalesce(array_agg(record_id), '{}') FROM (
                SELECT r.record_id FROM orders_sync.records r
                WHERE r.pipeline_id = $1 AND r.store_code = $2 AND r.stream = $5
                  AND r.record_date BETWEEN $3::date AND $4::date
                EXCEPT
                SELECT unnest(p.record_ids) FROM orders_sync.window_pages p
                WHERE p.pipeline_id = $1 AND p.store_code = $2 AND p.from_date = $3::date
                  AND p.to_date = $4::date AND p.stream = $5
            ) stale
            "#,
            &[
                window.pipeline_id.into(),
                window.store_code.as_str().into(),
                from.clone().into(),
                to.clone().into(),
                stream.as_str().into(),
            ],
        )?
        .unwrap_or_default();
        if stale.is_empty() {
            continue;
        }
        removed += stale.len() as i64;
        Spi::run_with_args(
            "DELETE FROM orders_sync.records
             WHERE pipeline_id = $1 AND store_code = $2 AND stream = $3 AND record_id = ANY($4)",
            &[window.pipeline_id.into(), window.store_code.as_str().into(), stream.as_str().into(), stale.into()],
        )?;
    }

    // Two statements, not one with a DELETE CTE: sub-statements of one query run in no
    // guaranteed order, and the INSERT must see the range already cleared.
    Spi::run_with_args(
        "DELETE FROM orders_sync.kpi_facts_daily
         WHERE pipeline = $3 AND store_code = $1 AND stream = ANY($2) AND day BETWEEN $4::date AND $5::date",
        &[
            window.store_code.as_str().into(),
            completion.streams.to_vec().into(),
            completion.pipeline_code.into(),
            from.clone().into(),
            to.clone().into(),
        ],
    )?;
    Spi::run_with_args(
        r#"
        INSERT INTO orders_sync.kpi_facts_daily (pipeline, store_code, stream, day, record_count, amount_sum)
        SELECT $6, r.store_code, r.stream, r.record_date, count(*), coalesce(sum(r.amount), 0)
        FROM orders_sync.records r
        WHERE r.pipeline_id = $1 AND r.store_code = $2 AND r.stream = ANY($5)
          AND r.record_date BETWEEN $3::date AND $4::date
        GROUP BY r.store_code, r.stream, r.record_date
        "#,
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            from.clone().into(),
            to.clone().into(),
            completion.streams.to_vec().into(),
            completion.pipeline_code.into(),
        ],
    )?;

    Spi::run_with_args(
        r#"
        WITH logged AS (
            UPDATE orders_sync.orders_sync_log
            SET status = $2, error_message = $3
            WHERE id = $1
        ),
        progress AS (
            DELETE FROM orders_sync.window_pages
            WHERE pipeline_id = $5 AND store_code = $6 AND from_date = $7::date AND to_date = $8::date
        )
        UPDATE orders_sync.sync_jobs
        SET status = $2, error_message = $3, finished_at = now(), heartbeat_at = now()
        WHERE id = $4
        "#,
        &[
            completion.log_id.into(),
            completion.status.as_str().into(),
            completion.error_message.into(),
            completion.job_id.into(),
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            from.into(),
            to.into(),
        ],
    )?;
    Ok(removed)
}
