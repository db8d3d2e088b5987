//! A 200 body, `{"data": [ {record}, ... ], "next_page_token": "<opaque>" | null}`, checked
//! record by record. All or nothing: one bad record rejects the page.
//!
//! Records are borrowed as raw JSON text and only `id`, `date` and `amount` are looked at, so
//! the payload is stored byte for byte as the source sent it and an amount keeps its exact
//! decimal text (never an f64 round trip).

use chrono::NaiveDate;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::redact::{Secrets, SourceText, MESSAGE_CHARS, VALUE_CHARS};
use super::{FetchError, PageRequest};

/// Longest record id accepted, in bytes (after JSON unescaping).
pub const MAX_ID_BYTES: usize = 256;
/// Longest `next_page_token` accepted, in bytes; it is saved as the job's cursor.
pub const MAX_PAGE_TOKEN_BYTES: usize = 1024;
/// Longest amount text accepted. With the exponent bound below, every accepted amount fits
/// PostgreSQL's `numeric` (131072 digits before the point, 16383 after).
const MAX_AMOUNT_CHARS: usize = 100;
const MAX_AMOUNT_EXPONENT: i64 = 1000;

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

#[derive(Deserialize)]
#[serde(expecting = "a JSON object with \"data\" and \"next_page_token\"")]
struct WirePage<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    next_page_token: Option<&'a RawValue>,
}

/// The three fields we look at; everything else stays in the payload unexamined.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct WireRecord<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    date: Option<&'a RawValue>,
    #[serde(default, borrow)]
    amount: Option<&'a RawValue>,
}

/// Parses and validates a 200 body for `request`. `attempts` is left 0 for the caller. Text
/// of the body quoted in an error goes through `secrets` (see [`Secrets::quote`]).
pub(crate) fn parse_page(body: &[u8], request: &PageRequest<'_>, secrets: &Secrets) -> Result<Page, FetchError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let (line, column) = line_column(&body[..e.valid_up_to()]);
        FetchError::MalformedJson {
            detail: message(secrets, &format!("invalid UTF-8 at line {line} column {column}")),
            line,
            column,
            attempts: 0,
        }
    })?;
    let wire: WirePage<'_> = serde_json::from_str(text).map_err(|e| json_error(&e, secrets))?;
    let mut records = Vec::with_capacity(wire.data.len());
    for (index, raw) in wire.data.iter().enumerate() {
        records.push(parse_record(index, raw, request, secrets)?);
    }
    let next_page_token = match wire.next_page_token {
        None => None,
        Some(raw) => Some(parse_next_page_token(raw, request, secrets)?),
    };
    let duplicate_ids = sort_keeping_last_of_each_id(&mut records);
    Ok(Page { records, next_page_token, attempts: 0, body_bytes: body.len() as u64, duplicate_ids })
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
        // Valid JSON of the wrong shape: a missing `data`, a string where an array belongs.
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

