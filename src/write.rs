//! The "write" stage: a page's records and the window's progress in one transaction, and a
//! window's completion (status, stale-record removal, KPI refresh) in another.
//!
//! Every function here runs inside a transaction the caller owns (a background worker's
//! `in_transaction`), so what it writes commits or vanishes as one unit of truth.

use chrono::NaiveDate;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::clock;
use crate::fetch::Record;
use crate::outcome::{PulledStamp, WindowStatus};

mod bulk;

use bulk::BulkOutcome;

/// A store's date window of one pipeline: the unit the planner plans and the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub pipeline_id: i64,
    pub store_code: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Window {
    /// SPI arguments: the window's key (pipeline_id, store_code, from, to as `date` values)
    /// as $1..$4, then `rest`.
    pub fn key_then<'a>(
        &'a self,
        rest: impl IntoIterator<Item = pgrx::datum::DatumWithOid<'a>>,
    ) -> Vec<pgrx::datum::DatumWithOid<'a>> {
        let mut args = vec![
            self.pipeline_id.into(),
            self.store_code.as_str().into(),
            clock::to_pg(self.from).into(),
            clock::to_pg(self.to).into(),
        ];
        args.extend(rest);
        args
    }
}

/// How a page's record relates to what the records table already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No record with this id: a plain insert.
    Absent,
    /// Stored with another payload (or a NULL md5): an upsert.
    Changed,
    /// Stored with the same payload: nothing to write.
    Unchanged,
}

/// Classifies `records` (sorted by id) against `stored`, the (id, md5) pairs stored for any
/// of their ids (sorted by id, possibly with ids not in the page), in one merge pass.
pub fn classify(records: &[Record], stored: &[(String, Option<[u8; 16]>)]) -> Vec<Stored> {
    let mut stored = stored.iter().peekable();
    records
        .iter()
        .map(|record| {
            while stored.next_if(|(id, _)| id.as_str() < record.id.as_str()).is_some() {}
            match stored.next_if(|(id, _)| *id == record.id) {
                None => Stored::Absent,
                Some((_, md5)) if *md5 == Some(record.payload_md5) => Stored::Unchanged,
                Some(_) => Stored::Changed,
            }
        })
        .collect()
}

/// Writes one page of `stream` and records the page (cursor and ids) and the job's progress,
/// all in the caller's transaction. Returns how many records were inserted or changed.
///
/// The upsert is bound by the primary-key index, so the work is shaped for it: records come
/// sorted by id (key order); what is stored for their ids is read in one index range scan
/// and merged with the page here, so unchanged records are never written (a re-sync writes
/// no row versions), new ones go through COPY's bulk path (`bulk`: multi-row heap inserts,
/// no per-page SQL, no speculative-insertion probe) and only changed ones an upsert. The
/// store's advisory lock keeps other workers from writing the store between the lookup and
/// the load; a writer outside orders_sync that does makes the load hit the key, and the
/// page's new records are then written with the upsert instead (docs/design.md#writing).
pub fn write_page(
    window: &Window,
    job_id: i64,
    stream: &str,
    page_no: i32,
    records: Vec<Record>,
    next_page_token: Option<&str>,
) -> SpiResult<i64> {
    // On Citus the page goes through routed SQL, never the bulk path (docs/design.md#citus).
    if crate::distributed::store_tables_distributed()? {
        return crate::distributed::write_page(window, job_id, stream, page_no, records, next_page_token);
    }
    let records = in_key_order(records);
    let (absent, changed) = Spi::connect_mut(|client| -> SpiResult<(Vec<Record>, Vec<Record>)> {
        let args = page_args(window, job_id, stream, page_no, &records, next_page_token);
        client.update(concat!("WITH page AS (", page_row!(), ") ", job_progress!()), None, &args)?;
        new_and_changed(client, window, stream, records)
    })?;
    let inserted = match bulk::load_new_records(window, stream, &absent) {
        BulkOutcome::Loaded(stored) => stored,
        BulkOutcome::Conflict => Spi::connect_mut(|client| insert_records(client, window, stream, absent, true))?,
        BulkOutcome::Refused(_) => Spi::connect_mut(|client| insert_records(client, window, stream, absent, false))?,
    };
    let updated = if changed.is_empty() {
        0
    } else {
        Spi::connect_mut(|client| insert_records(client, window, stream, changed, true))?
    };
    Ok(inserted + updated)
}

/// A page's records sorted by id with unique ids, as every write expects. A fetched page
/// already is; anything else is made so.
pub(crate) fn in_key_order(mut records: Vec<Record>) -> Vec<Record> {
    if !records.is_sorted_by(|a, b| a.id < b.id) {
        crate::fetch::sort_keeping_last_of_each_id(&mut records);
    }
    records
}

