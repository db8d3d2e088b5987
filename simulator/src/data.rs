//! Deterministic rows, and the edits tests make to them.
//!
//! Every field of a row is a pure function of (seed, store, stream, day, n, version), so the
//! simulator never stores generated data: a page is produced by jumping straight to its first
//! row (rows per day are known up front) and hashing forwards. Edits from the control API
//! (late rows, deletions, changes) are kept as small per-day overlays that the generator
//! consults only on days that have them.
//!
//! The hot path writes JSON by hand into a caller-supplied buffer: no serde and no allocation
//! per row, because benchmarks of the extension must never be bottlenecked by this process.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::BytesMut;
use chrono::{Datelike, NaiveDate};

/// Largest window (in days) any request may span. Keeps a silly `from`/`to` pair from making
/// the truth endpoint or an empty-day scan run for minutes.
pub const MAX_WINDOW_DAYS: i64 = 36_600;

/// Rows of a day, the edits a test made to one (store, stream, day).
#[derive(Debug, Default, Clone)]
pub struct DayEdits {
    /// Extra rows appended after the generated ones (late-arriving data).
    pub late: u32,
    /// Row numbers that no longer exist at the source.
    pub deleted: BTreeSet<u32>,
    /// Row number -> payload version (0 = as generated). Absent means 0.
    pub versions: BTreeMap<u32, u32>,
}

/// Edits of one stream of one store, by day number (see [`day_number`]).
pub type StreamEdits = BTreeMap<i32, DayEdits>;

/// Everything the source "holds": generation parameters plus edits.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub seed: u64,
    pub rows_per_day: u32,
    pub store_rows_per_day: HashMap<String, u32>,
    /// store -> stream -> day -> edits. Nested maps so a request looks up its stream once,
    /// with borrowed keys, and then only does integer lookups per day.
    pub edits: HashMap<String, HashMap<String, StreamEdits>>,
}

impl Dataset {
    pub fn new(seed: u64, rows_per_day: u32) -> Self {
        Dataset { seed, rows_per_day, store_rows_per_day: HashMap::new(), edits: HashMap::new() }
    }

    /// Read-only view of one store + stream, resolved once per request.
    pub fn view<'a>(&'a self, store: &'a str, stream: &'a str) -> StreamView<'a> {
        let base_rows = self.store_rows_per_day.get(store).copied().unwrap_or(self.rows_per_day);
        let edits = self.edits.get(store).and_then(|s| s.get(stream));
        let mut id_prefix = Vec::with_capacity(stream.len() + store.len() + 16);
        id_prefix.extend_from_slice(b"{\"id\":\"");
        json_escape_into(&mut id_prefix, stream);
        id_prefix.push(b'-');
        json_escape_into(&mut id_prefix, store);
        id_prefix.push(b'-');
        StreamView {
            seed: self.seed,
            store,
            stream,
            base_rows,
            edits,
            store_hash: fnv1a(store.as_bytes()),
            stream_hash: fnv1a(stream.as_bytes()),
            id_prefix,
        }
    }

    /// Mutable edits of one day, created on first use.
    pub fn day_edits_mut(&mut self, store: &str, stream: &str, day: i32) -> &mut DayEdits {
        self.edits.entry(store.to_owned()).or_default().entry(stream.to_owned()).or_default().entry(day).or_default()
    }
}

/// Position of a row within a chain: the next row to serve is the first present row at or
/// after (day, n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub day: i32,
    pub n: u32,
}

/// One store + stream, with everything per-request precomputed.
pub struct StreamView<'a> {
    seed: u64,
    pub store: &'a str,
    pub stream: &'a str,
    base_rows: u32,
    edits: Option<&'a StreamEdits>,
    store_hash: u64,
    stream_hash: u64,
    /// `{"id":"<stream>-<store>-` already JSON-escaped, written in front of every record.
    id_prefix: Vec<u8>,
}

/// Per-day values shared by all rows of that day.
pub struct DayCtx<'a> {
    pub day: i32,
    pub total: u32,
    pub date10: [u8; 10],
    pub date8: [u8; 8],
    /// The date as the integer YYYYMMDD (numeric ids of the shapes are `ymd * 1_000_000 + n`).
    pub ymd: u64,
    hash: u64,
    edits: Option<&'a DayEdits>,
}

