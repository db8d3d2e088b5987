//! orders_sync on a Citus cluster (docs/design.md#citus): which node this is, whether the
//! store-keyed tables are distributed, and the page write for distributed tables.
//!
//! On a distributed install every statement of a page names one store (`store_code = $2`),
//! so Citus's router planner sends it to the one shard, on the one node, holding that store.
//! The page's row and the job's progress are two statements here (one statement over a
//! distributed and a local table is run by Citus as a subplan plus a task). New records never
//! take the bulk COPY path there (`write::bulk` writes the local heap, which on a distributed
//! table is the coordinator's empty shell: the rows would be lost), and not the
//! `INSERT ... SELECT unnest(...)` of the SQL path either, which Citus gathers on the
//! coordinator ("pull to coordinator") before copying it on (see `INSERT_PAGE_RECORDS`). A window's completion
//! (`write::complete_window`) needs no variant: each of its statements names the store and
//! is routed as it is (pg_test/tests/citus.rs checks every one with EXPLAIN).

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::fetch::Record;
use crate::write::{self, RecordColumns, Window, UPSERT_CLAUSE};

thread_local! {
    /// Whether the store-keyed tables are distributed, for the transaction (its local id)
    /// that asked: `create_distributed_table` cannot happen in the middle of a worker's
    /// transaction, so one answer per transaction is enough, and a page asks only once.
    static DISTRIBUTED_IN: Cell<Option<(u32, bool)>> = const { Cell::new(None) };
}

/// This transaction's local id (changes with every transaction of the backend).
fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is this backend's own PGPROC, set for as long as the backend lives.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Whether Citus's catalog is in this database (the citus extension created).
fn citus_installed() -> SpiResult<bool> {
    Spi::get_one::<bool>("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
        .map(|found| found.unwrap_or(false))
}

/// Whether any store-keyed table (records, window_pages, kpi_facts_daily) is a Citus
/// distributed table. Cached for the transaction.
pub fn store_tables_distributed() -> SpiResult<bool> {
    let lxid = local_transaction_id();
    if let Some((cached_lxid, distributed)) = DISTRIBUTED_IN.get() {
        if cached_lxid == lxid {
            return Ok(distributed);
        }
    }
    let distributed = citus_installed()?
        && Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                            WHERE logicalrelid = ANY (orders_sync.store_keyed_tables()))",
        )?
        .unwrap_or(false);
    DISTRIBUTED_IN.set(Some((lxid, distributed)));
    Ok(distributed)
}

/// Whether this server is a Citus worker node (its Citus group is not the coordinator's).
/// The extension reaches worker nodes by Citus's propagation of CREATE EXTENSION; its
/// tables there are shells or shards, so nothing may be planned or fetched there. A server
/// with Citus but no cluster yet is group 0, like a coordinator, and syncs as one node.
pub fn is_citus_worker_node() -> SpiResult<bool> {
    if !Spi::get_one::<bool>("SELECT to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL")?.unwrap_or(false) {
        return Ok(false);
    }
    Spi::get_one::<bool>("SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group")
        .map(|worker| worker.unwrap_or(false))
}

/// An error on a Citus worker node: its launcher idles (syncing runs on the coordinator), so a
/// run or window started there would wait forever; `what` names what was asked for.
pub fn refuse_on_worker_node(what: &str) -> Result<(), crate::errors::SqlError> {
    if is_citus_worker_node()? {
        return Err(crate::errors::SqlError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot start {what} on a Citus worker node"),
        )
        .with_hint("Syncing runs on the Citus coordinator: run this there."));
    }
    Ok(())
}

/// `write::write_page` for distributed tables: the page's row (its cursor), the stored
/// versions of its ids and its records, each one statement routed to the store's shard, and
/// the job's progress on the coordinator; all in the caller's transaction.
pub fn write_page(
    window: &Window,
    job_id: i64,
    stream: &str,
    page_no: i32,
    records: Vec<Record>,
    next_page_token: Option<&str>,
) -> SpiResult<i64> {
    let records = write::in_key_order(records);
    Spi::connect_mut(|client| {
        // Two statements, not the single-node path's one: the page's row goes to the store's
        // shard on a worker node, the job's progress stays on the coordinator, and each
        // statement is routed to one place.
        let args = write::page_args(window, job_id, stream, page_no, &records, next_page_token);
        client.update(write::page_row!(), None, &args)?;
        client.update(write::job_progress!(), None, &args)?;
        let (absent, changed) = write::new_and_changed(client, window, stream, records)?;
        Ok(insert_rows(client, window, stream, page_no, absent, false)?
            + insert_rows(client, window, stream, page_no, changed, true)?)
    })
}

/// Records of a page, as arrays, joined to the page's own row in `window_pages` (written just
/// before in this transaction): the statement then reads a distributed table co-located with
/// `records` on the store's shard, so Citus pushes the whole `INSERT ... SELECT` down to that
/// one shard as one task, arrays and all. The SQL path's `INSERT ... SELECT unnest($arrays)`
/// reads no table, and Citus gathers its rows on the coordinator first ("pull to
/// coordinator"); a multi-row VALUES list is routed too, but Citus plans and deparses it row
/// by row: it loaded at a fifth of this speed (scripts/bench_citus.sh).
const INSERT_PAGE_RECORDS: &str = r#"
    INSERT INTO orders_sync.records AS r
        (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
    SELECT p.pipeline_id, p.store_code, p.stream, u.record_id, u.record_date, u.amount::numeric,
           u.payload::jsonb, u.payload_md5
    FROM orders_sync.window_pages p
    CROSS JOIN LATERAL (SELECT unnest($7::text[]) AS record_id, unnest($8::date[]) AS record_date,
                               unnest($9::text[]) AS amount, unnest($10::text[]) AS payload,
                               unnest($11::uuid[]) AS payload_md5) AS u
    WHERE p.pipeline_id = $1 AND p.store_code = $2 AND p.from_date = $3 AND p.to_date = $4
      AND p.stream = $5 AND p.page_no = $6
    "#;

/// Writes `records` of page `page_no` in one statement routed to the store's shard (an upsert
/// when `upsert`); returns the rows written.
fn insert_rows(
    client: &mut pgrx::spi::SpiClient<'_>,
    window: &Window,
    stream: &str,
    page_no: i32,
    records: Vec<Record>,
    upsert: bool,
) -> SpiResult<i64> {
    if records.is_empty() {
        return Ok(0);
    }
    let RecordColumns { ids, dates, amounts, payloads, md5s } = RecordColumns::from(records);
    let query = if upsert { format!("{INSERT_PAGE_RECORDS}{UPSERT_CLAUSE}") } else { INSERT_PAGE_RECORDS.to_owned() };
    let written = client.update(
        query.as_str(),
        None,
        &window.key_then([
            stream.into(),
            page_no.into(),
            ids.into(),
            dates.into(),
            amounts.into(),
            payloads.into(),
            md5s.into(),
        ]),
    )?;
    Ok(written.len() as i64)
}
