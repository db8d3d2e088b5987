//! A 200 body read with a stream's [`PagePlan`]: the records list at the profile's path
//! (`{"data": [ {record}, ... ], "next_page_token": ...}` in the built-in contract), checked
//! record by record, and the few body fields pagination looks at. All or nothing: one bad
//! record rejects the page.
//!
//! Records are borrowed as raw JSON text and only the id, date and amount paths are looked at
//! (see [`extract`](super::extract)), so the payload is stored byte for byte as the source
//! sent it and an amount keeps its exact decimal text (never an f64 round trip).

use chrono::NaiveDate;
use chrono_tz::Tz;
use md5::{Digest, Md5};
use serde_json::value::RawValue;

pub use super::convert::MAX_ID_BYTES;
use super::convert::{amount, business_date, id_part, json_kind, json_string, Rejected};
use super::extract::{Captures, PathTrie, RecordsList};
use super::profile::{AmountFormat, FieldPath, Pagination, RecordDateFormat, StreamProfile, ID_SEPARATOR};
use super::redact::{Secrets, SourceText, MESSAGE_CHARS, VALUE_CHARS};
use super::{FetchError, PageRequest};

/// Longest cursor or next-page URL accepted, in bytes; it is saved as the job's cursor.
pub const MAX_PAGE_TOKEN_BYTES: usize = 4096;

/// One record of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unique per store and stream; 1 to 256 bytes, no NUL.
    pub id: String,
    /// The business date that places the record in a window; within the request's window.
    pub date: NaiveDate,
    /// The amount's JSON number text exactly as sent (`"341.35"`, `"-1.5e3"`); `None` for
    /// `null` or an absent field. PostgreSQL's `numeric` input accepts every accepted form.
    pub amount: Option<String>,
    /// The record's JSON text, unchanged (valid JSON, an object, no `\u0000` escape).
    pub payload: String,
    /// md5 of `payload`: a re-sync recognises an unchanged record by this alone. Computed
    /// here, on the fetching thread, so the writing thread never hashes.
    pub payload_md5: [u8; 16],
}

/// One page, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Sorted by id in byte order, which is the order of the records table's `COLLATE "C"`
    /// key: the write stage upserts key-ordered batches and merges them with what is stored.
    /// When an id occurs more than once in the page, only its last occurrence is kept (a
    /// source that changed a row mid-page sent the newest last).
    pub records: Vec<Record>,
    /// The cursor for the next page; `None` when this was the last one.
    pub next_page_token: Option<String>,
    /// Requests it took, retries included (at least 1).
    pub attempts: u32,
    /// Size of the response body.
    pub body_bytes: u64,
    /// Records dropped because a later record of the page had the same id.
    pub duplicate_ids: u32,
}

/// How one stream's bodies are read: the profile's paths compiled once (a
/// [`SourceClient`](super::SourceClient) keeps one per stream), with its formats and the
/// pipeline's time zone.
#[derive(Debug, Clone)]
pub struct PagePlan {
    body: PathTrie,
    record: PathTrie,
    /// The records list's path as written, for messages.
    records_name: String,
    next: Option<Field>,
    total: Option<Field>,
    has_more: Option<Field>,
    /// One field, or the parts of a composite id.
    ids: Vec<Field>,
    date: Field,
    date_format: RecordDateFormat,
    amount: Option<Field>,
    amount_format: AmountFormat,
    amount_scale: u32,
    timezone: Tz,
}

/// A field's capture slot and its path as the profile writes it.
#[derive(Debug, Clone)]
struct Field {
    slot: usize,
    name: String,
}

impl Field {
    fn new(trie: &mut PathTrie, path: &FieldPath) -> Field {
        Field { slot: trie.insert(path), name: path.to_string() }
    }
}

impl PagePlan {
    pub fn new(profile: &StreamProfile, timezone: Tz) -> PagePlan {
        let records = &profile.records;
        let mut body = PathTrie::new();
        body.insert_records(&records.path);
        let (next, total, has_more) = match &profile.pagination {
            Pagination::Cursor { token_path: path, .. } | Pagination::NextUrl { url_path: path } => {
                (Some(Field::new(&mut body, path)), None, None)
            }
            Pagination::Offset { total_path: Some(path), .. }
            | Pagination::PageNumber { total_pages_path: Some(path), .. } => {
                (None, Some(Field::new(&mut body, path)), None)
            }
            Pagination::LastId { has_more_path, .. } => (None, None, Some(Field::new(&mut body, has_more_path))),
            Pagination::LinkHeader {}
            | Pagination::Offset { .. }
            | Pagination::PageNumber { .. }
            | Pagination::None {} => (None, None, None),
        };
        let mut record = PathTrie::new();
        let ids = records.id.paths().iter().map(|path| Field::new(&mut record, path)).collect();
        let date = Field::new(&mut record, &records.date);
        let amount = records.amount.as_ref().map(|path| Field::new(&mut record, path));
        PagePlan {
            body,
            record,
            records_name: if records.path.is_empty() { "the body".to_owned() } else { records.path.to_string() },
            next,
            total,
            has_more,
            ids,
            date,
            date_format: records.date_format,
            amount,
            amount_format: records.amount_format,
            amount_scale: records.amount_scale.unwrap_or(0),
            timezone,
        }
    }

    /// The id's name in messages: its path, or a composite's paths joined as the id is.
    fn id_name(&self) -> String {
        self.ids.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(ID_SEPARATOR)
    }
}