/// A page's records (in key order) split into the new ones and the changed ones, by what is
/// stored for their ids; unchanged ones are dropped: they are not written.
pub(crate) fn new_and_changed(
    client: &mut pgrx::spi::SpiClient<'_>,
    window: &Window,
    stream: &str,
    records: Vec<Record>,
) -> SpiResult<(Vec<Record>, Vec<Record>)> {
    if records.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let stored = stored_versions(client, window, stream, &ids)?;
    let classes = classify(&records, &stored);
    let (mut absent, mut changed) = (Vec::new(), Vec::new());
    for (record, class) in records.into_iter().zip(classes) {
        match class {
            Stored::Absent => absent.push(record),
            Stored::Changed => changed.push(record),
            Stored::Unchanged => {}
        }
    }
    Ok((absent, changed))
}

/// The (id, md5) pairs stored for `ids` (sorted), sorted by id. Usually one index range scan
/// over the page's id range: sources hand out ids in runs, so the range holds little besides
/// the page. When it holds far more (ids scattered over the key space), the ids are looked
/// up one by one instead; the range scan stops at its limit, so the detour costs little.
///
/// The range is only trusted when the server's "C" order is the page's order, i.e. the
/// database stores the ids' UTF-8 bytes as they are. In another encoding a range could miss
/// stored ids (which the bulk load would then collide with), so the ids are looked up
/// one by one there, and the result is put in Rust's order before the merge.
fn stored_versions(
    client: &mut pgrx::spi::SpiClient<'_>,
    window: &Window,
    stream: &str,
    ids: &[&str],
) -> SpiResult<Vec<(String, Option<[u8; 16]>)>> {
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    // SAFETY: reads the database's encoding, fixed for the life of the connection.
    let encoding = unsafe { pg_sys::GetDatabaseEncoding() } as u32;
    let bytes_as_sent = encoding == pg_sys::pg_enc::PG_UTF8 || encoding == pg_sys::pg_enc::PG_SQL_ASCII;
    if !bytes_as_sent {
        return stored_versions_one_by_one(client, window, stream, ids);
    }
    let limit = 2 * ids.len() as i64 + 64;
    let in_range = read_versions(
        client,
        "SELECT record_id, payload_md5 FROM orders_sync.records
         WHERE pipeline_id = $1 AND store_code = $2 AND stream = $3
           AND record_id BETWEEN $4 AND $5
         ORDER BY record_id LIMIT $6",
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            stream.into(),
            (*first).into(),
            (*last).into(),
            limit.into(),
        ],
    )?;
    if (in_range.len() as i64) < limit {
        return Ok(in_range);
    }
    stored_versions_one_by_one(client, window, stream, ids)
}

/// The (id, md5) pairs stored for `ids`, looked up id by id, in Rust's (byte) order.
fn stored_versions_one_by_one(
    client: &mut pgrx::spi::SpiClient<'_>,
    window: &Window,
    stream: &str,
    ids: &[&str],
) -> SpiResult<Vec<(String, Option<[u8; 16]>)>> {
    let mut versions = read_versions(
        client,
        "SELECT record_id, payload_md5 FROM orders_sync.records
         WHERE pipeline_id = $1 AND store_code = $2 AND stream = $3 AND record_id = ANY($4)",
        &[window.pipeline_id.into(), window.store_code.as_str().into(), stream.into(), ids.to_vec().into()],
    )?;
    versions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(versions)
}

fn read_versions(
    client: &mut pgrx::spi::SpiClient<'_>,
    query: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> SpiResult<Vec<(String, Option<[u8; 16]>)>> {
    let rows = client.select(query, None, args)?;
    let mut versions = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(1)?.unwrap_or_default();
        let md5: Option<pgrx::datum::Uuid> = row.get(2)?;
        versions.push((id, md5.map(|uuid| *uuid.as_bytes())));
    }
    Ok(versions)
}

