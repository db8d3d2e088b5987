//! Which page comes next, by the profile's pagination style ([`next_cursor`]), and the bounds
//! every window's pagination is held to (docs/design.md#bounds): a source whose page
//! tokens come round again, or never end, must not keep a worker, its slot and its store's lock
//! forever. Plain values: the fetch thread asks `PageGuard::follow` before each next page.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::profile::Pagination;

/// What a page told about the pages after it (read from its body and headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSignals<'a> {
    /// Records in the body, before duplicates were dropped.
    pub received: usize,
    /// The id of the body's last record.
    pub last_id: Option<&'a str>,
    /// The token (cursor) or URL (next_url) at the style's body path.
    pub next: Option<&'a str>,
    /// The count at `total_path` / `total_pages_path`.
    pub total: Option<u64>,
    pub has_more: Option<bool>,
    /// The `rel="next"` target of the `Link` header.
    pub link_next: Option<&'a str>,
}

/// The cursor that asks for the page after the one fetched with `cursor`, or `None` when that
/// page was the last. The cursor is what the window's progress saves, so an attempt resumes
/// from it: a token, a next page's URL, an offset, a page number or a last id.
pub fn next_cursor(style: &Pagination, cursor: Option<&str>, page: &PageSignals<'_>) -> Result<Option<String>, String> {
    let position = |first: u64| -> Result<u64, String> {
        cursor.map_or(Ok(first), |c| c.parse::<u64>().map_err(|_| format!("saved cursor {c:?} is not a number")))
    };
    Ok(match style {
        Pagination::Cursor { .. } | Pagination::NextUrl { .. } => page.next.map(str::to_owned),
        Pagination::LinkHeader {} => page.link_next.map(str::to_owned),
        Pagination::None {} => None,
        Pagination::Offset { .. } => {
            let next = position(0)? + page.received as u64;
            let done = page.received == 0 || page.total.is_some_and(|total| next >= total);
            (!done).then(|| next.to_string())
        }
        Pagination::PageNumber { first_page, .. } => {
            let first = u64::from(first_page.0);
            let current = position(first)?;
            let pages_read = current.saturating_sub(first) + 1;
            let done = page.received == 0 || page.total.is_some_and(|total| pages_read >= total);
            (!done).then(|| (current + 1).to_string())
        }
        Pagination::LastId { has_more_path, .. } => match (page.received, page.has_more) {
            (0, _) | (_, Some(false)) => None,
            (_, Some(true)) => page.last_id.map(str::to_owned),
            (_, None) => return Err(format!("{has_more_path} is missing: the page does not say whether more follow")),
        },
    })
}

/// The `rel="next"` target of a `Link` header (RFC 8288): `<url>; rel="next", <url>; rel="last"`.
pub fn link_next(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else { return false };
            name.trim().eq_ignore_ascii_case("rel")
                && value.trim().trim_matches('"').split_ascii_whitespace().any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        is_next.then_some(target)
    })
}

/// How far one window may page: at most `max_pages` pages (counted from the window's first
/// page, across resumed attempts) and `max_duration` of paging in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    pub max_pages: u32,
    pub max_duration: Duration,
}

/// Which bound stopped a window's pagination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundHit {
    #[error(
        "page {page_no} returned a cursor (next_page_token, next page URL or last id) already returned by page {first_page_no} of this window: the source's pages run in a cycle"
    )]
    Cycle { page_no: i32, first_page_no: i32 },
    #[error(
        "stopped after page {page_no}: the limit of {max_pages} pages per window was reached (orders_sync.max_pages_per_window, or the pipeline's max_pages_per_window)"
    )]
    Pages { page_no: i32, max_pages: u32 },
    #[error(
        "stopped after page {page_no}: the limit of {} s of paging per window was reached (orders_sync.max_window_seconds, or the pipeline's max_window_seconds)",
        max_duration.as_secs()
    )]
    Time { page_no: i32, max_duration: Duration },
}

/// Tracks one stream of one window while it is paged.
pub struct PageGuard {
    bounds: PageBounds,
    started: Instant,
    /// Every token this attempt has sent or been given, with the page that returned it.
    seen: HashMap<String, i32>,
}