/// A body read with a [`PagePlan`]: its records, validated, and what pagination may use.
/// Which page comes next is the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedPage {
    /// Sorted by id bytes, the last record of each id kept (see [`Page::records`]).
    pub records: Vec<Record>,
    /// Records dropped because a later record of the page had the same id.
    pub duplicate_ids: u32,
    /// Records in the body, before duplicates were dropped.
    pub received: usize,
    /// The id of the body's last record, in body order (`last_id` pagination).
    pub last_id: Option<String>,
    /// The string at the cursor's `token_path` or the `next_url`'s `url_path`; `None` when
    /// null or absent.
    pub next: Option<String>,
    /// The count at `total_path` (offset) or `total_pages_path` (page_number).
    pub total: Option<u64>,
    /// The boolean at `has_more_path` (last_id).
    pub has_more: Option<bool>,
    pub body_bytes: u64,
}

/// Parses and validates a 200 body for `request` as `plan` reads it. Text of the body
/// quoted in an error goes through `secrets` (see [`Secrets::quote`]).
pub(crate) fn parse_page(
    body: &[u8],
    plan: &PagePlan,
    request: &PageRequest<'_>,
    secrets: &Secrets,
) -> Result<ParsedPage, FetchError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let (line, column) = line_column(&body[..e.valid_up_to()]);
        FetchError::MalformedJson {
            detail: message(secrets, &format!("invalid UTF-8 at line {line} column {column}")),
            line,
            column,
            attempts: 0,
        }
    })?;
    let mut found = Captures::default();
    plan.body.read(text, &mut found).map_err(|e| json_error(&e, secrets))?;
    let invalid_page = |reason: String| FetchError::InvalidPage { reason: message(secrets, &reason), attempts: 0 };
    let raws = match std::mem::take(&mut found.records) {
        RecordsList::Array(raws) => raws,
        RecordsList::Missing => return Err(invalid_page(format!("{} is missing", plan.records_name))),
        RecordsList::NotArray(kind) => {
            return Err(invalid_page(format!("{} is not an array (found {kind})", plan.records_name)))
        }
    };
    let slots = &found.slots;
    let body_field = |field: &Option<Field>| field.as_ref().and_then(|f| Some((f.name.clone(), slots[f.slot]?)));
    let next = match body_field(&plan.next) {
        Some((name, raw)) if json_kind(raw) != "null" => Some(next_text(&name, raw, secrets)?),
        _ => None,
    };
    let total = match body_field(&plan.total) {
        Some((name, raw)) if json_kind(raw) != "null" => {
            Some(count(raw).map_err(|why| invalid_page(format!("{name} {why}")))?)
        }
        _ => None,
    };
    let has_more = match body_field(&plan.has_more) {
        None => None,
        Some((name, raw)) => match raw.get() {
            "null" => None,
            "true" => Some(true),
            "false" => Some(false),
            _ => return Err(invalid_page(format!("{name} must be a boolean, not {}", json_kind(raw)))),
        },
    };

    let mut records = Vec::with_capacity(raws.len());
    let mut fields = Captures::default();
    for (index, raw) in raws.iter().enumerate() {
        records.push(parse_record(index, raw, plan, &mut fields, request, secrets)?);
    }
    let last_id = records.last().map(|r: &Record| r.id.clone());
    let received = records.len();
    let duplicate_ids = sort_keeping_last_of_each_id(&mut records);
    Ok(ParsedPage { records, duplicate_ids, received, last_id, next, total, has_more, body_bytes: body.len() as u64 })
}

/// A message for an error that may contain the body's text.
fn message(secrets: &Secrets, text: &str) -> SourceText {
    secrets.quote(text, MESSAGE_CHARS)
}

/// serde's message quotes the body (`invalid type: string "..."`): that part is quoted as a
/// value, and the position it reports is kept whole.
fn json_error(error: &serde_json::Error, secrets: &Secrets) -> FetchError {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let what = text.strip_suffix(&position).unwrap_or(&text);
    let detail = message(secrets, &format!("{}{position}", secrets.quote(what, 2 * VALUE_CHARS)));
    match error.classify() {
        // Valid JSON of the wrong shape: a repeated key on a path.
        serde_json::error::Category::Data => FetchError::InvalidPage { reason: detail, attempts: 0 },
        _ => FetchError::MalformedJson { detail, line: error.line(), column: error.column(), attempts: 0 },
    }
}

/// 1-based line and column of the byte after `prefix`, as serde reports them.
fn line_column(prefix: &[u8]) -> (usize, usize) {
    let line = 1 + prefix.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + prefix.iter().rev().take_while(|&&b| b != b'\n').count();
    (line, column)
}