/// What turns an insert of a page's records into an upsert: a changed record replaces the
/// stored one; one whose payload is unchanged writes no row version. Ends a statement that
/// names the records table `r`.
/// A page's row in `window_pages` (its cursor and ids), with the arguments of [`page_args`].
macro_rules! page_row {
    () => {
        "INSERT INTO orders_sync.window_pages
             (pipeline_id, store_code, from_date, to_date, stream, page_no, next_page_token,
              row_count, record_ids, job_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    };
}
pub(crate) use page_row;

/// The job's progress after a page, with the arguments of [`page_args`].
macro_rules! job_progress {
    () => {
        "UPDATE orders_sync.sync_jobs
         SET pages_done = pages_done + 1, rows_written = rows_written + $8, heartbeat_at = now()
         WHERE id = $10"
    };
}
pub(crate) use job_progress;

/// The arguments of `page_row!` and `job_progress!`: the window's key, stream, page number,
/// next page token, row count, the records' ids (in the order given) and the job.
pub(crate) fn page_args<'a>(
    window: &'a Window,
    job_id: i64,
    stream: &'a str,
    page_no: i32,
    records: &'a [Record],
    next_page_token: Option<&'a str>,
) -> Vec<pgrx::datum::DatumWithOid<'a>> {
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    window.key_then([
        stream.into(),
        page_no.into(),
        next_page_token.into(),
        (records.len() as i32).into(),
        ids.into(),
        job_id.into(),
    ])
}

pub(crate) const UPSERT_CLAUSE: &str = r#"
    ON CONFLICT (pipeline_id, store_code, stream, record_id) DO UPDATE
    SET record_date = EXCLUDED.record_date,
        amount = EXCLUDED.amount,
        payload = EXCLUDED.payload,
        payload_md5 = EXCLUDED.payload_md5,
        synced_at = now()
    WHERE r.payload_md5 IS DISTINCT FROM EXCLUDED.payload_md5
    "#;

/// A page's records as the column arrays a statement unnests.
pub(crate) struct RecordColumns {
    pub ids: Vec<String>,
    pub dates: Vec<pgrx::datum::Date>,
    pub amounts: Vec<Option<String>>,
    pub payloads: Vec<String>,
    pub md5s: Vec<pgrx::datum::Uuid>,
}

impl From<Vec<Record>> for RecordColumns {
    fn from(records: Vec<Record>) -> Self {
        let mut columns = RecordColumns {
            ids: Vec::with_capacity(records.len()),
            dates: Vec::with_capacity(records.len()),
            amounts: Vec::with_capacity(records.len()),
            payloads: Vec::with_capacity(records.len()),
            md5s: Vec::with_capacity(records.len()),
        };
        for record in records {
            columns.dates.push(clock::to_pg(record.date));
            columns.md5s.push(pgrx::datum::Uuid::from_bytes(record.payload_md5));
            columns.ids.push(record.id);
            columns.amounts.push(record.amount);
            columns.payloads.push(record.payload);
        }
        columns
    }
}

/// Writes `records` (sorted by id) in one statement: an upsert on the natural key (changed
/// records, and new ones whose bulk load met a concurrent writer), or a plain INSERT (new
/// records when COPY may not be used on the table). Returns the rows written.
fn insert_records(
    client: &mut pgrx::spi::SpiClient<'_>,
    window: &Window,
    stream: &str,
    records: Vec<Record>,
    upsert: bool,
) -> SpiResult<i64> {
    if records.is_empty() {
        return Ok(0);
    }
    let RecordColumns { ids, dates, amounts, payloads, md5s } = RecordColumns::from(records);
    let insert = r#"
        INSERT INTO orders_sync.records AS r
            (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
        SELECT $1, $2, $3, u.record_id, u.record_date, u.amount::numeric, u.payload::jsonb, u.payload_md5
        -- unnest in the select list streams its rows; in FROM it would first copy them all
        -- into a tuplestore.
        FROM (SELECT unnest($4::text[]) AS record_id, unnest($5::date[]) AS record_date,
                     unnest($6::text[]) AS amount, unnest($7::text[]) AS payload,
                     unnest($8::uuid[]) AS payload_md5) AS u
        "#;
    let query = if upsert { format!("{insert}{UPSERT_CLAUSE}") } else { insert.to_owned() };
    let written = client.update(
        query.as_str(),
        None,
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            stream.into(),
            ids.into(),
            dates.into(),
            amounts.into(),
            payloads.into(),
            md5s.into(),
        ],
    )?;
    Ok(written.len() as i64)
}

/// Whether the window holds no records of `stream` yet.
pub fn window_is_empty(window: &Window, stream: &str) -> SpiResult<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT NOT EXISTS (
             SELECT 1 FROM orders_sync.records
             WHERE pipeline_id = $1 AND store_code = $2 AND stream = $3
               AND record_date BETWEEN $4 AND $5)",
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            stream.into(),
            clock::to_pg(window.from).into(),
            clock::to_pg(window.to).into(),
        ],
    )
    .map(|empty| empty.unwrap_or(false))
}