impl PageGuard {
    /// `resume_token` is the cursor the attempt starts from (returned by page
    /// `first_page_no - 1` of an earlier attempt).
    pub fn new(bounds: PageBounds, started: Instant, first_page_no: i32, resume_token: Option<&str>) -> Self {
        let mut seen = HashMap::new();
        if let Some(token) = resume_token {
            seen.insert(token.to_string(), first_page_no - 1);
        }
        PageGuard { bounds, started, seen }
    }

    /// Whether the attempt may fetch its first page at all: one resumed past the page limit
    /// (an earlier attempt stopped there) fails at once instead of fetching one page more.
    pub fn may_start(&self, first_page_no: i32) -> Result<(), BoundHit> {
        if i64::from(first_page_no) > i64::from(self.bounds.max_pages) {
            return Err(BoundHit::Pages { page_no: first_page_no - 1, max_pages: self.bounds.max_pages });
        }
        Ok(())
    }

    /// Whether page `page_no`, which returned `next_token`, may be followed by the next page.
    pub fn follow(&mut self, page_no: i32, next_token: &str, now: Instant) -> Result<(), BoundHit> {
        if let Some(first_page_no) = self.seen.get(next_token) {
            return Err(BoundHit::Cycle { page_no, first_page_no: *first_page_no });
        }
        if i64::from(page_no) >= i64::from(self.bounds.max_pages) {
            return Err(BoundHit::Pages { page_no, max_pages: self.bounds.max_pages });
        }
        if now.duration_since(self.started) >= self.bounds.max_duration {
            return Err(BoundHit::Time { page_no, max_duration: self.bounds.max_duration });
        }
        self.seen.insert(next_token.to_string(), page_no);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GENEROUS: PageBounds = PageBounds { max_pages: 1_000, max_duration: Duration::from_secs(3_600) };

    #[test]
    fn tokens_that_come_round_again_are_a_cycle() {
        let start = Instant::now();
        let mut guard = PageGuard::new(GENEROUS, start, 1, None);
        assert_eq!(guard.follow(1, "A", start), Ok(()));
        assert_eq!(guard.follow(2, "B", start), Ok(()));
        assert_eq!(guard.follow(3, "A", start), Err(BoundHit::Cycle { page_no: 3, first_page_no: 1 }));
    }

    #[test]
    fn the_resume_cursor_counts_as_seen() {
        let start = Instant::now();
        let mut guard = PageGuard::new(GENEROUS, start, 5, Some("R"));
        assert_eq!(guard.follow(5, "R", start), Err(BoundHit::Cycle { page_no: 5, first_page_no: 4 }));
    }

    #[test]
    fn the_page_limit_counts_from_the_windows_first_page() {
        let start = Instant::now();
        let bounds = PageBounds { max_pages: 3, ..GENEROUS };
        let mut guard = PageGuard::new(bounds, start, 2, Some("p1"));
        assert_eq!(guard.follow(2, "p2", start), Ok(()));
        let hit = guard.follow(3, "p3", start).unwrap_err();
        assert_eq!(hit, BoundHit::Pages { page_no: 3, max_pages: 3 });
        assert!(hit.to_string().contains("limit of 3 pages per window"), "{hit}");
    }

    #[test]
    fn an_attempt_resumed_past_the_page_limit_fetches_nothing() {
        let bounds = PageBounds { max_pages: 3, ..GENEROUS };
        let guard = PageGuard::new(bounds, Instant::now(), 4, Some("p3"));
        assert_eq!(guard.may_start(4), Err(BoundHit::Pages { page_no: 3, max_pages: 3 }));
        assert_eq!(PageGuard::new(bounds, Instant::now(), 3, Some("p2")).may_start(3), Ok(()));
    }

    #[test]
    fn the_time_limit_says_so() {
        let start = Instant::now();
        let bounds = PageBounds { max_duration: Duration::from_secs(10), ..GENEROUS };
        let mut guard = PageGuard::new(bounds, start, 1, None);
        assert_eq!(guard.follow(1, "a", start + Duration::from_secs(9)), Ok(()));
        let hit = guard.follow(2, "b", start + Duration::from_secs(10)).unwrap_err();
        assert!(hit.to_string().contains("limit of 10 s of paging per window"), "{hit}");
    }

    fn signals(received: usize) -> PageSignals<'static> {
        PageSignals { received, ..PageSignals::default() }
    }

