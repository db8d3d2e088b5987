//! Page tokens.
//!
//! A token is a cursor, not a server-side session: `p<page>.d<YYYYMMDD>.n<row>.c<check>`, e.g.
//! `p3.d20240105.n17.c1a2b3c4d`. It names the 0-based page index it fetches (fault rules
//! match on it) and the (day, row) of that page's first row, so re-sending the same token
//! returns the same page, and a client can resume from a token it saved before a crash, even
//! against a restarted simulator. The check binds it to the store, stream and window it was
//! issued for, so a token replayed against another chain is a 400 instead of silently
//! serving the wrong rows. Clients must treat it as opaque; only URL-safe characters are used.

use crate::data::{date_strings, fnv1a, parse_date8, Cursor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub page: u64,
    pub cursor: Cursor,
}

fn check(store: &str, stream: &str, from_day: i32, to_day: i32) -> u32 {
    let key = format!("{store}\u{0}{stream}\u{0}{from_day}\u{0}{to_day}");
    fnv1a(key.as_bytes()) as u32
}

pub fn encode(t: PageToken, store: &str, stream: &str, from_day: i32, to_day: i32) -> String {
    encode_checked(t, check(store, stream, from_day, to_day))
}

/// None for anything that is not a token this chain could have issued.
pub fn decode(s: &str, store: &str, stream: &str, from_day: i32, to_day: i32) -> Option<PageToken> {
    decode_checked(s, from_day, to_day, check(store, stream, from_day, to_day))
}

/// A token bound to any `key` (the shapes bind theirs to store, stream and their own range
/// parameters); same format as the v1 token.
pub fn encode_keyed(t: PageToken, key: &str) -> String {
    encode_checked(t, fnv1a(key.as_bytes()) as u32)
}

/// Decode a token of [`encode_keyed`]; its day must lie in `lo_day..=hi_day`.
pub fn decode_keyed(s: &str, key: &str, lo_day: i32, hi_day: i32) -> Option<PageToken> {
    decode_checked(s, lo_day, hi_day, fnv1a(key.as_bytes()) as u32)
}

fn encode_checked(t: PageToken, c: u32) -> String {
    let (_, d8) = date_strings(t.cursor.day);
    format!("p{}.d{}.n{}.c{:08x}", t.page, String::from_utf8_lossy(&d8), t.cursor.n, c)
}

fn decode_checked(s: &str, from_day: i32, to_day: i32, expected: u32) -> Option<PageToken> {
    let mut parts = s.split('.');
    let page: u64 = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let day = parse_date8(parts.next()?.strip_prefix('d')?)?;
    let n: u32 = parts.next()?.strip_prefix('n')?.parse().ok()?;
    let c = u32::from_str_radix(parts.next()?.strip_prefix('c')?, 16).ok()?;
    if parts.next().is_some() || page == 0 || day < from_day || day > to_day {
        return None;
    }
    if c != expected {
        return None;
    }
    Some(PageToken { page, cursor: Cursor { day, n } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_date;

    #[test]
    fn round_trip_and_rejects() {
        let (f, t) = (parse_date("2024-01-01").unwrap_or(0), parse_date("2024-01-31").unwrap_or(0));
        let tok = PageToken { page: 3, cursor: Cursor { day: f + 4, n: 17 } };
        let s = encode(tok, "S001", "orders", f, t);
        assert!(s.starts_with("p3.d20240105.n17.c"), "{s}");
        assert_eq!(decode(&s, "S001", "orders", f, t), Some(tok));
        // Same token against another chain or window is refused.
        assert_eq!(decode(&s, "S002", "orders", f, t), None);
        assert_eq!(decode(&s, "S001", "sales", f, t), None);
        assert_eq!(decode(&s, "S001", "orders", f, t + 1), None);
        for bad in ["", "x", "p0.d20240105.n1.c0", "p1.d20241305.n1.c0", "p1.d20240105.n-1.c0", &format!("{s}.x")] {
            assert_eq!(decode(bad, "S001", "orders", f, t), None, "{bad}");
        }
    }
}
