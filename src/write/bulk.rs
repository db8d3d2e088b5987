//! New records through PostgreSQL's own bulk-load path: `COPY FROM` fed by a data-source
//! callback (the way file_fdw and in-core COPY read), so rows reach the table through
//! `table_multi_insert` with index insertion, per-row and per-statement triggers, CHECK and
//! NOT NULL constraints and defaults exactly as a `COPY orders_sync.records FROM ...` would
//! (docs/design.md#writing).
//!
//! Every `unsafe` call into PostgreSQL that this needs is in this module. It runs on the
//! worker's main thread, inside the page's transaction, in a subtransaction of its own: a
//! unique violation (a writer outside orders_sync stored one of the page's ids after the page
//! was classified) rolls back just that subtransaction and is reported as a value, so the
//! caller can write the page with the upsert instead. Any other error is re-raised after the
//! rollback and fails the page's transaction as the SQL path would.

use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr};
use std::io::Write;
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::PgSqlErrorCode;

use super::Window;
use crate::fetch::Record;

/// What the bulk load of a page's new records came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkOutcome {
    /// Every record was loaded; the number of rows COPY stored (a user's BEFORE ROW trigger
    /// returning NULL stores fewer).
    Loaded(i64),
    /// A unique violation: nothing of the page was kept; write it with the upsert.
    Conflict,
    /// COPY would not do what an INSERT does on this table (see `bulk_path_refused`);
    /// nothing was done: write the page with the SQL INSERT.
    Refused(&'static str),
}

/// How `PAGE_TEXT` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Binary,
    Text,
}

/// The columns COPY fills, in the order of each line; `synced_at` takes its default.
const COLUMNS: [&CStr; 8] =
    [c"pipeline_id", c"store_code", c"stream", c"record_id", c"record_date", c"amount", c"payload", c"payload_md5"];

thread_local! {
    /// The page being loaded, in COPY's binary (or text) format, and how much of it COPY has read. COPY's data-source
    /// callback takes no argument, so the one page in flight is kept here (main thread only).
    static PAGE_TEXT: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// Loads `records` (known absent from the table) into `orders_sync.records` through COPY.
pub fn load_new_records(window: &Window, stream: &str, records: &[Record]) -> BulkOutcome {
    if records.is_empty() {
        return BulkOutcome::Loaded(0);
    }
    if !crate::gucs::bulk_load() {
        return BulkOutcome::Refused("orders_sync.bulk_load is off");
    }
    // On Citus the local heap is the coordinator's empty shell: rows loaded there are lost
    // to every query (docs/design.md#citus). write_page routes such pages elsewhere first;
    // this refuses them here as well, also when the check itself fails.
    if !matches!(crate::distributed::store_tables_distributed(), Ok(false)) {
        return BulkOutcome::Refused("orders_sync.records is a Citus distributed table");
    }
    // SAFETY: syscache lookups by name, on the main thread inside a transaction.
    let relid = unsafe { records_relid() };
    if let Some(reason) = unsafe { bulk_path_refused(relid) } {
        return BulkOutcome::Refused(reason);
    }
    let format = PAGE_TEXT.with_borrow_mut(|(text, read)| {
        text.clear();
        *read = 0;
        if copy_binary(window, stream, records, text).is_some() {
            return Format::Binary;
        }
        text.clear();
        copy_text(window, stream, records, text);
        Format::Text
    });
    // SAFETY: see copy_in_subtransaction.
    let outcome = unsafe { copy_in_subtransaction(relid, format) };
    PAGE_TEXT.with_borrow_mut(|(text, read)| {
        // Keep the allocation for the next page, not its contents.
        text.clear();
        *read = 0;
    });
    outcome
}

/// The OID of `orders_sync.records`.
///
/// SAFETY: main thread, inside a transaction (catalog lookups).
unsafe fn records_relid() -> pg_sys::Oid {
    let namespace = pg_sys::get_namespace_oid(c"orders_sync".as_ptr(), false);
    pg_sys::get_relname_relid(c"records".as_ptr(), namespace)
}

/// Why COPY must not be used on the table as it is now, if it must not: COPY ignores rewrite
/// rules and does not apply row-level security, where an INSERT does both.
///
/// SAFETY: main thread, inside a transaction (relcache access).
unsafe fn bulk_path_refused(relid: pg_sys::Oid) -> Option<&'static str> {
    if relid == pg_sys::InvalidOid {
        return Some("orders_sync.records not found");
    }
    let rel = pg_sys::RelationIdGetRelation(relid);
    if rel.is_null() {
        return Some("orders_sync.records not found");
    }
    // The relcache's rules, not pg_class.relhasrules: that flag stays set after the last rule
    // is dropped.
    let rules = (*rel).rd_rules;
    let has_rules = !rules.is_null() && (*rules).numLocks > 0;
    pg_sys::RelationClose(rel);
    if has_rules {
        return Some("orders_sync.records has rewrite rules, which COPY does not apply");
    }
    let rls = pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true);
    if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as c_int {
        return Some("row-level security applies to orders_sync.records, which COPY FROM does not enforce");
    }
    None
}