/// Stamps the log row once a stream has been pulled completely (docs/design.md#sync-log).
pub fn stamp_pulled(log_id: i64, stamp: PulledStamp) -> SpiResult<()> {
    let query = format!("UPDATE orders_sync.orders_sync_log SET {} = now() WHERE id = $1", stamp.column());
    Spi::run_with_args(&query, &[log_id.into()])
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
    // Dates go in as `date` values: a text parameter cast in the query (`$3::date`) is not
    // folded (the cast is only stable) and would be re-parsed for every row scanned.
    let from = clock::to_pg(window.from);
    let to = clock::to_pg(window.to);
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
                       AND record_date BETWEEN $3 AND $4)
                  = (SELECT count(DISTINCT seen.record_id)
                     FROM orders_sync.window_pages p CROSS JOIN LATERAL unnest(p.record_ids) AS seen(record_id)
                     WHERE p.pipeline_id = $1 AND p.store_code = $2 AND p.from_date = $3
                       AND p.to_date = $4 AND p.stream = $5)",
            &[
                window.pipeline_id.into(),
                window.store_code.as_str().into(),
                from.into(),
                to.into(),
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
                  AND r.record_date BETWEEN $3 AND $4
                EXCEPT
                SELECT unnest(p.record_ids) FROM orders_sync.window_pages p
                WHERE p.pipeline_id = $1 AND p.store_code = $2 AND p.from_date = $3
                  AND p.to_date = $4 AND p.stream = $5
            ) stale
            "#,
            &[
                window.pipeline_id.into(),
                window.store_code.as_str().into(),
                from.into(),
                to.into(),
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
         WHERE pipeline = $3 AND store_code = $1 AND stream = ANY($2) AND day BETWEEN $4 AND $5",
        &[
            window.store_code.as_str().into(),
            completion.streams.to_vec().into(),
            completion.pipeline_code.into(),
            from.into(),
            to.into(),
        ],
    )?;
    Spi::run_with_args(
        r#"
        INSERT INTO orders_sync.kpi_facts_daily (pipeline, store_code, stream, day, record_count, amount_sum)
        SELECT $6, r.store_code, r.stream, r.record_date, count(*), coalesce(sum(r.amount), 0)
        FROM orders_sync.records r
        WHERE r.pipeline_id = $1 AND r.store_code = $2 AND r.stream = ANY($5)
          AND r.record_date BETWEEN $3 AND $4
        GROUP BY r.store_code, r.stream, r.record_date
        "#,
        &[
            window.pipeline_id.into(),
            window.store_code.as_str().into(),
            from.into(),
            to.into(),
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
            WHERE pipeline_id = $5 AND store_code = $6 AND from_date = $7 AND to_date = $8
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn record(id: &str, md5: u8) -> Record {
        Record {
            id: id.to_owned(),
            date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            amount: None,
            payload: String::new(),
            payload_md5: [md5; 16],
        }
    }

    #[test]
    fn records_are_absent_changed_or_unchanged() {
        let records = [record("a", 1), record("c", 2), record("d", 3), record("f", 4)];
        let stored = [
            ("b".to_owned(), Some([9; 16])),
            ("c".to_owned(), Some([2; 16])),
            ("d".to_owned(), Some([7; 16])),
            ("e".to_owned(), None),
            ("f".to_owned(), None),
        ];
        assert_eq!(classify(&records, &stored), [Stored::Absent, Stored::Unchanged, Stored::Changed, Stored::Changed]);
        assert_eq!(classify(&records, &[]), [Stored::Absent; 4]);
        assert!(classify(&[], &stored).is_empty());
    }

    proptest! {
        /// The merge agrees with a lookup by id, whatever the overlap of page and table.
        #[test]
        fn merge_agrees_with_a_lookup_by_id(
            page in proptest::collection::btree_map("[a-e]{1,3}", 0u8..3, 0..40),
            table in proptest::collection::btree_map("[a-e]{1,3}", proptest::option::of(0u8..3), 0..40),
        ) {
            let records: Vec<Record> = page.iter().map(|(id, md5)| record(id, *md5)).collect();
            let stored: Vec<(String, Option<[u8; 16]>)> =
                table.iter().map(|(id, md5)| (id.clone(), md5.map(|m| [m; 16]))).collect();
            let lookup: HashMap<&str, Option<[u8; 16]>> =
                stored.iter().map(|(id, md5)| (id.as_str(), *md5)).collect();
            let expected: Vec<Stored> = records
                .iter()
                .map(|r| match lookup.get(r.id.as_str()) {
                    None => Stored::Absent,
                    Some(md5) if *md5 == Some(r.payload_md5) => Stored::Unchanged,
                    Some(_) => Stored::Changed,
                })
                .collect();
            prop_assert_eq!(classify(&records, &stored), expected);
        }
    }
}