fn parse_record<'a>(
    index: usize,
    raw: &'a RawValue,
    plan: &PagePlan,
    fields: &mut Captures<'a>,
    request: &PageRequest<'_>,
    secrets: &Secrets,
) -> Result<Record, FetchError> {
    let value = |text: &str| secrets.quote(text, VALUE_CHARS);
    let invalid = |id: Option<&str>, field: &str, reason: String| FetchError::InvalidRecord {
        index,
        id: id.map(value),
        field: field.to_owned(),
        reason: message(secrets, &reason),
        attempts: 0,
    };
    let rejected = |id: Option<&str>, field: &str, why: Rejected<'_>| {
        invalid(id, field, why.render(|text| value(text).as_str().to_owned()))
    };
    let kind = json_kind(raw);
    if kind != "an object" {
        return Err(invalid(None, "record", format!("must be a JSON object, not {kind}")));
    }
    plan.record.read(raw.get(), fields).map_err(|e| invalid(None, "record", format!("cannot be read: {e}")))?;

    let mut id = String::new();
    for (i, part) in plan.ids.iter().enumerate() {
        let text = match fields.slots[part.slot] {
            Some(raw_id) if json_kind(raw_id) != "null" => {
                id_part(raw_id).map_err(|why| rejected(None, &part.name, why))?
            }
            _ => return Err(invalid(None, &part.name, "is missing or null".into())),
        };
        if i > 0 {
            id.push_str(ID_SEPARATOR);
        }
        id.push_str(&text);
    }
    if id.len() > MAX_ID_BYTES {
        let name = plan.id_name();
        return Err(invalid(Some(&id), &name, format!("is {} bytes long, more than {MAX_ID_BYTES}", id.len())));
    }
    let with_id = |field: &str, why: Rejected<'_>| rejected(Some(&id), field, why);

    let date = match fields.slots[plan.date.slot] {
        Some(raw_date) if json_kind(raw_date) != "null" => {
            let date = business_date(raw_date, plan.date_format, plan.timezone)
                .map_err(|why| with_id(&plan.date.name, why))?;
            if date < request.from || date > request.to {
                let why = format!("{date} is outside the window {}..{}", request.from, request.to);
                return Err(invalid(Some(&id), &plan.date.name, why));
            }
            date
        }
        _ => return Err(invalid(Some(&id), &plan.date.name, "is missing or null".into())),
    };

    let amount = match &plan.amount {
        None => None,
        Some(field) => amount(fields.slots[field.slot], plan.amount_format, plan.amount_scale)
            .map_err(|why| with_id(&field.name, why))?,
    };

    if let Some(why) = unstorable_escape(raw.get()) {
        return Err(invalid(Some(&id), "record", why.to_owned()));
    }
    Ok(Record {
        id,
        date,
        amount,
        payload_md5: Md5::digest(raw.get().as_bytes()).into(),
        payload: raw.get().to_owned(),
    })
}

/// The next page's cursor or URL; it is saved as the job's cursor.
fn next_text(name: &str, raw: &RawValue, secrets: &Secrets) -> Result<String, FetchError> {
    let invalid =
        |reason: String| FetchError::InvalidPage { reason: message(secrets, &format!("{name} {reason}")), attempts: 0 };
    let text = json_string(raw).map_err(|why| invalid(format!("{} (null ends the window)", why.reason)))?;
    if text.is_empty() {
        return Err(invalid("is empty (null ends the window)".into()));
    }
    if text.len() > MAX_PAGE_TOKEN_BYTES {
        return Err(invalid(format!("is {} bytes long, more than {MAX_PAGE_TOKEN_BYTES}", text.len())));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("contains control characters".into()));
    }
    Ok(text.into_owned())
}

/// A non-negative JSON integer, or a string of one.
fn count(raw: &RawValue) -> Result<u64, String> {
    let text = match json_kind(raw) {
        "a number" => raw.get(),
        "a string" => &raw.get()[1..raw.get().len() - 1],
        other => return Err(format!("must be a non-negative integer, not {other}")),
    };
    match text.parse::<u64>() {
        Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err("must be a non-negative integer".to_owned()),
    }
}

/// Sorts records by id and keeps the last record of each id; returns how many were dropped.
pub fn sort_keeping_last_of_each_id(records: &mut Vec<Record>) -> u32 {
    // Stable: records sharing an id stay in page order, so the last of a run is the newest.
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let before = records.len();
    let mut kept: Vec<Record> = Vec::with_capacity(before);
    for record in records.drain(..) {
        match kept.last_mut() {
            Some(last) if last.id == record.id => *last = record,
            _ => kept.push(record),
        }
    }
    *records = kept;
    u32::try_from(before - records.len()).unwrap_or(u32::MAX)
}