/// Runs COPY over `PAGE_TEXT` (in `format`) in a subtransaction; a unique violation rolls it back and
/// comes back as `Conflict`, any other error is re-raised after the rollback.
///
/// SAFETY: main thread, inside a transaction; `PAGE_TEXT` holds the page. Follows the
/// subtransaction protocol of PL/pgSQL's exception blocks: the caller's memory context and
/// resource owner are restored whichever way the subtransaction ends.
unsafe fn copy_in_subtransaction(relid: pg_sys::Oid, format: Format) -> BulkOutcome {
    let caller_context = pg_sys::CurrentMemoryContext;
    let caller_owner = pg_sys::CurrentResourceOwner;
    pg_sys::BeginInternalSubTransaction(std::ptr::null());
    pg_sys::MemoryContextSwitchTo(caller_context);
    let restore = || {
        pg_sys::MemoryContextSwitchTo(caller_context);
        pg_sys::CurrentResourceOwner = caller_owner;
    };
    PgTryBuilder::new(AssertUnwindSafe(|| {
        let stored = copy_page(relid, format);
        pg_sys::ReleaseCurrentSubTransaction();
        restore();
        BulkOutcome::Loaded(stored as i64)
    }))
    .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |_| {
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        restore();
        BulkOutcome::Conflict
    })
    .catch_others(|caught: CaughtError| {
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        restore();
        caught.rethrow()
    })
    .execute()
}

/// One COPY of `PAGE_TEXT` into the table, set up as `DoCopy` sets up `COPY ... FROM`:
/// the table locked ROW EXCLUSIVE, a range-table entry asking for INSERT rights (checked
/// here; CopyFrom builds its executor state from it), the column list and the format options.
/// Returns the rows stored.
///
/// SAFETY: main thread, inside a (sub)transaction; errors longjmp out (pgrx turns them into
/// panics at each call), and everything allocated here lives in the transaction's memory.
unsafe fn copy_page(relid: pg_sys::Oid, format: Format) -> u64 {
    let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    let parse_state = pg_sys::make_parsestate(std::ptr::null_mut());
    let item = pg_sys::addRangeTableEntryForRelation(
        parse_state,
        rel,
        pg_sys::RowExclusiveLock as c_int,
        std::ptr::null_mut(),
        false,
        false,
    );
    (*(*item).p_rte).requiredPerms = pg_sys::ACL_INSERT as pg_sys::AclMode;
    pg_sys::ExecCheckRTPerms((*parse_state).p_rtable, true);

    let mut columns: *mut pg_sys::List = std::ptr::null_mut();
    for column in COLUMNS {
        columns = pg_sys::lappend(columns, pg_sys::makeString(pg_sys::pstrdup(column.as_ptr())).cast());
    }
    // Text fields carry the server's own encoding, as the SQL path's text parameters do.
    let encoding = pg_sys::makeString(pg_sys::pstrdup(pg_sys::GetDatabaseEncodingName()));
    let mut options = pg_sys::lappend(
        std::ptr::null_mut(),
        pg_sys::makeDefElem(pg_sys::pstrdup(c"encoding".as_ptr()), encoding.cast(), -1).cast(),
    );
    if format == Format::Binary {
        let binary = pg_sys::makeString(pg_sys::pstrdup(c"binary".as_ptr()));
        options = pg_sys::lappend(
            options,
            pg_sys::makeDefElem(pg_sys::pstrdup(c"format".as_ptr()), binary.cast(), -1).cast(),
        );
    }

    let copy = pg_sys::BeginCopyFrom(
        parse_state,
        rel,
        std::ptr::null_mut(),
        std::ptr::null(),
        false,
        Some(read_page_text),
        columns,
        options,
    );
    let stored = pg_sys::CopyFrom(copy);
    pg_sys::EndCopyFrom(copy);
    pg_sys::free_parsestate(parse_state);
    pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    stored
}

/// COPY's data source: hands out the rest of `PAGE_TEXT`, at most `max_bytes` at a time;
/// 0 is the end of the data.
unsafe extern "C-unwind" fn read_page_text(buffer: *mut c_void, _min_bytes: c_int, max_bytes: c_int) -> c_int {
    PAGE_TEXT.with_borrow_mut(|(text, read)| {
        let count = (text.len() - *read).min(max_bytes.max(0) as usize);
        // SAFETY: COPY's buffer holds max_bytes; the source range is inside `text`.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr().add(*read), buffer.cast::<u8>(), count) };
        *read += count;
        count as c_int
    })
}