fn parse_record(
    index: usize,
    raw: &RawValue,
    request: &PageRequest<'_>,
    secrets: &Secrets,
) -> Result<Record, FetchError> {
    let value = |text: &str| secrets.quote(text, VALUE_CHARS);
    let invalid = |id: Option<&str>, field: &'static str, reason: String| FetchError::InvalidRecord {
        index,
        id: id.map(value),
        field,
        reason: message(secrets, &reason),
        attempts: 0,
    };
    let kind = json_kind(raw);
    if kind != "an object" {
        return Err(invalid(None, "record", format!("must be a JSON object, not {kind}")));
    }
    let fields: WireRecord<'_> =
        serde_json::from_str(raw.get()).map_err(|e| invalid(None, "record", format!("cannot be read: {e}")))?;

    let id = match fields.id {
        None => return Err(invalid(None, "id", "is missing or null".into())),
        Some(raw_id) => {
            let id = json_string(raw_id).map_err(|why| invalid(None, "id", why))?;
            if id.is_empty() {
                return Err(invalid(None, "id", "is empty".into()));
            }
            if id.len() > MAX_ID_BYTES {
                let why = format!("is {} bytes long, more than {MAX_ID_BYTES}", id.len());
                return Err(invalid(Some(&id), "id", why));
            }
            if id.contains('\0') {
                return Err(invalid(None, "id", "contains a NUL character".into()));
            }
            id
        }
    };
    let with_id = |field: &'static str, reason: String| invalid(Some(&id), field, reason);

    let date = match fields.date {
        None => return Err(with_id("date", "is missing or null".into())),
        Some(raw_date) => {
            let text = json_string(raw_date).map_err(|why| with_id("date", why))?;
            let date = contract_date(&text)
                .ok_or_else(|| with_id("date", format!("\"{}\" is not a YYYY-MM-DD date", value(&text))))?;
            if date < request.from || date > request.to {
                let why = format!("{date} is outside the window {}..{}", request.from, request.to);
                return Err(with_id("date", why));
            }
            date
        }
    };

    let amount = match fields.amount {
        None => None,
        Some(raw_amount) => match json_kind(raw_amount) {
            "a number" => Some(check_amount(raw_amount.get(), secrets).map_err(|why| with_id("amount", why))?),
            other => return Err(with_id("amount", format!("must be a number or null, not {other}"))),
        },
    };

    if let Some(why) = unstorable_escape(raw.get()) {
        return Err(with_id("record", why.to_owned()));
    }
    Ok(Record {
        id,
        date,
        amount,
        payload_md5: Md5::digest(raw.get().as_bytes()).into(),
        payload: raw.get().to_owned(),
    })
}

