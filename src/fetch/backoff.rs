//! How long to wait before retrying a page: pure functions, so they can be property-tested.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

/// Exponential backoff stops growing here (unless the base delay itself is larger).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A source's `Retry-After` is obeyed up to this long; a worker should not idle for hours
/// because a header said so.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// The wait after failed attempt number `attempt` (1 = the first request) before the next one.
///
/// * A `Retry-After` from the source takes precedence, capped at [`MAX_RETRY_AFTER`].
/// * Otherwise exponential: `base × 2^(attempt-1)`, capped at `max(MAX_BACKOFF, base)`, with
///   "equal jitter": half of that is fixed and `jitter` (0..=1, anything else is clamped)
///   picks the rest, so workers retrying together spread out yet never retry at once.
pub fn retry_delay(attempt: u32, base: Duration, retry_after: Option<Duration>, jitter: f64) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(MAX_RETRY_AFTER);
    }
    let cap = MAX_BACKOFF.max(base);
    // Past 2^31 any base of 15 ns or more is capped anyway; the min keeps the shift defined.
    let doublings = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(cap).as_nanos();
    let jitter = if jitter.is_nan() { 0.5 } else { jitter.clamp(0.0, 1.0) };
    let fixed = ceiling / 2;
    // Integer nanoseconds (a capped delay is far below 2^53, so exact in f64): the result is
    // then monotonic in `ceiling` and never above it, without float rounding surprises.
    let random = ((ceiling - fixed) as f64 * jitter) as u128;
    Duration::from_nanos(u64::try_from(fixed + random).unwrap_or(u64::MAX))
}

/// A value in [0, 1) for [`retry_delay`]'s jitter. `RandomState` is keyed from the OS and
/// re-keyed on every call, so its hash of nothing is a well-mixed random `u64`, without a PRNG
/// crate. Not for cryptography; only to keep workers from retrying in lockstep.
pub fn jitter_sample() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as delta-seconds (`120`) or an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`),
/// relative to `now`. A date in the past means "now"; anything unparsable is ignored (None);
/// an absurdly large number becomes [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(value.parse::<u64>().map_or(MAX_RETRY_AFTER, Duration::from_secs));
    }
    let at = SystemTime::from(chrono::DateTime::parse_from_rfc2822(value).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_base_with_equal_jitter() {
        let base = 500 * MS;
        assert_eq!(retry_delay(1, base, None, 0.0), 250 * MS);
        assert_eq!(retry_delay(1, base, None, 1.0), 500 * MS);
        assert_eq!(retry_delay(2, base, None, 1.0), 1000 * MS);
        assert_eq!(retry_delay(4, base, None, 0.5), 3000 * MS);
        assert_eq!(retry_delay(20, base, None, 1.0), MAX_BACKOFF);
        assert_eq!(retry_delay(u32::MAX, base, None, 1.0), MAX_BACKOFF);
        // A base above the cap is the DBA's explicit choice: it is kept, never exceeded.
        assert_eq!(retry_delay(3, Duration::from_secs(60), None, 1.0), Duration::from_secs(60));
        assert_eq!(retry_delay(0, base, None, 1.0), 500 * MS);
        assert_eq!(retry_delay(1, Duration::ZERO, None, 1.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_takes_precedence_up_to_its_cap() {
        let base = 500 * MS;
        assert_eq!(retry_delay(1, base, Some(Duration::from_secs(7)), 0.9), Duration::from_secs(7));
        assert_eq!(retry_delay(9, base, Some(Duration::ZERO), 0.9), Duration::ZERO);
        assert_eq!(retry_delay(1, base, Some(Duration::from_secs(86_400)), 0.9), MAX_RETRY_AFTER);
    }

    #[test]
    fn jitter_samples_are_in_range_and_vary() {
        let samples: Vec<f64> = (0..1000).map(|_| jitter_sample()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        let low = samples.iter().filter(|j| **j < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
        let mut distinct = samples.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 990);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        for junk in ["", "soon", "-5", "1.5", "1e3", "Wed, 99 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_its_cap(attempt in 0u32..2000, base_ms in 0u64..=600_000, jitter in -1.0f64..2.0) {
            let base = Duration::from_millis(base_ms);
            let delay = retry_delay(attempt, base, None, jitter);
            prop_assert!(delay <= MAX_BACKOFF.max(base));
            if base <= MAX_BACKOFF {
                prop_assert!(delay <= MAX_BACKOFF);
            }
        }

        #[test]
        fn backoff_grows_with_attempt(attempt in 1u32..200, base_ms in 0u64..=600_000, jitter in 0.0f64..=1.0) {
            let base = Duration::from_millis(base_ms);
            prop_assert!(retry_delay(attempt + 1, base, None, jitter) >= retry_delay(attempt, base, None, jitter));
        }

        #[test]
        fn backoff_keeps_at_least_half_of_the_exponential_step(attempt in 1u32..64, base_ms in 0u64..=600_000, jitter in 0.0f64..=1.0) {
            let base = Duration::from_millis(base_ms);
            let step = base.saturating_mul(1 << (attempt - 1).min(31)).min(MAX_BACKOFF.max(base));
            let delay = retry_delay(attempt, base, None, jitter);
            prop_assert!(delay >= step / 2 && delay <= step);
        }

        #[test]
        fn retry_after_is_respected(attempt in 0u32..100, base_ms in 0u64..=600_000, secs in 0u64..100_000, jitter in 0.0f64..=1.0) {
            let wait = Duration::from_secs(secs);
            let delay = retry_delay(attempt, Duration::from_millis(base_ms), Some(wait), jitter);
            prop_assert_eq!(delay, wait.min(MAX_RETRY_AFTER));
        }

        #[test]
        fn retry_after_seconds_round_trip(secs in 0u64..1_000_000_000) {
            prop_assert_eq!(parse_retry_after(&secs.to_string(), SystemTime::now()), Some(Duration::from_secs(secs)));
        }
    }
}