/// The page in COPY's binary format (one tuple per record, columns as in `COLUMNS`), or
/// `None` when an amount is not a number this encoder takes exactly as `numeric` input would
/// (then the page goes through COPY's text format, whose `numeric` input reports the error).
///
/// Binary, not text: no escaping here and no line splitting, integer, date or uuid parsing
/// in the server (about a tenth of COPY's time in the profile, docs/design.md#writing).
pub fn copy_binary(window: &Window, stream: &str, records: &[Record], out: &mut Vec<u8>) -> Option<()> {
    out.reserve(records.iter().map(|r| r.id.len() + r.payload.len() + 96).sum::<usize>() + 32);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    let pipeline_id = window.pipeline_id.to_be_bytes();
    for record in records {
        out.extend_from_slice(&(COLUMNS.len() as i16).to_be_bytes());
        field(out, &pipeline_id);
        field(out, window.store_code.as_bytes());
        field(out, stream.as_bytes());
        field(out, record.id.as_bytes());
        field(out, &i32::try_from(crate::clock::pg_epoch_days(record.date)).ok()?.to_be_bytes());
        match &record.amount {
            Some(amount) => {
                let at = out.len();
                out.extend_from_slice(&0i32.to_be_bytes());
                numeric_binary(amount, out)?;
                let length = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        // jsonb's binary form: format version 1, then the JSON text.
        out.extend_from_slice(&(record.payload.len() as i32 + 1).to_be_bytes());
        out.push(1);
        out.extend_from_slice(record.payload.as_bytes());
        field(out, &record.payload_md5);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Some(())
}

fn field(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
}

/// `numeric`'s binary form of a JSON number's text (`-12.50`, `1.5e3`): base-10000 digits
/// aligned on the decimal point, their count, the weight of the first, the sign and the
/// display scale, which is what `numeric` input derives from the same text (digits written
/// after the point, less the exponent, at least 0). `None` for anything else, and for
/// exponents or scales beyond what `numeric` input accepts (it then reports them).
fn numeric_binary(text: &str, out: &mut Vec<u8>) -> Option<()> {
    const MAX_PRECISION: i64 = 1000;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    if !(-MAX_PRECISION..=MAX_PRECISION).contains(&exponent) {
        return None;
    }
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) => (integer, fraction),
        None => (mantissa, ""),
    };
    if integer.is_empty() || !integer.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if mantissa.ends_with('.') {
        return None;
    }
    let scale = (fraction.len() as i64 - exponent).max(0);
    if scale > MAX_PRECISION {
        return None;
    }
    // The decimal digits without leading zeros; `point` = how many of them stand before
    // the decimal point (negative or beyond their count when the exponent moves it).
    let all = integer.bytes().chain(fraction.bytes());
    let leading_zeros = all.clone().take_while(|&b| b == b'0').count();
    let digits: Vec<u8> = all.skip(leading_zeros).map(|b| b - b'0').collect();
    let digits = &digits[..digits.iter().rposition(|&d| d != 0).map_or(0, |last| last + 1)];
    let point = integer.len() as i64 - leading_zeros as i64 + exponent;
    let mut groups: Vec<i16> = Vec::new();
    let mut weight = 0i64;
    if !digits.is_empty() {
        // Decimal digit i has place value 10^(point - 1 - i); base-10000 group g holds
        // places 4g .. 4g + 3.
        weight = (point - 1).div_euclid(4);
        let last_group = (point - digits.len() as i64).div_euclid(4);
        groups = vec![0; (weight - last_group + 1) as usize];
        for (i, &digit) in digits.iter().enumerate() {
            let place = point - 1 - i as i64;
            let group = place.div_euclid(4);
            groups[(weight - group) as usize] += i16::from(digit) * 10i16.pow(place.rem_euclid(4) as u32);
        }
    }
    if groups.len() > i16::MAX as usize || !(i16::MIN as i64..=i16::MAX as i64).contains(&weight) {
        return None;
    }
    let sign: u16 = if negative && !groups.is_empty() { 0x4000 } else { 0 };
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Some(())
}

/// The page as COPY text: one line per record, columns as in `COLUMNS`.
pub fn copy_text(window: &Window, stream: &str, records: &[Record], text: &mut Vec<u8>) {
    let mut prefix = Vec::new();
    let _ = write!(prefix, "{}\t", window.pipeline_id);
    escape_into(window.store_code.as_bytes(), &mut prefix);
    prefix.push(b'\t');
    escape_into(stream.as_bytes(), &mut prefix);
    prefix.push(b'\t');
    text.reserve(records.iter().map(|r| prefix.len() + r.id.len() + r.payload.len() + 64).sum());
    for record in records {
        text.extend_from_slice(&prefix);
        escape_into(record.id.as_bytes(), text);
        let _ = write!(text, "\t{}\t", record.date.format("%Y-%m-%d"));
        match &record.amount {
            Some(amount) => escape_into(amount.as_bytes(), text),
            None => text.extend_from_slice(b"\\N"),
        }
        text.push(b'\t');
        escape_into(record.payload.as_bytes(), text);
        text.push(b'\t');
        uuid_into(&record.payload_md5, text);
        text.push(b'\n');
    }
}

/// Appends `value` with COPY text format's escapes: backslash, and the tab, newline and
/// carriage return that would otherwise end a column or a line.
fn escape_into(value: &[u8], text: &mut Vec<u8>) {
    let mut start = 0;
    for (at, byte) in value.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        text.extend_from_slice(&value[start..at]);
        text.extend_from_slice(escaped);
        start = at + 1;
    }
    text.extend_from_slice(&value[start..]);
}

