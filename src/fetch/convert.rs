//! One decoder per shape of a record's field (id, business date, amount), as a profile
//! describes it. Pure: raw JSON text in, our value or the reason out. Amounts stay exact
//! decimal text and never pass through an f64.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::value::RawValue;

use super::profile::{AmountFormat, RecordDateFormat};

/// Longest record id accepted, in bytes (after JSON unescaping).
pub const MAX_ID_BYTES: usize = 256;
/// Longest amount text accepted. With the exponent bound below, every accepted amount fits
/// PostgreSQL's `numeric` (131072 digits before the point, 16383 after).
pub const MAX_AMOUNT_CHARS: usize = 100;
const MAX_AMOUNT_EXPONENT: i64 = 1000;
/// Most digits of an integer count of minor units (far beyond any real amount).
pub const MAX_MINOR_UNIT_DIGITS: usize = 40;

/// Why a field was refused. `value` is the source's text the reason is about; the caller
/// quotes it (through `Secrets::quote`) before `reason`: `"yesterday" is not ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected<'a> {
    pub value: Option<Cow<'a, str>>,
    pub reason: Cow<'static, str>,
}

impl<'a> Rejected<'a> {
    fn ours(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejected { value: None, reason: reason.into() }
    }

    fn about(value: impl Into<Cow<'a, str>>, reason: impl Into<Cow<'static, str>>) -> Self {
        Rejected { value: Some(value.into()), reason: reason.into() }
    }

    /// `reason`, with `quote(value)` in front when there is one.
    pub fn render(&self, quote: impl Fn(&str) -> String) -> String {
        match &self.value {
            Some(value) => format!("\"{}\" {}", quote(value), self.reason),
            None => self.reason.clone().into_owned(),
        }
    }
}

/// The JSON type of a raw value, with its article, for messages.
pub fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A JSON string value, unescaped; borrowed when it has no escapes (the common case).
pub fn json_string(raw: &RawValue) -> Result<Cow<'_, str>, Rejected<'static>> {
    let text = raw.get();
    match json_kind(raw) {
        // Valid JSON text: without a backslash, the string is what lies between the quotes.
        "a string" if !text.contains('\\') => Ok(Cow::Borrowed(&text[1..text.len() - 1])),
        "a string" => serde_json::from_str::<String>(text)
            .map(Cow::Owned)
            .map_err(|e| Rejected::ours(format!("is not a valid string: {e}"))),
        other => Err(Rejected::ours(format!("must be a string, not {other}"))),
    }
}

/// A record's id from one field: a string (unescaped) or a number (its text).
pub fn id_part(raw: &RawValue) -> Result<Cow<'_, str>, Rejected<'static>> {
    let id = match json_kind(raw) {
        "a number" => Cow::Borrowed(raw.get()),
        "a string" => json_string(raw)?,
        other => return Err(Rejected::ours(format!("must be a string or a number, not {other}"))),
    };
    if id.is_empty() {
        return Err(Rejected::ours("is empty"));
    }
    if id.contains('\0') {
        return Err(Rejected::ours("contains a NUL character"));
    }
    Ok(id)
}

/// A record's business date, as `format` writes it, in the pipeline's time zone.
pub fn business_date<'a>(raw: &'a RawValue, format: RecordDateFormat, timezone: Tz) -> Result<NaiveDate, Rejected<'a>> {
    match format {
        RecordDateFormat::Date => {
            let text = json_string(raw)?;
            contract_date(&text).ok_or_else(|| Rejected::about(text, "is not a YYYY-MM-DD date"))
        }
        RecordDateFormat::Rfc3339 => {
            let text = json_string(raw)?;
            match DateTime::parse_from_rfc3339(&text) {
                Ok(at) => Ok(local_date(at.with_timezone(&Utc), timezone)),
                Err(_) => Err(Rejected::about(text, "is not an RFC 3339 timestamp")),
            }
        }
        RecordDateFormat::UnixSeconds => {
            let seconds = json_integer(raw)?;
            let at = i64::try_from(seconds).ok().and_then(|s| DateTime::from_timestamp(s, 0));
            at.map(|at| local_date(at, timezone))
                .ok_or_else(|| Rejected::about(raw.get(), "is out of range for Unix seconds"))
        }
        RecordDateFormat::UnixMillis => {
            let millis = json_integer(raw)?;
            let at = i64::try_from(millis).ok().and_then(DateTime::from_timestamp_millis);
            at.map(|at| local_date(at, timezone))
                .ok_or_else(|| Rejected::about(raw.get(), "is out of range for Unix milliseconds"))
        }
    }
}

fn local_date(at: DateTime<Utc>, timezone: Tz) -> NaiveDate {
    timezone.from_utc_datetime(&at.naive_utc()).date_naive()
}