/// Why PostgreSQL's `jsonb` would refuse this valid JSON text, if it would: a `\u0000`
/// escape, or a `\u` surrogate escape that is not a high + low pair. Backslashes only occur
/// inside strings, each starting an escape, so a left-to-right scan that skips escaped
/// characters is exact (`\\u0000`, an escaped backslash then "u0000", is fine).
fn unstorable_escape(json: &str) -> Option<&'static str> {
    const NUL: &str = "contains \\u0000, which PostgreSQL cannot store";
    const SURROGATE: &str = "contains an unpaired \\u surrogate escape, which PostgreSQL cannot store";
    let b = json.as_bytes();
    let unit_at = |at: usize| -> Option<u16> {
        let is_escape = b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u');
        let digits = std::str::from_utf8(b.get(at + 2..at + 6)?).ok()?;
        is_escape.then(|| u16::from_str_radix(digits, 16).ok()).flatten()
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = unit_at(i) else {
            i += 2; // \n, \", \\ and the like
            continue;
        };
        i += 6;
        match unit {
            0 => return Some(NUL),
            0xD800..=0xDBFF => match unit_at(i) {
                Some(0xDC00..=0xDFFF) => i += 6,
                _ => return Some(SURROGATE),
            },
            0xDC00..=0xDFFF => return Some(SURROGATE),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test date")
    }

    fn window() -> PageRequest<'static> {
        PageRequest {
            store_code: "S001",
            stream: "orders",
            from: day("2024-01-01"),
            to: day("2024-01-07"),
            page_token: None,
        }
    }

    fn contract() -> PagePlan {
        PagePlan::new(&StreamProfile::default_contract(), chrono_tz::UTC)
    }

    fn parse(body: &str) -> Result<ParsedPage, FetchError> {
        parse_page(body.as_bytes(), &contract(), &window(), &Secrets::none())
    }

    fn page_of(records: &[&str]) -> String {
        format!("{{\"data\":[{}],\"next_page_token\":null}}", records.join(","))
    }

    fn record_error(body: &str) -> (usize, Option<String>, String, String) {
        match parse(body) {
            Err(FetchError::InvalidRecord { index, id, field, reason, .. }) => {
                (index, id.map(|id| id.to_string()), field, reason.to_string())
            }
            other => panic!("expected an invalid record, got {other:?}"),
        }
    }

    const SIMULATOR_RECORD: &str = r#"{"id":"orders-S001-20240101-000000","date":"2024-01-01","amount":341.35,"customer_id":"C4956694","sku":"SKU-36135","qty":8,"channel":"web","currency":"INR","rev":0}"#;

    #[test]
    fn good_page_keeps_payload_and_amount_text_exactly() {
        let second = r#"{ "id" : "z", "date":"2024-01-07", "amount": -0.50, "nested": {"x": [1, 2.0]} }"#;
        let body = format!("{{\"data\": [{SIMULATOR_RECORD}, {second}], \"next_page_token\": \"p1.d20240102.n3.c9\"}}");
        let page = parse(&body).expect("good page");
        assert_eq!(page.records.len(), 2);
        assert_eq!(page.records[0].id, "orders-S001-20240101-000000");
        assert_eq!(page.records[0].date, day("2024-01-01"));
        assert_eq!(page.records[0].amount.as_deref(), Some("341.35"));
        assert_eq!(page.records[0].payload, SIMULATOR_RECORD);
        assert_eq!(page.records[1].amount.as_deref(), Some("-0.50"));
        assert_eq!(page.records[1].payload, second);
        assert_eq!(page.next.as_deref(), Some("p1.d20240102.n3.c9"));
        assert_eq!(page.body_bytes, body.len() as u64);
        assert_eq!((page.received, page.duplicate_ids, page.last_id.as_deref()), (2, 0, Some("z")));
    }

    #[test]
    fn last_page_and_empty_page() {
        let page = parse(r#"{"data":[]}"#).expect("absent token");
        assert!(page.records.is_empty() && page.next.is_none());
        let page = parse(r#"{"data":[],"next_page_token":null,"extra":{"ignored":true}}"#).expect("null token");
        assert!(page.next.is_none());
    }

    #[test]
    fn null_or_absent_amount_is_none() {
        let page =
            parse(&page_of(&[r#"{"id":"a","date":"2024-01-02","amount":null}"#, r#"{"id":"b","date":"2024-01-02"}"#]))
                .expect("page");
        assert_eq!(page.records[0].amount, None);
        assert_eq!(page.records[1].amount, None);
    }

    #[test]
    fn big_negative_and_exponent_amounts_keep_exact_text() {
        for amount in [
            "123456789012345678901234567890.123456789",
            "-0.01",
            "341.350",
            "0",
            "-0",
            "1.5E+3",
            "2e-2",
            "9007199254740993",
            "1e1000",
        ] {
            let page = parse(&page_of(&[&format!(r#"{{"id":"a","date":"2024-01-02","amount":{amount}}}"#)]))
                .unwrap_or_else(|e| panic!("{amount}: {e}"));
            assert_eq!(page.records[0].amount.as_deref(), Some(amount));
        }
    }

    #[test]
    fn amounts_numeric_cannot_hold_are_rejected() {
        for amount in ["1e1001", "1e-99999999999999999999", &"9".repeat(101)] {
            let (_, id, field, reason) =
                record_error(&page_of(&[&format!(r#"{{"id":"a","date":"2024-01-02","amount":{amount}}}"#)]));
            assert_eq!((id.as_deref(), field.as_str()), (Some("a"), "amount"), "{reason}");
        }
    }

    #[test]
    fn amount_as_string_or_other_type_is_invalid() {
        let (index, id, field, reason) = record_error(&page_of(&[
            r#"{"id":"a","date":"2024-01-02","amount":1}"#,
            r#"{"id":"bad-record","date":"2024-01-01","amount":"12.x"}"#,
        ]));
        assert_eq!((index, id.as_deref(), field.as_str()), (1, Some("bad-record"), "amount"));
        assert_eq!(reason, "must be a number or null, not a string");
        for other in ["true", "{}", "[1]"] {
            let (_, _, field, _) =
                record_error(&page_of(&[&format!(r#"{{"id":"a","date":"2024-01-02","amount":{other}}}"#)]));
            assert_eq!(field, "amount");
        }
    }

    #[test]
    fn missing_or_bad_id_is_invalid() {
        let cases = [
            (r#"{"date":"2024-01-02","amount":1}"#, "is missing or null"),
            (r#"{"id":null,"date":"2024-01-02","amount":1}"#, "is missing or null"),
            (r#"{"id":true,"date":"2024-01-02","amount":1}"#, "must be a string or a number, not a boolean"),
            (r#"{"id":"","date":"2024-01-02","amount":1}"#, "is empty"),
            (r#"{"id":"a\u0000b","date":"2024-01-02","amount":1}"#, "contains a NUL character"),
            (r#"{"id":"\ud800","date":"2024-01-02","amount":1}"#, "is not a valid string"),
        ];
        for (record, expected) in cases {
            let (index, _, field, reason) = record_error(&page_of(&[record]));
            assert_eq!((index, field.as_str()), (0, "id"), "{record}");
            assert!(reason.starts_with(expected), "{record}: {reason}");
        }
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let (_, _, field, reason) =
            record_error(&page_of(&[&format!(r#"{{"id":"{long}","date":"2024-01-02","amount":1}}"#)]));
        assert_eq!((field.as_str(), reason.as_str()), ("id", "is 257 bytes long, more than 256"));
        let longest = "é".repeat(MAX_ID_BYTES / 2);
        parse(&page_of(&[&format!(r#"{{"id":"{longest}","date":"2024-01-02","amount":1}}"#)]))
            .expect("256 bytes is fine");
    }

    #[test]
    fn missing_or_bad_date_is_invalid() {
        let cases = [
            (r#"{"id":"a","amount":1}"#, "is missing or null"),
            (r#"{"id":"a","date":20240102,"amount":1}"#, "must be a string, not a number"),
            (r#"{"id":"a","date":"2024-1-02","amount":1}"#, "\"2024-1-02\" is not a YYYY-MM-DD date"),
            (r#"{"id":"a","date":"2024-02-30","amount":1}"#, "\"2024-02-30\" is not a YYYY-MM-DD date"),
            (r#"{"id":"a","date":"2024-01-02T00:00:00Z","amount":1}"#, "\"2024-01-02T00:00:00Z\" is not"),
        ];
        for (record, expected) in cases {
            let (_, id, field, reason) = record_error(&page_of(&[record]));
            assert_eq!((id.as_deref(), field.as_str()), (Some("a"), "date"), "{record}");
            assert!(reason.starts_with(expected), "{record}: {reason}");
        }
    }

    #[test]
    fn date_outside_the_window_is_invalid_and_its_ends_are_inside() {
        for outside in ["2023-12-31", "2024-01-08"] {
            let (_, _, field, reason) =
                record_error(&page_of(&[&format!(r#"{{"id":"a","date":"{outside}","amount":1}}"#)]));
            assert_eq!(field, "date");
            assert_eq!(reason, format!("{outside} is outside the window 2024-01-01..2024-01-07"));
        }
        parse(&page_of(&[
            r#"{"id":"a","date":"2024-01-01","amount":1}"#,
            r#"{"id":"b","date":"2024-01-07","amount":1}"#,
        ]))
        .expect("window ends are inclusive");
    }

    #[test]
    fn error_names_the_bad_record_and_field() {
        let message = parse(&page_of(&[SIMULATOR_RECORD, r#"{"id":"x-1","amount":1}"#]))
            .expect_err("second record has no date")
            .to_string();
        assert_eq!(message, "invalid record at index 1 (id \"x-1\") in source response: date is missing or null");
    }

    #[test]
    fn record_that_is_not_an_object_is_invalid() {
        for record in ["1", "\"a\"", "[]", "null"] {
            let (index, _, field, _) = record_error(&page_of(&[record]));
            assert_eq!((index, field.as_str()), (0, "record"), "{record}");
        }
        let (_, _, field, reason) = record_error(&page_of(&[r#"{"id":"a","id":"b","date":"2024-01-02"}"#]));
        assert_eq!(field, "record");
        assert!(reason.contains("duplicate field `id`"), "{reason}");
    }

    #[test]
    fn escapes_jsonb_refuses_are_invalid_and_the_rest_are_kept() {
        let record =
            |note: &str| page_of(&[&format!(r#"{{"id":"a","date":"2024-01-02","amount":1,"note":"{note}"}}"#)]);
        for (note, expected) in [
            (r"x\u0000y", "contains \\u0000"),
            (r"\ud83d", "contains an unpaired \\u surrogate"),
            (r"\ud83dx", "contains an unpaired \\u surrogate"),
            (r"\ude00", "contains an unpaired \\u surrogate"),
            (r"\ud83d\ud83d", "contains an unpaired \\u surrogate"),
            (r"\\\u0000", "contains \\u0000"),
        ] {
            let (_, id, field, reason) = record_error(&record(note));
            assert_eq!((id.as_deref(), field.as_str()), (Some("a"), "record"), "{note}");
            assert!(reason.starts_with(expected), "{note}: {reason}");
        }
        for note in [r"x\\u0000y", r"\ud83d\ude00", r#"\u00e9\n\t\\\""#, r"\\ud800"] {
            let body = record(note);
            let page = parse(&body).unwrap_or_else(|e| panic!("{note}: {e}"));
            assert!(page.records[0].payload.contains(note), "{note}");
        }
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let body = page_of(&[SIMULATOR_RECORD, SIMULATOR_RECORD]);
        let cut = &body[..body.len() / 2];
        match parse(cut) {
            Err(FetchError::MalformedJson { line, column, ref detail, .. }) => {
                assert_eq!(line, 1);
                assert!(column > 100, "{column}");
                assert!(detail.as_str().contains(&format!("line 1 column {column}")), "{detail}");
            }
            other => panic!("expected malformed JSON, got {other:?}"),
        }
        let message = parse("{\"data\": [\n  {\"id\": \"a\",,}]}").expect_err("syntax").to_string();
        assert!(message.starts_with("malformed JSON in source response: "), "{message}");
        assert!(message.contains("line 2 column"), "{message}");
        assert!(matches!(parse("{\"data\":[]} trailing"), Err(FetchError::MalformedJson { .. })));
        assert!(matches!(parse(""), Err(FetchError::MalformedJson { .. })));
        match parse_page(b"{\"data\":[\n\"\xff\"]}", &contract(), &window(), &Secrets::none()) {
            Err(FetchError::MalformedJson { line: 2, column: 2, .. }) => {}
            other => panic!("expected invalid UTF-8 at 2:2, got {other:?}"),
        }
    }

    #[test]
    fn wrong_shape_is_an_invalid_page_naming_the_path() {
        for (body, expected) in [
            (r#"[]"#, "data is missing"),
            (r#"{"records":[]}"#, "data is missing"),
            (r#"{"data":{}}"#, "data is not an array (found an object)"),
            (r#"{"data":null}"#, "data is not an array (found null)"),
            (r#"{"data":"x"}"#, "data is not an array (found a string)"),
        ] {
            match parse(body) {
                Err(e @ FetchError::InvalidPage { .. }) => {
                    assert_eq!(e.to_string(), format!("invalid source response: {expected}"), "{body}")
                }
                other => panic!("{body}: expected invalid page, got {other:?}"),
            }
        }
        match parse(r#"{"data":[],"data":[]}"#) {
            Err(FetchError::InvalidPage { reason, .. }) => {
                assert!(reason.as_str().contains("duplicate field `data` at line 1 column"), "{reason}")
            }
            other => panic!("expected invalid page, got {other:?}"),
        }
    }

    #[test]
    fn bad_next_page_token_is_an_invalid_page() {
        let long = "t".repeat(MAX_PAGE_TOKEN_BYTES + 1);
        let cases = [
            ("17".to_owned(), "must be a string, not a number"),
            ("\"\"".to_owned(), "is empty"),
            (format!("\"{long}\""), "is 4097 bytes long"),
            ("\"a\\nb\"".to_owned(), "contains control characters"),
        ];
        for (token, expected) in cases {
            match parse(&format!(r#"{{"data":[],"next_page_token":{token}}}"#)) {
                Err(FetchError::InvalidPage { reason, .. }) => {
                    assert!(reason.as_str().starts_with(&format!("next_page_token {expected}")), "{token}: {reason}");
                }
                other => panic!("{token}: expected invalid page, got {other:?}"),
            }
        }
        let longest = "t".repeat(MAX_PAGE_TOKEN_BYTES);
        let page = parse(&format!(r#"{{"data":[],"next_page_token":"{longest}"}}"#)).expect("4096 bytes");
        assert_eq!(page.next.as_deref(), Some(longest.as_str()));
    }

    #[test]
    fn records_come_sorted_by_id_bytes_with_the_md5_of_their_text() {
        let page = parse(&page_of(&[
            r#"{"id":"b","date":"2024-01-02"}"#,
            r#"{"id":"a","date":"2024-01-02","amount":1}"#,
            r#"{"id":"B","date":"2024-01-02"}"#,
            r#"{"id":"\u00e9","date":"2024-01-02"}"#,
            r#"{"id":"aa","date":"2024-01-02"}"#,
        ]))
        .expect("page");
        let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
        // Byte order, as COLLATE "C" sorts: upper case first, non-ASCII last.
        assert_eq!(ids, ["B", "a", "aa", "b", "\u{e9}"]);
        // md5 of the exact text, as PostgreSQL's md5() would hash it.
        let md5: String = page.records[1].payload_md5.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(md5, "bba7326ae00a2401d26e48dee402c037");
    }

    #[test]
    fn duplicate_ids_keep_the_last_occurrence() {
        let page = parse(&page_of(&[
            r#"{"id":"a","date":"2024-01-02","amount":1}"#,
            r#"{"id":"b","date":"2024-01-02","amount":2}"#,
            r#"{"id":"a","date":"2024-01-03","amount":3}"#,
            r#"{"id":"a","date":"2024-01-04","amount":4}"#,
        ]))
        .expect("page");
        let kept: Vec<(&str, Option<&str>)> =
            page.records.iter().map(|r| (r.id.as_str(), r.amount.as_deref())).collect();
        assert_eq!(kept, [("a", Some("4")), ("b", Some("2"))]);
        assert_eq!(page.duplicate_ids, 2);
    }

    #[test]
    fn a_token_echoed_as_an_id_date_amount_or_page_token_is_not_quoted_even_in_part() {
        use crate::fetch::leak_check::{encodings, leaked_fragment, sample_tokens};
        for token in sample_tokens() {
            let secrets = Secrets::new([token.as_str()]);
            let (_, json) = encodings(&token).into_iter().find(|(name, _)| *name == "json").expect("json");
            let half: String = token.chars().take(token.chars().count().div_ceil(2)).collect();
            let long = "x".repeat(MAX_ID_BYTES);
            let bodies = [
                page_of(&[&format!(r#"{{"id":"{json}{long}","date":"2024-01-02"}}"#)]),
                page_of(&[&format!(r#"{{"id":"{json}","amount":1}}"#)]),
                page_of(&[&format!(r#"{{"id":"a","date":"{json}{long}"}}"#)]),
                page_of(&[&format!(r#"{{"id":"a","date":"2024-01-02","amount":{token}}}"#)]),
                page_of(&[&format!(r#"{{"id":"a","date":"2024-01-02","amount":{half}e99999}}"#)]),
                format!(r#"{{"data":"{json}"}}"#),
                format!(r#"{{"data":[],"next_page_token":{token}}}"#),
            ];
            for body in bodies {
                let err = parse_page(body.as_bytes(), &contract(), &window(), &secrets).expect_err(&body);
                let message = format!("{err} | {err:?}");
                assert_eq!(leaked_fragment(&message, &token), None, "{message}");
            }
        }
    }

    #[test]
    fn quoted_server_text_is_cut_short() {
        let junk = "y".repeat(5000);
        let (_, _, _, reason) = record_error(&page_of(&[&format!(r#"{{"id":"a","date":"{junk}"}}"#)]));
        assert!(reason.len() < 100, "{reason}");
    }

    fn plan(source: serde_json::Value, timezone: &str) -> PagePlan {
        let profile = crate::fetch::profile::Profile::parse(&source, &["orders".to_owned()]).expect("test profile");
        PagePlan::new(profile.stream("orders").expect("stream"), timezone.parse().expect("zone"))
    }

    fn parse_with(plan: &PagePlan, body: &str) -> Result<ParsedPage, FetchError> {
        let request = PageRequest { from: day("2026-01-01"), to: day("2026-01-02"), ..window() };
        parse_page(body.as_bytes(), plan, &request, &Secrets::none())
    }

    fn nested() -> PagePlan {
        plan(
            serde_json::json!({
                "records": {"path": "result.items", "id": "order.number", "date": "created_at",
                            "date_format": "rfc3339", "amount": "total", "amount_format": "string"},
                "pagination": {"style": "next_url", "url_path": "links.next"}
            }),
            "Asia/Ho_Chi_Minh",
        )
    }

    const NESTED_RECORD: &str = r#"{"order":{"number":20260101000005,"channel":"pos"},"created_at":"2025-12-31T17:30:00Z","total":"12.34","customer":1}"#;

    #[test]
    fn nested_profile_reads_numeric_ids_rfc3339_dates_in_the_zone_and_string_amounts() {
        let late = r#"{"order":{"number":"A-7"},"created_at":"2026-01-01T23:30:00Z","total":5}"#;
        let body = format!(
            r#"{{"links":{{"next":"https://api.example.com/orders?page=2"}},"result":{{"items":[{NESTED_RECORD},{late}]}}}}"#
        );
        let page = parse_with(&nested(), &body).expect("nested page");
        let read: Vec<(&str, NaiveDate, Option<&str>)> =
            page.records.iter().map(|r| (r.id.as_str(), r.date, r.amount.as_deref())).collect();
        assert_eq!(read, [("20260101000005", day("2026-01-01"), Some("12.34")), ("A-7", day("2026-01-02"), Some("5"))]);
        assert_eq!(page.records[0].payload, NESTED_RECORD);
        assert_eq!(page.next.as_deref(), Some("https://api.example.com/orders?page=2"));
        assert_eq!(page.last_id.as_deref(), Some("A-7"));
        let last = parse_with(&nested(), r#"{"result":{"items":[]},"links":{"next":null}}"#).expect("last page");
        assert_eq!((last.next, last.received), (None, 0));
    }

    #[test]
    fn errors_name_the_profiles_path() {
        let record = |created_at: &str| {
            format!(
                r#"{{"result":{{"items":[{NESTED_RECORD},{{"order":{{"number":20260101000006}},"created_at":{created_at}}}]}}}}"#
            )
        };
        let message = parse_with(&nested(), &record("\"yesterday\"")).expect_err("bad date").to_string();
        assert_eq!(
            message,
            "invalid record at index 1 (id \"20260101000006\") in source response: created_at \"yesterday\" is not an RFC 3339 timestamp"
        );
        let message = parse_with(&nested(), &record("\"2026-01-03T00:00:00+07:00\"")).expect_err("outside").to_string();
        assert!(message.ends_with("created_at 2026-01-03 is outside the window 2026-01-01..2026-01-02"), "{message}");
        let missing_id = r#"{"result":{"items":[{"order":{"channel":"pos"},"created_at":"2026-01-01T00:00:00Z"}]}}"#;
        let message = parse_with(&nested(), missing_id).expect_err("no id").to_string();
        assert_eq!(message, "invalid record at index 0 in source response: order.number is missing or null");
        let bad_amount =
            r#"{"result":{"items":[{"order":{"number":1},"created_at":"2026-01-01T00:00:00Z","total":"1,5"}]}}"#;
        let message = parse_with(&nested(), bad_amount).expect_err("amount").to_string();
        assert!(message.ends_with("total \"1,5\" is not a decimal number"), "{message}");
        for (body, expected) in [
            (r#"{"result":{}}"#, "invalid source response: result.items is missing"),
            (r#"{"result":[1]}"#, "invalid source response: result.items is missing"),
            (r#"{"result":{"items":7}}"#, "invalid source response: result.items is not an array (found a number)"),
            (
                r#"{"result":{"items":[]},"links":{"next":5}}"#,
                "invalid source response: links.next must be a string, not a number (null ends the window)",
            ),
        ] {
            assert_eq!(parse_with(&nested(), body).expect_err(body).to_string(), expected);
        }
    }

    #[test]
    fn a_whole_body_list_with_composite_ids_and_unix_times() {
        let plan = plan(
            serde_json::json!({
                "records": {"path": "", "id": ["channel", "no"], "date": "ts", "date_format": "unix_seconds",
                            "amount": "cents", "amount_format": "minor_units", "amount_scale": 2},
                "pagination": {"style": "none"}
            }),
            "Asia/Ho_Chi_Minh",
        );
        // 1767310200 = 2026-01-01T23:30:00Z, the 2nd in Ho Chi Minh City.
        let body = r#"[{"channel":"pos","no":12,"ts":1767310200,"cents":1234},
                       {"channel":"web","no":"12","ts":"1767225600","cents":"-5"},
                       {"channel":"pos","no":12,"ts":1767310200,"cents":null}]"#;
        let page = parse_with(&plan, body).expect("whole-body list");
        let read: Vec<(&str, NaiveDate, Option<&str>)> =
            page.records.iter().map(|r| (r.id.as_str(), r.date, r.amount.as_deref())).collect();
        assert_eq!(read, [("pos:12", day("2026-01-02"), None), ("web:12", day("2026-01-01"), Some("-0.05"))]);
        assert_eq!((page.received, page.duplicate_ids, page.last_id.as_deref()), (3, 1, Some("pos:12")));
        let message =
            parse_with(&plan, r#"[{"channel":"pos","no":[1],"ts":1767225600}]"#).expect_err("bad part").to_string();
        assert!(message.ends_with(": no must be a string or a number, not an array"), "{message}");
        let message = parse_with(&plan, r#"{"data":[]}"#).expect_err("not a list").to_string();
        assert_eq!(message, "invalid source response: the body is not an array (found an object)");
        let long = format!(r#"[{{"channel":"{}","no":1,"ts":1767225600}}]"#, "c".repeat(255));
        let message = parse_with(&plan, &long).expect_err("too long").to_string();
        assert!(message.contains(": channel:no is 257 bytes long, more than 256"), "{message}");
    }

    #[test]
    fn totals_and_has_more_are_read_for_the_caller() {
        let offset = plan(
            serde_json::json!({"pagination": {"style": "offset", "offset_param": "offset", "total_path": "meta.total"}}),
            "UTC",
        );
        assert_eq!(parse_with(&offset, r#"{"data":[],"meta":{"total":120}}"#).unwrap().total, Some(120));
        assert_eq!(parse_with(&offset, r#"{"data":[],"meta":{"total":"7"}}"#).unwrap().total, Some(7));
        assert_eq!(parse_with(&offset, r#"{"data":[]}"#).unwrap().total, None);
        for bad in ["-1", "1.5", "\"x\"", "true"] {
            let message =
                parse_with(&offset, &format!(r#"{{"data":[],"meta":{{"total":{bad}}}}}"#)).expect_err(bad).to_string();
            assert!(
                message.starts_with("invalid source response: meta.total must be a non-negative integer"),
                "{message}"
            );
        }
        let pages = plan(
            serde_json::json!({"pagination": {"style": "page_number", "page_param": "p", "total_pages_path": "pages"}}),
            "UTC",
        );
        assert_eq!(parse_with(&pages, r#"{"data":[],"pages":3}"#).unwrap().total, Some(3));
        let last_id = plan(
            serde_json::json!({"pagination": {"style": "last_id", "param": "after", "has_more_path": "has_more"}}),
            "UTC",
        );
        assert_eq!(parse_with(&last_id, r#"{"data":[],"has_more":true}"#).unwrap().has_more, Some(true));
        assert_eq!(parse_with(&last_id, r#"{"data":[],"has_more":false}"#).unwrap().has_more, Some(false));
        assert_eq!(parse_with(&last_id, r#"{"data":[]}"#).unwrap().has_more, None);
        let message = parse_with(&last_id, r#"{"data":[],"has_more":"yes"}"#).expect_err("not a boolean").to_string();
        assert_eq!(message, "invalid source response: has_more must be a boolean, not a string");
    }

    #[test]
    fn numeric_ids_are_their_number_text() {
        let page = parse(&page_of(&[r#"{"id":20260101000005,"date":"2024-01-02","amount":1}"#])).expect("numeric id");
        assert_eq!(page.records[0].id, "20260101000005");
    }

    /// Micro-benchmark of one 10,000-record page, the built-in contract beside a nested profile
    /// (end to end, old build against new: scripts/bench_ingest.sh):
    /// `cargo test --release -p orders_sync --lib -- --ignored --nocapture parse_page_throughput`
    #[test]
    #[ignore = "a benchmark: run it in release mode"]
    fn parse_page_throughput() {
        use std::time::{Duration, Instant};
        const RECORDS: usize = 10_000;
        const RUNS: usize = 30;
        let default_body = {
            let records: Vec<String> = (0..RECORDS)
                .map(|i| {
                    format!(
                        r#"{{"id":"orders-S001-2024010{}-{i:06}","date":"2024-01-0{}","amount":{}.{:02},"customer_id":"C4956694","sku":"SKU-36135","qty":8,"channel":"web","currency":"INR","rev":0}}"#,
                        1 + i % 7,
                        1 + i % 7,
                        i % 1000,
                        i % 100
                    )
                })
                .collect();
            format!(r#"{{"data":[{}],"next_page_token":"p2"}}"#, records.join(","))
        };
        let nested_body = {
            let records: Vec<String> = (0..RECORDS)
                .map(|i| {
                    format!(
                        r#"{{"order":{{"number":{},"channel":"pos"}},"created_at":"2025-12-31T{:02}:{:02}:00Z","total":"{}.{:02}","customer":1,"sku":2,"qty":3}}"#,
                        20260101000000u64 + i as u64,
                        17 + i % 7,
                        i % 60,
                        i % 1000,
                        i % 100
                    )
                })
                .collect();
            format!(r#"{{"result":{{"items":[{}]}},"links":{{"next":null}}}}"#, records.join(","))
        };
        let week = window();
        let new_year = PageRequest { from: day("2026-01-01"), to: day("2026-01-01"), ..window() };
        let secrets = Secrets::none();
        let best = |parse: &dyn Fn() -> usize| {
            let mut fastest = Duration::MAX;
            for _ in 0..RUNS {
                let started = Instant::now();
                assert_eq!(parse(), RECORDS);
                fastest = fastest.min(started.elapsed());
            }
            RECORDS as f64 / fastest.as_secs_f64()
        };
        let contract = contract();
        let new_default =
            best(&|| parse_page(default_body.as_bytes(), &contract, &week, &secrets).expect("default").records.len());
        let nested_plan = nested();
        let new_nested = best(&|| {
            parse_page(nested_body.as_bytes(), &nested_plan, &new_year, &secrets).expect("nested").records.len()
        });
        println!("default shape: {new_default:>12.0} records/s");
        println!("nested shape:  {new_nested:>12.0} records/s ({:.1}% of default)", 100.0 * new_nested / new_default);
    }
}