fn uuid_into(bytes: &[u8; 16], text: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (at, byte) in bytes.iter().enumerate() {
        if matches!(at, 4 | 6 | 8 | 10) {
            text.push(b'-');
        }
        text.push(HEX[(byte >> 4) as usize]);
        text.push(HEX[(byte & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    /// (ndigits, weight, sign, dscale, base-10000 digits) of `numeric_binary(text)`.
    fn numeric(text: &str) -> Option<(i16, i16, u16, i16, Vec<i16>)> {
        let mut out = Vec::new();
        numeric_binary(text, &mut out)?;
        let words: Vec<i16> = out.chunks(2).map(|w| i16::from_be_bytes([w[0], w[1]])).collect();
        Some((words[0], words[1], words[2] as u16, words[3], words[4..].to_vec()))
    }

    #[test]
    fn amounts_take_numerics_binary_form_as_numeric_input_reads_them() {
        assert_eq!(numeric("341.35"), Some((2, 0, 0, 2, vec![341, 3500])));
        assert_eq!(numeric("-1.5e3"), Some((1, 0, 0x4000, 0, vec![1500])));
        assert_eq!(numeric("1.5E+3"), Some((1, 0, 0, 0, vec![1500])));
        assert_eq!(numeric("0"), Some((0, 0, 0, 0, vec![])));
        assert_eq!(numeric("-0.0"), Some((0, 0, 0, 1, vec![])));
        assert_eq!(numeric("0.001"), Some((1, -1, 0, 3, vec![10])));
        assert_eq!(numeric("1e-3"), Some((1, -1, 0, 3, vec![10])));
        assert_eq!(numeric("100"), Some((1, 0, 0, 0, vec![100])));
        assert_eq!(numeric("1.50"), Some((2, 0, 0, 2, vec![1, 5000])));
        assert_eq!(numeric("12345.6789"), Some((3, 1, 0, 4, vec![1, 2345, 6789])));
        assert_eq!(numeric("10000"), Some((1, 1, 0, 0, vec![1])));
        assert_eq!(numeric("-0.00012"), Some((2, -1, 0x4000, 5, vec![1, 2000])));
        // numeric input refuses these itself; the page then goes through the text format.
        assert_eq!(numeric("1e1001"), None);
        assert_eq!(numeric("abc"), None);
        assert_eq!(numeric("1."), None);
        assert_eq!(numeric(""), None);
    }

    #[test]
    fn copy_text_escapes_what_would_end_a_column_or_a_line() {
        let window = Window {
            pipeline_id: 7,
            store_code: "S1".into(),
            from: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
        };
        let records = [
            Record {
                id: "a\\b\tc".into(),
                date: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
                amount: Some("-1.5e3".into()),
                payload: "{\"note\": \"x\\\"y\",\n\r\"id\": 1}".into(),
                payload_md5: [0xab; 16],
            },
            Record {
                id: "b".into(),
                date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                amount: None,
                payload: "{}".into(),
                payload_md5: [0; 16],
            },
        ];
        let mut text = Vec::new();
        copy_text(&window, "gst", &records, &mut text);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "7\tS1\tgst\ta\\\\b\\tc\t2026-01-02\t-1.5e3\t{\"note\": \"x\\\\\"y\",\\n\\r\"id\": 1}\t\
             abababab-abab-abab-abab-abababababab\n\
             7\tS1\tgst\tb\t2026-01-01\t\\N\t{}\t00000000-0000-0000-0000-000000000000\n"
        );
    }
}
