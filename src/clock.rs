//! What "today" is for a pipeline: its own IANA time zone, never the server's.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
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
    fn unknown_zone_names_are_refused() {
        assert!(parse_timezone("Mars/Olympus_Mons").is_none());
        assert!(parse_timezone("").is_none());
        assert!(parse_timezone("Asia/Ho_Chi_Minh'; DROP TABLE x; --").is_none());
    }
}