/// Exactly `YYYY-MM-DD`, a real calendar date.
pub fn contract_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().ok();
    NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)
}

/// A JSON integer, or a string of one (an optional '-' and digits).
fn json_integer(raw: &RawValue) -> Result<i128, Rejected<'_>> {
    let text = match json_kind(raw) {
        "a number" => Cow::Borrowed(raw.get()),
        "a string" => json_string(raw)?,
        other => return Err(Rejected::ours(format!("must be an integer, not {other}"))),
    };
    match integer_digits(&text) {
        Some((_, digits)) if digits.len() <= 30 => match text.parse::<i128>() {
            Ok(n) => Ok(n),
            Err(_) => Err(Rejected::about(text, "is not an integer")),
        },
        _ => Err(Rejected::about(text, "is not an integer")),
    }
}

/// `Some((negative, digits))` for an optional '-' followed by one or more ASCII digits.
fn integer_digits(text: &str) -> Option<(bool, &str)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some((negative, digits))
}

/// A record's amount as exact decimal text; `None` for null or an absent field.
pub fn amount<'a>(raw: Option<&'a RawValue>, format: AmountFormat, scale: u32) -> Result<Option<String>, Rejected<'a>> {
    let Some(raw) = raw else { return Ok(None) };
    let kind = json_kind(raw);
    if kind == "null" {
        return Ok(None);
    }
    match format {
        AmountFormat::Number => match kind {
            "a number" => check_amount(raw.get()).map(Some),
            other => Err(Rejected::ours(format!("must be a number or null, not {other}"))),
        },
        AmountFormat::String => match kind {
            "a number" => check_amount(raw.get()).map(Some),
            "a string" => {
                let text = json_string(raw)?;
                if !is_json_number(&text) {
                    return Err(Rejected::about(text, "is not a decimal number"));
                }
                // `text` may be an unescaped copy, dropped here: the rejection owns its quote.
                check_amount(&text)
                    .map(Some)
                    .map_err(|r| Rejected { value: r.value.map(|v| Cow::Owned(v.into_owned())), reason: r.reason })
            }
            other => Err(Rejected::ours(format!("must be a decimal string, a number or null, not {other}"))),
        },
        AmountFormat::MinorUnits => {
            let text = match kind {
                "a number" => Cow::Borrowed(raw.get()),
                "a string" => json_string(raw)?,
                other => {
                    return Err(Rejected::ours(format!("must be an integer, an integer string or null, not {other}")))
                }
            };
            match integer_digits(&text) {
                Some((negative, digits)) if digits.len() <= MAX_MINOR_UNIT_DIGITS => {
                    Ok(Some(minor_units_text(negative, digits, scale)))
                }
                Some(_) => Err(Rejected::ours(format!("has more than {MAX_MINOR_UNIT_DIGITS} digits"))),
                None => Err(Rejected::about(text, "is not an integer count of minor units")),
            }
        }
    }
}

