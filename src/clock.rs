//! What "today" is for a pipeline (its own IANA time zone, never the server's), and the one
//! place where dates cross between PostgreSQL's `date` and chrono's `NaiveDate`.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use pgrx::datum::Date;
use pgrx::prelude::*;

use crate::errors::SqlError;

/// Parses an IANA zone name (`Asia/Ho_Chi_Minh`); abbreviations and POSIX strings that the
/// server might accept are refused, so that every pipeline's zone is one the planner knows.
pub fn parse_timezone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// The calendar date at `now` in `zone`.
pub fn today_in(zone: Tz, now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&zone).date_naive()
}

/// Day number of 2000-01-01 (PostgreSQL's date epoch) counted from 0001-01-01 as day 1.
const PG_EPOCH_CE_DAYS: i64 = 730_120;

/// Days since PostgreSQL's epoch (2000-01-01): how a `date` datum counts.
pub fn pg_epoch_days(date: NaiveDate) -> i64 {
    i64::from(date.num_days_from_ce()) - PG_EPOCH_CE_DAYS
}

/// The date `days` after PostgreSQL's epoch; `None` beyond chrono's range.
pub fn from_pg_epoch_days(days: i64) -> Option<NaiveDate> {
    let ce_days = days.checked_add(PG_EPOCH_CE_DAYS)?;
    i32::try_from(ce_days).ok().and_then(NaiveDate::from_num_days_from_ce_opt)
}

/// A `date` value as chrono's: `None` for ±infinity and beyond chrono's range (years past
/// 262142). No call into the server.
pub fn from_pg(date: Date) -> Option<NaiveDate> {
    if !date.is_finite() {
        return None;
    }
    from_pg_epoch_days(i64::from(date.to_pg_epoch_days()))
}

/// A chrono date as a `date` value, built without a call into the server (this runs for every
/// record written). Every date orders_sync handles comes from a PostgreSQL date or lies
/// within a window of such dates, so nothing saturates in practice.
pub fn to_pg(date: NaiveDate) -> Date {
    Date::saturating_from_raw(pg_epoch_days(date).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
}

/// The dates a caller may pass: from 1900-01-01 to 9999-12-31. Order data has no earlier
/// days, and later ones overflow what a pipeline's time zone and the sync log can hold.
pub const FIRST_DATE: NaiveDate = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a date");
pub const LAST_DATE: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("a date");

/// Validates a date argument of a SQL function: NULL stays `None` (the caller's default
/// applies), ±infinity and dates outside FIRST_DATE..=LAST_DATE are errors naming `argument`.
pub fn date_argument(argument: &str, date: Option<Date>) -> Result<Option<NaiveDate>, SqlError> {
    let Some(date) = date else { return Ok(None) };
    let hint = format!("Pass a calendar date between {FIRST_DATE} and {LAST_DATE}.");
    let Some(naive) = from_pg(date) else {
        return Err(SqlError::invalid_argument(argument, "must be a finite date").with_hint(hint));
    };
    if !(FIRST_DATE..=LAST_DATE).contains(&naive) {
        return Err(SqlError::invalid_argument(argument, format!("{naive} is outside {FIRST_DATE}..{LAST_DATE}"))
            .with_hint(hint));
    }
    Ok(Some(naive))
}

/// Validates a pipeline's `timezone` column (used by its CHECK constraint). Raises a clear
/// error instead of returning false so the DBA sees which value was wrong and what to use.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_timezone(timezone: &str) -> bool {
    if parse_timezone(timezone).is_none() {
        SqlError::invalid_argument("timezone", format!("unknown time zone \"{timezone}\""))
            .with_hint("Use an IANA time zone name such as 'Asia/Ho_Chi_Minh' or 'UTC'.")
            .raise();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn late_evening_utc_is_already_tomorrow_in_vietnam() {
        let now = Utc.with_ymd_and_hms(2026, 1, 6, 23, 30, 0).unwrap();
        let vietnam = parse_timezone("Asia/Ho_Chi_Minh").unwrap();
        assert_eq!(today_in(vietnam, now), NaiveDate::from_ymd_opt(2026, 1, 7).unwrap());
        assert_eq!(today_in(chrono_tz::UTC, now), NaiveDate::from_ymd_opt(2026, 1, 6).unwrap());
    }

    #[test]
    fn epoch_days_count_from_2000_01_01() {
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        assert_eq!(pg_epoch_days(epoch), 0);
        assert_eq!(pg_epoch_days(NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()), -1);
        let date = NaiveDate::from_ymd_opt(2026, 1, 7).unwrap();
        assert_eq!(from_pg_epoch_days(pg_epoch_days(date)), Some(date));
        assert_eq!(from_pg_epoch_days(i64::MAX), None);
    }

    proptest::proptest! {
        #[test]
        fn epoch_days_round_trip(days in -2_000_000i64..2_000_000) {
            let date = from_pg_epoch_days(days).unwrap();
            proptest::prop_assert_eq!(pg_epoch_days(date), days);
        }
    }

    #[test]
    fn unknown_zone_names_are_refused() {
        assert!(parse_timezone("Mars/Olympus_Mons").is_none());
        assert!(parse_timezone("").is_none());
        assert!(parse_timezone("Asia/Ho_Chi_Minh'; DROP TABLE x; --").is_none());
    }
}