fn parse_next_page_token(raw: &RawValue, request: &PageRequest<'_>, secrets: &Secrets) -> Result<String, FetchError> {
    let invalid = |reason: String| FetchError::InvalidPage {
        reason: message(secrets, &format!("next_page_token {reason}")),
        attempts: 0,
    };
    let token = json_string(raw).map_err(|why| invalid(format!("{why} (null ends the window)")))?;
    if token.is_empty() {
        return Err(invalid("is empty (null ends the window)".into()));
    }
    if token.len() > MAX_PAGE_TOKEN_BYTES {
        return Err(invalid(format!("is {} bytes long, more than {MAX_PAGE_TOKEN_BYTES}", token.len())));
    }
    if token.chars().any(char::is_control) {
        return Err(invalid("contains control characters".into()));
    }
    // A source that hands back the token it was given would be followed forever.
    if request.page_token == Some(token.as_str()) {
        return Err(invalid("repeats the token of this request".into()));
    }
    Ok(token)
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

/// The JSON type of a raw value, with its article, for messages.
fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A JSON string value, unescaped.
fn json_string(raw: &RawValue) -> Result<String, String> {
    match json_kind(raw) {
        "a string" => serde_json::from_str(raw.get()).map_err(|e| format!("is not a valid string: {e}")),
        other => Err(format!("must be a string, not {other}")),
    }
}

/// Exactly `YYYY-MM-DD`, a real calendar date.
fn contract_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// A JSON number's text, if PostgreSQL's `numeric` can hold it.
fn check_amount(text: &str, secrets: &Secrets) -> Result<String, String> {
    if text.len() > MAX_AMOUNT_CHARS {
        return Err(format!("has {} characters, more than {MAX_AMOUNT_CHARS}", text.len()));
    }
    if let Some(at) = text.find(['e', 'E']) {
        let exponent = text[at + 1..].parse::<i64>().ok().filter(|e| e.abs() <= MAX_AMOUNT_EXPONENT);
        if exponent.is_none() {
            let quoted = secrets.quote(text, VALUE_CHARS);
            return Err(format!("{quoted} has an exponent beyond ±{MAX_AMOUNT_EXPONENT}"));
        }
    }
    Ok(text.to_owned())
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

    fn parse(body: &str) -> Result<Page, FetchError> {
        parse_page(body.as_bytes(), &window(), &Secrets::none())
    }

    fn page_of(records: &[&str]) -> String {
        format!("{{\"data\":[{}],\"next_page_token\":null}}", records.join(","))
    }

    fn record_error(body: &str) -> (usize, Option<String>, &'static str, String) {
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
        assert_eq!(page.next_page_token.as_deref(), Some("p1.d20240102.n3.c9"));
        assert_eq!(page.body_bytes, body.len() as u64);
        assert_eq!((page.attempts, page.duplicate_ids), (0, 0));
    }

    #[test]
    fn last_page_and_empty_page() {
        let page = parse(r#"{"data":[]}"#).expect("absent token");
        assert!(page.records.is_empty() && page.next_page_token.is_none());
        let page = parse(r#"{"data":[],"next_page_token":null,"extra":{"ignored":true}}"#).expect("null token");
        assert!(page.next_page_token.is_none());
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
            assert_eq!((id.as_deref(), field), (Some("a"), "amount"), "{reason}");
        }
    }

    #[test]
    fn amount_as_string_or_other_type_is_invalid() {
        let (index, id, field, reason) = record_error(&page_of(&[
            r#"{"id":"a","date":"2024-01-02","amount":1}"#,
            r#"{"id":"bad-record","date":"2024-01-01","amount":"12.x"}"#,
        ]));
        assert_eq!((index, id.as_deref(), field), (1, Some("bad-record"), "amount"));
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
            (r#"{"id":42,"date":"2024-01-02","amount":1}"#, "must be a string, not a number"),
            (r#"{"id":"","date":"2024-01-02","amount":1}"#, "is empty"),
            (r#"{"id":"a\u0000b","date":"2024-01-02","amount":1}"#, "contains a NUL character"),
            (r#"{"id":"\ud800","date":"2024-01-02","amount":1}"#, "is not a valid string"),
        ];
        for (record, expected) in cases {
            let (index, _, field, reason) = record_error(&page_of(&[record]));
            assert_eq!((index, field), (0, "id"), "{record}");
            assert!(reason.starts_with(expected), "{record}: {reason}");
        }
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let (_, _, field, reason) =
            record_error(&page_of(&[&format!(r#"{{"id":"{long}","date":"2024-01-02","amount":1}}"#)]));
        assert_eq!((field, reason.as_str()), ("id", "is 257 bytes long, more than 256"));
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
            assert_eq!((id.as_deref(), field), (Some("a"), "date"), "{record}");
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
            assert_eq!((index, field), (0, "record"), "{record}");
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
            assert_eq!((id.as_deref(), field), (Some("a"), "record"), "{note}");
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
        match parse_page(b"{\"data\":[\n\"\xff\"]}", &window(), &Secrets::none()) {
            Err(FetchError::MalformedJson { line: 2, column: 2, .. }) => {}
            other => panic!("expected invalid UTF-8 at 2:2, got {other:?}"),
        }
    }

    #[test]
    fn wrong_shape_is_an_invalid_page() {
        for body in [r#"[]"#, r#"{"records":[]}"#, r#"{"data":{}}"#, r#"{"data":null}"#, r#"{"data":[],"data":[]}"#] {
            match parse(body) {
                Err(FetchError::InvalidPage { reason, .. }) => {
                    assert!(reason.as_str().contains("line 1 column"), "{body}: {reason}")
                }
                other => panic!("{body}: expected invalid page, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_next_page_token_is_an_invalid_page() {
        let long = "t".repeat(MAX_PAGE_TOKEN_BYTES + 1);
        let cases = [
            ("17".to_owned(), "must be a string, not a number"),
            ("\"\"".to_owned(), "is empty"),
            (format!("\"{long}\""), "is 1025 bytes long"),
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
        let page = parse(&format!(r#"{{"data":[],"next_page_token":"{longest}"}}"#)).expect("1024 bytes");
        assert_eq!(page.next_page_token.as_deref(), Some(longest.as_str()));
    }

    #[test]
    fn a_token_that_points_back_at_itself_is_refused() {
        let request = PageRequest { page_token: Some("p3"), ..window() };
        let err = parse_page(br#"{"data":[],"next_page_token":"p3"}"#, &request, &Secrets::none()).expect_err("loop");
        assert!(err.to_string().contains("repeats the token of this request"), "{err}");
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
                let err = parse_page(body.as_bytes(), &window(), &secrets).expect_err(&body);
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
}