    #[test]
    fn offsets_advance_by_the_records_received_and_end_on_an_empty_page_or_the_total() {
        let style = Pagination::Offset { offset_param: "offset".into(), total_path: None };
        assert_eq!(next_cursor(&style, None, &signals(100)), Ok(Some("100".into())));
        assert_eq!(next_cursor(&style, Some("100"), &signals(37)), Ok(Some("137".into())));
        assert_eq!(next_cursor(&style, Some("137"), &signals(0)), Ok(None));
        let total = PageSignals { total: Some(137), ..signals(37) };
        assert_eq!(next_cursor(&style, Some("100"), &total), Ok(None));
        assert!(next_cursor(&style, Some("x"), &signals(1)).is_err());
    }

    #[test]
    fn page_numbers_count_from_the_first_page_and_end_on_an_empty_page_or_the_total() {
        use super::super::profile::FirstPage;
        let zero =
            Pagination::PageNumber { page_param: "page".into(), first_page: FirstPage(0), total_pages_path: None };
        assert_eq!(next_cursor(&zero, None, &signals(10)), Ok(Some("1".into())));
        assert_eq!(next_cursor(&zero, Some("1"), &signals(0)), Ok(None));
        let one =
            Pagination::PageNumber { page_param: "page".into(), first_page: FirstPage(1), total_pages_path: None };
        assert_eq!(next_cursor(&one, None, &signals(10)), Ok(Some("2".into())));
        let last = PageSignals { total: Some(2), ..signals(10) };
        assert_eq!(next_cursor(&one, Some("2"), &last), Ok(None));
        assert_eq!(next_cursor(&one, Some("1"), &last), Ok(Some("2".into())));
    }

    #[test]
    fn last_ids_follow_has_more() {
        let style = Pagination::LastId { param: "after".into(), has_more_path: "has_more".parse_path() };
        let more = PageSignals { last_id: Some("o-9"), has_more: Some(true), ..signals(3) };
        assert_eq!(next_cursor(&style, None, &more), Ok(Some("o-9".into())));
        let done = PageSignals { has_more: Some(false), ..more.clone() };
        assert_eq!(next_cursor(&style, None, &done), Ok(None));
        let silent = PageSignals { has_more: None, ..more };
        assert!(next_cursor(&style, None, &silent).unwrap_err().contains("has_more is missing"));
    }

    #[test]
    fn the_link_header_gives_the_next_page() {
        assert_eq!(
            link_next(r#"<https://a/x?page=2>; rel="next", <https://a/x?page=9>; rel="last""#),
            Some("https://a/x?page=2")
        );
        assert_eq!(link_next(r#"<https://a/x?page=9>; rel="last""#), None);
        assert_eq!(link_next(r#"<https://a/x?p=1>; rel="prev", <https://a/x?p=3>;rel=next"#), Some("https://a/x?p=3"));
        assert_eq!(link_next("garbage"), None);
    }

    trait ParsePath {
        fn parse_path(&self) -> super::super::profile::FieldPath;
    }
    impl ParsePath for &str {
        fn parse_path(&self) -> super::super::profile::FieldPath {
            super::super::profile::FieldPath::parse(self).unwrap()
        }
    }

    proptest! {
        /// Whatever tokens a source returns, paging stops within max_pages, and distinct
        /// tokens under the limits are always followed.
        #[test]
        fn paging_always_ends_within_the_page_limit(tokens in proptest::collection::vec(0u16..50, 1..300), max_pages in 1u32..100) {
            let start = Instant::now();
            let bounds = PageBounds { max_pages, ..GENEROUS };
            let mut guard = PageGuard::new(bounds, start, 1, None);
            let mut followed = 0u32;
            let mut seen = std::collections::HashSet::new();
            for (i, token) in tokens.iter().enumerate() {
                let page_no = i as i32 + 1;
                match guard.follow(page_no, &token.to_string(), start) {
                    Ok(()) => { followed += 1; prop_assert!(seen.insert(*token)); }
                    Err(BoundHit::Cycle { .. }) => { prop_assert!(seen.contains(token)); break; }
                    Err(_) => { prop_assert_eq!(page_no as u32, max_pages); break; }
                }
            }
            prop_assert!(followed < max_pages);
        }
    }
}