/// `digits` / 10^scale as decimal text: (1234, 2) → "12.34", (5, 2) → "0.05", (7, 0) → "7".
pub fn minor_units_text(negative: bool, digits: &str, scale: u32) -> String {
    let digits = digits.trim_start_matches('0');
    let scale = scale as usize;
    let mut text = String::with_capacity(digits.len() + scale + 3);
    if negative {
        text.push('-');
    }
    if digits.len() > scale {
        text.push_str(&digits[..digits.len() - scale]);
    } else {
        text.push('0');
    }
    if scale > 0 {
        text.push('.');
        for _ in digits.len()..scale {
            text.push('0');
        }
        text.push_str(&digits[digits.len().saturating_sub(scale)..]);
    }
    text
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
pub fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let start = i;
    match digits(&mut i) {
        0 => return false,
        n if n > 1 && b[start] == b'0' => return false,
        _ => {}
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A JSON number's text, if PostgreSQL's `numeric` can hold it.
pub fn check_amount(text: &str) -> Result<String, Rejected<'_>> {
    if text.len() > MAX_AMOUNT_CHARS {
        return Err(Rejected::ours(format!("has {} characters, more than {MAX_AMOUNT_CHARS}", text.len())));
    }
    if let Some(at) = text.find(['e', 'E']) {
        let exponent = text[at + 1..].parse::<i64>().ok().filter(|e| e.abs() <= MAX_AMOUNT_EXPONENT);
        if exponent.is_none() {
            return Err(Rejected::about(text, format!("has an exponent beyond ±{MAX_AMOUNT_EXPONENT}")));
        }
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("test JSON")
    }

    fn day(text: &str) -> NaiveDate {
        contract_date(text).expect("test date")
    }

    fn date(json: &str, format: RecordDateFormat, timezone: Tz) -> Result<NaiveDate, String> {
        let raw = raw(json);
        business_date(&raw, format, timezone).map_err(|r| r.render(str::to_owned))
    }

    fn money(json: Option<&str>, format: AmountFormat, scale: u32) -> Result<Option<String>, String> {
        let raw = json.map(raw);
        amount(raw.as_deref(), format, scale).map_err(|r| r.render(str::to_owned))
    }

    #[test]
    fn ids_are_strings_or_numbers() {
        assert_eq!(id_part(&raw("\"a\\\"b\"")).unwrap(), "a\"b");
        assert_eq!(id_part(&raw("20260101000005")).unwrap(), "20260101000005");
        assert_eq!(id_part(&raw("-1.5")).unwrap(), "-1.5");
        for (json, expected) in [
            ("\"\"", "is empty"),
            ("\"a\\u0000\"", "contains a NUL character"),
            ("true", "must be a string or a number, not a boolean"),
            ("{}", "must be a string or a number, not an object"),
        ] {
            assert_eq!(id_part(&raw(json)).unwrap_err().reason, expected, "{json}");
        }
    }

    #[test]
    fn rfc3339_timestamps_take_their_date_in_the_pipelines_zone() {
        let saigon: Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        let rfc = RecordDateFormat::Rfc3339;
        assert_eq!(date("\"2026-01-01T23:30:00Z\"", rfc, saigon), Ok(day("2026-01-02")));
        assert_eq!(date("\"2026-01-01T23:30:00Z\"", rfc, chrono_tz::UTC), Ok(day("2026-01-01")));
        assert_eq!(date("\"2025-12-31T17:30:00+00:00\"", rfc, saigon), Ok(day("2026-01-01")));
        assert_eq!(date("\"2026-01-02T01:00:00+07:00\"", rfc, chrono_tz::UTC), Ok(day("2026-01-01")));
        assert_eq!(date("\"yesterday\"", rfc, saigon).unwrap_err(), "\"yesterday\" is not an RFC 3339 timestamp");
        assert_eq!(
            date("\"2026-01-01T23:30:00\"", rfc, saigon).unwrap_err(),
            "\"2026-01-01T23:30:00\" is not an RFC 3339 timestamp"
        );
        assert_eq!(date("12", rfc, saigon).unwrap_err(), "must be a string, not a number");
    }

    #[test]
    fn unix_times_are_integers_or_integer_strings() {
        let saigon: Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        // 2026-01-01T23:30:00Z
        assert_eq!(date("1767310200", RecordDateFormat::UnixSeconds, saigon), Ok(day("2026-01-02")));
        assert_eq!(date("\"1767310200\"", RecordDateFormat::UnixSeconds, chrono_tz::UTC), Ok(day("2026-01-01")));
        assert_eq!(date("1767310200000", RecordDateFormat::UnixMillis, saigon), Ok(day("2026-01-02")));
        assert_eq!(date("-86400", RecordDateFormat::UnixSeconds, chrono_tz::UTC), Ok(day("1969-12-31")));
        assert_eq!(date("1.5", RecordDateFormat::UnixSeconds, saigon).unwrap_err(), "\"1.5\" is not an integer");
        assert_eq!(date("\"soon\"", RecordDateFormat::UnixMillis, saigon).unwrap_err(), "\"soon\" is not an integer");
        assert_eq!(
            date("99999999999999999999", RecordDateFormat::UnixSeconds, saigon).unwrap_err(),
            "\"99999999999999999999\" is out of range for Unix seconds"
        );
        assert!(date("null", RecordDateFormat::UnixMillis, saigon).unwrap_err().starts_with("must be an integer"));
    }

    #[test]
    fn contract_dates_are_exactly_year_month_day() {
        assert_eq!(date("\"2024-02-29\"", RecordDateFormat::Date, chrono_tz::UTC), Ok(day("2024-02-29")));
        for bad in ["2024-1-02", "2024-02-30", "2024-01-02T00:00:00Z", "+202-01-01", " 2024-01-02"] {
            assert!(contract_date(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn amounts_by_format() {
        use AmountFormat::*;
        assert_eq!(money(Some("341.35"), Number, 0), Ok(Some("341.35".into())));
        assert_eq!(money(None, Number, 0), Ok(None));
        assert_eq!(money(Some("null"), String, 0), Ok(None));
        assert_eq!(money(Some("\"12.34\""), Number, 0).unwrap_err(), "must be a number or null, not a string");
        assert_eq!(money(Some("\"12.34\""), String, 0), Ok(Some("12.34".into())));
        assert_eq!(money(Some("\"-1.5E+3\""), String, 0), Ok(Some("-1.5E+3".into())));
        assert_eq!(money(Some("12.30"), String, 0), Ok(Some("12.30".into())));
        for bad in ["\" 1\"", "\"1 \"", "\"12.x\"", "\"\"", "\"01\"", "\"1.\"", "\".5\"", "\"+1\"", "\"NaN\""] {
            assert!(money(Some(bad), String, 0).unwrap_err().ends_with("is not a decimal number"), "{bad}");
        }
        assert!(money(Some("\"1e1001\""), String, 0).unwrap_err().contains("exponent"));
        assert!(money(Some("true"), String, 0).unwrap_err().starts_with("must be a decimal string"));
        assert_eq!(money(Some("1234"), MinorUnits, 2), Ok(Some("12.34".into())));
        assert_eq!(money(Some("\"5\""), MinorUnits, 2), Ok(Some("0.05".into())));
        assert_eq!(money(Some("-5"), MinorUnits, 2), Ok(Some("-0.05".into())));
        assert_eq!(money(Some("7"), MinorUnits, 0), Ok(Some("7".into())));
        assert_eq!(money(Some("\"0012300\""), MinorUnits, 3), Ok(Some("12.300".into())));
        assert_eq!(money(Some("0"), MinorUnits, 2), Ok(Some("0.00".into())));
        assert_eq!(money(Some("null"), MinorUnits, 2), Ok(None));
        assert!(money(Some("12.5"), MinorUnits, 2).unwrap_err().ends_with("is not an integer count of minor units"));
        assert!(money(Some(&"9".repeat(41)), MinorUnits, 2).unwrap_err().contains("more than 40 digits"));
        assert!(money(Some("{}"), MinorUnits, 2).unwrap_err().starts_with("must be an integer"));
    }

    #[test]
    fn json_number_grammar() {
        for good in ["0", "-0", "1.5", "1e5", "1E-5", "-12.340e+2", "10"] {
            assert!(is_json_number(good), "{good}");
        }
        for bad in ["", "-", "00", "1.", ".1", "1e", "1e+", "+1", "1 ", "0x1", "Infinity"] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    fn zone() -> impl Strategy<Value = Tz> {
        prop::sample::select(chrono_tz::TZ_VARIANTS.to_vec())
    }

    /// From 1900 to 2200: beyond, time zone rules are guesses anyway.
    fn instant() -> impl Strategy<Value = i64> {
        -2_208_988_800i64..7_258_118_400
    }

    proptest! {
        #[test]
        fn minor_units_parse_back_to_the_integer_over_ten_to_the_scale(n in any::<i64>(), scale in 0u32..=18) {
            let text = minor_units_text(n < 0, &n.unsigned_abs().to_string(), scale);
            let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
            prop_assert_eq!(fraction.len(), scale as usize);
            prop_assert!(!whole.trim_start_matches('-').starts_with('0') || whole.trim_start_matches('-') == "0");
            let back: i128 = format!("{whole}{fraction}").parse().unwrap();
            prop_assert_eq!(back, i128::from(n));
        }

        #[test]
        fn minor_units_of_forty_digits_keep_every_digit(digits in "[0-9]{1,40}", negative: bool, scale in 0u32..=18) {
            let text = minor_units_text(negative, &digits, scale);
            let unsigned = text.trim_start_matches('-').replace('.', "");
            prop_assert_eq!(unsigned.trim_start_matches('0'), digits.trim_start_matches('0'));
            prop_assert!(is_json_number(&text));
        }

        #[test]
        fn rfc3339_dates_agree_with_chrono_tz(seconds in instant(), offset_minutes in -14 * 60i32..=14 * 60, timezone in zone()) {
            let at = DateTime::from_timestamp(seconds, 0).unwrap();
            let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
            let written = format!("\"{}\"", at.with_timezone(&offset).to_rfc3339());
            let expected = at.with_timezone(&timezone).date_naive();
            prop_assert_eq!(date(&written, RecordDateFormat::Rfc3339, timezone), Ok(expected));
            prop_assert_eq!(date(&seconds.to_string(), RecordDateFormat::UnixSeconds, timezone), Ok(expected));
            let millis = format!("\"{}\"", seconds * 1000 + 999);
            prop_assert_eq!(date(&millis, RecordDateFormat::UnixMillis, timezone), Ok(expected));
        }

        #[test]
        fn contract_dates_round_trip(days in 0i32..3_652_059) {
            let day = NaiveDate::from_num_days_from_ce_opt(days + 1).unwrap();
            prop_assume!(day.year() <= 9999);
            let written = day.format("%Y-%m-%d").to_string();
            prop_assert_eq!(contract_date(&written), Some(day));
            prop_assert_eq!(date(&format!("\"{written}\""), RecordDateFormat::Date, chrono_tz::UTC), Ok(day));
        }
    }
}