impl DayCtx<'_> {
    #[inline]
    pub fn is_deleted(&self, n: u32) -> bool {
        self.edits.is_some_and(|e| e.deleted.contains(&n))
    }

    #[inline]
    fn version(&self, n: u32) -> u32 {
        match self.edits {
            Some(e) if !e.versions.is_empty() => e.versions.get(&n).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// Number of rows present (generated + late - deleted).
    pub fn present(&self) -> u32 {
        let deleted = self.edits.map_or(0, |e| e.deleted.range(..self.total).count() as u32);
        self.total - deleted
    }

    /// Row number of the `k`-th (0-based) present row; `k < present()`.
    pub fn nth_present(&self, k: u32) -> u32 {
        let mut n = k;
        if let Some(e) = self.edits {
            for &d in e.deleted.range(..self.total) {
                if d <= n {
                    n += 1;
                } else {
                    break;
                }
            }
        }
        n
    }

    /// The numeric id of row n: `YYYYMMDD * 1_000_000 + n`.
    #[inline]
    pub fn num_id(&self, n: u32) -> u64 {
        self.ymd * 1_000_000 + n as u64
    }

    /// Seconds after local midnight at which row n happens (the `nexturl` shape's timestamps):
    /// `n * 86399 / max(total, 1)`, so a day's rows spread over the day in row order.
    #[inline]
    pub fn second_of_day(&self, n: u32) -> u32 {
        (n as u64 * 86_399 / self.total.max(1) as u64) as u32
    }

    /// The first row number whose `second_of_day` is at or after `s` (may be `total`).
    pub fn first_row_at_or_after(&self, s: u32) -> u32 {
        let t = self.total.max(1) as u64;
        let n = (s as u64 * t).div_ceil(86_399);
        n.min(self.total as u64) as u32
    }
}

/// The fields of one row. Amount is integer cents: truth sums are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub n: u32,
    pub version: u32,
    pub cents: Option<i64>,
    pub customer: u32,
    pub sku: u32,
    pub qty: u32,
    pub channel: &'static str,
}

const CHANNELS: [&str; 4] = ["pos", "web", "app", "phone"];

impl<'a> StreamView<'a> {
    pub fn day(&self, day: i32) -> DayCtx<'a> {
        let edits = self.edits.and_then(|m| m.get(&day));
        let total = self.base_rows.saturating_add(edits.map_or(0, |e| e.late));
        let (date10, date8) = date_strings(day);
        let ymd = date8.iter().fold(0u64, |acc, &b| acc * 10 + (b - b'0') as u64);
        let hash = mix(mix(mix(self.seed ^ self.store_hash) ^ self.stream_hash) ^ (day as u32 as u64));
        DayCtx { day, total, date10, date8, ymd, hash, edits }
    }

    /// Pure function of (seed, store, stream, day, n, version).
    #[inline]
    pub fn row(&self, ctx: &DayCtx<'_>, n: u32) -> Row {
        let version = ctx.version(n);
        let r0 = mix(ctx.hash ^ (n as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let r1 = mix(r0);
        let r2 = mix(r1);
        // 1.00 .. 5000.99, about 1 in 50 negative (a return).
        let mut base = ((r0 >> 8) % 500_000) as i64 + 100;
        if (r0 >> 40).is_multiple_of(50) {
            base = -base;
        }
        // About 1 in 40 generated rows has no amount. A changed row always gets one that
        // differs from every earlier version, so tests can see the update in the data.
        let cents = if version == 0 {
            if r0.is_multiple_of(40) {
                None
            } else {
                Some(base)
            }
        } else {
            Some(base + 137 * version as i64)
        };
        Row {
            n,
            version,
            cents,
            customer: (r1 % 10_000_000) as u32,
            sku: ((r1 >> 32) % 100_000) as u32,
            qty: 1 + (r2 % 9) as u32,
            channel: CHANNELS[((r2 >> 8) % 4) as usize],
        }
    }

    /// Write one record. `omit_date` exists for the `bad_record` fault.
    #[inline]
    pub fn write_record(&self, buf: &mut BytesMut, ctx: &DayCtx<'_>, row: &Row, omit_date: bool) {
        buf.extend_from_slice(&self.id_prefix);
        buf.extend_from_slice(&ctx.date8);
        buf.extend_from_slice(b"-");
        write_padded(buf, row.n as u64, 6);
        if omit_date {
            buf.extend_from_slice(b"\",\"amount\":");
        } else {
            buf.extend_from_slice(b"\",\"date\":\"");
            buf.extend_from_slice(&ctx.date10);
            buf.extend_from_slice(b"\",\"amount\":");
        }
        match row.cents {
            Some(c) => write_cents(buf, c),
            None => buf.extend_from_slice(b"null"),
        }
        Self::write_tail(buf, row);
    }

    /// Write up to `page_size` comma-separated records starting at `start`, never past
    /// `to_day`. Returns how many were written and where the next page starts (None when the
    /// window is exhausted). Cost is proportional to the page (plus deleted rows and empty days
    /// skipped), never to the rows before `start`.
    pub fn write_records(
        &self,
        buf: &mut BytesMut,
        start: Cursor,
        to_day: i32,
        page_size: usize,
        bad_first: bool,
    ) -> (usize, Option<Cursor>) {
        let end = Cursor { day: to_day.saturating_add(1), n: 0 };
        self.write_rows(buf, start, end, page_size, |buf, ctx, row, first| {
            self.write_record(buf, ctx, row, bad_first && first)
        })
    }

    /// The paging loop of every shape: calls `write` for up to `page_size` present rows from
    /// `start` up to `end` (exclusive), comma-separated. Returns how many were written and the
    /// next present row when the page filled up before `end` (None when the range is exhausted).
    /// `write` gets whether the row is the page's first.
    #[inline]
    pub fn write_rows<F>(
        &self,
        buf: &mut BytesMut,
        start: Cursor,
        end: Cursor,
        page_size: usize,
        mut write: F,
    ) -> (usize, Option<Cursor>)
    where
        F: FnMut(&mut BytesMut, &DayCtx<'a>, &Row, bool),
    {
        let mut written = 0usize;
        let mut day = start.day;
        let mut n = start.n;
        while day < end.day || (day == end.day && n < end.n) {
            let ctx = self.day(day);
            let limit = if day == end.day { end.n.min(ctx.total) } else { ctx.total };
            while n < limit {
                if !ctx.is_deleted(n) {
                    if written == page_size {
                        return (written, Some(Cursor { day, n }));
                    }
                    if written > 0 {
                        buf.extend_from_slice(b",");
                    }
                    let row = self.row(&ctx, n);
                    write(buf, &ctx, &row, written == 0);
                    written += 1;
                }
                n += 1;
            }
            day += 1;
            n = 0;
        }
        (written, None)
    }

    /// The `offset`-th (0-based) present row of days `from_day..=to_day`, None past the end.
    /// Cost is one step per day (plus deletions), never per row.
    pub fn seek(&self, from_day: i32, to_day: i32, offset: u64) -> Option<Cursor> {
        let mut left = offset;
        for day in from_day..=to_day {
            let ctx = self.day(day);
            let present = ctx.present() as u64;
            if left < present {
                return Some(Cursor { day, n: ctx.nth_present(left as u32) });
            }
            left -= present;
        }
        None
    }

    /// Present rows of days `from_day..=to_day`.
    pub fn count(&self, from_day: i32, to_day: i32) -> u64 {
        (from_day..=to_day).map(|d| self.day(d).present() as u64).sum()
    }

    /// The v1 fields after `amount`: `,"customer_id":..,"rev":N}`.
    #[inline]
    fn write_tail(buf: &mut BytesMut, row: &Row) {
        buf.extend_from_slice(b",\"customer_id\":\"C");
        write_padded(buf, row.customer as u64, 7);
        buf.extend_from_slice(b"\",\"sku\":\"SKU-");
        write_padded(buf, row.sku as u64, 5);
        buf.extend_from_slice(b"\",\"qty\":");
        write_u64(buf, row.qty as u64);
        buf.extend_from_slice(b",\"channel\":\"");
        buf.extend_from_slice(row.channel.as_bytes());
        buf.extend_from_slice(b"\",\"currency\":\"INR\",\"rev\":");
        write_u64(buf, row.version as u64);
        buf.extend_from_slice(b"}");
    }

    /// A `nexturl` record: nested order, UTC timestamp, string amount. `prev_date10` is the
    /// date before `ctx`'s (a row before 07:00 local is still the previous day in UTC).
    /// `omit_date` drops `created_at` (the `bad_record` fault).
    #[inline]
    pub fn write_nexturl_record(
        buf: &mut BytesMut,
        ctx: &DayCtx<'_>,
        prev_date10: &[u8; 10],
        row: &Row,
        omit_date: bool,
    ) {
        buf.extend_from_slice(b"{\"order\":{\"number\":");
        write_u64(buf, ctx.num_id(row.n));
        buf.extend_from_slice(b",\"channel\":\"");
        buf.extend_from_slice(row.channel.as_bytes());
        if !omit_date {
            buf.extend_from_slice(b"\"},\"created_at\":\"");
            let local = ctx.second_of_day(row.n) as i64;
            let mut utc = local - 7 * 3600;
            if utc < 0 {
                utc += 86_400;
                buf.extend_from_slice(prev_date10);
            } else {
                buf.extend_from_slice(&ctx.date10);
            }
            let (h, m, sec) = ((utc / 3600) as u8, (utc / 60 % 60) as u8, (utc % 60) as u8);
            let d = |v: u8| [b'0' + v / 10, b'0' + v % 10];
            let (h, m, sec) = (d(h), d(m), d(sec));
            buf.extend_from_slice(&[b'T', h[0], h[1], b':', m[0], m[1], b':', sec[0], sec[1]]);
            buf.extend_from_slice(b"Z\",\"total\":");
        } else {
            buf.extend_from_slice(b"\"},\"total\":");
        }
        match row.cents {
            Some(c) => {
                buf.extend_from_slice(b"\"");
                write_cents(buf, c);
                buf.extend_from_slice(b"\"");
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"customer\":\"C");
        write_padded(buf, row.customer as u64, 7);
        buf.extend_from_slice(b"\",\"sku\":\"SKU-");
        write_padded(buf, row.sku as u64, 5);
        buf.extend_from_slice(b"\",\"qty\":");
        write_u64(buf, row.qty as u64);
        buf.extend_from_slice(b",\"currency\":\"INR\",\"rev\":");
        write_u64(buf, row.version as u64);
        buf.extend_from_slice(b"}");
    }

    /// A `link` record: register + receipt number, business day, integer cents.
    #[inline]
    pub fn write_link_record(buf: &mut BytesMut, ctx: &DayCtx<'_>, row: &Row, omit_date: bool) {
        buf.extend_from_slice(b"{\"register\":\"R");
        write_u64(buf, (row.n % 3 + 1) as u64);
        buf.extend_from_slice(b"\",\"receipt_no\":");
        write_u64(buf, ctx.num_id(row.n));
        if !omit_date {
            buf.extend_from_slice(b",\"business_day\":\"");
            buf.extend_from_slice(&ctx.date10);
            buf.extend_from_slice(b"\"");
        }
        buf.extend_from_slice(b",\"amount_cents\":");
        match row.cents {
            Some(c) => {
                if c < 0 {
                    buf.extend_from_slice(b"-");
                }
                write_u64(buf, c.unsigned_abs());
            }
            None => buf.extend_from_slice(b"null"),
        }
        Self::write_tail(buf, row);
    }

    /// An `offset` record: numeric id, date, amount as a JSON number.
    #[inline]
    pub fn write_offset_record(buf: &mut BytesMut, ctx: &DayCtx<'_>, row: &Row, omit_date: bool) {
        buf.extend_from_slice(b"{\"id\":");
        write_u64(buf, ctx.num_id(row.n));
        if !omit_date {
            buf.extend_from_slice(b",\"date\":\"");
            buf.extend_from_slice(&ctx.date10);
            buf.extend_from_slice(b"\"");
        }
        buf.extend_from_slice(b",\"amount\":");
        match row.cents {
            Some(c) => write_cents(buf, c),
            None => buf.extend_from_slice(b"null"),
        }
        Self::write_tail(buf, row);
    }

    /// Parse a v1 id of this store/stream (any day) to its position.
    pub fn parse_any_id(&self, id: &str) -> Option<Cursor> {
        let rest = id.strip_prefix(self.stream)?.strip_prefix('-')?;
        let rest = rest.strip_prefix(self.store)?.strip_prefix('-')?;
        let (d8, digits) = rest.split_once('-')?;
        let day = parse_date8(d8)?;
        if digits.len() < 6 || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Cursor { day, n: digits.parse().ok()? })
    }

    /// The id of row n of a day, unescaped (for the truth API and deletions by id).
    pub fn id_string(&self, ctx: &DayCtx<'_>, n: u32) -> String {
        let mut s = String::with_capacity(self.stream.len() + self.store.len() + 20);
        s.push_str(self.stream);
        s.push('-');
        s.push_str(self.store);
        s.push('-');
        // date8 is ASCII digits by construction.
        s.extend(ctx.date8.iter().map(|&b| b as char));
        s.push('-');
        s.push_str(&format!("{n:06}"));
        s
    }

    /// Parse an id of this store/stream/day back to its row number.
    pub fn parse_id(&self, ctx: &DayCtx<'_>, id: &str) -> Option<u32> {
        let rest = id.strip_prefix(self.stream)?.strip_prefix('-')?;
        let rest = rest.strip_prefix(self.store)?.strip_prefix('-')?;
        let rest = rest.strip_prefix(std::str::from_utf8(&ctx.date8).ok()?)?;
        let digits = rest.strip_prefix('-')?;
        if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// What the source holds for a window, ignoring paging and faults.
    pub fn truth(&self, from_day: i32, to_day: i32, with_ids: bool) -> Truth {
        self.truth_with(from_day, to_day, with_ids, |v, ctx, n| v.id_string(ctx, n))
    }

    /// [`Self::truth`] with ids as `id` maps them (the shapes' ids).
    pub fn truth_with(
        &self,
        from_day: i32,
        to_day: i32,
        with_ids: bool,
        id: impl Fn(&Self, &DayCtx<'_>, u32) -> String,
    ) -> Truth {
        let mut t = Truth { count: 0, cents: 0, days: Vec::new(), ids: with_ids.then(Vec::new) };
        for day in from_day..=to_day {
            let ctx = self.day(day);
            let mut count = 0u64;
            let mut cents: i128 = 0;
            for n in 0..ctx.total {
                if ctx.is_deleted(n) {
                    continue;
                }
                let row = self.row(&ctx, n);
                count += 1;
                cents += row.cents.unwrap_or(0) as i128;
                if let Some(ids) = t.ids.as_mut() {
                    ids.push(id(self, &ctx, n));
                }
            }
            t.count += count;
            t.cents += cents;
            t.days.push(TruthDay { date: String::from_utf8_lossy(&ctx.date10).into_owned(), count, cents });
        }
        t
    }
}

pub struct Truth {
    pub count: u64,
    pub cents: i128,
    pub days: Vec<TruthDay>,
    pub ids: Option<Vec<String>>,
}

pub struct TruthDay {
    pub date: String,
    pub count: u64,
    pub cents: i128,
}

/// Exact decimal string of a cents amount: -1234 -> "-12.34".
pub fn cents_string(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

// ---------------------------------------------------------------------------------------
// Dates. Days are numbered with chrono's days-from-CE so consecutive days are consecutive
// integers and a page can step through them with `day += 1`.

/// Strict `YYYY-MM-DD` (chrono alone would accept `2024-1-5`).
pub fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    if !b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| d.num_days_from_ce())
}

/// `YYYYMMDD` -> day number, for page tokens.
pub fn parse_date8(s: &str) -> Option<i32> {
    if s.len() != 8 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    parse_date(&format!("{}-{}-{}", &s[0..4], &s[4..6], &s[6..8]))
}

/// ("YYYY-MM-DD", "YYYYMMDD") of a day number. Out-of-range days (never produced by
/// `parse_date`) render as zeros rather than panicking.
pub fn date_strings(day: i32) -> ([u8; 10], [u8; 8]) {
    let (y, m, d) = NaiveDate::from_num_days_from_ce_opt(day)
        .map(|dt| (dt.year().clamp(0, 9999) as u32, dt.month(), dt.day()))
        .unwrap_or((0, 0, 0));
    let mut d8 = [b'0'; 8];
    put_digits(&mut d8[0..4], y);
    put_digits(&mut d8[4..6], m);
    put_digits(&mut d8[6..8], d);
    let mut d10 = [b'-'; 10];
    d10[0..4].copy_from_slice(&d8[0..4]);
    d10[5..7].copy_from_slice(&d8[4..6]);
    d10[8..10].copy_from_slice(&d8[6..8]);
    (d10, d8)
}

pub fn day_string(day: i32) -> String {
    String::from_utf8_lossy(&date_strings(day).0).into_owned()
}

fn put_digits(out: &mut [u8], mut v: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

// ---------------------------------------------------------------------------------------
// Hashing and formatting helpers.

/// splitmix64 finaliser: cheap, well mixed, and stable across platforms and Rust versions
/// (unlike std's hashers), which determinism across runs needs.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Decimal digits of v, itoa-style into a stack buffer.
#[inline]
pub fn write_u64(buf: &mut BytesMut, v: u64) {
    write_padded(buf, v, 1);
}

/// Decimal digits of v, left-padded with zeros to at least `width` (<= 20).
#[inline]
pub fn write_padded(buf: &mut BytesMut, mut v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(tmp.len() - width.min(tmp.len()));
    buf.extend_from_slice(&tmp[start..]);
}

#[inline]
fn write_cents(buf: &mut BytesMut, cents: i64) {
    if cents < 0 {
        buf.extend_from_slice(b"-");
    }
    let abs = cents.unsigned_abs();
    write_u64(buf, abs / 100);
    buf.extend_from_slice(b".");
    write_padded(buf, abs % 100, 2);
}

/// Append `s` as the inside of a JSON string literal.
pub fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn day(s: &str) -> i32 {
        parse_date(s).expect("valid date")
    }

    /// All records of a window fetched with a given page size, following cursors like a client.
    fn fetch_all(ds: &Dataset, store: &str, stream: &str, from: &str, to: &str, ps: usize) -> Vec<Value> {
        let v = ds.view(store, stream);
        let mut cur = Some(Cursor { day: day(from), n: 0 });
        let mut out = Vec::new();
        let mut pages = 0;
        while let Some(c) = cur {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(b"[");
            let (w, next) = v.write_records(&mut buf, c, day(to), ps, false);
            buf.extend_from_slice(b"]");
            let page: Vec<Value> = serde_json::from_slice(&buf).expect("valid JSON page");
            assert_eq!(page.len(), w);
            assert!(w <= ps);
            if next.is_some() {
                assert_eq!(w, ps, "only the last page may be short");
            }
            out.extend(page);
            cur = next;
            pages += 1;
            assert!(pages < 100_000);
        }
        out
    }

    fn ids(records: &[Value]) -> Vec<String> {
        records.iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect()
    }

    #[test]
    fn formatting_helpers() {
        let mut b = BytesMut::new();
        write_padded(&mut b, 42, 6);
        b.extend_from_slice(b" ");
        write_padded(&mut b, 1_234_567, 6);
        b.extend_from_slice(b" ");
        write_u64(&mut b, 0);
        b.extend_from_slice(b" ");
        write_cents(&mut b, -5);
        b.extend_from_slice(b" ");
        write_cents(&mut b, 123_456);
        assert_eq!(&b[..], b"000042 1234567 0 -0.05 1234.56");
        assert_eq!(cents_string(-5), "-0.05");
        assert_eq!(cents_string(0), "0.00");
        assert_eq!(cents_string(100_001), "1000.01");
        assert_eq!(day_string(day("2024-02-29")), "2024-02-29");
        assert_eq!(parse_date("2024-1-05"), None);
        assert_eq!(parse_date("2024-02-30"), None);
        assert_eq!(parse_date8("20240105"), Some(day("2024-01-05")));
        let mut e = Vec::new();
        json_escape_into(&mut e, "a\"b\\c\n");
        assert_eq!(e, b"a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn records_are_valid_json_with_expected_shape() {
        let ds = Dataset::new(42, 200);
        let recs = fetch_all(&ds, "S001", "orders", "2024-01-01", "2024-01-03", 1000);
        assert_eq!(recs.len(), 600);
        assert_eq!(recs[0]["id"], "orders-S001-20240101-000000");
        assert_eq!(recs[0]["date"], "2024-01-01");
        assert_eq!(recs[599]["id"], "orders-S001-20240103-000199");
        let nulls = recs.iter().filter(|r| r["amount"].is_null()).count();
        assert!((3..=40).contains(&nulls), "about 1 in 40 null amounts, got {nulls}");
        for r in &recs {
            assert!(r["amount"].is_null() || r["amount"].is_number());
            assert!(r["qty"].as_u64().is_some_and(|q| (1..=9).contains(&q)));
            assert!(r["customer_id"].as_str().is_some_and(|c| c.len() == 8));
        }
        // ~150 bytes per row, as the spec asks.
        let mut buf = BytesMut::new();
        let v = ds.view("S001", "orders");
        v.write_records(&mut buf, Cursor { day: day("2024-01-01"), n: 0 }, day("2024-01-01"), 200, false);
        let per_row = buf.len() / 200;
        assert!((120..=190).contains(&per_row), "{per_row} bytes per row");
    }

    #[test]
    fn determinism_same_seed_same_bytes() {
        let render = |seed| {
            let ds = Dataset::new(seed, 50);
            let v = ds.view("S001", "sales");
            let mut buf = BytesMut::new();
            v.write_records(&mut buf, Cursor { day: day("2024-03-01"), n: 0 }, day("2024-03-10"), 10_000, false);
            buf
        };
        assert_eq!(render(42), render(42));
        assert_ne!(render(42), render(7));
        // Stores and streams differ too.
        let ds = Dataset::new(42, 5);
        let a = ds.view("S001", "sales").truth(day("2024-03-01"), day("2024-03-10"), false).cents;
        let b = ds.view("S002", "sales").truth(day("2024-03-01"), day("2024-03-10"), false).cents;
        let c = ds.view("S001", "orders").truth(day("2024-03-01"), day("2024-03-10"), false).cents;
        assert!(a != b && a != c);
    }

    #[test]
    fn paging_returns_every_row_once_for_many_page_sizes() {
        let mut ds = Dataset::new(9, 7);
        ds.store_rows_per_day.insert("BIG".into(), 13);
        // Make the window irregular: a deleted block, a late day, an emptied day.
        let d2 = day("2024-01-02");
        ds.day_edits_mut("BIG", "orders", d2).deleted.extend([0, 1, 5, 12]);
        ds.day_edits_mut("BIG", "orders", day("2024-01-03")).late = 4;
        ds.day_edits_mut("BIG", "orders", day("2024-01-04")).deleted.extend(0..13);
        let truth = ds.view("BIG", "orders").truth(day("2024-01-01"), day("2024-01-06"), true);
        let truth_ids = truth.ids.expect("ids requested");
        assert_eq!(truth.count as usize, 13 * 6 - 4 + 4 - 13);
        for ps in [1, 2, 3, 7, 13, 50, 1000] {
            let got = ids(&fetch_all(&ds, "BIG", "orders", "2024-01-01", "2024-01-06", ps));
            assert_eq!(got, truth_ids, "page size {ps}");
        }
    }

    #[test]
    fn empty_window_and_zero_rows() {
        let ds = Dataset::new(1, 0);
        let v = ds.view("S1", "gst");
        let mut buf = BytesMut::new();
        let (w, next) =
            v.write_records(&mut buf, Cursor { day: day("2024-01-01"), n: 0 }, day("2024-12-31"), 10, false);
        assert_eq!((w, next), (0, None));
        assert!(buf.is_empty());
        let t = v.truth(day("2024-01-01"), day("2024-01-02"), false);
        assert_eq!(t.count, 0);
        assert_eq!(cents_string(t.cents), "0.00");
        assert_eq!(t.days.len(), 2);
    }

    #[test]
    fn page_can_start_anywhere_without_earlier_pages() {
        // A cursor deep into a huge window costs only its own page.
        let ds = Dataset::new(3, 1_000_000);
        let v = ds.view("S001", "orders");
        let mut buf = BytesMut::new();
        let start = Cursor { day: day("2030-06-01"), n: 999_998 };
        let (w, next) = v.write_records(&mut buf, start, day("2030-06-02"), 3, false);
        assert_eq!(w, 3);
        assert_eq!(next, Some(Cursor { day: day("2030-06-02"), n: 1 }));
        let s = String::from_utf8_lossy(&buf);
        assert!(s.contains("orders-S001-20300601-999999"));
        assert!(s.contains("orders-S001-20300602-000000"));
    }

    #[test]
    fn changes_alter_amount_and_rev() {
        let mut ds = Dataset::new(5, 10);
        let d = day("2024-05-05");
        let before = fetch_all(&ds, "S9", "sales", "2024-05-05", "2024-05-05", 100);
        ds.day_edits_mut("S9", "sales", d).versions.insert(2, 1);
        let after = fetch_all(&ds, "S9", "sales", "2024-05-05", "2024-05-05", 100);
        assert_eq!(after[2]["rev"], 1);
        assert_ne!(after[2]["amount"], before[2]["amount"]);
        assert!(after[2]["amount"].is_number());
        assert_eq!(after[3], before[3]);
        assert_eq!(after[2]["id"], before[2]["id"]);
    }

    #[test]
    fn ids_round_trip() {
        let ds = Dataset::new(5, 10);
        let v = ds.view("S-1", "orders");
        let ctx = v.day(day("2024-05-05"));
        let id = v.id_string(&ctx, 7);
        assert_eq!(id, "orders-S-1-20240505-000007");
        assert_eq!(v.parse_id(&ctx, &id), Some(7));
        assert_eq!(v.parse_id(&ctx, "orders-S-1-20240506-000007"), None);
        assert_eq!(v.parse_id(&ctx, "orders-S-1-20240505-7"), None);
    }

    #[test]
    fn seek_count_and_end_cursors() {
        let mut ds = Dataset::new(9, 5);
        let (d1, d2, d3) = (day("2024-01-01"), day("2024-01-02"), day("2024-01-03"));
        ds.day_edits_mut("S", "orders", d2).deleted.extend([0, 2, 3]);
        ds.day_edits_mut("S", "orders", d3).late = 2;
        let v = ds.view("S", "orders");
        assert_eq!(v.count(d1, d3), 5 + 2 + 7);
        let truth = v.truth(d1, d3, true).ids.unwrap_or_default();
        // Every offset lands on the row the truth lists at that position.
        for (k, id) in truth.iter().enumerate() {
            let c = v.seek(d1, d3, k as u64).expect("in range");
            assert_eq!(&v.id_string(&v.day(c.day), c.n), id, "offset {k}");
            assert_eq!(v.parse_any_id(id), Some(c));
        }
        assert_eq!(v.seek(d1, d3, truth.len() as u64), None);
        assert_eq!(v.seek(d2, d1, 0), None);
        assert_eq!(v.parse_any_id("orders-T-20240101-000001"), None);
        assert_eq!(v.parse_any_id("orders-S-2024010-000001"), None);
        // An end cursor inside a day stops there.
        let mut buf = BytesMut::new();
        let (w, next) =
            v.write_rows(&mut buf, Cursor { day: d1, n: 3 }, Cursor { day: d2, n: 2 }, 100, |b, c, r, _| {
                b.extend_from_slice(v.id_string(c, r.n).as_bytes())
            });
        assert_eq!((w, next), (3, None), "{}", String::from_utf8_lossy(&buf));
        // Numeric ids and local seconds.
        let ctx = v.day(d3);
        assert_eq!(ctx.num_id(5), 20_240_103_000_005);
        assert_eq!((ctx.second_of_day(0), ctx.second_of_day(6)), (0, 6 * 86_399 / 7));
        for s in [0, 1, 12_342, 12_343, 86_398, 86_399] {
            let n = ctx.first_row_at_or_after(s);
            assert!(n == ctx.total || ctx.second_of_day(n) >= s);
            assert!(n == 0 || ctx.second_of_day(n - 1) < s, "{s}");
        }
    }

    #[test]
    fn shape_records_are_valid_json() {
        let ds = Dataset::new(5, 40);
        let v = ds.view("S1", "orders");
        let ctx = v.day(day("2024-05-05"));
        let prev = date_strings(ctx.day - 1).0;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"[");
        for n in 0..40 {
            let row = v.row(&ctx, n);
            StreamView::write_nexturl_record(&mut buf, &ctx, &prev, &row, n == 1);
            buf.extend_from_slice(b",");
            StreamView::write_link_record(&mut buf, &ctx, &row, n == 1);
            buf.extend_from_slice(b",");
            StreamView::write_offset_record(&mut buf, &ctx, &row, n == 1);
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(b"null]");
        let recs: Vec<Value> = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(recs[0]["created_at"], "2024-05-04T17:00:00Z");
        assert_eq!(recs[0]["order"]["number"], 20_240_505_000_000u64);
        assert!(recs[3].get("created_at").is_none() && recs[4].get("business_day").is_none());
        assert!(recs[5].get("date").is_none());
        let last = &recs[39 * 3];
        assert_eq!(last["created_at"], "2024-05-05T16:23:59Z");
        for r in &recs[..120] {
            let cents = v
                .row(
                    &ctx,
                    (r["order"]["number"].as_u64().or(r["receipt_no"].as_u64()).or(r["id"].as_u64()).unwrap_or(0)
                        % 1_000_000) as u32,
                )
                .cents;
            match cents {
                None => assert!(r["total"].is_null() && r["amount_cents"].is_null() && r["amount"].is_null()),
                Some(c) => {
                    if let Some(t) = r["total"].as_str() {
                        assert_eq!(t, cents_string(c as i128));
                    }
                    if r.get("amount_cents").is_some() {
                        assert_eq!(r["amount_cents"].as_i64(), Some(c));
                    }
                }
            }
        }
    }

    #[test]
    fn bad_first_omits_date() {
        let ds = Dataset::new(5, 3);
        let v = ds.view("S1", "orders");
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"[");
        v.write_records(&mut buf, Cursor { day: day("2024-05-05"), n: 0 }, day("2024-05-05"), 3, true);
        buf.extend_from_slice(b"]");
        let recs: Vec<Value> = serde_json::from_slice(&buf).expect("still valid JSON");
        assert!(recs[0].get("date").is_none());
        assert!(recs[1].get("date").is_some());
    }
}
